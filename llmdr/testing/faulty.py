"""Fault-injecting wrapper for tests: scripted per method ("fail put twice, then succeed") or at random.

Modelled on Kopia's blobtesting.FaultyStorage. Production code never imports this module (it lives in
``llmdr.testing``); tests put it under a region's retry layer with ``tests/support/faults.py``. What can be scripted
(on ``put``, ``get``, ``head``, ``list``, ``delete``, ``delete_version``, ``server_time``, and the Object Lock calls
``retention`` and ``extend_lock``; reads of a version go through ``get``/``head``),
each for ``times`` matching calls (``None``: every one, a permanent fault) after letting ``after`` through,
optionally only for keys under ``key_prefix``:

- ``fail``: raise an error *before* the call reaches the store below (a refused connection, a 503, bad
  credentials: whatever ``exc()`` builds). Transient or permanent is the error's type: ``TransientStorageError``
  is retried by ``RetryingStore``, ``AccessDenied`` or ``IntegrityError`` are not.
- ``delay``: sleep before the call, then let it through (a slow server; with a client timeout, a stall).
- ``drop``: let the call reach the store below, *then* raise ``TransientStorageError`` — the connection dropped
  before the answer was complete. For ``get`` that is a body cut in the middle: the S3 adapter turns botocore's
  short-body errors into exactly this, and never returns truncated bytes. For ``put`` and ``delete`` the change
  may have been applied although the caller saw an error (so a retry must be safe). For ``list`` the caller gets
  the first half of the keys, then the error.

``assert_all_fired`` checks that every scripted fault happened (a permanent one at least once), so a retry or crash
test cannot pass by never reaching the code it meant to exercise.

Random mode: ``FaultyStore(inner, rate=0.1, seed=1)`` makes each call fail transiently with probability ``rate``,
half of them as ``fail`` and half as ``drop``. The draws come from one seeded generator, so a sequential run is
reproducible call by call; with several threads the sequence of draws is the same but which request gets which
draw depends on scheduling. ``calls`` and ``injected`` count calls and injected faults per method.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from llmdr.errors import TransientStorageError
from llmdr.storage.base import BlobCipher, BlobInfo, BlobStore, BytesReader, Lock, LockPolicy, VersionInfo

METHODS = ("put", "get", "head", "list", "delete")  # what random mode draws faults for
SCRIPTABLE = (*METHODS, "retention", "extend_lock", "server_time", "delete_version")


@dataclass
class Fault:
    method: str
    exc: Callable[[], BaseException] | None  # None: no error of its own (a pure delay)
    times: int | None = 1  # None: every matching call (a permanent fault)
    after: int = 0
    key_prefix: str = ""
    delay: float = 0.0  # seconds slept before the call
    drop: bool = False  # the call reaches the inner store, then ``exc()`` is raised
    fired: int = field(default=0)
    seen: int = field(default=0)

    def _exhausted(self) -> bool:
        return self.times is not None and self.fired >= self.times


class FaultyStore:
    def __init__(
        self,
        inner: BlobStore,
        *,
        rate: float = 0.0,
        seed: int | str | None = None,
        methods: tuple[str, ...] = METHODS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"rate must be in [0, 1), not {rate!r}")
        self.inner = inner
        self.location = inner.location
        self.rate = rate
        self.methods = methods
        self._rng = random.Random(seed)
        self._sleep = sleep
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self.calls: dict[str, int] = {}
        self.injected: dict[str, int] = {}

    # scripting --------------------------------------------------------------------------------------------------------
    def _add(self, fault: Fault) -> Fault:
        if fault.method not in SCRIPTABLE:
            raise ValueError(f"unknown method {fault.method!r}; one of {', '.join(SCRIPTABLE)}")
        if fault.times is not None and fault.times < 1:
            raise ValueError("times must be >= 1, or None for a permanent fault")
        with self._lock:
            self._faults.append(fault)
        return fault

    def fail(self, method: str, exc: Callable[[], BaseException], *, times: int | None = 1, after: int = 0,
             key_prefix: str = "") -> Fault:
        """Make ``method`` raise ``exc()`` ``times`` times (``None``: always), after letting ``after`` matching calls
        through. The failing calls never reach the inner store."""
        return self._add(Fault(method, exc, times, after, key_prefix))

    def delay(self, method: str, seconds: float, *, times: int | None = 1, after: int = 0,
              key_prefix: str = "") -> Fault:
        """Sleep ``seconds`` before ``times`` matching calls of ``method``, then let them through."""
        return self._add(Fault(method, None, times, after, key_prefix, delay=seconds))

    def drop(self, method: str, *, times: int | None = 1, after: int = 0, key_prefix: str = "",
             exc: Callable[[], BaseException] | None = None) -> Fault:
        """Let ``times`` matching calls of ``method`` reach the inner store, then raise ``exc()`` (default: a
        ``TransientStorageError`` saying the connection dropped mid-answer)."""
        def dropped() -> BaseException:
            return TransientStorageError(f"{method} in {self.location}: connection dropped in the middle of the "
                                         "answer (injected)")

        return self._add(Fault(method, exc or dropped, times, after, key_prefix, drop=True))

    def assert_all_fired(self) -> None:
        with self._lock:
            unfired = [f for f in self._faults if f.fired < (f.times or 1)]
        assert not unfired, f"scripted faults that never fired: {unfired}"

    @property
    def injected_total(self) -> int:
        with self._lock:
            return sum(self.injected.values())

    # the decision, once per call ----------------------------------------------------------------------------------------
    def _decide(self, method: str, key: str) -> Fault | None:
        """Count the call and return the fault that acts on it, if any (scripted first, then a random draw)."""
        with self._lock:
            self.calls[method] = self.calls.get(method, 0) + 1
            for fault in self._faults:
                if fault.method != method or not key.startswith(fault.key_prefix) or fault._exhausted():
                    continue
                fault.seen += 1
                if fault.seen > fault.after:
                    fault.fired += 1
                    if fault.exc is not None:
                        self.injected[method] = self.injected.get(method, 0) + 1
                    return fault
            if self.rate and method in self.methods and self._rng.random() < self.rate:
                n = sum(self.injected.values()) + 1
                self.injected[method] = self.injected.get(method, 0) + 1
                drop = self._rng.random() < 0.5
                how = "connection dropped in the middle of the answer" if drop else "request failed"
                msg = f"{method} {key!r} in {self.location}: {how} (injected fault #{n}, rate {self.rate:g})"
                return Fault(method, lambda: TransientStorageError(msg), drop=drop)
        return None

    def _run(self, method: str, key: str, call: Callable[[], object]):
        fault = self._decide(method, key)
        if fault is None:
            return call()
        if fault.delay:
            self._sleep(fault.delay)
        if fault.exc is None:
            return call()
        if fault.drop:
            call()
        raise fault.exc()

    # BlobStore ----------------------------------------------------------------------------------------------------------
    def put(self, key: str, data: bytes | bytearray | memoryview, *, sha256: bytes | None = None,
            if_absent: bool = False, retain: bool = True) -> None:
        self._run("put", key, lambda: self.inner.put(key, data, sha256=sha256, if_absent=if_absent, retain=retain))

    def get(self, key: str, *, start: int = 0, length: int | None = None, version_id: str | None = None) -> bytes:
        return self._run("get", key, lambda: self.inner.get(key, start=start, length=length, version_id=version_id))

    def open_range(self, key: str, start: int, length: int, *, version_id: str | None = None) -> BytesReader:
        """Through ``get``, so a streamed read meets the same faults (rate and planned ones) as a plain one."""
        return BytesReader(self.get(key, start=start, length=length, version_id=version_id))

    def head(self, key: str, *, version_id: str | None = None) -> BlobInfo:
        return self._run("head", key, lambda: self.inner.head(key, version_id=version_id))

    def list_versions(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[VersionInfo]:
        return self.inner.list_versions(prefix, start_after=start_after)

    def delete_version(self, key: str, version_id: str) -> None:
        self._run("delete_version", key, lambda: self.inner.delete_version(key, version_id))

    def delete(self, key: str) -> None:
        self._run("delete", key, lambda: self.inner.delete(key))

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[BlobInfo]:
        fault = self._decide("list", prefix)
        if fault is None:
            return self.inner.list(prefix, start_after=start_after)
        if fault.delay:
            self._sleep(fault.delay)
        if fault.exc is None:
            return self.inner.list(prefix, start_after=start_after)
        if not fault.drop:
            raise fault.exc()
        infos = list(self.inner.list(prefix, start_after=start_after))
        return _cut(infos[: len(infos) // 2], fault.exc)

    def server_time(self) -> float:
        return self._run("server_time", "", self.inner.server_time)

    def blob_cipher(self) -> BlobCipher | None:
        return self.inner.blob_cipher()

    def lock_policy(self) -> LockPolicy | None:
        return self.inner.lock_policy()

    def retention(self, key: str, *, version_id: str | None = None) -> Lock | None:
        return self._run("retention", key, lambda: self.inner.retention(key, version_id=version_id))

    def extend_lock(self, key: str, until: float) -> bool:
        return self._run("extend_lock", key, lambda: self.inner.extend_lock(key, until))

    def bucket_protection(self) -> dict[str, Any]:
        return self.inner.bucket_protection()

    def usage(self) -> dict[str, int]:
        return self.inner.usage()


def _cut(infos: list[BlobInfo], exc: Callable[[], BaseException]) -> Iterator[BlobInfo]:
    yield from infos
    raise exc()
