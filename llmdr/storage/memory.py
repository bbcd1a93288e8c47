"""An in-process BlobStore: fast, exact, for unit tests and dry runs.

``MemoryStore(versioned=True)`` keeps every version and delete marker of a key as a versioned S3 bucket does (a
plain ``delete`` only adds a marker), so repository code that reads versions can be tested without a server.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from llmdr.errors import Conflict, IntegrityError, ObjectNotFound, StorageError
from llmdr.storage.base import BlobInfo, BytesReader, Lock, LockPolicy, VersionInfo, check_key, unprotected


@dataclass
class _Version:
    version_id: str
    data: bytes | None  # None: a delete marker
    modified: float


class MemoryStore:
    """``clock_skew`` (seconds, settable) models a store whose clock differs from this machine's: ``server_time``
    and every ``modified`` time come from ``time.time() + clock_skew``. ``retain`` is accepted and ignored (a memory
    store has no Object Lock)."""

    def __init__(self, name: str = "memory", *, versioned: bool = False) -> None:
        self.location = f"memory://{name}"
        self.versioned = versioned
        self.clock_skew: float = 0.0
        self._blobs: dict[str, bytes] = {}  # what a plain read sees
        self._times: dict[str, float] = {}
        self._history: dict[str, list[_Version]] = {}  # versioned only: every version, oldest first
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
            now = self.server_time()
            self._blobs[key] = value
            self._times[key] = now
            if self.versioned:
                self._history.setdefault(key, []).append(_Version(uuid.uuid4().hex, value, now))

    def get(self, key: str, *, start: int = 0, length: int | None = None, version_id: str | None = None) -> bytes:
        with self._lock:
            if version_id is not None:
                value = self._version(key, version_id).data
                if value is None:
                    raise ObjectNotFound(f"{self.location}/{key} version {version_id} is a delete marker")
            else:
                value = self._blobs.get(key)
                if value is None:
                    raise ObjectNotFound(f"{self.location}/{key} does not exist")
        end = len(value) if length is None else start + length
        return value[start:end]

    def open_range(self, key: str, start: int, length: int, *, version_id: str | None = None) -> BytesReader:
        return BytesReader(self.get(key, start=start, length=length, version_id=version_id))

    def head(self, key: str, *, version_id: str | None = None) -> BlobInfo:
        with self._lock:
            if version_id is not None:
                v = self._version(key, version_id)
                if v.data is None:
                    raise ObjectNotFound(f"{self.location}/{key} version {version_id} is a delete marker")
                return BlobInfo(key, len(v.data), v.modified)
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
            if self.versioned:  # as S3: a marker on top, the bytes stay below it
                self._history.setdefault(key, []).append(_Version(uuid.uuid4().hex, None, self.server_time()))

    # versions -----------------------------------------------------------------------------------------------------
    def _not_versioned(self) -> StorageError:
        return StorageError(f"{self.location} is not versioned: it keeps no older versions or delete markers "
                            "(make it with MemoryStore(versioned=True))")

    def _version(self, key: str, version_id: str) -> _Version:
        """The version (caller holds the lock)."""
        if not self.versioned:
            raise self._not_versioned()
        for v in self._history.get(key, ()):
            if v.version_id == version_id:
                return v
        raise ObjectNotFound(f"{self.location}/{key} has no version {version_id}")

    def list_versions(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[VersionInfo]:
        if not self.versioned:
            raise self._not_versioned()
        with self._lock:
            out = [VersionInfo(k, v.version_id, len(v.data or b""), v.modified, v.data is None, i == len(vs) - 1)
                   for k, vs in sorted(self._history.items())
                   if k.startswith(prefix) and (start_after is None or k > start_after)
                   for i, v in reversed(list(enumerate(vs)))]
        yield from out

    def delete_version(self, key: str, version_id: str) -> None:
        with self._lock:
            v = self._version(key, version_id)
            versions = self._history[key]
            versions.remove(v)
            top = versions[-1] if versions else None
            if top is None or top.data is None:
                self._blobs.pop(key, None)
                self._times.pop(key, None)
            else:
                self._blobs[key], self._times[key] = top.data, top.modified
            if not versions:
                del self._history[key]

    def blob_cipher(self) -> None:
        return None  # an adapter stores bytes as given; EncryptingStore provides the cipher

    # Object Lock: a memory store has none --------------------------------------------------------------------------
    def lock_policy(self) -> LockPolicy | None:
        return None

    def retention(self, key: str, *, version_id: str | None = None) -> Lock | None:
        self.head(key, version_id=version_id)  # ObjectNotFound for a missing key, as S3 answers
        return None

    def extend_lock(self, key: str, until: float) -> bool:
        raise StorageError(f"{self.location} has no object_lock configured; nothing to extend")

    def bucket_protection(self) -> dict[str, Any]:
        return unprotected(self) | ({"versioning": "Enabled"} if self.versioned else {})

    def usage(self) -> dict[str, int]:
        with self._lock:
            out = {"current_bytes": sum(map(len, self._blobs.values())), "current_objects": len(self._blobs),
                   "noncurrent_bytes": 0, "noncurrent_objects": 0, "delete_markers": 0}
            for versions in self._history.values():
                for i, v in enumerate(versions):
                    if v.data is None:
                        out["delete_markers"] += 1
                    elif i < len(versions) - 1:
                        out["noncurrent_bytes"] += len(v.data)
                        out["noncurrent_objects"] += 1
            return out

    # test helpers -------------------------------------------------------------------------------------------------
    def corrupt(self, key: str, data: bytes) -> None:
        """Overwrite a blob without any check, as bit rot or a bad disk would."""
        with self._lock:
            self._blobs[key] = data
            if self._history.get(key) and self._history[key][-1].data is not None:
                self._history[key][-1].data = data

    def age(self, key: str, seconds: float) -> None:
        """Pretend a blob was written ``seconds`` earlier (for grace-period tests)."""
        with self._lock:
            self._times[key] -= seconds
            if self._history.get(key):
                self._history[key][-1].modified -= seconds
