"""Retention: which snapshots to keep, forgetting the rest, and pruning chunks nothing references any more.

The plan is pure: of a bundle's snapshots (oldest first), keep the newest ``keep_last`` and, among the older ones,
every ``keep_every``-th (counted from the oldest, so the kept ones do not shift as new snapshots arrive). Applying
it deletes the forgotten manifests first; pruning then deletes only chunks that (a) no remaining manifest of any
bundle references and (b) were written more than ``grace`` ago — a snapshot still uploading has chunks that no
manifest names yet, and the grace period keeps them (Kopia's rule).

Pruning must not run at the same time as a snapshot into the same repository that re-adds old content (it could
reuse a chunk that prune is deleting). The flows serialise protect and retention per bundle; prune also re-reads
the manifests after deleting and reports any snapshot that now lacks a chunk, which `llmdr verify --repair` can
bring back from another region.

In a region with Object Lock, retention never deletes a locked object: a snapshot the policy forgets but whose lock
is still in force stays (reported as ``locked``, forgotten by a later run once the lock ends), and so do its chunks.
The snapshots it keeps get their locks extended (chunks first, then the manifest) whenever less than half the lock
period is left, so a kept snapshot never becomes deletable while the policy keeps it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from llmdr.errors import ObjectLocked, UsageError
from llmdr.repo.locks import Locker
from llmdr.repo.repository import Repository, SnapshotInfo, chunk_key, manifest_key


@dataclass(frozen=True)
class Policy:
    keep_last: int
    keep_every: int | None = None  # also keep every Mth older snapshot

    def __post_init__(self) -> None:
        if self.keep_last < 1:
            raise UsageError("retention keep_last must be at least 1: the newest snapshot is never forgotten")
        if self.keep_every is not None and self.keep_every < 1:
            raise UsageError("retention keep_every must be at least 1")


def plan(snapshots: list[SnapshotInfo], policy: Policy) -> tuple[list[str], list[str]]:
    """(keep, forget) snapshot ids; ``snapshots`` oldest first."""
    ids = [s.id for s in snapshots]
    newest = set(ids[-policy.keep_last:])
    keep = []
    for i, sid in enumerate(ids):
        if sid in newest or (policy.keep_every and i % policy.keep_every == 0):
            keep.append(sid)
    forget = [sid for sid in ids if sid not in set(keep)]
    return keep, forget


@dataclass
class RetentionResult:
    location: str
    kept: list[str] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    chunks_deleted: int = 0
    bytes_freed: int = 0
    chunks_in_grace: int = 0
    raced: list[str] = field(default_factory=list)  # snapshots written during the prune that lost a chunk
    locked: dict[str, str] = field(default_factory=dict)  # forgotten by the policy, kept by Object Lock: id -> until
    chunks_locked: int = 0  # unreferenced chunks still under Object Lock
    locks_extended: int = 0  # objects of kept snapshots whose locks were extended

    def to_json(self) -> dict:
        return {"location": self.location, "kept": self.kept, "forgotten": self.forgotten,
                "chunks_deleted": self.chunks_deleted, "bytes_freed": self.bytes_freed,
                "chunks_in_grace": self.chunks_in_grace, "raced": self.raced, "locked": self.locked,
                "chunks_locked": self.chunks_locked, "locks_extended": self.locks_extended}


def apply_retention(repo: Repository, bundle: str, policy: Policy, *, prune: bool = True,
                    grace_s: float = 6 * 3600, now: float | None = None, workers: int = 8) -> RetentionResult:
    t = time.time() if now is None else now
    res = RetentionResult(repo.location)
    snaps = repo.snapshots(bundle=bundle)
    res.kept, forgotten = plan(snaps, policy)
    locker = Locker.of(repo.store)
    if locker is not None:
        by_id = {s.id: s for s in snaps}
        _extend_kept(locker, [by_id[i] for i in res.kept], t, res, workers)
    for sid in forgotten:
        lock = locker.locked(manifest_key(sid), t) if locker is not None else None
        try:
            if lock is None:
                repo.delete_manifest(sid)
                res.forgotten.append(sid)
                continue
        except ObjectLocked:
            lock = locker.locked(manifest_key(sid), t) if locker is not None else None
        until = "legal hold" if lock is None or lock.legal_hold else time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                 time.gmtime(lock.until))
        res.locked[sid] = until
    if prune:
        _prune(repo, res, grace_s, t, locker)
    return res


def _extend_kept(locker: Locker, kept: list[SnapshotInfo], now: float, res: RetentionResult, workers: int) -> None:
    """Extend the locks of kept snapshots with less than half the lock period left: chunks first, then manifests (a
    manifest's lock is its snapshot's lock)."""
    due = []
    for info in kept:
        lock = locker.snapshot_lock(info.id)
        if lock is None or (not lock.legal_hold and lock.until < now + locker.period_s / 2):
            due.append(info)
    if not due:
        return
    chunks = set().union(*(i.manifest.chunk_set().keys() for i in due))
    until = now + locker.period_s
    res.locks_extended += locker.extend([chunk_key(d) for d in sorted(chunks)], until=until, workers=workers)
    res.locks_extended += locker.extend([manifest_key(i.id) for i in due], until=until, workers=workers)


def _prune(repo: Repository, res: RetentionResult, grace_s: float, now: float, locker: Locker | None = None) -> None:
    referenced: set[str] = set()
    for info in repo.snapshots():  # every bundle's snapshots share the chunk store
        referenced.update(info.manifest.chunk_set())
    deleted: set[str] = set()
    for hexd, blob in list(repo.chunk_infos()):
        if hexd in referenced:
            continue
        if blob.modified is None or now - blob.modified < grace_s:
            res.chunks_in_grace += 1
            continue
        if locker is not None and locker.locked(blob.key, now) is not None:
            res.chunks_locked += 1
            continue
        try:
            repo.delete_chunk(hexd)
        except ObjectLocked:
            res.chunks_locked += 1
            continue
        deleted.add(hexd)
        res.chunks_deleted += 1
        res.bytes_freed += blob.size
    if deleted:
        res.raced = [i.id for i in repo.snapshots() if deleted & i.manifest.chunk_set().keys()]
