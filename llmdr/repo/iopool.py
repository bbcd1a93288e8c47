"""One pool of threads for a command's small parallel reads (catalog segments and entries, index log entries and
the index objects they name): the threads are started once per process, not once per read. On a busy machine every
thread start waits for the GIL, so pools made per read cost more as history grows (more segments, more reads) even
though each read is small. Tasks given here only read the store and parse: they never submit to the pool themselves,
so the pool cannot deadlock on itself."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

WORKERS = 16
_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def io_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]``, run on the shared pool (in the caller's thread when there is only one item)."""
    items = list(items)
    if len(items) <= 1:
        return [fn(x) for x in items]
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="llmdr-read")
        pool = _pool
    return list(pool.map(fn, items))
