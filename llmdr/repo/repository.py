"""A repository is llmdr's layout inside one region's store.

    config.json                      repository format, hash and chunker parameters (fixed at creation)
    chunks/<2 hex>/<64 hex>          content-addressed chunk objects, sharded by their first byte
    snapshots/<64 hex>.json          manifests; the key is the SHA-256 of the bytes

A snapshot exists in a region exactly when its manifest does; manifests are written after all their chunks, so a
listing never shows a partial snapshot.

``Repository`` is the only door to these objects (restic's ``internal/repository``): snapshot, restore, copy, verify
and retention read and write chunks, manifests and evidence through its methods. ``load_chunk`` is the one place
that reads a chunk and proves it against its id, and so the one place that turns a missing chunk into
``ChunkMissing`` (an ``ObjectNotFound``) and a damaged one into ``IntegrityError``, each naming the object key.
The key functions (``chunk_key``, ``manifest_key``) stay public for messages that name an object.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmdr.common.files import atomic_write
from llmdr.errors import (
    ChunkMissing,
    IntegrityError,
    ObjectNotFound,
    SnapshotNotFound,
    UnsafePathError,
    UsageError,
)
from llmdr.repo.chunking import DEFAULT_CHUNKER, ChunkerParams
from llmdr.repo.ids import is_hex_digest
from llmdr.repo.manifest import Manifest, canonical_json, parse_utc
from llmdr.storage.base import BlobInfo, BlobStore

log = logging.getLogger(__name__)

CONFIG_KEY = "config.json"
CHUNKS = "chunks/"
SNAPSHOTS = "snapshots/"
EVIDENCE = "evidence/"
REPO_FORMAT = 1


_REPAIR = ("Restore from another region, or repair this one from a healthy copy (`llmdr verify --repair`, "
           "`llmdr replicate`).")


def chunk_key(hexdigest: str) -> str:
    return f"{CHUNKS}{hexdigest[:2]}/{hexdigest}"


def key_to_chunk(key: str) -> str | None:
    """Inverse of ``chunk_key``; None for keys that are not chunk keys."""
    if not key.startswith(CHUNKS):
        return None
    rest = key[len(CHUNKS):]
    shard, _, hexd = rest.partition("/")
    if len(shard) == 2 and is_hex_digest(hexd) and hexd[:2] == shard:
        return hexd
    return None


def evidence_key(snapshot_id: str, name: str) -> str:
    """``evidence/<snapshot id>/<name>``: a record kept beside a snapshot (e.g. the dataset validations it was taken
    with). ``name`` is one plain file name."""
    if not is_hex_digest(snapshot_id):
        raise UsageError(f"not a snapshot id: {snapshot_id!r}")
    if not name or "/" in name or name in (".", "..") or name != name.strip():
        raise UsageError(f"evidence name {name!r} must be one plain file name, e.g. 'datasets.json'")
    return f"{EVIDENCE}{snapshot_id}/{name}"


def manifest_key(snapshot_id: str) -> str:
    return f"{SNAPSHOTS}{snapshot_id}.json"


@dataclass(frozen=True, slots=True)
class RepoConfig:
    chunker: ChunkerParams = DEFAULT_CHUNKER
    hash: str = "sha256"
    format: int = REPO_FORMAT

    def to_bytes(self) -> bytes:
        return canonical_json({"format": self.format, "hash": self.hash, "chunker": self.chunker.to_json()})

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> "RepoConfig":
        try:
            raw = json.loads(data)
            cfg = cls(chunker=ChunkerParams.from_json(raw["chunker"]), hash=raw["hash"], format=raw["format"])
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"{where}/{CONFIG_KEY} is malformed ({exc!r}); it is not an llmdr repository") from exc
        if cfg.format != REPO_FORMAT or cfg.hash != "sha256":
            raise IntegrityError(f"{where}/{CONFIG_KEY}: unsupported repository format {cfg.format} / hash {cfg.hash}")
        return cfg


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    id: str
    manifest: Manifest

    @property
    def short(self) -> str:
        return self.id[:12]


class Repository:
    def __init__(self, store: BlobStore, *, cache_dir: Path | None = None) -> None:
        self.store = store
        self.cache_dir = cache_dir
        self.unreadable: dict[str, str] = {}  # snapshots a non-strict listing left out, with the reason

    @property
    def location(self) -> str:
        return self.store.location

    # config -----------------------------------------------------------------------------------------------------------
    def load_config(self) -> RepoConfig | None:
        try:
            return RepoConfig.from_bytes(self.store.get(CONFIG_KEY), self.location)
        except ObjectNotFound:
            return None

    def ensure_config(self, wanted: RepoConfig | None = None) -> RepoConfig:
        """Return the repository config, creating it (with ``wanted`` or the defaults) in an empty repository."""
        existing = self.load_config()
        if existing is not None:
            if wanted is not None and wanted != existing:
                raise IntegrityError(
                    f"{self.location} holds a repository with different parameters ({existing}) than the source "
                    f"({wanted}); chunks could not be shared. Use another bucket or prefix."
                )
            return existing
        cfg = wanted or RepoConfig()
        data = cfg.to_bytes()
        self.store.put(CONFIG_KEY, data, sha256=hashlib.sha256(data).digest())
        return cfg

    # chunks -----------------------------------------------------------------------------------------------------------
    def list_chunks(self) -> dict[str, int]:
        """Every chunk present, with its stored size (one paged LIST)."""
        return {hexd: info.size for hexd, info in self.chunk_infos()}

    def chunk_infos(self) -> Iterator[tuple[str, BlobInfo]]:
        """(chunk id, its object's size and last-write time) for every chunk present, in key order."""
        for info in self.store.list(CHUNKS):
            hexd = key_to_chunk(info.key)
            if hexd is not None:
                yield hexd, info

    def load_chunk(self, hexdigest: str, *, size: int | None = None, of: str = "", then: str = "") -> bytes:
        """The bytes of chunk ``hexdigest``, proven to hash to it (and to be ``size`` long, when given).

        A chunk that is not there raises ``ChunkMissing``, one whose bytes do not match ``IntegrityError`` (an
        encrypting store below raises that too for bytes that fail authentication); both name the object key. For
        the messages, ``of`` says what the chunk belongs to (``" of 'model.bin' (offset 0)"``) and ``then`` what
        that means for the caller and what to do (default: restore from, or repair from, another region)."""
        key = chunk_key(hexdigest)
        then = then or _REPAIR
        try:
            data = self.store.get(key)
        except ObjectNotFound:
            raise ChunkMissing(f"chunk {key}{of} is missing from {self.location}; the snapshot there is damaged. "
                               f"{then}") from None
        if (size is not None and len(data) != size) or hashlib.sha256(data).hexdigest() != hexdigest:
            raise IntegrityError(f"chunk {key}{of} is corrupt in {self.location}: its bytes do not hash to its id. "
                                 f"{then}")
        return data

    def read_chunk_range(self, hexdigest: str, start: int, length: int) -> bytes:
        """``length`` bytes of chunk ``hexdigest`` from ``start``, NOT verified (a part cannot be proven against the
        id): for bandwidth probes only, never for data that is used."""
        return self.store.get(chunk_key(hexdigest), start=start, length=length)

    def save_chunk(self, hexdigest: str, data: bytes | bytearray | memoryview, digest: bytes | None = None) -> None:
        """Store chunk ``hexdigest`` with a verified put: the store refuses bytes that do not hash to it. ``digest``
        is its raw SHA-256 when the caller already has it."""
        self.store.put(chunk_key(hexdigest), data, sha256=digest or bytes.fromhex(hexdigest))

    def delete_chunk(self, hexdigest: str) -> None:
        """Remove chunk ``hexdigest`` (``ObjectLocked`` while Object Lock retains it)."""
        self.store.delete(chunk_key(hexdigest))

    # snapshots --------------------------------------------------------------------------------------------------------
    def snapshot_ids(self) -> list[str]:
        ids = []
        for info in self.store.list(SNAPSHOTS):
            name = info.key[len(SNAPSHOTS):]
            if name.endswith(".json") and is_hex_digest(name[:-5]):
                ids.append(name[:-5])
        return ids

    def load_manifest_bytes(self, snapshot_id: str) -> bytes:
        cached = self._cache_path(snapshot_id)
        if cached is not None and cached.exists():
            data = cached.read_bytes()
            if hashlib.sha256(data).hexdigest() == snapshot_id:
                return data
        try:
            data = self.store.get(manifest_key(snapshot_id))
        except ObjectNotFound:
            raise SnapshotNotFound(f"snapshot {snapshot_id[:12]} is not in {self.location}") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != snapshot_id:
            raise IntegrityError(
                f"{self.location}: manifest {manifest_key(snapshot_id)} is damaged: its bytes hash to {actual[:12]}. "
                "`llmdr verify --repair` brings an intact copy from another region; or restore from a healthy region."
            )
        if cached is not None:
            atomic_write(cached, data)
        return data

    def load_manifest(self, snapshot_id: str) -> Manifest:
        data = self.load_manifest_bytes(snapshot_id)
        try:
            return Manifest.from_bytes(data, expect_id=snapshot_id)
        except (IntegrityError, UnsafePathError) as exc:
            raise type(exc)(f"{self.location}: manifest {manifest_key(snapshot_id)}: {exc}") from None

    def snapshots(self, *, bundle: str | None = None, workers: int = 8, strict: bool = True) -> list[SnapshotInfo]:
        """All snapshots, oldest first (by creation time, then id).

        ``strict`` (the default, and what retention and copies use): a manifest that cannot be read — damaged,
        forged, unsigned, hostile paths — raises, because acting on a partial list could delete what the unreadable
        snapshot needs. ``strict=False`` (listing, ``latest`` for a restore): such a manifest is left out with a
        warning and recorded in ``self.unreadable`` (id -> reason), so one bad object cannot block every restore."""
        ids = self.snapshot_ids()

        def load(i: str) -> SnapshotInfo | None:
            m = self._manifest_or_skip(i, strict)
            return None if m is None else SnapshotInfo(i, m)

        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(ids) or 1))) as pool:
            infos = [x for x in pool.map(load, ids) if x is not None]
        if bundle is not None:
            infos = [s for s in infos if s.manifest.bundle == bundle]
        infos.sort(key=lambda s: (parse_utc(s.manifest.created), s.id))
        return infos

    def _manifest_or_skip(self, snapshot_id: str, strict: bool) -> Manifest | None:
        """The manifest; when it cannot be trusted: raise (``strict``) or record it in ``unreadable`` and warn."""
        try:
            return self.load_manifest(snapshot_id)
        except (IntegrityError, UnsafePathError) as exc:
            if strict:
                raise
            self.unreadable[snapshot_id] = str(exc)
            log.warning("left out snapshot %s: %s", snapshot_id[:12], exc)
            return None

    def newest(self, *, bundle: str | None = None, strict: bool = True, workers: int = 8) -> str | None:
        """The id of the newest snapshot (of ``bundle``), like ``snapshots()[-1]`` but without holding every manifest
        in memory at once (a long history of large bundles made that grow with the number of snapshots)."""
        ids = self.snapshot_ids()

        def head(i: str) -> tuple[Any, str, str] | None:
            m = self._manifest_or_skip(i, strict)
            return None if m is None else (parse_utc(m.created), i, m.bundle)

        best: tuple[Any, str] | None = None
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(ids) or 1))) as pool:
            for h in pool.map(head, ids):
                if h is None or (bundle is not None and h[2] != bundle):
                    continue
                if best is None or (h[0], h[1]) > best:
                    best = (h[0], h[1])
        return best[1] if best else None

    def resolve(self, ref: str, *, bundle: str | None = None) -> str:
        """Turn ``latest``, a full id or a unique id prefix (>= 4 hex characters) into a full snapshot id."""
        ref = ref.strip().lower()
        if ref == "latest":
            newest = self.newest(bundle=bundle, strict=False)
            if newest is None:
                scope = f" of bundle '{bundle}'" if bundle else ""
                raise SnapshotNotFound(f"there is no snapshot{scope} in {self.location}; take one with `llmdr snapshot`")
            return newest
        if len(ref) < 4 or any(c not in "0123456789abcdef" for c in ref):
            raise UsageError(f"{ref!r} is not a snapshot id: give 'latest', a full id or at least 4 hex characters")
        matches = [i for i in self.snapshot_ids() if i.startswith(ref)]
        if not matches:
            raise SnapshotNotFound(f"no snapshot {ref!r} in {self.location}; `llmdr snapshots` lists them")
        if len(matches) > 1:
            raise UsageError(f"snapshot prefix {ref!r} is ambiguous in {self.location}: {', '.join(m[:12] for m in matches)}")
        return matches[0]

    def save_manifest(self, snapshot_id: str, data: bytes) -> None:
        """Publish a snapshot: write its manifest with a verified put (the store refuses bytes that do not hash to
        the id). Call it after every chunk is in place."""
        self.store.put(manifest_key(snapshot_id), data, sha256=bytes.fromhex(snapshot_id))

    def delete_manifest(self, snapshot_id: str) -> None:
        """Forget a snapshot (its chunks stay until a prune; ``ObjectLocked`` while Object Lock retains it)."""
        self.store.delete(manifest_key(snapshot_id))

    def has_snapshot(self, snapshot_id: str) -> bool:
        try:
            self.store.head(manifest_key(snapshot_id))
            return True
        except ObjectNotFound:
            return False

    def save_evidence(self, snapshot_id: str, name: str, data: bytes) -> str:
        """Keep ``data`` beside ``snapshot_id`` as ``evidence/<id>/<name>`` (verified put); returns the key."""
        key = evidence_key(snapshot_id, name)
        self.store.put(key, data, sha256=hashlib.sha256(data).digest())
        return key

    def load_evidence(self, snapshot_id: str, name: str) -> bytes:
        """The evidence ``name`` kept beside ``snapshot_id``; ``ObjectNotFound`` when there is none."""
        return self.store.get(evidence_key(snapshot_id, name))

    def _cache_path(self, snapshot_id: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / "manifests" / f"{snapshot_id}.json"

