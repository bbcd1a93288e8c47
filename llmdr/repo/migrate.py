"""``llmdr migrate``: convert a region's format v1 repository to format v2 in place (docs/design/repository-format-v2.md
§8).

v1 keeps one object per chunk (``chunks/<2 hex>/<64 hex>``) and one manifest per snapshot (``snapshots/<id>.json``,
id = SHA-256 of its bytes). v2 keys (``packs/``, ``index/``, ``trees/``, ``snaps/``, ``catalog/``) differ from them,
so both live side by side while a migration runs and v1 readers still work until the last step:

1. refuse while a v1 object is younger than ``RECENT_S`` (v1 writers know no locks) unless ``force``; take the
   exclusive repository lock;
2. read every v1 manifest (tolerant: one that does not parse or prove its id is listed in ``skipped``), order each
   bundle's by the v1 ``parent`` chain, then ``created``, then id;
3. per snapshot: pack the chunks no index holds yet (each read by its v1 key and proven against its id), store the
   index, the trees, then the record (``migrated_from`` = the v1 id) and its catalog entry;
4. verify: every migrated record's file list equals its v1 manifest's and every chunk it names is in a present pack
   (one whose pack went missing is packed again from v1, once); read back about 1 % of the chunks;
5. only then overwrite ``config.json`` with the v2 config (on a locked bucket that is a new version over the locked
   old one). From here every v2 command works on the region; v1 llmdr refuses ``format: 2``.

The v2 config (with its repository id, which encrypted packs bind into every blob) is staged as ``STAGED_CONFIG``
before the first pack, so a run that crashes anywhere resumes with the same id: chunks already indexed are not packed
again, snapshots whose v1 id appears as ``migrated_from`` in the catalog are not published again.

``migrate_finish`` (``llmdr migrate --finish``), run later, deletes the v1 objects older than a safety time that the
v2 repository no longer needs: manifests migrated, chunks in a v2 pack. Locked ones are reported and left; v2 never
reads them. ``resolve_v1`` maps a v1 id (or unique prefix) to the snapshot migrated from it, so ``Repository.resolve``
keeps accepting ids from drill reports and golden answers written before the migration.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import math
import os
import random
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from llmdr.common.progress import NoProgress, Progress
from llmdr.errors import (
    ChunkMissing,
    Conflict,
    FormatMismatch,
    IntegrityError,
    ObjectLocked,
    ObjectNotFound,
    RepositoryLocked,
    StorageError,
    UnsafePathError,
    UsageError,
)
from llmdr.repo.chunking import DEFAULT_CHUNKER, ChunkerParams
from llmdr.repo.ids import is_hex_digest
from llmdr.repo.layout import CONFIG_KEY, EVIDENCE, MIGRATED_FROM, RepoConfig
from llmdr.repo.locks import Locker
from llmdr.repo.manifest import Manifest, canonical_json, manifest_id
from llmdr.repo.packer import PackWriter
from llmdr.repo.repolock import EXCLUSIVE, hold
from llmdr.repo.repository import Repository
from llmdr.repo.tree import build_tree, record_json
from llmdr.storage.base import BlobInfo, BlobStore

log = logging.getLogger(__name__)

V1_CHUNKS = "chunks/"
V1_SNAPSHOTS = "snapshots/"
STAGED_CONFIG = "migrate/config.json"
RECENT_S = 600.0
SAMPLE = 0.01


def v1_chunk_key(hexdigest: str) -> str:
    return f"{V1_CHUNKS}{hexdigest[:2]}/{hexdigest}"


def v1_manifest_key(snapshot_id: str) -> str:
    return f"{V1_SNAPSHOTS}{snapshot_id}.json"


@dataclass
class MigrateResult:
    location: str
    format_before: int | None = None  # 1, 2 (a resumed or repeated run), None (v1 objects without a config.json)
    migrated: dict[str, str] = field(default_factory=dict)  # v1 id -> v2 id, published by this run
    already: dict[str, str] = field(default_factory=dict)  # v1 id -> v2 id, published by an earlier run
    skipped: dict[str, str] = field(default_factory=dict)  # v1 object key -> why it was not migrated
    chunks_packed: int = 0
    bytes_packed: int = 0
    packs: int = 0
    chunks_checked: int = 0  # chunks of migrated records found in a present pack
    chunks_read: int = 0  # of those, read back and proven (the ~1 % sample)
    evidence_copied: int = 0  # evidence objects copied from evidence/<v1 id>/ to evidence/<v2 id>/
    config_written: bool = False
    duration_s: float = 0.0
    checked: dict[str, int] = field(default_factory=dict, repr=False)  # chunk -> length, of the migrated records

    @property
    def ok(self) -> bool:
        return not self.skipped

    def to_json(self) -> dict:
        out = {k: v for k, v in vars(self).items() if k != "checked"}
        return out | {"ok": self.ok, "duration_s": round(self.duration_s, 3)}


@dataclass
class FinishResult:
    location: str
    deleted: int = 0
    bytes_freed: int = 0
    young: int = 0  # v1 objects younger than the safety time, left for a later run
    locked: dict[str, str] = field(default_factory=dict)  # key -> why it cannot be deleted yet (Object Lock)
    kept: dict[str, str] = field(default_factory=dict)  # key -> why v2 still needs it (not migrated)

    def to_json(self) -> dict:
        return dict(vars(self))


# reading v1 -----------------------------------------------------------------------------------------------------------
def _raw_config(store: BlobStore) -> dict | None:
    try:
        raw = json.loads(store.get(CONFIG_KEY))
    except ObjectNotFound:
        return None
    except ValueError as exc:
        raise IntegrityError(f"{store.location}/{CONFIG_KEY} is malformed ({exc!r}); it is not an llmdr repository. "
                             "Restore it from a backup or point the region at another prefix.") from None
    fmt = raw.get("format") if isinstance(raw, dict) else None
    if fmt not in (1, 2):
        raise FormatMismatch(f"{store.location}/{CONFIG_KEY} names repository format {fmt!r}; `llmdr migrate` "
                             "converts format 1 to format 2 only")
    return raw


def _has_any(store: BlobStore, prefix: str) -> bool:
    return next(iter(store.list(prefix)), None) is not None


def read_v1_manifests(store: BlobStore, *, workers: int = 8) -> tuple[dict[str, Manifest], dict[str, str]]:
    """Every v1 manifest that parses and hashes to its id, by id; and the keys left out, with the reason."""
    skipped: dict[str, str] = {}
    ids: list[str] = []
    for info in store.list(V1_SNAPSHOTS):
        name = info.key[len(V1_SNAPSHOTS):]
        if name.endswith(".json") and is_hex_digest(name[:-5]):
            ids.append(name[:-5])
        else:
            skipped[info.key] = "not a v1 manifest name (snapshots/<64 hex>.json)"

    def load(sid: str) -> tuple[str, Manifest | str]:
        try:
            return sid, Manifest.from_bytes(store.get(v1_manifest_key(sid)), expect_id=sid)
        except (IntegrityError, UnsafePathError, ObjectNotFound) as exc:
            return sid, str(exc)

    out: dict[str, Manifest] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(ids) or 1))) as pool:
        for sid, got in pool.map(load, ids):
            if isinstance(got, Manifest):
                out[sid] = got
            else:
                skipped[v1_manifest_key(sid)] = got
                log.warning("%s: v1 manifest %s left out: %s", store.location, sid[:12], got)
    return out, skipped


def order_v1(manifests: dict[str, Manifest]) -> list[tuple[str, Manifest]]:
    """Each bundle's manifests (bundles by name) parents first, then by ``created``, then by id."""
    out: list[tuple[str, Manifest]] = []
    for bundle in sorted({m.bundle for m in manifests.values()}):
        mine = {i: m for i, m in manifests.items() if m.bundle == bundle}
        children: dict[str, list[str]] = {}
        ready: list[tuple[str, str]] = []
        for i, m in mine.items():
            if m.parent in mine and m.parent != i:
                children.setdefault(m.parent, []).append(i)
            else:
                heapq.heappush(ready, (m.created, i))
        done: set[str] = set()
        while ready:
            _, i = heapq.heappop(ready)
            done.add(i)
            out.append((i, mine[i]))
            for c in children.get(i, []):
                heapq.heappush(ready, (mine[c].created, c))
        out += sorted(((i, m) for i, m in mine.items() if i not in done), key=lambda t: (t[1].created, t[0]))
    return out


def _v1_chunks(store: BlobStore, need: list[tuple[str, int]], workers: int) -> Iterator[tuple[str, bytes]]:
    """The bytes of each v1 chunk in ``need``, in order, read ``2 * workers`` ahead and proven against the id."""
    def fetch(item: tuple[str, int]) -> tuple[str, bytes]:
        d, n = item
        key = v1_chunk_key(d)
        try:
            data = store.get(key)
        except ObjectNotFound:
            raise ChunkMissing(f"v1 chunk {key} is missing from {store.location}") from None
        if len(data) != n or hashlib.sha256(data).hexdigest() != d:
            raise IntegrityError(f"v1 chunk {key} in {store.location} is damaged: its bytes do not hash to its id")
        return d, data

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        window: deque = deque()
        items = iter(need)
        for item in items:
            window.append(pool.submit(fetch, item))
            if len(window) >= 2 * max(1, workers):
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


# migrating ------------------------------------------------------------------------------------------------------------
def migrated_ids(repo: Repository) -> dict[str, str]:
    """v1 id -> v2 id for every snapshot entry in the catalog carrying ``migrated_from`` (forgotten ones too)."""
    out: dict[str, str] = {}
    for bundle in repo.bundles():
        for e in repo.view(bundle).entries:
            v1 = (e.record or {}).get(MIGRATED_FROM)
            if e.kind == "snapshot" and isinstance(v1, str) and e.id:
                out.setdefault(v1, e.id)
    return out


def resolve_v1(repo: Repository, v1_id: str) -> str | None:
    """The v2 id of the live snapshot migrated from v1 id ``v1_id`` (a full id or a unique prefix), else None."""
    ref = v1_id.strip().lower()
    if len(ref) < 4:
        return None
    hits = {s.record[MIGRATED_FROM]: s.id for s in repo.snapshots()
            if isinstance(s.record.get(MIGRATED_FROM), str) and s.record[MIGRATED_FROM].startswith(ref)}
    return next(iter(hits.values())) if len(hits) == 1 else None


def _staged_config(store: BlobStore, raw: dict | None, manifests: dict[str, Manifest]) -> RepoConfig:
    """The v2 config this migration writes, created once (``STAGED_CONFIG``, no Object Lock) so every resumed run
    packs with the same repository id."""
    try:
        return RepoConfig.from_bytes(store.get(STAGED_CONFIG), f"{store.location}/{STAGED_CONFIG}")
    except ObjectNotFound:
        pass
    if raw is not None:
        chunker = ChunkerParams.from_json(raw["chunker"])
    else:  # no config.json: the chunker the manifests name
        chunker = min((m.chunker for m in manifests.values()), default=DEFAULT_CHUNKER, key=lambda c: c.avg_size)
    cfg = RepoConfig(chunker=chunker, repo_id=os.urandom(16).hex())
    data = cfg.to_bytes()
    try:
        store.put(STAGED_CONFIG, data, sha256=hashlib.sha256(data).digest(), if_absent=True, retain=False)
    except Conflict:
        return RepoConfig.from_bytes(store.get(STAGED_CONFIG), f"{store.location}/{STAGED_CONFIG}")
    return cfg


def _refuse_recent(store: BlobStore) -> None:
    now = store.server_time()
    for prefix in (V1_SNAPSHOTS, V1_CHUNKS):
        for info in store.list(prefix):
            if info.modified is not None and now - info.modified < RECENT_S:
                raise RepositoryLocked(
                    f"{store.location}: v1 object {info.key} was written {max(0.0, now - info.modified):.0f} s ago; "
                    "a v1 llmdr (which knows no locks) may still be writing. Stop every v1 writer of this region, "
                    f"wait {RECENT_S / 60:.0f} minutes and run `llmdr migrate` again, or pass --force when you are "
                    "sure none runs.")


def migrate(store: BlobStore, *, force: bool = False, workers: int = 8, progress: Progress | None = None,
            lock_wait_s: float = 0.0, sample: float = SAMPLE) -> MigrateResult:
    """Convert the v1 repository in ``store`` to v2 (see the module docstring); safe to run again after a crash."""
    t0 = time.perf_counter()
    progress = progress or NoProgress()
    res = MigrateResult(store.location)
    raw = _raw_config(store)
    res.format_before = raw["format"] if raw is not None else None
    has_v1 = _has_any(store, V1_SNAPSHOTS) or _has_any(store, V1_CHUNKS)
    if not has_v1 and raw is None:
        raise UsageError(f"{store.location} holds no llmdr repository (no {CONFIG_KEY}, no v1 objects): nothing to "
                         "migrate. Check the region's bucket and prefix.")
    if raw is not None and raw["format"] == 2:  # a repeated run: only v1 manifests not migrated yet are work
        done = migrated_ids(Repository(store))
        left = [i for i in store.list(V1_SNAPSHOTS) if i.key[len(V1_SNAPSHOTS):-5] not in done]
        if not left:
            res.already = {v1: v2 for v1, v2 in done.items()}
            res.duration_s = time.perf_counter() - t0
            return res
    if not force:
        _refuse_recent(store)
    with hold(store, EXCLUSIVE, "migrate", wait_s=lock_wait_s, settle_s=0.2) as lock:
        manifests, res.skipped = read_v1_manifests(store, workers=workers)
        repo = Repository(store)
        if raw is not None and raw["format"] == 2:
            cfg = repo.config()
        else:
            cfg = _staged_config(store, raw, manifests)
            repo.use_config(cfg)
        done = migrated_ids(repo)
        todo = []
        for v1, m in order_v1(manifests):
            if v1 in done:
                res.already[v1] = done[v1]
            elif m.chunker != cfg.chunker:
                res.skipped[v1_manifest_key(v1)] = (f"chunked with {m.chunker}, not the repository's {cfg.chunker}; "
                                                    "its chunk ids cannot be shared")
            else:
                todo.append((v1, m))
        idx = repo.index(refresh=True)
        fresh = {d: n for _, m in todo for d, n in m.chunk_set().items() if not idx.has(bytes.fromhex(d))}
        progress.start(f"migrate {store.location}", sum(fresh.values()))
        try:
            for v1, m in todo:
                lock.check()
                try:
                    res.migrated[v1] = _migrate_one(repo, v1, m, res, workers, progress)
                except (ChunkMissing, IntegrityError) as exc:
                    res.skipped[v1_manifest_key(v1)] = str(exc)
                    log.warning("%s: v1 snapshot %s not migrated: %s", store.location, v1[:12], exc)
        finally:
            progress.finish()
        for v1, v2 in {**res.already, **res.migrated}.items():
            res.evidence_copied += _copy_evidence(repo, v1, v2)
        lost = _check(repo, manifests, res)
        if lost:  # placed by an index but their pack is gone (a lost write, an earlier run's damage): v1 still has them
            log.warning("%s: %d chunks of migrated snapshots are in no present pack; packing them again from v1",
                        store.location, len(lost))
            with PackWriter(repo, workers=workers) as w:
                for d, data in _v1_chunks(store, sorted(lost.items()), workers):
                    w.add(d, bytes.fromhex(d), data)
            res.packs += w.packs
            lost = _check(repo, manifests, res)
        if lost:
            raise IntegrityError(
                f"{store.location}: migration check failed: {len(lost)} chunks of migrated snapshots are in no pack "
                f"present (e.g. {next(iter(lost))[:12]}) even after packing them again, so the store loses writes. "
                "config.json was not switched and nothing v1 was deleted: v1 llmdr keeps working. Check the store, "
                "then run `llmdr migrate` again.")
        _sample(repo, res, sample, workers)
        if raw is None or raw["format"] == 1:
            lock.check()
            data = cfg.to_bytes()
            store.put(CONFIG_KEY, data, sha256=hashlib.sha256(data).digest())
            res.config_written = True
    res.duration_s = time.perf_counter() - t0
    log.info("%s: migrated %d snapshots (%d earlier, %d skipped), %d chunks packed", store.location,
             len(res.migrated), len(res.already), len(res.skipped), res.chunks_packed)
    return res


def _migrate_one(repo: Repository, v1: str, m: Manifest, res: MigrateResult, workers: int,
                 progress: Progress) -> str:
    """Pack what ``m`` needs, then publish its record; returns the v2 id."""
    started = time.time()
    idx = repo.index()
    need = [(d, n) for d, n in m.chunk_set().items() if not idx.has(bytes.fromhex(d))]
    if need:
        with PackWriter(repo, workers=workers) as w:
            for d, data in _v1_chunks(repo.store, need, workers):
                w.add(d, bytes.fromhex(d), data)
                res.chunks_packed += 1
                res.bytes_packed += len(data)
                progress.advance(len(data))
        res.packs += w.packs
        repo.compact_if_needed()  # one index per snapshot migrated: merged once more than 32 are live
    tree = build_tree(m.files)
    repo.save_tree(tree)
    locker = Locker.of(repo.store)
    if locker is not None:  # packs written for earlier snapshots must stay locked as long as this one (locks.py)
        written = {d for d, _ in need}
        locker.extend_reused(repo, [d for d in m.chunk_set() if d not in written], written=written, started=started,
                             workers=workers)

    # The record depends on the v1 manifest alone (its parent stays the v1 parent id, which resolves through
    # migrated_from; the entry's prev holds this region's order): a v1 snapshot copied to several regions gets the
    # same v2 id in each, so replicate finds it there after both regions are migrated.
    record = record_json(m, tree.root) | {MIGRATED_FROM: v1}
    sid = manifest_id(canonical_json(record))
    return repo.publish(m.bundle, lambda prev: (sid, record)).id


def _copy_evidence(repo: Repository, v1: str, v2: str) -> int:
    """Copy what v1 kept beside snapshot ``v1`` (``evidence/<v1>/<name>``) to ``evidence/<v2>/<name>`` where v2
    readers look; the v1 objects stay. Idempotent, so a resumed run completes what a crash left."""
    n = 0
    names = [i.key.rsplit("/", 1)[1] for i in repo.store.list(f"{EVIDENCE}{v1}/")]
    there = {i.key.rsplit("/", 1)[1] for i in repo.store.list(f"{EVIDENCE}{v2}/")} if names else set()
    for name in names:
        if name not in there:
            repo.save_evidence(v2, name, repo.store.get(f"{EVIDENCE}{v1}/{name}"))
            n += 1
    return n


def _check(repo: Repository, manifests: dict[str, Manifest], res: MigrateResult) -> dict[str, int]:
    """Every migrated record lists its v1 manifest's files (``IntegrityError`` otherwise) and every chunk it names is
    in a present pack; returns the chunks that are not (id -> length). Sets ``chunks_checked``."""
    idx = repo.index(refresh=True)
    packs = set(repo.pack_infos())
    chunks: dict[str, int] = {}
    lost: dict[str, int] = {}
    gone = idx.packs() - {bytes.fromhex(p) for p in packs}
    live = set(repo.snapshot_ids())  # a migrated snapshot forgotten since is not checked
    for v1, v2 in {**res.already, **res.migrated}.items():
        if v2 not in live:
            continue
        files = repo.load_manifest(v2).files
        if v1 in manifests and sorted(files, key=lambda f: f.path) != sorted(manifests[v1].files,
                                                                             key=lambda f: f.path):
            raise IntegrityError(f"{repo.location}: snapshot {v2[:12]} does not list the files of v1 manifest "
                                 f"{v1[:12]} it was migrated from; config.json was not switched and v1 llmdr keeps "
                                 "working. Report this (it is a bug), with both ids.")
        for f in files:
            for d, n in f.chunks:
                e = idx.lookup(bytes.fromhex(d), avoid=gone)
                if e is None or e.pack.hex() not in packs:
                    lost[d] = n
                chunks[d] = n
    res.chunks_checked = len(chunks)
    res.checked = chunks
    return lost


def _sample(repo: Repository, res: MigrateResult, sample: float, workers: int) -> None:
    """Read back about ``sample`` of the checked chunks (at least one), each proven against its id."""
    chunks = res.checked
    if not chunks:
        return
    picked = random.Random().sample(sorted(chunks), max(1, math.ceil(len(chunks) * sample)))
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(picked)))) as pool:
        for _ in pool.map(lambda d: repo.load_chunk(d, size=chunks[d], of=" (migration check)",
                                                    then="config.json was not switched; run `llmdr migrate` again."),
                          picked):
            res.chunks_read += 1


# finishing ------------------------------------------------------------------------------------------------------------
def migrate_finish(store: BlobStore, *, safety_s: float, workers: int = 8, lock_wait_s: float = 0.0) -> FinishResult:
    """Delete the v1 objects v2 no longer needs and older than ``safety_s`` by the store's clock: manifests whose
    snapshot was migrated (forgotten since, too), chunks held by a v2 pack; and the staged config, whatever its age
    (unused once config.json says v2). Others are kept and named; locked ones are reported and left (v2 ignores
    them)."""
    res = FinishResult(store.location)
    repo = Repository(store)
    repo.config()  # FormatMismatch while config.json still says v1: migrate first
    with hold(store, EXCLUSIVE, "migrate-finish", wait_s=lock_wait_s, settle_s=0.2) as lock:
        done = set(migrated_ids(repo))
        packed = repo.list_chunks()
        now = store.server_time()
        doomed: list[BlobInfo] = []
        for info in _v1_objects(store):
            why = _needed(info.key, done, packed)
            if why is not None:
                res.kept[info.key] = why
            elif info.key != STAGED_CONFIG and info.modified is not None and now - info.modified < safety_s:
                res.young += 1
            else:
                doomed.append(info)
        lock.check()

        def drop(info: BlobInfo) -> tuple[BlobInfo, str | None]:
            try:
                store.delete(info.key)
                return info, None
            except ObjectLocked as exc:
                return info, str(exc)

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for info, locked in pool.map(drop, doomed):
                if locked is None:
                    res.deleted += 1
                    res.bytes_freed += info.size
                else:
                    res.locked[info.key] = locked
    log.info("%s: deleted %d v1 objects, %d locked, %d kept, %d younger than %.0f s", store.location, res.deleted,
             len(res.locked), len(res.kept), res.young, safety_s)
    return res


def _v1_objects(store: BlobStore) -> Iterable[BlobInfo]:
    for prefix in (V1_SNAPSHOTS, V1_CHUNKS):
        yield from store.list(prefix)
    try:
        yield store.head(STAGED_CONFIG)
    except ObjectNotFound:
        pass
    except StorageError as exc:
        log.warning("%s: %s not checked: %s", store.location, STAGED_CONFIG, exc)


def _needed(key: str, done: set[str], packed: dict[str, int]) -> str | None:
    """Why v2 still needs v1 object ``key``, or None when it may go."""
    if key.startswith(V1_SNAPSHOTS):
        name = key[len(V1_SNAPSHOTS):]
        if name.endswith(".json") and name[:-5] in done:
            return None
        return ("not migrated: `llmdr migrate` migrates one written after it and says why it skips one it cannot "
                "read; remove such an object by hand once you no longer need it")
    if key.startswith(V1_CHUNKS):
        d = key.rsplit("/", 1)[-1]
        return None if d in packed else "in no v2 pack (its snapshot was not migrated)"
    return None
