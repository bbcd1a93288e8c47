"""Object Lock (write once, read many) on a region whose store has it configured.

The S3 adapter locks every object it writes for the region's ``object_lock.period``. What the adapter cannot know
is which *existing* objects a new snapshot relies on: a pack uploaded a month ago whose chunks today's snapshot reuses
must be locked as long as today's snapshot is. ``Locker`` extends those locks (one PutObjectRetention per object,
in parallel, with the store's retry policy), and tells retention which objects are still locked.

Rule kept by every writer (snapshot, cross-region copy, retention): every pack holding a chunk of a snapshot is
locked at least until its record's lock minus a quarter of the period (``slack_s``). A new snapshot reusing chunks that a recent
snapshot already locked long enough (its record lock ends after now + period - slack) does not re-lock them, so a
protect every few minutes costs one HEAD, not one request per chunk; a full extension happens once per slack. Retention
extends a kept snapshot when less than half the period is left, while its chunks still have at least a quarter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from llmdr.repo.layout import pack_key, record_key
from llmdr.repo.repository import Repository
from llmdr.storage.base import BlobStore, Lock, LockPolicy

log = logging.getLogger(__name__)


class Locker:
    """Object Lock operations on one store, through the storage interface (every wrapper forwards ``retention`` and
    ``extend_lock``; the retrying store retries them, a read-only store refuses ``extend_lock``)."""

    def __init__(self, store: BlobStore, policy: LockPolicy) -> None:
        self.store = store
        self.location = store.location
        self.mode = policy.mode
        self.period_s = float(policy.period_s)

    @classmethod
    def of(cls, store: BlobStore) -> "Locker | None":
        """The locker of ``store``, or None when its puts are not locked (no Object Lock configured)."""
        policy = store.lock_policy()
        return None if policy is None else cls(store, policy)

    def retention(self, key: str) -> Lock | None:
        return self.store.retention(key)

    def snapshot_lock(self, snapshot_id: str) -> Lock | None:
        """The lock on a snapshot's record (the snapshot's own lock)."""
        return self.retention(record_key(snapshot_id))

    def chunk_lock(self, repo: Repository, hexdigest: str) -> Lock | None:
        """The lock on the pack holding ``hexdigest``."""
        e = repo.locate(hexdigest)
        return None if e is None else self.retention(pack_key(e.pack.hex()))

    def locked(self, key: str, now: float | None = None) -> Lock | None:
        """The lock on ``key`` when it is still in force at ``now``, else None."""
        lock = self.retention(key)
        t = time.time() if now is None else now
        return lock if lock is not None and (lock.legal_hold or lock.until > t) else None

    @property
    def slack_s(self) -> float:
        return self.period_s / 4

    def extend_reused(self, repo: Repository, chunks: Iterable[str], *, written: Iterable[str] = (),
                      started: float | None = None, workers: int = 8, now: float | None = None) -> int:
        """Before publishing a snapshot into ``repo``: lock the chunks it reuses (hex digests) as long as the new
        snapshot, except those a recently locked snapshot already covers. Chunks this run ``written`` were locked
        when put; if the run began (``started``) more than the slack ago, the early ones would end too soon, so they
        are extended too. Returns how many locks were extended."""
        t = time.time() if now is None else now
        todo = set(chunks)
        if started is not None and t - started > self.slack_s:
            todo |= set(written)
        enough = t + self.period_s - self.slack_s
        for info in repo.newest_first():  # usually the previous snapshot covers everything: the rest is not read
            if not todo:
                break
            mine = todo & info.manifest.chunk_set().keys()
            if not mine:
                continue
            lock = self.snapshot_lock(info.id)
            if lock is not None and (lock.legal_hold or lock.until >= enough):
                todo -= mine
        return self.extend(pack_keys(repo, todo), workers=workers)

    def extend_keys_of(self, repo: Repository, snapshot_id: str, *, until: float | None = None,
                       workers: int = 8) -> int:
        """Extend every object of ``snapshot_id`` (packs, trees, record) to ``until``: packs first, the record last
        (a record's lock is its snapshot's)."""
        from llmdr.repo.layout import tree_key
        from llmdr.repo.tree import tree_ids

        m = repo.load_manifest(snapshot_id)
        record = repo.load_record(snapshot_id)
        n = self.extend(pack_keys(repo, m.chunk_set()), until=until, workers=workers)
        n += self.extend([tree_key(t) for t in tree_ids(record["tree"], repo.tree_bytes)], until=until,
                         workers=workers)
        return n + self.extend([record_key(snapshot_id)], until=until, workers=workers)

    def extend(self, keys: Iterable[str], *, until: float | None = None, workers: int = 8) -> int:
        """Lock every key at least until ``until`` (default: now + the region's period). Returns how many locks
        were extended (the others already lasted long enough)."""
        target = time.time() + self.period_s if until is None else until
        keys = list(keys)
        if not keys:
            return 0
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(keys))), thread_name_prefix="llmdr-lock") as pool:
            changed = sum(pool.map(lambda k: bool(self.store.extend_lock(k, target)), keys))
        log.info("%s: %d of %d object locks extended to %s", self.location, changed, len(keys),
                 time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(target)))
        return changed


def pack_keys(repo: Repository, chunks: Iterable[str]) -> list[str]:
    """The keys of the packs holding ``chunks`` (each once, sorted)."""
    packs = set()
    for d in chunks:
        e = repo.locate(d)
        if e is not None:
            packs.add(e.pack.hex())
    return [pack_key(p) for p in sorted(packs)]
