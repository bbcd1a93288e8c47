"""The one core module that talks to Prefect: events, Secret blocks, notification blocks, the console/API log
split of the CLI, and the retry of transient API errors.

Everything else in ``llmdr`` is plain Python that runs with or without a Prefect server; the layer contract
(``make lint``) refuses ``import prefect`` anywhere else in the core. Prefect is imported inside the functions, so
``import llmdr`` stays light (``import prefect`` takes seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

# Statuses a Prefect API answers when it is briefly unable, not when the request is wrong: 503 is what Prefect on
# SQLite answers to a write under load ("database is locked"), 502/504 what a proxy in front of it answers.
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
API_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)  # four retries, 7.5 s of waiting at most


def quiet_console(environ: MutableMapping[str, str] = os.environ) -> None:
    """Keep Prefect's console output to warnings and errors for a CLI user while every INFO line of a flow or task
    run still reaches the Prefect API (the UI's run logs). ``PREFECT_LOGGING_LEVEL=WARNING`` would silence both:
    it sets the level of the ``prefect`` loggers, in front of the API handler. Only the console handler's level is
    set here; a value the user set is kept. Call it before Prefect is imported (its logging is set up on import)."""
    environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # a command run without a Prefect server (e.g. `llmdr protect`) starts a temporary one; Prefect gives it 20 s,
    # which a busy 2-core host missed ("Timed out while attempting to connect to ephemeral Prefect API server")
    environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def api_status(exc: BaseException) -> int | None:
    """The HTTP status of a failed API call (httpx / Prefect client or urllib), None if it got no answer."""
    import urllib.error

    if isinstance(exc, urllib.error.HTTPError):
        return exc.code
    status = getattr(getattr(exc, "response", None), "status_code", None)  # httpx.HTTPStatusError and subclasses
    return status if isinstance(status, int) else None


def is_transient_api_error(exc: BaseException) -> bool:
    """True for what a retry can cure: a transient status (429, 502, 503, 504), a refused or reset connection, a
    timeout. Any other 4xx/5xx answer is final: the request itself is wrong, repeating it changes nothing."""
    status = api_status(exc)
    if status is not None:
        return status in TRANSIENT_STATUSES
    if isinstance(exc, (ConnectionError, TimeoutError)):  # refused, reset, aborted, timed out
        return True
    import httpx  # comes with prefect

    if isinstance(exc, (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)):
        return True  # refused, reset or half-closed connections, timeouts; not a malformed URL
    reason = getattr(exc, "reason", None)  # urllib.error.URLError wraps the socket error
    return isinstance(reason, (ConnectionError, TimeoutError))


def retry_api(fn: Callable[..., T], *args: Any, delays: tuple[float, ...] = API_RETRY_DELAYS,
              sleep: Callable[[float], None] = time.sleep, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, a call to the Prefect API, repeated after each delay of ``delays`` while it fails
    with a transient error (:func:`is_transient_api_error`); the last error, or any other, is raised as is."""
    for attempt, delay in enumerate((*delays, None)):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if delay is None or not is_transient_api_error(exc):
                raise
            log.warning("Prefect API call %s failed (%s); retry %d of %d in %.1f s",
                        getattr(fn, "__name__", "call"), _short(exc), attempt + 1, len(delays), delay)
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _short(exc: BaseException) -> str:
    status = api_status(exc)
    text = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    return f"HTTP {status}: {text}" if status is not None else text


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

    return retry_api(Secret.load, block).get()


def load_block(ref: str) -> Any:
    """The Prefect block ``<block-type-slug>/<name>`` (built-in notification block types registered first).
    ``ValueError`` when no such block exists."""
    import prefect.blocks.notifications  # noqa: F401 - registers the built-in notification block types
    from prefect.blocks.core import Block

    return retry_api(call_sync, Block.load, ref)


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


def pause_for_input(form: type[T], *, timeout_s: float, key: str, poll_s: float = 5) -> tuple[T | None, str | None]:
    """Pause the current flow run until a person resumes it with ``form`` filled in (the Prefect UI shows the form on
    the paused run; the API takes ``POST /api/flow_runs/<id>/resume`` with ``{"run_input": {...}}``).

    ``pause_flow_run`` keeps this process waiting, unlike ``suspend_flow_run``, which ends it and runs the flow again
    from its start once resumed (and needs a deployment and persisted results): a drill paused before anything is
    cut keeps its record in memory, and works the same in-process (tests, `llmdr drill`) and on a worker.

    Returns ``(answer, None)``; ``(None, None)`` when nobody answered within ``timeout_s``; ``(None, why)`` when the
    run was resumed without a usable form."""
    from prefect import pause_flow_run
    from prefect.exceptions import FlowPauseTimeout

    try:
        return pause_flow_run(wait_for_input=form, timeout=max(1, int(timeout_s)), poll_interval=max(1, int(poll_s)),
                              key=key), None
    except FlowPauseTimeout:
        return None, None
    except Exception as exc:  # noqa: BLE001 - resumed without input, or input that does not parse
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


# Concurrency through Prefect's global concurrency limits -------------------------------------------------------------
def protect_limit_name(bundle: str) -> str:
    """The global concurrency limit (1 slot) that keeps one protect-bundle run per bundle at a time."""
    return f"llmdr-protect-{bundle}"


def transfer_limit_name(region: str) -> str:
    """The global concurrency limit that caps the uploads and copies into one region at once, across bundles."""
    return f"llmdr-transfer-{region}"


_ensured: dict[str, int] = {}  # limits this process created or checked: name -> slots


def ensure_concurrency_limit(name: str, limit: int) -> str:
    """Create the global concurrency limit NAME with LIMIT slots, or set an existing one's slots to LIMIT.
    Idempotent, and safe when two processes create it at once. Returns "created", "updated" or "kept"."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            have = retry_api(client.read_global_concurrency_limit_by_name, name)
        except ObjectNotFound:
            try:
                retry_api(client.create_global_concurrency_limit,
                          GlobalConcurrencyLimitCreate(name=name, limit=limit, active=True))
                _ensured[name] = limit
                return "created"
            except ObjectAlreadyExists:  # another run created it between our read and our create
                have = retry_api(client.read_global_concurrency_limit_by_name, name)
        _ensured[name] = limit
        if have.limit == limit and have.active:
            return "kept"
        retry_api(client.update_global_concurrency_limit, name,
                  GlobalConcurrencyLimitUpdate(limit=limit, active=True))
        return "updated"


def in_run() -> bool:
    """True inside a Prefect flow or task run (where the API that holds the limits is the run's)."""
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def flow_run_record() -> dict[str, Any] | None:
    """The flow run this process runs, as the Prefect server recorded it: ``{"flow_run_id", "auto_scheduled",
    "creator"}`` (``creator``: the login or API key that created it, when the server knows one). None outside a flow
    run, or when the server cannot be read (an in-process run without a server)."""
    from prefect import runtime

    if not runtime.flow_run.id:
        return None
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            fr = retry_api(client.read_flow_run, runtime.flow_run.id)
    except Exception:  # noqa: BLE001 - the caller says "not known"
        return None
    creator = getattr(fr, "created_by", None)
    return {"flow_run_id": str(fr.id), "auto_scheduled": bool(fr.auto_scheduled),
            "creator": getattr(creator, "display_value", None)}


def run_origin() -> dict[str, Any] | None:
    """The deployment run this process runs: :func:`flow_run_record` with its ``"deployment"`` name. None outside a
    deployment run (an in-process run: the CLI's) or when the server cannot be read."""
    from prefect import runtime

    if not runtime.deployment.id:
        return None
    record = flow_run_record()
    return None if record is None else record | {"deployment": runtime.deployment.name}


@contextlib.contextmanager
def concurrency_slot(name: str, limit: int) -> Iterator[None]:
    """Hold one slot of the global concurrency limit NAME (LIMIT slots, created when missing) for the block: runs
    beyond the limit wait in Prefect, whichever worker runs them. Outside a flow or task run (a test calling the
    core directly) it holds nothing: there is no run to coordinate with."""
    if not in_run():
        yield
        return
    from prefect.concurrency.sync import concurrency
    from prefect.logging import get_run_logger

    if _ensured.get(name) != limit:
        ensure_concurrency_limit(name, limit)
    t0 = time.monotonic()
    with concurrency(name, occupy=1, strict=True):
        # in the run's log (the UI): which limit held this step back, and how long
        get_run_logger().info("holding a slot of concurrency limit %s (%d slot(s)), after waiting %.1f s", name, limit,
                              time.monotonic() - t0)
        yield


# What the Prefect API holds for a bundle's automatic failover (the readiness check "automation") -------------------
def configured_api_url() -> str | None:
    """The Prefect API URL this process would use: $PREFECT_API_URL, the active Prefect profile's setting (`prefect
    config set PREFECT_API_URL=...`), or a flow run's; None when none is set (Prefect would then run flows against
    a temporary local server of its own)."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def failover_paths(api_url: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Every automation of the Prefect API at API_URL that runs a deployment, as plain data for a judge: its name,
    whether it is enabled, the events and resources its trigger matches, and for each run-deployment action the
    deployment (name, flow, paused, its ``bundle`` parameter), its work pool and queue, and that queue's status
    (READY when a worker or the warm runner polled it within Prefect's timeout) and last poll. Raises what the
    client raises when the API does not answer; ``OSError`` when its /health does not answer within TIMEOUT (a
    readiness check must not hang on a dead server)."""
    import urllib.request

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout) as r:  # noqa: S310 - the API
        r.read()
    out: list[dict[str, Any]] = []
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        for a in retry_api(client.read_automations):
            trig = a.trigger.model_dump(mode="json")
            entry: dict[str, Any] = {"name": a.name, "enabled": bool(a.enabled), "expect": sorted(trig.get("expect")
                                     or []), "match": trig.get("match") or {}, "deployments": []}
            for act in a.actions:
                dep_id = getattr(act, "deployment_id", None)
                if getattr(act, "type", None) != "run-deployment" or dep_id is None:
                    continue
                d: dict[str, Any] = {"id": str(dep_id)}
                try:
                    dep = retry_api(client.read_deployment, dep_id)
                except ObjectNotFound:
                    d["missing"] = True
                    entry["deployments"].append(d)
                    continue
                d.update(name=dep.name, paused=bool(dep.paused), bundle=(dep.parameters or {}).get("bundle"),
                         pool=dep.work_pool_name, queue=dep.work_queue_name,
                         flow=retry_api(client.read_flow, dep.flow_id).name)
                try:
                    q = retry_api(client.read_work_queue_by_name, dep.work_queue_name,
                                  work_pool_name=dep.work_pool_name)
                    d.update(queue_status=str(getattr(q.status, "value", q.status) or "UNKNOWN"),
                             queue_paused=bool(q.is_paused),
                             last_polled=q.last_polled.timestamp() if q.last_polled else None)
                except ObjectNotFound:
                    d.update(queue_status="MISSING", queue_paused=False, last_polled=None)
                entry["deployments"].append(d)
            out.append(entry)
    return out
