"""The one core module that talks to Prefect: events, Secret blocks and notification blocks.

Everything else in ``llmdr`` is plain Python that runs with or without a Prefect server; the layer contract
(``make lint``) refuses ``import prefect`` anywhere else in the core. Prefect is imported inside the functions, so
``import llmdr`` stays light (``import prefect`` takes seconds).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)


def emit_event(event: str, resource: dict[str, str], payload: dict[str, Any]) -> bool:
    """Emit ``event`` through the configured Prefect API. False (and a warning) when it cannot be sent, e.g. no
    server: monitoring and failover keep working without Prefect."""
    try:
        from prefect.events import emit_event as _emit
        from prefect.settings import PREFECT_API_URL

        if not PREFECT_API_URL.value():
            # without an API, Prefect would start a throw-away temporary server (~15 s) that nobody listens to
            log.warning("%s not sent: no Prefect API configured (run `llmdr stack up --ui`, or set PREFECT_API_URL)",
                        event)
            return False
        return _emit(event=event, resource=resource, payload=payload) is not None
    except Exception as exc:  # noqa: BLE001 - an unreachable event bus must not stop a probe or a failover
        log.warning("could not emit %s: %s", event, exc)
        return False


def load_secret(block: str) -> Any:
    """The value of the Prefect Secret block named ``block`` (a string or a JSON value). Raises whatever Prefect
    raises for a missing block or an unreachable API; callers map it to their own error."""
    from prefect.blocks.system import Secret

    return Secret.load(block).get()


def load_block(ref: str) -> Any:
    """The Prefect block ``<block-type-slug>/<name>`` (built-in notification block types registered first).
    ``ValueError`` when no such block exists."""
    import prefect.blocks.notifications  # noqa: F401 - registers the built-in notification block types
    from prefect.blocks.core import Block

    return call_sync(Block.load, ref)


def call_sync(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a Prefect method synchronously even inside an event loop (an async flow), where Prefect's
    ``async_dispatch`` would otherwise hand back a coroutine."""
    if hasattr(fn, "aio"):  # prefect's async_dispatch wrapper: pick the sync implementation explicitly
        return fn(*args, _sync=True)
    result = fn(*args)
    if asyncio.iscoroutine(result):  # a block with a plain ``async def notify``
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, result).result()
    return result
