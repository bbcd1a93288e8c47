"""Read-only wrapper: lets verification and restore run with no way to change a region.

Every write (``put``, ``delete``, ``delete_version``, ``extend_lock``) is refused with ``ReadOnlyStoreError``; reads, including the
Object Lock state (``lock_policy``, ``retention``, ``bucket_protection``, ``usage``) and ``server_time``, pass through."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NoReturn

from llmdr.errors import ReadOnlyStoreError
from llmdr.storage.base import BlobCipher, BlobInfo, BlobStore, Lock, LockPolicy, RangeReader, VersionInfo


class ReadOnlyStore:
    def __init__(self, inner: BlobStore) -> None:
        self.inner = inner
        self.location = inner.location

    def _refuse(self, op: str, key: str) -> NoReturn:
        raise ReadOnlyStoreError(f"{op} {key!r} refused: {self.location} is opened read-only")

    def put(self, key: str, data: bytes | bytearray | memoryview, *, sha256: bytes | None = None,
            if_absent: bool = False, retain: bool = True) -> None:
        self._refuse("put", key)

    def delete(self, key: str) -> None:
        self._refuse("delete", key)

    def delete_version(self, key: str, version_id: str) -> None:
        self._refuse(f"delete version {version_id} of", key)

    def get(self, key: str, *, start: int = 0, length: int | None = None, version_id: str | None = None) -> bytes:
        return self.inner.get(key, start=start, length=length, version_id=version_id)

    def open_range(self, key: str, start: int, length: int, *, version_id: str | None = None) -> RangeReader:
        return self.inner.open_range(key, start, length, version_id=version_id)

    def head(self, key: str, *, version_id: str | None = None) -> BlobInfo:
        return self.inner.head(key, version_id=version_id)

    def list_versions(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[VersionInfo]:
        return self.inner.list_versions(prefix, start_after=start_after)

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[BlobInfo]:
        return self.inner.list(prefix, start_after=start_after)

    def server_time(self) -> float:
        return self.inner.server_time()

    def blob_cipher(self) -> BlobCipher | None:
        return self.inner.blob_cipher()

    def lock_policy(self) -> LockPolicy | None:
        return self.inner.lock_policy()

    def retention(self, key: str, *, version_id: str | None = None) -> Lock | None:
        return self.inner.retention(key, version_id=version_id)

    def extend_lock(self, key: str, until: float) -> bool:
        self._refuse("extend lock of", key)

    def bucket_protection(self) -> dict[str, Any]:
        return self.inner.bucket_protection()

    def usage(self) -> dict[str, int]:
        return self.inner.usage()
