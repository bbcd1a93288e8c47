"""Retry wrapper: the one request-level retry layer, driven by ``errors.is_retriable``; and its retry counts.

Counting. Each ``RetryingStore`` counts, per operation kind (``put``, ``get``, ``head``, ``list``, ``delete``,
``server_time``, and the Object Lock calls ``retention`` and ``extend``), the requests it made to the store below,
the retries, and the requests it gave up on. ``store.retries`` is the per-kind retry count, ``store.stats`` the whole record.

A run's counts. A Prefect task does not hold the stores it uses: ``llmdr.ops`` opens them inside the one core call,
and the core fans requests out to thread pools. So a task wraps its call in ``count_retries()``::

    with count_retries() as retries:
        res = ops.replicate(cfg, sid, to="secondary")
    return res.to_json() | {"retries": retries.to_json()}

Every ``RetryingStore`` *constructed* inside the block (in that thread or context) reports to the block's
``RetryStats`` for its whole life, whichever worker thread makes the requests. Binding at construction, rather than
a process-wide counter read before and after the task, keeps two tasks running at once in the same process (the
parallel copies of protect-bundle) from counting each other's retries; and it needs nothing from the core modules.
Stores opened outside any block count only in their own ``stats``. A task attempt that fails takes its counts with
it: the result (and so the artifact) shows the attempt that succeeded.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from llmdr.errors import Conflict, is_retriable
from llmdr.storage.base import BlobCipher, BlobInfo, BlobStore, Lock, LockPolicy, RangeReader, VersionInfo

log = logging.getLogger(__name__)
T = TypeVar("T")


class RetryStats:
    """Thread-safe counts of requests, retries and give-ups, per region and operation kind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], int] = {}  # (what, region, op) -> n; what: requests|retries|gave_up

    def add(self, what: str, region: str, op: str) -> None:
        with self._lock:
            k = (what, region, op)
            self._counts[k] = self._counts.get(k, 0) + 1

    def _sum(self, what: str, by: int) -> dict[str, int]:
        out: dict[str, int] = {}
        with self._lock:
            for k, n in self._counts.items():
                if k[0] == what:
                    out[k[by]] = out.get(k[by], 0) + n
        return dict(sorted(out.items()))

    @property
    def retries(self) -> dict[str, int]:
        """Retries per operation kind, e.g. ``{"get": 7, "put": 3}`` (kinds never retried are absent)."""
        return self._sum("retries", 2)

    @property
    def total(self) -> int:
        return sum(self.retries.values())

    def to_json(self) -> dict:
        """``total`` retries, ``ops`` and ``regions`` (retries by kind and by region), ``requests`` (every attempt
        made to the store below, by kind) and ``gave_up`` (requests that still failed after the last attempt)."""
        return {"total": self.total, "ops": self.retries, "regions": self._sum("retries", 1),
                "requests": self._sum("requests", 2), "gave_up": self._sum("gave_up", 2)}


_collectors: contextvars.ContextVar[tuple[RetryStats, ...]] = contextvars.ContextVar("llmdr_retry_collectors",
                                                                                      default=())


@contextlib.contextmanager
def count_retries() -> Iterator[RetryStats]:
    """Collect the retries of every ``RetryingStore`` constructed inside the block (see the module docstring)."""
    stats = RetryStats()
    token = _collectors.set(_collectors.get() + (stats,))
    try:
        yield stats
    finally:
        _collectors.reset(token)


class RetryingStore:
    """Retries operations that failed with a retriable error, with jittered exponential backoff.

    Every BlobStore operation is idempotent (puts are whole-object and atomic), so repeating one is safe.
    ``list`` restarts after the last key it already yielded (``start_after``), so a retried listing never repeats or
    skips a key; a streamed range (``open_range``) whose connection fails part-way is opened again at the byte it
    had reached. A create-only put is the one call whose retry can see its own earlier write: see ``put``.
    ``name`` labels the counts (the region's name; default: the inner store's location).
    """

    def __init__(
        self,
        inner: BlobStore,
        *,
        attempts: int = 4,
        base_delay: float = 0.2,
        max_delay: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        name: str = "",
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        self.inner = inner
        self.location = inner.location
        self.name = name or inner.location
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep
        self.stats = RetryStats()
        self._sinks = (self.stats, *_collectors.get())

    @property
    def retries(self) -> dict[str, int]:
        """Retries so far per operation kind, e.g. ``{"get": 7, "put": 3}``."""
        return self.stats.retries

    @property
    def retries_total(self) -> int:
        return self.stats.total

    def _count(self, what: str, op: str) -> None:
        for sink in self._sinks:
            sink.add(what, self.name, op)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        op = what.split(" ", 1)[0]
        for attempt in range(1, self.attempts + 1):
            self._count("requests", op)
            try:
                return fn()
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                if attempt == self.attempts:
                    self._count("gave_up", op)
                    raise
                self._count("retries", op)
                delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
                log.info("%s on %s failed (%s); retry %d/%d in %.2fs", what, self.location, exc, attempt,
                         self.attempts - 1, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")

    def put(self, key: str, data: bytes | bytearray | memoryview, *, sha256: bytes | None = None,
            if_absent: bool = False, retain: bool = True) -> None:
        """A create-only put (``if_absent``) whose earlier attempt failed may have landed all the same (the answer
        was lost, not the write): its retry then meets ``Conflict``. The key is read back and, when it holds exactly
        the bytes sent, the put succeeded; any other value is a real conflict and is raised."""
        if not if_absent:
            self._call(f"put {key}", lambda: self.inner.put(key, data, sha256=sha256, retain=retain))
            return
        attempted = False

        def create() -> None:
            nonlocal attempted
            again, attempted = attempted, True
            try:
                self.inner.put(key, data, sha256=sha256, if_absent=True, retain=retain)
            except Conflict:
                if not again or self._call(f"get {key}", lambda: self.inner.get(key)) != bytes(data):
                    raise
                log.info("create %s on %s: an earlier attempt had landed; the stored bytes are ours", key,
                         self.location)

        self._call(f"put {key}", create)

    def get(self, key: str, *, start: int = 0, length: int | None = None, version_id: str | None = None) -> bytes:
        return self._call(f"get {key}", lambda: self.inner.get(key, start=start, length=length, version_id=version_id))

    def open_range(self, key: str, start: int, length: int, *, version_id: str | None = None) -> RangeReader:
        return _ResumingReader(self, key, start, length, version_id)

    def head(self, key: str, *, version_id: str | None = None) -> BlobInfo:
        return self._call(f"head {key}", lambda: self.inner.head(key, version_id=version_id))

    def delete_version(self, key: str, version_id: str) -> None:
        self._call(f"delete_version {key}", lambda: self.inner.delete_version(key, version_id))

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", lambda: self.inner.delete(key))

    def blob_cipher(self) -> BlobCipher | None:
        return self.inner.blob_cipher()

    def lock_policy(self) -> LockPolicy | None:
        return self.inner.lock_policy()

    def retention(self, key: str, *, version_id: str | None = None) -> Lock | None:
        return self._call(f"retention {key}", lambda: self.inner.retention(key, version_id=version_id))

    def extend_lock(self, key: str, until: float) -> bool:
        return self._call(f"extend lock {key}", lambda: self.inner.extend_lock(key, until))

    def bucket_protection(self) -> dict[str, Any]:
        return self._call("protection of the bucket", self.inner.bucket_protection)

    def usage(self) -> dict[str, int]:
        return self._call("usage of the bucket", self.inner.usage)

    def server_time(self) -> float:
        return self._call("server_time of the store", self.inner.server_time)

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[BlobInfo]:
        last: str | None = start_after
        failures = 0
        while True:
            self._count("requests", "list")
            try:
                for info in self.inner.list(prefix, start_after=last):
                    if last is not None and info.key <= last:
                        continue
                    yield info
                    last = info.key
                    failures = 0
                return
            except Exception as exc:
                failures += 1
                self._resume_or_raise("list", prefix, exc, failures, f"after {last!r}")

    def list_versions(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[VersionInfo]:
        """Resumed as ``list`` is: a listing cut short starts again and skips the versions it already yielded."""
        seen: set[tuple[str, str]] = set()
        failures = 0
        while True:
            self._count("requests", "list_versions")
            try:
                for v in self.inner.list_versions(prefix, start_after=start_after):
                    if (v.key, v.version_id) in seen:
                        continue
                    yield v
                    seen.add((v.key, v.version_id))
                    failures = 0
                return
            except Exception as exc:
                failures += 1
                self._resume_or_raise("list_versions", prefix, exc, failures, f"({len(seen)} versions seen)")

    def _resume_or_raise(self, op: str, prefix: str, exc: Exception, failures: int, where: str) -> None:
        """After the ``failures``-th failure in a row of a listing or a streamed read: re-raise a final error, else wait
        to resume."""
        if not is_retriable(exc):
            raise exc
        if failures >= self.attempts:
            self._count("gave_up", op)
            raise exc
        self._count("retries", op)
        delay = min(self.max_delay, self.base_delay * 2 ** (failures - 1))
        log.info("%s %s on %s failed (%s); resuming %s in %.2fs", op, prefix, self.location, exc, where, delay)
        self._sleep(delay)


class _ResumingReader:
    """A range of ``key`` streamed from the store below; opening is retried like any call, and a read that fails
    part-way (a dropped connection) opens the rest of the range again, from the byte reached, after a backoff."""

    def __init__(self, store: RetryingStore, key: str, start: int, length: int, version_id: str | None) -> None:
        self._store = store
        self._key = key
        self._version_id = version_id
        self._pos, self._left = start, length
        self._failures = 0
        self._reader: RangeReader | None = self._open()

    def _open(self) -> RangeReader:
        inner, key, pos, left, vid = self._store.inner, self._key, self._pos, self._left, self._version_id
        return self._store._call(f"get {key}", lambda: inner.open_range(key, pos, left, version_id=vid))

    def readinto(self, buf: memoryview | bytearray) -> int:
        while True:
            if self._reader is None:
                self._reader = self._open()
            try:
                n = self._reader.readinto(buf)
            except Exception as exc:
                self.close()
                self._failures += 1
                self._store._resume_or_raise("get", self._key, exc, self._failures, f"at byte {self._pos}")
                continue
            self._pos += n
            self._left -= n
            self._failures = 0
            return n

    def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    def __enter__(self) -> _ResumingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
