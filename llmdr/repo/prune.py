"""Prune: give back the space of forgotten snapshots, safely against writers running at the same time
(repository format v2, docs/design/repository-format-v2.md §5).

Deleting is split in two phases a safety time ``S`` apart (Kopia's rule; default 24 h, ``prune.safety_time``):

1. **mark** — under the exclusive repository lock, compute the chunks every live snapshot uses; a pack none of whose
   chunks is used, or that no index names, and that is older than ``S`` by the store's clock, is a candidate. Packs
   mostly unused are repacked first (their used chunks copied into new packs and indexed), then they are candidates
   too. The candidates go into a plan object ``prune/<sha>.json`` with the store time it was made. Nothing is deleted.
2. **delete** — a later prune, for each plan at least ``S`` old: recompute the used set over every snapshot live
   *now* (including ones that appeared since the plan); a candidate that holds a used chunk no other pack holds is
   **rescued**. Then one new index without the remaining candidates, superseding every index read, is written; only
   then are the packs deleted (never one under Object Lock), then the plan.

Why a writer that ignores locks cannot lose data: a writer avoids packs named by plans it sees (it re-uploads those
chunks), re-checks the index just before it publishes (re-uploading chunks whose pack was deleted meanwhile), and a
snapshot published after a plan is seen by that plan's phase two, which rescues the packs it uses. A pack uploaded
but not yet indexed is younger than ``S`` and never a candidate.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

from llmdr.errors import ObjectLocked, ObjectNotFound, StorageError
from llmdr.repo.index import IndexEntry
from llmdr.repo.layout import INDEX, SNAPS, index_key, pack_key, record_key
from llmdr.repo.locks import Locker
from llmdr.repo.manifest import canonical_json
from llmdr.repo.repository import Repository

log = logging.getLogger(__name__)

PRUNE = "prune/"
DEFAULT_SAFETY_S = 24 * 3600.0
SUPERSEDED_AGE_S = 3600.0
CLOCK_RESOLUTION_S = 1.0  # the store's clock comes from HTTP Date headers: whole seconds


@dataclass
class PruneResult:
    location: str
    planned: list[str] = field(default_factory=list)  # packs marked by this run (phase one)
    repacked: int = 0  # partly used packs whose used chunks were copied into new packs
    deleted: list[str] = field(default_factory=list)  # packs deleted by this run (phase two)
    rescued: list[str] = field(default_factory=list)  # planned packs a snapshot started using again
    chunks_deleted: int = 0
    bytes_freed: int = 0
    packs_in_grace: int = 0  # unused packs younger than the safety time, left for a later run
    packs_locked: int = 0  # unused packs still under Object Lock
    records_deleted: int = 0
    indexes_deleted: int = 0
    plans_pending: int = 0  # plans not yet old enough for phase two

    def to_json(self) -> dict:
        return {"location": self.location, "planned": len(self.planned), "repacked": self.repacked,
                "deleted": len(self.deleted), "rescued": len(self.rescued), "chunks_deleted": self.chunks_deleted,
                "bytes_freed": self.bytes_freed, "packs_in_grace": self.packs_in_grace,
                "packs_locked": self.packs_locked, "records_deleted": self.records_deleted,
                "indexes_deleted": self.indexes_deleted, "plans_pending": self.plans_pending}


def plans(repo: Repository) -> dict[str, dict]:
    """Every readable prune plan, by key."""
    out = {}
    for info in repo.store.list(PRUNE):
        try:
            raw = json.loads(repo.store.get(info.key))
            raw["packs"] = [str(p) for p in raw["packs"]]
            out[info.key] = raw
        except (ObjectNotFound, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: prune plan %s left out: %s", repo.location, info.key, exc)
    return out


def planned_packs(repo: Repository, of: dict[str, dict] | None = None) -> set[bytes]:
    """Packs some pending plan marks for deletion: writers must not rely on them. ``of``: plans already read
    (``plans(repo)``), instead of listing them again."""
    return {bytes.fromhex(p) for plan in (plans(repo) if of is None else of).values() for p in plan["packs"]}


def used_chunks(repo: Repository) -> tuple[set[bytes], list[str]]:
    """Chunks used by every live snapshot of every bundle, plus those of records no entry lists and no forget names
    (an append that lost its race, an entry damaged beyond reading); and the ids of forgotten records.

    A live snapshot's file list is found from its catalog entry's inline record (proven against the id), never
    from the ``snaps/`` object alone, so a damaged record object cannot make its chunks look unused. When a live
    snapshot's file list cannot be read, prune refuses (strict on writes): repair it first (`llmdr verify --repair`).
    A record object that is not live and does not verify is junk, or a damaged copy of a snapshot no entry lists:
    it cannot name chunks and is reported."""
    from llmdr.errors import IntegrityError
    from llmdr.repo.tree import load_tree

    used: set[bytes] = set()
    live: dict[str, dict] = {}
    forgotten: set[str] = set()
    for bundle in repo.bundles():
        view = repo.view(bundle)
        for e in view.entries:
            if e.kind == "forget":
                forgotten.update(e.forget)
        for e in view.live:
            live[e.id] = e.record

    def files_of(sid: str, record: dict) -> None:
        for f in load_tree(record["tree"], repo.tree_bytes, where=f"{repo.location}: snapshot {sid[:12]}"):
            used.update(bytes.fromhex(d) for d, _ in f.chunks)

    for sid, record in live.items():
        try:
            files_of(sid, record)
        except (IntegrityError, ObjectNotFound, KeyError, TypeError) as exc:
            raise IntegrityError(
                f"prune refused in {repo.location}: the file list of live snapshot {sid[:12]} cannot be read ({exc}); "
                "without it prune cannot know which packs it needs. Repair it first (`llmdr verify "
                f"{sid[:12]} --region R --repair`), then prune again. Nothing was deleted.") from None
    stored: set[str] = set()
    for info in repo.store.list(SNAPS):
        sid = info.key[len(SNAPS):]
        stored.add(sid)
        if sid in live or (sid in forgotten and sid not in live):
            continue
        try:
            files_of(sid, repo.load_record(sid))
        except (ObjectNotFound, StorageError):
            continue
        except Exception as exc:  # noqa: BLE001 - not live and unreadable: it cannot name chunks; report it
            repo.unreadable[info.key] = str(exc)
    return used, sorted((forgotten - set(live)) & stored)  # records already deleted are not planned again


def prune(repo: Repository, *, safety_s: float = DEFAULT_SAFETY_S, repack_below: float = 0.5,
          lock_wait_s: float = 0.0) -> PruneResult:
    """Run phase two for every plan older than ``safety_s``, then phase one (a new plan)."""
    from llmdr.repo.repolock import hold

    res = PruneResult(repo.location)
    if repo.load_config() is None:
        return res
    with hold(repo.store, "exclusive", "prune", wait_s=lock_wait_s, settle_s=0.2) as lock:
        now = repo.store.server_time()
        pending = plans(repo)
        due = {k: pending.pop(k) for k in list(pending)
               if now - float(pending[k].get("marked_at", now)) >= safety_s - CLOCK_RESOLUTION_S}
        res.plans_pending = len(pending)
        usage = _delete_phase(repo, now, safety_s, due, res, lock) if due else None
        if not due:
            _delete_superseded(repo, now, min(safety_s, SUPERSEDED_AGE_S), res)
        _mark_phase(repo, now, safety_s, repack_below, res, lock, pending, usage)
    return res


def _mark_phase(repo: Repository, now: float, safety_s: float, repack_below: float, res: PruneResult,
                lock, pending: dict[str, dict], usage: tuple[set[bytes], list[str]] | None) -> None:
    """Phase one. ``pending``: the plans left after phase two; ``usage``: ``used_chunks`` as phase two found it
    (nothing it deleted is used, and a snapshot published since is seen by this plan's own phase two)."""
    idx = repo.index(refresh=True, full=True)
    used, forgotten = usage or used_chunks(repo)
    already = planned_packs(repo, pending)
    locker = Locker.of(repo.store)
    candidates: list[str] = []
    repack: list[IndexEntry] = []
    for pack_hex, info in sorted(repo.pack_infos().items()):
        pack = bytes.fromhex(pack_hex)
        if pack in already:
            continue
        entries = idx.entries_of_pack(pack)
        in_use = [e for e in entries if e.chunk in used]
        if len(in_use) == len(entries) and entries:
            continue
        if info.modified is None or now - info.modified < safety_s:
            res.packs_in_grace += 1
            continue
        if locker is not None and locker.locked(info.key, now) is not None:
            res.packs_locked += 1
            continue
        if in_use:
            used_bytes = sum(e.stored_length for e in in_use)
            if used_bytes >= repack_below * max(1, sum(e.stored_length for e in entries)):
                continue
            repack += in_use
        candidates.append(pack_hex)
    if repack:
        from llmdr.repo.packer import PackWriter

        lock.check()
        with PackWriter(repo) as w:
            for e in repack:
                # a chunk another live pack already holds needs no copy (``has``: ``lookup`` falls back to an
                # avoided pack rather than answer None)
                if not idx.has(e.chunk, avoid={e.pack, *(bytes.fromhex(c) for c in candidates)}):
                    w.add(e.chunk.hex(), e.chunk, repo.load_chunk(e.chunk.hex(), size=e.plain_length))
        res.repacked = len({e.pack for e in repack})
    records = [sid for sid in forgotten if locker is None or locker.locked(record_key(sid), now) is None]
    if not candidates and not records:
        return
    lock.check()
    plan = canonical_json({"marked_at": now, "packs": candidates, "records": records})
    repo.store.put(f"{PRUNE}{hashlib.sha256(plan).hexdigest()}.json", plan, retain=False)
    res.planned = candidates
    log.info("%s: prune plan: %d packs, %d records, deleted after %.0f s", repo.location, len(candidates),
             len(records), safety_s)


def _delete_phase(repo: Repository, now: float, safety_s: float, due: dict[str, dict], res: PruneResult,
                  lock) -> tuple[set[bytes], list[str]]:
    """Phase two for the ``due`` plans. Returns ``used_chunks`` as found here, less the records it deleted."""
    idx = repo.index(refresh=True, full=True)
    used, forgotten = used_chunks(repo)
    marked: dict[str, float] = {}
    for plan in due.values():
        for p in plan["packs"]:
            marked[p] = min(marked.get(p, now), float(plan.get("marked_at", now)))
    doomed = {bytes.fromhex(p) for p in marked}
    infos = repo.pack_infos()
    # rescue: a doomed pack holding a used chunk that no surviving pack holds, or one stored again since it was
    # marked (a candidate was older than S then): a writer packed the same chunks in the same order, same pack id
    for pack in sorted(doomed):
        info = infos.get(pack.hex())
        rewritten = info is not None and _rewritten(info, marked[pack.hex()], safety_s)
        if rewritten or any(e.chunk in used and not idx.has(e.chunk, avoid=doomed)
                            for e in idx.entries_of_pack(pack)):
            doomed.discard(pack)
            res.rescued.append(pack.hex())
    present = {bytes.fromhex(p) for p in infos}
    keep = [e for pack in sorted(idx.packs()) if pack not in doomed and pack in present
            for e in idx.entries_of_pack(pack)]
    old_ids = sorted(idx.live_ids())
    doomed_entries = {pack: idx.entries_of_pack(pack) for pack in doomed}  # before the new index hides them
    lock.check()
    repo.add_index(sorted(keep, key=lambda e: (e.chunk, e.pack)), supersedes=tuple(bytes.fromhex(i) for i in old_ids),
                   covers=idx.log_top)
    locker = Locker.of(repo.store)
    for pack in sorted(doomed & present):
        key = pack_key(pack.hex())
        entries = doomed_entries[pack]
        try:
            # the listing above may be minutes old by now: a pack stored again since is a writer's, keep it
            if _rewritten(repo.store.head(key), marked[pack.hex()], safety_s):
                res.rescued.append(pack.hex())
                continue
            repo.store.delete(key)
        except ObjectNotFound:
            continue
        except ObjectLocked:
            res.packs_locked += 1
            continue
        res.deleted.append(pack.hex())
        res.chunks_deleted += len(entries)
        res.bytes_freed += sum(e.stored_length for e in entries)
    gone: set[str] = set()
    for plan in due.values():
        for sid in plan.get("records", []):
            if locker is not None and locker.locked(record_key(sid), now) is not None:
                continue
            try:
                repo.store.delete(record_key(sid))
                res.records_deleted += 1
                gone.add(sid)
            except ObjectLocked:
                pass
    _delete_superseded(repo, now, min(safety_s, SUPERSEDED_AGE_S), res)
    for key in due:
        repo.store.delete(key)
    log.info("%s: prune deleted %d packs (%d bytes), rescued %d", repo.location, len(res.deleted), res.bytes_freed,
             len(res.rescued))
    return used, [sid for sid in forgotten if sid not in gone]


def _rewritten(info, marked_at: float, safety_s: float) -> bool:
    """A planned pack was older than ``safety_s`` when marked: a Last-Modified after that means it was stored again
    (a writer packed the same chunks in the same order, so the same pack id)."""
    return info.modified is not None and info.modified > marked_at - safety_s


def _delete_superseded(repo: Repository, now: float, age_s: float, res: PruneResult) -> None:
    """Delete index objects superseded by an index stored at least ``age_s`` ago: a reader that listed the old ones
    has long finished reading them, and every newer listing shows the superseding one."""
    repo.index(refresh=True, full=True)
    doomed = set()
    for stored, supersedes in list(repo.index_meta.values()):
        if stored is not None and now - stored >= age_s:
            doomed.update(s for s in supersedes if s in repo.index_listed)
    for iid in sorted(doomed):
        try:
            repo.store.delete(index_key(iid))
            res.indexes_deleted += 1
        except ObjectLocked:
            pass


__all__ = ["DEFAULT_SAFETY_S", "INDEX", "PRUNE", "PruneResult", "planned_packs", "plans", "prune", "used_chunks"]
