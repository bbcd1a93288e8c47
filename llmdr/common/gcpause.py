"""Pausing Python's cyclic garbage collector while a command builds many long-lived objects at once.

Importing botocore and building its S3 client (the service model is ~100k dicts of parsed JSON), or building the
config's pydantic models, makes objects, not garbage; with the collector on, every 700 new objects trigger a pass
over all young objects and, now and then, a full pass over everything: ~0.1 s of a short command. Reference counting
still frees everything that is not in a cycle, and the collector runs again as soon as the block ends.

At the end the objects are moved to the oldest generation (``gc.freeze()`` then ``gc.unfreeze()``: two list
splices), where objects that live on end up anyway, instead of one more pass over all of them as young objects.
They stay collectable: the next full collection looks at them as it would have.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Run the block with the cyclic garbage collector off (as it was before, afterwards: on unless the caller
    turned it off). Nests; for short blocks that build objects, never around a long-running operation."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.freeze()  # every tracked object into the permanent generation...
            gc.unfreeze()  # ...and back into the oldest one: no pass over what the block made
            gc.enable()
