"""A repository is llmdr's layout inside one region's store (format v2, docs/design/repository-format-v2.md):

    config.json                         format, hash, chunker, repository id, pack target (fixed at creation)
    packs/<2 hex>/<64 hex>              chunks, many per pack, each sealed on its own in an encrypted region
    index/<64 hex>                      chunk id -> (pack, offset, length), written before any record needs it
    trees/<2 hex>/<64 hex>              file lists (content-addressed, so an unchanged listing is stored once)
    snaps/<64 hex>                      snapshot records (~1 KB); the id is the SHA-256 of the record
    catalog/<b>/…, bundles/<b>.json     the order of each bundle's snapshots (``catalog.py``)
    evidence/<snapshot id>/<name>       records kept beside a snapshot (dataset validations)
    golden/<bundle>/<digest>.json       golden sets, one per answer-relevant content (``goldens.py``)
    locks/, prune/                      command locks (``repolock.py``) and prune plans (``prune.py``)

A snapshot exists in a region when its catalog entry does; the entry is written after its record, trees, packs and
the index naming those packs, so a reader never meets a partial snapshot.

``Repository`` is the only door to these objects (restic's ``internal/repository``): snapshot, restore, replicate,
verify and retention read and write chunks, records and evidence through its methods. ``load_chunk`` is the one
place that reads a chunk and proves it against its id, and so the one place that turns a missing chunk into
``ChunkMissing`` and a damaged one into ``IntegrityError``, each naming the pack object.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmdr.common.files import atomic_write
from llmdr.errors import (
    ChunkMissing,
    Conflict,
    FormatMismatch,
    IntegrityError,
    ObjectNotFound,
    SnapshotNotFound,
    UsageError,
)
from llmdr.repo.catalog import BUNDLES, Catalog, Entry, View, bundle_key, future_dated
from llmdr.repo.index import IndexEntry, IndexFile, MasterIndex
from llmdr.repo.indexlog import IndexView
from llmdr.repo.layout import (
    CONFIG_KEY,
    MIGRATED_FROM,
    PACKS,
    RepoConfig,
    evidence_key,
    golden_key,
    key_to_pack,
    pack_key,
    record_key,
    tree_key,
)
from llmdr.repo.manifest import Manifest, canonical_json
from llmdr.repo.pack import PackBlob, open_blob
from llmdr.repo.snapinfo import SnapshotInfo
from llmdr.repo.tree import BuiltTree, load_tree, manifest_of, parse_record
from llmdr.storage.base import BlobInfo, BlobStore, RangeReader

log = logging.getLogger(__name__)

_REPAIR = ("Restore from another region, or repair this one from a healthy copy (`llmdr verify --repair`, "
           "`llmdr replicate`).")


class Repository:
    def __init__(self, store: BlobStore, *, cache_dir: Path | None = None, pack_target: int | None = None) -> None:
        self.store = store
        self.cache_root = cache_dir
        self.pack_target = pack_target  # for a repository this creates; an existing one keeps its own
        self.unreadable: dict[str, str] = {}  # objects a listing left out (key -> why)
        self._config: RepoConfig | None = None
        self._view = IndexView(store, self._cached, self._cache_put, self.unreadable)
        self._catalogs: dict[str, Catalog] = {}
        self._gone_packs: set[bytes] = set()  # packs an index names that the last listing of packs did not show

    @property
    def location(self) -> str:
        return self.store.location

    @property
    def cache_dir(self) -> Path | None:
        cfg = self._config
        return self.cache_root / cfg.repo_id if self.cache_root is not None and cfg is not None else None

    # config -----------------------------------------------------------------------------------------------------------
    def load_config(self) -> RepoConfig | None:
        if self._config is None:
            try:
                data = self.store.get(CONFIG_KEY)
            except ObjectNotFound:
                v1 = any(next(iter(self.store.list(p)), None) for p in ("snapshots/", "chunks/"))
                if v1:
                    raise FormatMismatch(f"{self.location} holds repository format v1 objects (snapshots/, chunks/) "
                                         "without a config.json; this llmdr reads and writes format v2. Convert it "
                                         "with `llmdr migrate --region R`, or point the region at a new prefix.") from None
                return None
            self._config = RepoConfig.from_bytes(data, self.location)
        return self._config

    def use_config(self, cfg: RepoConfig) -> None:
        """Work with ``cfg`` without reading ``config.json``: ``migrate`` writes v2 objects while the region's config
        still says v1, and switches it last."""
        self._config = cfg

    def config(self) -> RepoConfig:
        cfg = self.load_config()
        if cfg is None:
            raise SnapshotNotFound(f"{self.location} holds no llmdr repository yet (no {CONFIG_KEY}); take a "
                                   "snapshot or replicate into it first")
        return cfg

    def ensure_config(self, wanted: RepoConfig | None = None) -> RepoConfig:
        """The repository config, created (chunker and hash from ``wanted``, a fresh repository id) in an empty
        repository."""
        existing = self.load_config()
        if existing is not None:
            if wanted is not None and not wanted.shares_chunks_with(existing):
                raise IntegrityError(
                    f"{self.location} holds a repository with different chunking ({existing.chunker}) than the "
                    f"source ({wanted.chunker}); chunks could not be shared. Use another bucket or prefix.")
            return existing
        base = wanted or RepoConfig()
        cfg = RepoConfig(chunker=base.chunker, hash=base.hash, repo_id=os.urandom(16).hex(),
                         pack_target=self.pack_target or base.pack_target)
        data = cfg.to_bytes()
        try:
            self.store.put(CONFIG_KEY, data, sha256=hashlib.sha256(data).digest(), if_absent=True)
        except Conflict:  # another writer created it first: use theirs
            self._config = None
            return self.ensure_config(wanted)
        self._config = cfg
        return cfg

    @property
    def repo_id(self) -> bytes:
        return bytes.fromhex(self.config().repo_id)

    # indexes ----------------------------------------------------------------------------------------------------------
    def index(self, *, refresh: bool = False, full: bool = False, workers: int = 16) -> MasterIndex:
        """Every chunk's place (index objects are cached locally; only new ones are fetched).

        Read from the index log (``indexlog.py``): the newest compaction and what was logged after it, so the cost
        does not grow with the number of index objects ever written. ``full`` reads every ``index/`` object
        instead (prune, repair and checks, which must also see indexes an older llmdr wrote without logging them)."""
        return self._view.get(refresh=refresh, full=full, workers=workers)

    @property
    def index_meta(self) -> dict[str, tuple[float | None, tuple[str, ...]]]:
        """Index id -> (stored at, ids it supersedes), for every index object in the view."""
        return self._view.meta

    @property
    def index_listed(self) -> dict[str, float | None]:
        """Every ``index/`` object present at the last full read, with its store time."""
        return self._view.listed

    def add_index(self, entries: list[IndexEntry], supersedes: tuple[bytes, ...] = (), *,
                  covers: int | None = None) -> str:
        """Store an index object naming ``entries`` (after their packs are stored) and add it to the view. A merge
        passes ``covers``: the ``log_top`` of the view it merged, so readers can start from it.

        A writer's index (one that supersedes nothing) also supersedes one random id that names no object: its id is
        then new. Without it, a writer storing again chunks a prune deleted (same chunks, same order: same pack id)
        would write an index object equal, byte for byte, to one the prune superseded, and it would stay hidden."""
        if not supersedes:
            supersedes = (os.urandom(32),)
        return self._view.add(IndexFile(tuple(entries), supersedes), covers=covers)

    def compact_if_needed(self, threshold: int = 32) -> str | None:
        """Merge the live index objects into one when there are more than ``threshold`` (after a snapshot or a copy
        added its own). Nothing is deleted, so no lock is needed: the merged object supersedes the others, which a
        prune deletes once it is old enough. Returns the new index id, or None."""
        idx = self.index()  # the view this command already holds: others' newer indexes stay live beside the merge
        live = sorted(idx.live_ids())
        if len(live) <= threshold:
            return None
        covers = idx.log_top
        entries = [e for pack in sorted(idx.packs()) for e in idx.entries_of_pack(pack)]
        return self.add_index(sorted(entries, key=lambda e: (e.chunk, e.pack)),
                              supersedes=tuple(bytes.fromhex(i) for i in live), covers=covers)

    def has_chunk(self, hexdigest: str) -> bool:
        return self.index().has(bytes.fromhex(hexdigest))

    def locate(self, hexdigest: str) -> IndexEntry | None:
        """Where the index places chunk ``hexdigest``; a pack the last listing of packs did not show (lost, its
        chunks stored again elsewhere) is the last choice."""
        return self.index().lookup(bytes.fromhex(hexdigest), avoid=self._gone_packs)

    def pack_infos(self) -> dict[str, BlobInfo]:
        """Every pack present, by id (one paged LIST). Packs the index names but the listing lacks are remembered,
        so ``locate`` prefers another copy of their chunks."""
        infos = {p: i for i in self.store.list(PACKS) if (p := key_to_pack(i.key)) is not None}
        self._gone_packs = self.index().packs() - {bytes.fromhex(p) for p in infos}
        return infos

    def list_chunks(self) -> dict[str, int]:
        """Every chunk an index places in a pack that is present, with its length (one listing of the packs)."""
        idx = self.index(refresh=True, full=True)  # what the region holds, unlogged indexes of older llmdr too
        packs = {bytes.fromhex(p) for p in self.pack_infos()}
        gone = idx.packs() - packs  # a chunk also placed in a present pack (e.g. after a repair) is present
        out: dict[str, int] = {}
        for c in idx.chunks():
            e = idx.lookup(c, avoid=gone)
            if e is not None and e.pack in packs:
                out[c.hex()] = e.plain_length
        return out

    # chunks -----------------------------------------------------------------------------------------------------------
    def load_chunk(self, hexdigest: str, *, size: int | None = None, of: str = "", then: str = "") -> bytes:
        """The bytes of chunk ``hexdigest``, proven to hash to it (and to be ``size`` long, when given).

        A chunk no index places, or whose pack is gone, raises ``ChunkMissing``; bytes that do not open or hash to
        the id ``IntegrityError``; both name the pack object. ``of`` says what the chunk belongs to, ``then`` what
        that means for the caller and what to do."""
        then = then or _REPAIR
        e = self.locate(hexdigest)
        if e is None:  # indexed since this view was read (another writer, or another Repository of the region)?
            e = self.index(refresh=True, full=True).lookup(bytes.fromhex(hexdigest))
        if e is None:
            raise ChunkMissing(f"chunk {hexdigest[:12]}{of} is in no index of {self.location}; the snapshot there is "
                               f"damaged. {then}")
        tried: set[bytes] = set()
        first: IntegrityError | None = None
        while e is not None and e.pack not in tried:  # a chunk in several packs (e.g. repaired): any intact copy
            tried.add(e.pack)
            key = pack_key(e.pack.hex())
            try:
                stored = self.store.get(key, start=e.offset, length=e.stored_length)
                return self.open_blob(stored, e, where=f"chunk {hexdigest[:12]}{of} in {key} of {self.location}",
                                      then=then, size=size)
            except ObjectNotFound:
                exc: IntegrityError = ChunkMissing(f"chunk {hexdigest[:12]}{of} is missing from {self.location}: its "
                                                   f"pack {key} is gone. {then}")
            except IntegrityError as bad:
                exc = bad
            first = first or exc
            e = self.index().lookup(bytes.fromhex(hexdigest), avoid=tried)
        assert first is not None
        raise first

    def open_blob(self, stored: bytes | memoryview, e: IndexEntry, *, where: object, then: str = "",
                  size: int | None = None, in_place: bool = False) -> bytes | memoryview:
        """A blob read from its pack, decrypted and proven against its chunk id (``in_place``: over its own bytes,
        without a copy; ``pack.open_blob``)."""
        blob = PackBlob(e.chunk, e.offset, e.stored_length, e.plain_length)
        try:
            if len(stored) != e.stored_length:
                raise IntegrityError(f"{where}: the pack is shorter than its index says (truncated)")
            data = open_blob(stored, blob, repo_id=self.repo_id, cipher=self.store.blob_cipher(), where=where,
                             in_place=in_place)
        except IntegrityError as exc:
            raise IntegrityError(f"{exc} {then or _REPAIR}") from None
        if size is not None and len(data) != size:
            raise IntegrityError(f"{where} is {len(data)} bytes, not {size}. {then or _REPAIR}")
        return data

    def read_pack(self, pack_hex: str, start: int, length: int) -> bytes:
        """``length`` stored bytes of pack ``pack_hex`` from ``start`` (open each blob with ``open_blob``)."""
        return self.store.get(pack_key(pack_hex), start=start, length=length)

    def stream_pack(self, pack_hex: str, start: int, length: int) -> RangeReader:
        """As ``read_pack``, streamed into the caller's buffers (``BlobStore.open_range``)."""
        return self.store.open_range(pack_key(pack_hex), start, length)

    def read_chunk_range(self, hexdigest: str, start: int, length: int) -> bytes:
        """``length`` stored bytes of chunk ``hexdigest``'s blob from ``start``, NOT verified (a part cannot be
        proven against the id): for bandwidth probes only, never for data that is used."""
        e = self.locate(hexdigest)
        if e is None:
            raise ChunkMissing(f"chunk {hexdigest[:12]} is in no index of {self.location}")
        return self.read_pack(e.pack.hex(), e.offset + start, min(length, max(0, e.stored_length - start)))

    def save_chunk(self, hexdigest: str, data: bytes | bytearray | memoryview, digest: bytes | None = None) -> None:
        """Store one chunk on its own (a one-chunk pack and its index): for repairs. Snapshots and copies batch
        chunks into packs with ``packer.PackWriter``."""
        from llmdr.repo.packer import PackWriter

        with PackWriter(self, workers=1) as w:
            w.add(hexdigest, digest or bytes.fromhex(hexdigest), data)

    def put_pack(self, pack_hex: str, data: bytes | bytearray | memoryview) -> None:
        self.store.put(pack_key(pack_hex), data, sha256=bytes.fromhex(pack_hex))

    # trees and records ------------------------------------------------------------------------------------------------
    def save_tree(self, tree: BuiltTree) -> None:
        for tid, data in tree.objects.items():
            key = tree_key(tid)
            if self._cache_has(key):
                continue
            self.store.put(key, data, sha256=bytes.fromhex(tid))
            self._cache_put(key, data)

    def tree_bytes(self, tree_id: str) -> bytes:
        return self._cached(tree_key(tree_id), tree_id)

    def record_bytes(self, snapshot_id: str) -> bytes:
        try:
            return self._cached(record_key(snapshot_id), snapshot_id)
        except ObjectNotFound:
            raise SnapshotNotFound(f"snapshot {snapshot_id[:12]} is not in {self.location}") from None

    def load_record(self, snapshot_id: str) -> dict[str, Any]:
        return parse_record(self.record_bytes(snapshot_id), expect_id=snapshot_id,
                            where=f"{self.location}: {record_key(snapshot_id)}")

    def load_manifest(self, snapshot_id: str) -> Manifest:
        """The snapshot ``snapshot_id`` with its file list (record and trees, each proven against its id)."""
        record = self.load_record(snapshot_id)
        files = load_tree(record["tree"], self.tree_bytes, where=f"{self.location}: snapshot {snapshot_id[:12]}")
        return manifest_of(record, files)

    def save_record(self, snapshot_id: str, data: bytes) -> None:
        self.store.put(record_key(snapshot_id), data, sha256=bytes.fromhex(snapshot_id))

    # catalog ----------------------------------------------------------------------------------------------------------
    def catalog(self, bundle: str) -> Catalog:
        """The catalog of ``bundle`` (one object per bundle and repository, so entries are parsed once)."""
        self.load_config()
        cat = self._catalogs.get(bundle)
        if cat is None:
            cat = self._catalogs[bundle] = Catalog(self.store, bundle, self.cache_dir)
        return cat

    def bundles(self) -> list[str]:
        names = []
        for info in self.store.list(BUNDLES):
            try:
                name = json.loads(self._cached(info.key, None))["bundle"]
                if not isinstance(name, str) or bundle_key(name) != info.key:
                    raise ValueError("the name does not match the key")
                names.append(name)
            except (ValueError, KeyError, TypeError, IntegrityError, ObjectNotFound) as exc:
                self.unreadable[info.key] = str(exc)
        return sorted(names)

    def register_bundle(self, bundle: str) -> None:
        key = bundle_key(bundle)
        if self._cache_has(key):
            return
        data = canonical_json({"bundle": bundle})
        try:
            self.store.put(key, data, if_absent=True)
        except Conflict:
            pass
        self._cache_put(key, data)

    def view(self, bundle: str) -> View:
        v = self.catalog(bundle).read()
        self.unreadable.update(v.skipped)
        return v

    def publish(self, bundle: str, record_of: "Any") -> Entry:
        """Make a snapshot visible: append its catalog entry at the next seq. ``record_of(prev)`` returns
        ``(id, record dict)`` for a record whose parent is ``prev`` (the head it builds on); its record object is
        written before the entry. Call it after packs, index and trees are stored."""
        self.register_bundle(bundle)

        def make(seq: int, prev: str | None) -> Entry:
            sid, record = record_of(prev)
            self.save_record(sid, canonical_json(record))
            return Entry(seq, "snapshot", sid, prev, record)

        return self.catalog(bundle).append(make)

    def forget(self, bundle: str, ids: list[str]) -> Entry:
        """Stop listing ``ids`` (a forget entry; objects go with a later prune)."""
        return self.catalog(bundle).append(lambda seq, prev: Entry(seq, "forget", forget=tuple(ids)))

    def snapshots(self, *, bundle: str | None = None, strict: bool = False) -> list[SnapshotInfo]:
        """Live snapshots, each bundle's in catalog order (oldest first); bundles in name order. Entries that
        cannot be read are left out and recorded in ``unreadable``; ``strict`` raises instead."""
        self.load_config()  # a v1 region raises FormatMismatch instead of listing nothing
        out: list[SnapshotInfo] = []
        for name in [bundle] if bundle is not None else self.bundles():
            v = self.view(name)
            if strict and v.skipped:
                key, why = next(iter(v.skipped.items()))
                raise IntegrityError(f"{self.location}: catalog object {key} cannot be read ({why})")
            numbers, n = {}, 0
            for e in v.entries:
                if e.kind == "snapshot":
                    numbers[e.seq], n = n, n + 1
            out += [SnapshotInfo(e.id, e.record, e.seq, e.stored, e.id in v.future, e.id in v.forks,
                                 number=numbers.get(e.seq), _repo=self) for e in v.live]
        return out

    def newest(self, *, bundle: str | None = None, strict: bool = False) -> str | None:
        """The id of the bundle's head (highest seq); across bundles, the newest by store time."""
        if bundle is not None:
            head = self.catalog(bundle).tip(self.unreadable).head  # reads back only until it finds the head
            return head.id if head else None
        heads = [s for s in self.snapshots() if s is not None]
        return max(heads, key=lambda s: (s.stored or 0.0, s.created)).id if heads else None

    def snapshot_ids(self, *, bundle: str | None = None) -> list[str]:
        return [s.id for s in self.snapshots(bundle=bundle)]

    def newest_first(self, *, bundle: str | None = None) -> Iterator[SnapshotInfo]:
        """Live snapshots newest first, the bundles' histories in turn (one from each, then the next from each),
        each read back only as far as the caller goes. ``fork`` is not known this way (it is False)."""
        walks = [self.catalog(name).newest_first(self.unreadable)
                 for name in ([bundle] if bundle is not None else self.bundles())]
        while walks:
            for walk in list(walks):
                e = next(walk, None)
                if e is None:
                    walks.remove(walk)
                    continue
                yield SnapshotInfo(e.id, e.record, e.seq, e.stored, future_dated(e), False, _repo=self)

    def has_snapshot(self, snapshot_id: str, *, bundle: str | None = None) -> bool:
        """True when ``snapshot_id`` is listed. A record is stored before its catalog entry, so where there is no
        record there is no snapshot, and the catalog is not read."""
        try:
            self.store.head(record_key(snapshot_id))
        except ObjectNotFound:
            return False
        return snapshot_id in set(self.snapshot_ids(bundle=bundle))

    def resolve(self, ref: str, *, bundle: str | None = None) -> str:
        """Turn ``latest``, a full id or a unique id prefix (>= 4 hex characters) into a full snapshot id."""
        ref = ref.strip().lower()
        if ref == "latest":
            newest = self.newest(bundle=bundle)
            if newest is None:
                scope = f" of bundle '{bundle}'" if bundle else ""
                raise SnapshotNotFound(f"there is no snapshot{scope} in {self.location}; take one with `llmdr snapshot`")
            return newest
        if len(ref) < 4 or any(c not in "0123456789abcdef" for c in ref):
            raise UsageError(f"{ref!r} is not a snapshot id: give 'latest', a full id or at least 4 hex characters")
        matches = [i for i in dict.fromkeys(self.snapshot_ids()) if i.startswith(ref)]
        if not matches and len(ref) == 64:
            try:
                self.load_record(ref)
                matches = [ref]
            except SnapshotNotFound:
                pass
        if not matches:  # an id from before `llmdr migrate` (drill reports, golden answers): a v1 manifest's
            matches = list(dict.fromkeys(s.id for s in self.snapshots()
                                         if str(s.record.get(MIGRATED_FROM, "")).startswith(ref)))
        if not matches:
            raise SnapshotNotFound(f"no snapshot {ref!r} in {self.location}; `llmdr snapshots` lists them")
        if len(matches) > 1:
            raise UsageError(f"snapshot prefix {ref!r} is ambiguous in {self.location}: {', '.join(m[:12] for m in matches)}")
        return matches[0]

    # evidence ---------------------------------------------------------------------------------------------------------
    def save_evidence(self, snapshot_id: str, name: str, data: bytes) -> str:
        """Keep ``data`` beside ``snapshot_id`` as ``evidence/<id>/<name>`` (verified put); returns the key."""
        key = evidence_key(snapshot_id, name)
        self.store.put(key, data, sha256=hashlib.sha256(data).digest())
        return key

    def load_evidence(self, snapshot_id: str, name: str) -> bytes:
        """The evidence ``name`` kept beside ``snapshot_id``; ``ObjectNotFound`` when there is none."""
        return self.store.get(evidence_key(snapshot_id, name))

    # golden sets -------------------------------------------------------------------------------------------------------
    def save_golden(self, bundle: str, digest: str, data: bytes) -> str:
        """Keep ``data`` (a sealed golden record, ``goldens.py``) as ``golden/<bundle>/<digest>.json``; returns the
        key. A later record of the same content replaces it (a new version where the bucket keeps versions)."""
        key = golden_key(bundle, digest)
        self.store.put(key, data, sha256=hashlib.sha256(data).digest())
        return key

    def load_golden(self, bundle: str, digest: str) -> bytes:
        """The golden record of ``digest``; ``ObjectNotFound`` when there is none."""
        return self.store.get(golden_key(bundle, digest))

    def golden_digests(self, bundle: str) -> list[str]:
        """The answer digests that have a golden set stored for ``bundle``."""
        prefix = golden_key(bundle, "0" * 64).rsplit("/", 1)[0] + "/"
        return sorted(i.key[len(prefix):-len(".json")] for i in self.store.list(prefix) if i.key.endswith(".json"))

    def delete_golden(self, bundle: str, digest: str) -> None:
        self.store.delete(golden_key(bundle, digest))

    # local cache of immutable objects ---------------------------------------------------------------------------------
    def _cache_path(self, key: str) -> Path | None:
        d = self.cache_dir
        return d / key if d is not None else None

    def _cache_has(self, key: str) -> bool:
        p = self._cache_path(key)
        return p is not None and p.exists()

    def _cache_put(self, key: str, data: bytes) -> None:
        p = self._cache_path(key)
        if p is not None:
            atomic_write(p, data)

    def _cached(self, key: str, digest: str | None) -> bytes:
        """The bytes of immutable object ``key``, from the local cache when they still hash to ``digest``, else
        from the store (proven against ``digest``, then cached)."""
        p = self._cache_path(key)
        if p is not None and p.exists():
            data = p.read_bytes()
            if digest is None or hashlib.sha256(data).hexdigest() == digest:
                return data
        data = self.store.get(key)
        if digest is not None and hashlib.sha256(data).hexdigest() != digest:
            raise IntegrityError(f"{self.location}: {key} is damaged: its bytes do not hash to its id. {_REPAIR}")
        if p is not None:
            atomic_write(p, data)
        return data

