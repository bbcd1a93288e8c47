"""Fault-injecting wrapper for tests: scripted per method, e.g. "fail put twice, then succeed".

Modelled on Kopia's blobtesting.FaultyStorage. ``assert_all_fired`` checks that every scripted fault happened, so
a retry or crash test cannot pass by never reaching the code it meant to exercise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .base import BlobInfo, BlobStore


@dataclass
class Fault:
    method: str
    exc: Callable[[], BaseException]
    times: int = 1
    after: int = 0
    key_prefix: str = ""
    fired: int = field(default=0)
    seen: int = field(default=0)


class FaultyStore:
    def __init__(self, inner: BlobStore) -> None:
        self.inner = inner
        self.location = inner.location
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self.calls: dict[str, int] = {}

    def fail(
        self,
        method: str,
        exc: Callable[[], BaseException],
        *,
        times: int = 1,
        after: int = 0,
        key_prefix: str = "",
    ) -> Fault:
        """Make ``method`` raise ``exc()`` ``times`` times, after letting ``after`` matching calls through."""
        fault = Fault(method, exc, times, after, key_prefix)
        self._faults.append(fault)
        return fault

    def assert_all_fired(self) -> None:
        unfired = [f for f in self._faults if f.fired < f.times]
        assert not unfired, f"scripted faults that never fired: {unfired}"

    def _maybe_fail(self, method: str, key: str) -> None:
        with self._lock:
            self.calls[method] = self.calls.get(method, 0) + 1
            for fault in self._faults:
                if fault.method != method or not key.startswith(fault.key_prefix) or fault.fired >= fault.times:
                    continue
                fault.seen += 1
                if fault.seen > fault.after:
                    fault.fired += 1
                    raise fault.exc()

    def put(self, key: str, data: bytes | bytearray | memoryview, *, sha256: bytes | None = None) -> None:
        self._maybe_fail("put", key)
        self.inner.put(key, data, sha256=sha256)

    def get(self, key: str, *, start: int = 0, length: int | None = None) -> bytes:
        self._maybe_fail("get", key)
        return self.inner.get(key, start=start, length=length)

    def head(self, key: str) -> BlobInfo:
        self._maybe_fail("head", key)
        return self.inner.head(key)

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        self._maybe_fail("list", prefix)
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self._maybe_fail("delete", key)
        self.inner.delete(key)
