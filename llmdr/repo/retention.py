"""Retention: which snapshots to keep, and forgetting the rest.

The plan is pure: of a bundle's snapshots (catalog order, oldest first), keep the newest ``keep_last`` and, among the
older ones, every ``keep_every``-th (counted from the first snapshot the catalog ever listed, forgotten ones included, so the
kept ones do not shift as new snapshots arrive or old ones are forgotten).
Order is the catalog's seq, never a clock: a snapshot taken on a host whose clock runs a year ahead is not "newest"
unless it is the head. The head is never forgotten.

Forgetting writes one forget entry into the bundle's catalog; nothing is deleted, so it works in an Object-Locked
region too. Space comes back with a prune (``prune.py``): a two-phase delete of packs no live snapshot uses, safe
against snapshots and copies running at the same time. In a region with Object Lock, the snapshots kept get their
locks extended (packs and trees first, then the record) whenever less than half the lock period is left; objects
of forgotten snapshots stay until their locks end (reported as ``locked``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from llmdr.errors import UsageError
from llmdr.repo.layout import record_key
from llmdr.repo.locks import Locker
from llmdr.repo.repository import Repository
from llmdr.repo.snapinfo import SnapshotInfo


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
    for i, s in enumerate(snapshots):
        number = s.number if s.number is not None else i  # the catalog's count: forgetting does not renumber
        if s.id in newest or (policy.keep_every and number % policy.keep_every == 0):
            keep.append(s.id)
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
    prune: dict | None = None  # what the prune run did (``prune.PruneResult.to_json``)

    def to_json(self) -> dict:
        return {"location": self.location, "kept": self.kept, "forgotten": self.forgotten,
                "chunks_deleted": self.chunks_deleted, "bytes_freed": self.bytes_freed,
                "chunks_in_grace": self.chunks_in_grace, "raced": self.raced, "locked": self.locked,
                "chunks_locked": self.chunks_locked, "locks_extended": self.locks_extended, "prune": self.prune}


def apply_retention(repo: Repository, bundle: str, policy: Policy, *, prune: bool = True,
                    grace_s: float | None = None, now: float | None = None, workers: int = 8) -> RetentionResult:
    """Forget what ``policy`` does not keep (one forget entry in the bundle's catalog; nothing is deleted), extend
    the Object Lock of what it keeps, and with ``prune`` run a prune (``prune.prune``) for the space."""
    t = time.time() if now is None else now
    res = RetentionResult(repo.location)
    snaps = repo.snapshots(bundle=bundle)
    res.kept, forgotten = plan(snaps, policy)
    if snaps and snaps[-1].id not in res.kept:  # never the head, whatever the policy says
        raise UsageError(f"retention would forget the newest snapshot {snaps[-1].short} of {bundle!r}; refusing")
    locker = Locker.of(repo.store)
    if locker is not None:
        by_id = {s.id: s for s in snaps}
        _extend_kept(repo, locker, [by_id[i] for i in res.kept], t, res, workers)
        for sid in forgotten:
            lock = locker.locked(record_key(sid), t)
            if lock is not None:
                res.locked[sid] = "legal hold" if lock.legal_hold else time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                     time.gmtime(lock.until))
    if forgotten:
        repo.forget(bundle, forgotten)
        res.forgotten = list(forgotten)
    if prune:
        from llmdr.repo.prune import prune as run_prune

        p = run_prune(repo, **({"safety_s": grace_s} if grace_s is not None else {}))
        res.chunks_deleted, res.bytes_freed = p.chunks_deleted, p.bytes_freed
        res.chunks_in_grace, res.chunks_locked = p.packs_in_grace, p.packs_locked
        res.prune = p.to_json()
    return res


def _extend_kept(repo: Repository, locker: Locker, kept: list[SnapshotInfo], now: float, res: RetentionResult,
                 workers: int) -> None:
    """Extend the locks of kept snapshots with less than half the lock period left: packs and trees first, then
    records (a record's lock is its snapshot's)."""
    until = now + locker.period_s
    for info in kept:
        lock = locker.snapshot_lock(info.id)
        if lock is None or (not lock.legal_hold and lock.until < now + locker.period_s / 2):
            res.locks_extended += locker.extend_keys_of(repo, info.id, until=until, workers=workers)
