"""An in-process BlobStore: fast, exact, for unit tests and dry runs."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from llmdr.errors import Conflict, IntegrityError, ObjectNotFound, StorageError
from llmdr.storage.base import BlobInfo, Lock, LockPolicy, check_key, unprotected


class MemoryStore:
    """``clock_skew`` (seconds, settable) models a store whose clock differs from this machine's: ``server_time``
    and every ``modified`` time come from ``time.time() + clock_skew``. ``retain`` is accepted and ignored (a memory
    store has no Object Lock)."""

    def __init__(self, name: str = "memory") -> None:
        self.location = f"memory://{name}"
        self.clock_skew: float = 0.0
        self._blobs: dict[str, bytes] = {}
        self._times: dict[str, float] = {}
        self._lock = threading.Lock()

    def server_time(self) -> float:
        return time.time() + self.clock_skew

    def put(self, key: str, data: bytes | bytearray | memoryview, *, sha256: bytes | None = None,
            if_absent: bool = False, retain: bool = True) -> None:
        check_key(key)
        value = bytes(data)
        if sha256 is not None and hashlib.sha256(value).digest() != sha256:
            raise IntegrityError(f"{self.location}/{key}: the bytes sent do not match the SHA-256 given; nothing was written")
        with self._lock:
            if if_absent and key in self._blobs:
                raise Conflict(f"create {key!r} in {self.location}: the key exists already (another writer took it); "
                               "nothing was written. Re-read what is there and pick another key")
            self._blobs[key] = value
            self._times[key] = self.server_time()

    def get(self, key: str, *, start: int = 0, length: int | None = None) -> bytes:
        with self._lock:
            try:
                value = self._blobs[key]
            except KeyError:
                raise ObjectNotFound(f"{self.location}/{key} does not exist") from None
        end = len(value) if length is None else start + length
        return value[start:end]

    def head(self, key: str) -> BlobInfo:
        with self._lock:
            try:
                return BlobInfo(key, len(self._blobs[key]), self._times.get(key))
            except KeyError:
                raise ObjectNotFound(f"{self.location}/{key} does not exist") from None

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[BlobInfo]:
        with self._lock:
            keys = sorted(k for k in self._blobs if k.startswith(prefix) and (start_after is None or k > start_after))
            infos = [BlobInfo(k, len(self._blobs[k]), self._times.get(k)) for k in keys]
        yield from infos

    def delete(self, key: str) -> None:
        with self._lock:
            self._blobs.pop(key, None)
            self._times.pop(key, None)

    # Object Lock: a memory store has none --------------------------------------------------------------------------
    def lock_policy(self) -> LockPolicy | None:
        return None

    def retention(self, key: str) -> Lock | None:
        self.head(key)  # ObjectNotFound for a missing key, as S3 answers
        return None

    def extend_lock(self, key: str, until: float) -> bool:
        raise StorageError(f"{self.location} has no object_lock configured; nothing to extend")

    def bucket_protection(self) -> dict[str, Any]:
        return unprotected(self)

    def usage(self) -> dict[str, int]:
        with self._lock:
            return {"current_bytes": sum(map(len, self._blobs.values())), "current_objects": len(self._blobs),
                    "noncurrent_bytes": 0, "noncurrent_objects": 0, "delete_markers": 0}

    # test helpers -------------------------------------------------------------------------------------------------
    def corrupt(self, key: str, data: bytes) -> None:
        """Overwrite a blob without any check, as bit rot or a bad disk would."""
        with self._lock:
            self._blobs[key] = data

    def age(self, key: str, seconds: float) -> None:
        """Pretend a blob was written ``seconds`` earlier (for grace-period tests)."""
        with self._lock:
            self._times[key] -= seconds
