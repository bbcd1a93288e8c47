"""Retry wrapper: the one request-level retry layer, driven by ``errors.is_retriable``."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from ..errors import is_retriable
from .base import BlobInfo, BlobStore

log = logging.getLogger(__name__)
T = TypeVar("T")


class RetryingStore:
    """Retries operations that failed with a retriable error, with jittered exponential backoff.

    Every BlobStore operation is idempotent (puts are whole-object and atomic), so repeating one is safe.
    ``list`` restarts after the last key it already yielded, so a retried listing never repeats or skips a key.
    """

    def __init__(
        self,
        inner: BlobStore,
        *,
        attempts: int = 4,
        base_delay: float = 0.2,
        max_delay: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        self.inner = inner
        self.location = inner.location
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except Exception as exc:
                if attempt == self.attempts or not is_retriable(exc):
                    raise
                delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
                log.info("%s on %s failed (%s); retry %d/%d in %.2fs", what, self.location, exc, attempt,
                            self.attempts - 1, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")

    def put(self, key: str, data: bytes | bytearray | memoryview, *, sha256: bytes | None = None) -> None:
        self._call(f"put {key}", lambda: self.inner.put(key, data, sha256=sha256))

    def get(self, key: str, *, start: int = 0, length: int | None = None) -> bytes:
        return self._call(f"get {key}", lambda: self.inner.get(key, start=start, length=length))

    def head(self, key: str) -> BlobInfo:
        return self._call(f"head {key}", lambda: self.inner.head(key))

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", lambda: self.inner.delete(key))

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        last: str | None = None
        failures = 0
        while True:
            try:
                for info in self.inner.list(prefix):
                    if last is not None and info.key <= last:
                        continue
                    yield info
                    last = info.key
                    failures = 0
                return
            except Exception as exc:
                failures += 1
                if failures >= self.attempts or not is_retriable(exc):
                    raise
                delay = min(self.max_delay, self.base_delay * 2 ** (failures - 1))
                log.info("list %s on %s failed (%s); resuming after %r in %.2fs", prefix, self.location, exc,
                            last, delay)
                self._sleep(delay)
