"""Version-aware reads of a versioned region (design §6): two read-side wrappers around a ``BlobStore``.

- ``AsOfStore`` shows the region as it was at a moment (``--as-of``): for each key the newest version stored at or
  before it that is not a delete marker. It is read-only: a view of the past cannot be written.
- ``HiddenVersionStore`` reads through a delete marker that hides a version Object Lock still protects: a plain
  DELETE (no version id) by an old client or another tool only hides locked bytes, so restore and the standby read
  the locked version, warn, and record the key in ``hidden`` instead of failing. Keys deleted without retention
  stay deleted.

Both sit right above the retry layer and below encryption and signing (``factory.open_region``), because a version
read returns the stored bytes, which those layers then open and prove as for any plain read.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from typing import Any, NoReturn, TypeVar

from llmdr.errors import ObjectNotFound, ReadOnlyStoreError, StorageError
from llmdr.storage.base import BlobInfo, BlobStore, Forwarding, Lock, RangeReader, VersionInfo

log = logging.getLogger(__name__)
T = TypeVar("T")


def utc_text(ts: float) -> str:
    """``ts`` (seconds since the epoch) as ISO 8601 UTC to the second; ``forever`` for a legal hold."""
    if ts == float("inf"):
        return "forever (legal hold)"
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def versions_of(store: BlobStore, key: str) -> list[VersionInfo]:
    """Every version of exactly ``key`` (not of longer keys sharing its prefix), newest first."""
    return [v for v in store.list_versions(key) if v.key == key]


def by_key(versions: Iterable[VersionInfo]) -> dict[str, list[VersionInfo]]:
    """Versions grouped by key (keys in listing order), each key's newest first as ``list_versions`` yields them."""
    out: dict[str, list[VersionInfo]] = {}
    for v in versions:
        out.setdefault(v.key, []).append(v)
    return out


class AsOfStore(Forwarding):
    """The region ``inner`` as it was at ``as_of`` (seconds since the epoch, store time): each key is its newest
    version with ``modified <= as_of`` unless that is a delete marker; listings come from ``list_versions``. Every
    write is refused with ``ReadOnlyStoreError``. A store that keeps no versions raises ``StorageError`` on reads."""

    def __init__(self, inner: BlobStore, as_of: float) -> None:
        self.inner = inner
        self.as_of = as_of
        self.location = f"{inner.location} as of {utc_text(as_of)}"
        self._seen: dict[str, VersionInfo | None] = {}  # key -> its version at as_of (None: absent then)
        self._lock = threading.Lock()
        self._checked = False

    def _versions(self, prefix: str, start_after: str | None = None) -> Iterator[VersionInfo]:
        """``inner.list_versions``, once the bucket is known to keep versions: without them the past is gone (an
        overwritten or deleted key leaves nothing) and a view of it would silently be wrong."""
        if not self._checked:
            state = self.inner.bucket_protection().get("versioning")
            if state not in ("Enabled", "Suspended"):
                raise StorageError(f"--as-of needs the region's bucket to keep versions, but versioning is {state} "
                                   f"on {self.inner.location}; enable bucket versioning (a region with object_lock "
                                   "has it), or read the region as it is now without --as-of")
            self._checked = True
        return self.inner.list_versions(prefix, start_after=start_after)

    def _refuse(self, op: str, key: str) -> NoReturn:
        raise ReadOnlyStoreError(f"{op} {key!r} refused: an --as-of view is read-only ({self.location}); run the "
                                 "command without --as-of to change the region")

    def _at(self, versions: list[VersionInfo]) -> VersionInfo | None:
        """The version a reader at ``as_of`` sees among one key's versions (newest first), None when absent."""
        for v in versions:
            if v.modified is not None and v.modified <= self.as_of:
                return None if v.is_delete_marker else v
        return None

    def _version(self, key: str) -> VersionInfo:
        with self._lock:
            known = key in self._seen
            v = self._seen.get(key)
        if not known:
            v = self._at([v for v in self._versions(key) if v.key == key])
            with self._lock:
                self._seen[key] = v
        if v is None:
            raise ObjectNotFound(f"{key!r} did not exist in {self.location}")
        return v

    def get(self, key: str, *, start: int = 0, length: int | None = None, version_id: str | None = None) -> bytes:
        vid = version_id or self._version(key).version_id
        return self.inner.get(key, start=start, length=length, version_id=vid)

    def open_range(self, key: str, start: int, length: int, *, version_id: str | None = None) -> RangeReader:
        return self.inner.open_range(key, start, length, version_id=version_id or self._version(key).version_id)

    def head(self, key: str, *, version_id: str | None = None) -> BlobInfo:
        return self.inner.head(key, version_id=version_id or self._version(key).version_id)

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[BlobInfo]:
        found = {k: self._at(vs) for k, vs in by_key(self._versions(prefix, start_after)).items()}
        with self._lock:
            self._seen.update(found)
        for k in sorted(found):
            v = found[k]
            if v is not None and (start_after is None or k > start_after):
                yield BlobInfo(k, v.size, v.modified)

    def list_versions(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[VersionInfo]:
        """The versions that existed at ``as_of``; ``is_latest`` marks each key's newest of those."""
        for vs in by_key(self._versions(prefix, start_after)).values():
            then = [v for v in vs if v.modified is not None and v.modified <= self.as_of]
            for i, v in enumerate(then):
                yield VersionInfo(v.key, v.version_id, v.size, v.modified, v.is_delete_marker, i == 0)

    def retention(self, key: str, *, version_id: str | None = None) -> Lock | None:
        return self.inner.retention(key, version_id=version_id or self._version(key).version_id)

    def put(self, key: str, data: bytes | bytearray | memoryview, *, sha256: bytes | None = None,
            if_absent: bool = False, retain: bool = True) -> None:
        self._refuse("put", key)

    def delete(self, key: str) -> None:
        self._refuse("delete", key)

    def delete_version(self, key: str, version_id: str) -> None:
        self._refuse(f"delete version {version_id} of", key)

    def extend_lock(self, key: str, until: float) -> bool:
        self._refuse("extend lock of", key)


class HiddenVersionStore(Forwarding):
    """``inner``, except that a key hidden by a delete marker whose newest version below it is still under Object
    Lock retention or legal hold reads as that version (``get``, ``head``, ``list``), with a warning; each such key
    is recorded in ``hidden`` (key -> ``{"version_id", "mode", "until"}``, ``until`` seconds since the epoch). Pass
    ``hidden`` to collect them in a dict of your own. Writes go to ``inner`` unchanged. A store without versioning
    or Object Lock is passed through untouched."""

    def __init__(self, inner: BlobStore, hidden: dict[str, dict[str, Any]] | None = None) -> None:
        self.inner = inner
        self.location = inner.location
        self.hidden: dict[str, dict[str, Any]] = hidden if hidden is not None else {}
        self._active: bool | None = None
        self._lock = threading.Lock()

    def active(self) -> bool:
        """Whether hidden versions can exist: the bucket is versioned and has Object Lock (asked once)."""
        if self._active is None:
            try:
                prot = self.inner.bucket_protection()
                self._active = prot.get("versioning") == "Enabled" and bool(prot.get("object_lock"))
            except StorageError as exc:  # e.g. keys without s3:GetBucketVersioning: read as a plain store this time
                log.debug("%s: protection unknown (%s); hidden versions are not looked for", self.location, exc)
                return False
        return self._active

    def _protected(self, key: str, versions: list[VersionInfo]) -> VersionInfo | None:
        """The version a delete marker on top of ``versions`` (newest first) hides, when it is under retention."""
        if not versions or not versions[0].is_delete_marker or not versions[0].is_latest:
            return None
        below = next((v for v in versions[1:] if not v.is_delete_marker), None)
        if below is None:
            return None
        lock = self.inner.retention(key, version_id=below.version_id)
        if lock is None or not (lock.legal_hold or lock.until > self.inner.server_time()):
            return None
        self._record(key, below, lock)
        return below

    def _record(self, key: str, v: VersionInfo, lock: Lock) -> None:
        with self._lock:
            new = key not in self.hidden
            self.hidden[key] = {"version_id": v.version_id, "mode": lock.mode, "until": lock.until,
                                "legal_hold": lock.legal_hold}
        if new:
            log.warning("%s: %s is hidden by a delete marker; reading its version %s, under %s Object Lock until %s "
                        "(`llmdr undelete` removes the marker)", self.location, key, v.version_id, lock.mode,
                        utc_text(lock.until))

    def _hidden_version(self, key: str) -> str | None:
        with self._lock:
            seen = self.hidden.get(key)
        if seen is not None:
            return seen["version_id"]
        if not self.active():
            return None
        v = self._protected(key, versions_of(self.inner, key))
        return v.version_id if v is not None else None

    def _or_hidden(self, key: str, version_id: str | None, call: Callable[[str | None], T]) -> T:
        """``call(version_id)``; when the key is missing and no version was asked for, ``call`` again with the
        locked version a delete marker hides, if there is one."""
        try:
            return call(version_id)
        except ObjectNotFound:
            vid = None if version_id is not None else self._hidden_version(key)
            if vid is None:
                raise
        return call(vid)

    def get(self, key: str, *, start: int = 0, length: int | None = None, version_id: str | None = None) -> bytes:
        return self._or_hidden(key, version_id, lambda v: self.inner.get(key, start=start, length=length, version_id=v))

    def open_range(self, key: str, start: int, length: int, *, version_id: str | None = None) -> RangeReader:
        return self._or_hidden(key, version_id, lambda v: self.inner.open_range(key, start, length, version_id=v))

    def head(self, key: str, *, version_id: str | None = None) -> BlobInfo:
        return self._or_hidden(key, version_id, lambda v: self.inner.head(key, version_id=v))

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[BlobInfo]:
        if not self.active():
            yield from self.inner.list(prefix, start_after=start_after)
            return
        extra = {}
        for k, vs in by_key(self.inner.list_versions(prefix, start_after=start_after)).items():
            if vs[0].is_delete_marker:
                v = self._protected(k, vs)
                if v is not None:
                    extra[k] = BlobInfo(k, v.size, v.modified)
        if not extra:
            yield from self.inner.list(prefix, start_after=start_after)
            return
        merged = {i.key: i for i in self.inner.list(prefix, start_after=start_after)} | extra
        for k in sorted(merged):
            yield merged[k]

    def retention(self, key: str, *, version_id: str | None = None) -> Lock | None:
        return self._or_hidden(key, version_id, lambda v: self.inner.retention(key, version_id=v))

    def put(self, key: str, data: bytes | bytearray | memoryview, *, sha256: bytes | None = None,
            if_absent: bool = False, retain: bool = True) -> None:
        self.inner.put(key, data, sha256=sha256, if_absent=if_absent, retain=retain)

    def delete(self, key: str) -> None:
        self.inner.delete(key)
