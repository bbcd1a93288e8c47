"""The one storage interface llmdr needs, and the guarantees every adapter must give.

Everything llmdr keeps in a region (chunks, manifests, the repository config) goes through ``BlobStore``. Retries,
read-only mode, encryption and manifest signatures are wrappers around it (``retrying.py``, ``readonly.py``,
``crypto.py``; the test-only fault store is ``llmdr/testing/faulty.py``), never subclasses, so each adapter stays
small. Capabilities beyond plain blobs (Object Lock, versions, the store's clock, the bucket's protection and usage,
the per-blob cipher of an encrypted region) are methods of the same
interface that every wrapper forwards, as Kopia's ``PutOptions`` carry a retention through every layer: nothing
walks a chain of wrappers to find the adapter underneath.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class BlobInfo:
    key: str
    size: int
    modified: float | None = None  # last write, seconds since the epoch (listing and head report it)


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One version of a key in a versioned store: a stored value, or a delete marker (``size`` 0) that hides the
    versions below it. ``is_latest`` marks the version a plain read sees (or, for a marker, hides the key)."""

    key: str
    version_id: str
    size: int
    modified: float | None
    is_delete_marker: bool
    is_latest: bool


class BlobCipher(Protocol):
    """Seals single blobs inside a pack, so one blob fetched with a ranged GET opens on its own (design §1).

    ``seal`` returns ``nonce (12) | AES-256-GCM ciphertext | tag (16)``, ``overhead`` (28) bytes longer than the
    plaintext; ``aad`` binds the blob to where it belongs (the repository passes repo id and chunk id). ``open``
    returns the plaintext or raises ``IntegrityError`` naming ``where`` (damaged, truncated or another key: nothing
    unauthenticated is returned). ``key_id`` (8 bytes) names the key without revealing it, as in the object envelope.
    """

    key_id: bytes
    overhead: int

    def seal(self, plain: bytes | memoryview, aad: bytes) -> bytes: ...

    def seal_into(self, plain: bytes | memoryview, aad: bytes, out: memoryview) -> int:
        """As ``seal``, written into ``out`` (at least ``len(plain) + overhead`` bytes, e.g. the pack being built);
        returns the bytes written."""
        ...

    def open(self, stored: bytes | memoryview, aad: bytes, where: object) -> bytes: ...

    def open_in_place(self, stored: memoryview, aad: bytes, where: object) -> memoryview:
        """As ``open``, the plaintext decrypted over the ciphertext in ``stored`` (a writable buffer the caller
        reuses) and returned as a view of it: no buffer per blob. Where in-place decryption is not available (or
        ``stored`` is read-only) a new buffer is returned instead. On failure ``stored`` holds nothing usable."""
        ...


class RangeReader(Protocol):
    """A byte range of one blob, read as a stream into the caller's buffers (``BlobStore.open_range``).
    ``readinto`` fills at most ``len(buf)`` bytes and returns how many, 0 only once the range is exhausted; the
    reader is a context manager and ``close`` (or leaving the ``with``) frees its connection."""

    def readinto(self, buf: memoryview | bytearray) -> int: ...

    def close(self) -> None: ...

    def __enter__(self) -> RangeReader: ...

    def __exit__(self, *exc: object) -> None: ...


class BytesReader:
    """A ``RangeReader`` over bytes already in memory: what stores without a streaming read (memory, wrappers that
    must see the whole object) return from ``open_range``."""

    def __init__(self, data: bytes | memoryview) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def readinto(self, buf: memoryview | bytearray) -> int:
        n = min(len(buf), len(self._view) - self._pos)
        buf[:n] = self._view[self._pos:self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        self._view = memoryview(b"")

    def __enter__(self) -> BytesReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_full(reader: RangeReader, buf: memoryview) -> int:
    """Fill ``buf`` from ``reader``; fewer bytes only when the range ends first. Returns the count."""
    got = 0
    while got < len(buf):
        n = reader.readinto(buf[got:])
        if not n:
            break
        got += n
    return got


@runtime_checkable
class BlobStore(Protocol):
    """A flat namespace of immutable-by-convention blobs addressed by ``/``-separated keys.

    Guarantees every adapter gives (checked by ``tests/test_store_contract.py`` against each one):

    - **Atomic put**: after ``put`` returns, readers see the whole new value; a failed or interrupted ``put`` leaves
      either the old value or nothing, never a prefix. ``put`` of the same key and bytes is idempotent.
    - **Verified put**: when ``sha256`` (32 raw bytes) is given, the store rejects the write with ``IntegrityError``
      unless the bytes it received hash to it (S3 does this server-side with the ``x-amz-checksum-sha256`` header).
    - **Read-after-write**: ``get``/``head``/``list`` see a completed ``put`` at once; ``delete`` likewise.
    - **Typed errors**: a missing key raises ``ObjectNotFound``; a missing bucket ``BucketNotFound``; bad
      credentials ``AccessDenied``; a fault that may pass ``TransientStorageError``. Adapters map their client's
      errors to these and to nothing else.
    - ``get`` with ``start``/``length`` returns exactly that byte range (shorter only at the end of the blob).
    - ``open_range(key, start, length)`` streams the same bytes into the caller's buffers (``RangeReader``): no
      copy of the whole range in memory, so a restore holds one blob per worker rather than one range. Errors are
      the typed ones above, at open or while reading; a connection that ends early raises
      ``TransientStorageError``, never a silent short read.
    - ``list`` yields every key under the prefix, in lexicographic order, each once, with its size and last-write
      time (``modified``), so unreferenced blobs can be told apart from blobs a running writer just added.
    - ``delete`` is idempotent: deleting a missing key is not an error.
    - **Conditional create**: ``put(..., if_absent=True)`` writes only when the key does not exist; otherwise it
      raises ``Conflict`` and leaves the stored value unchanged (S3 ``If-None-Match: *``). Of two writers racing for
      one key exactly one wins. This is how a repository takes the next catalog seq without trusting clocks.
    - ``list(prefix, start_after=k)`` yields only keys strictly greater than ``k`` (a key relative to the store, as
      every key), so a reader resumes a listing or reads a tail without listing what it has seen.
    - **Store time**: ``server_time()`` is the store's clock (seconds since the epoch; S3: the ``Date`` of a cheap
      request plus half its round trip, so about 1 s resolution), the same clock ``BlobInfo.modified`` comes from.
      Ages of stored objects (lock staleness, prune safety time) compare the two and never the client's clock.

    Object Lock (write once, read many), for stores that have it:

    - ``lock_policy()`` is the lock every ``put`` of this store applies (mode and period), None when puts are not
      locked. ``put(..., retain=False)`` sends no retention of its own (for ``locks/`` and ``prune/`` objects, which
      must stay deletable; a bucket's default retention rule, if one is configured, still applies). ``delete`` of a
      key whose retention has not ended raises ``ObjectLocked`` and removes nothing locked; in a locked (versioned)
      bucket ``delete`` removes every version, so no delete marker is left hiding bytes.
    - ``retention(key, version_id=None)`` is the lock in force on ``key`` (or that version; None when it has none;
      ``ObjectNotFound`` when the key is missing); ``extend_lock(key, until)`` makes it last at least until ``until`` and returns False when it already
      did (a retention is never shortened). Without a lock policy ``extend_lock`` raises ``StorageError``.
    - ``bucket_protection()`` reports the bucket's versioning and Object Lock configuration; ``usage()`` the bytes and
      objects stored, every version counted.

    Versions, for stores that keep them (S3 with versioning; a memory store made with ``versioned=True``):

    - ``list_versions(prefix, start_after=k)`` yields every version and delete marker under the prefix (of keys
      strictly greater than ``k`` when given), in key order, newest first within a key; a store that keeps no
      versions raises ``StorageError`` saying so.
    - ``get``/``head`` with ``version_id`` read exactly that version (``ObjectNotFound`` when it does not exist or is
      a delete marker); ``delete_version(key, version_id)`` removes exactly that version (removing a delete marker
      brings the key back) and raises ``ObjectLocked`` for a version under retention.

    Encryption: ``blob_cipher()`` is the ``BlobCipher`` that seals single blobs inside packs in an encrypted region
    (``EncryptingStore`` returns its own; adapters None; every other wrapper forwards the one below it). Objects
    under ``packs/`` pass through ``EncryptingStore`` unsealed: the repository seals their blobs itself.

    Wrappers forward all of these: a retrying store retries them (a retried create that finds its own earlier write
    is a success), a read-only store refuses every write (``put``, ``delete``, ``delete_version``, ``extend_lock``)
    and forwards the rest, encrypting and signing stores pass them through with the same object names (sizes and
    version reads adjusted as for plain reads).

    Adapters are safe to call from several threads at once.
    """

    location: str
    """Where the blobs live, for messages (e.g. ``s3://bucket/prefix at http://127.0.0.1:8333``). No secrets."""

    def put(self, key: str, data: bytes | bytearray | memoryview, *, sha256: bytes | None = None,
            if_absent: bool = False, retain: bool = True) -> None: ...

    def get(self, key: str, *, start: int = 0, length: int | None = None, version_id: str | None = None) -> bytes: ...

    def open_range(self, key: str, start: int, length: int, *, version_id: str | None = None) -> RangeReader: ...

    def head(self, key: str, *, version_id: str | None = None) -> BlobInfo: ...

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[BlobInfo]: ...

    def delete(self, key: str) -> None: ...

    def lock_policy(self) -> LockPolicy | None: ...

    def retention(self, key: str, *, version_id: str | None = None) -> Lock | None: ...

    def extend_lock(self, key: str, until: float) -> bool: ...

    def bucket_protection(self) -> dict[str, Any]: ...

    def usage(self) -> dict[str, int]: ...

    def server_time(self) -> float: ...

    def list_versions(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[VersionInfo]: ...

    def delete_version(self, key: str, version_id: str) -> None: ...

    def blob_cipher(self) -> BlobCipher | None: ...


@dataclass(frozen=True, slots=True)
class LockPolicy:
    """The S3 Object Lock a store applies to every object it writes: ``mode`` COMPLIANCE or GOVERNANCE, for
    ``period_s`` seconds from the write."""

    mode: str
    period_s: float


@dataclass(frozen=True, slots=True)
class Lock:
    """An S3 Object Lock retention on one object: ``mode`` COMPLIANCE or GOVERNANCE (or LEGAL_HOLD), ``until`` in
    seconds since the epoch (infinite for a legal hold without retention)."""

    mode: str
    until: float
    legal_hold: bool = False


def check_key(key: str) -> str:
    """Refuse keys that no adapter can store the same way (empty, leading slash, ``..`` segments)."""
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in key.split("/")):
        raise ValueError(f"invalid blob key {key!r}: use non-empty '/'-separated segments without '.' or '..'")
    return key


def unprotected(store: BlobStore) -> dict[str, Any]:
    """``bucket_protection()`` of a store without versioning or Object Lock (memory, local folders)."""
    return {"bucket": store.location, "versioning": "Disabled", "object_lock": False, "default_retention": None}


class Forwarding:
    """The calls a wrapper that keeps its inner store's object names passes through unchanged: Object Lock, bucket
    facts, the store's clock, versions and the blob cipher. Wrappers (encrypting, signing, as-of, hidden-version
    reads) inherit it and override only what they change or refuse, so a new protocol call is forwarded in one
    place."""

    inner: BlobStore

    def lock_policy(self) -> LockPolicy | None:
        return self.inner.lock_policy()

    def retention(self, key: str, *, version_id: str | None = None) -> Lock | None:
        return self.inner.retention(key, version_id=version_id)

    def extend_lock(self, key: str, until: float) -> bool:
        return self.inner.extend_lock(key, until)

    def bucket_protection(self) -> dict[str, Any]:
        return self.inner.bucket_protection()

    def usage(self) -> dict[str, int]:
        return self.inner.usage()

    def server_time(self) -> float:
        return self.inner.server_time()

    def list_versions(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[VersionInfo]:
        return self.inner.list_versions(prefix, start_after=start_after)

    def delete_version(self, key: str, version_id: str) -> None:
        self.inner.delete_version(key, version_id)

    def blob_cipher(self) -> BlobCipher | None:
        return self.inner.blob_cipher()

    def open_range(self, key: str, start: int, length: int, *, version_id: str | None = None) -> RangeReader:
        """Through this wrapper's own ``get`` (which may open, check or pick a version); a wrapper that leaves an
        object's bytes as they are overrides this to stream from the store below."""
        data = self.get(key, start=start, length=length, version_id=version_id)  # type: ignore[attr-defined]
        return BytesReader(data)

