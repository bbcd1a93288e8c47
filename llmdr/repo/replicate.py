"""Cross-region copy: only the chunks the destination lacks, each verified, the catalog entry last.

The chunks the destination lacks are read from the source by pack range, as a restore reads them (``rangeread``:
coalesced ranged GETs streamed into reused buffers on worker threads). Each chunk is proven against its id before
it is packed for the destination (a damaged source copy is never propagated); packs go up as verified puts, so the
destination refuses bytes damaged on the way. The destination has its own packs (regions repack; chunk ids are
what is shared) and its own index. The record and trees are copied byte for byte, so the snapshot id is the same in
both regions; the catalog entry is written after every pack, the index, the trees and the record, so the snapshot
appears in the destination all at once or not at all.
Re-running after a crash or an outage of either region copies only what is still missing.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from llmdr.common.progress import NoProgress, Progress
from llmdr.repo.layout import pack_key
from llmdr.repo.locks import Locker
from llmdr.repo.packer import PackWriter
from llmdr.repo.rangeread import fetch_ranges, locate, range_chunks
from llmdr.repo.repolock import SHARED, RepoLock, hold
from llmdr.repo.repository import Repository
from llmdr.repo.restoreplan import Range, plan_for
from llmdr.repo.tree import BuiltTree, tree_ids

log = logging.getLogger(__name__)
DEFAULT_MEMORY = 128 << 20  # bytes of read buffers at most (one blob-sized buffer per worker)


@dataclass
class ReplicateResult:
    snapshot_id: str
    source: str
    destination: str
    already_present: bool = False
    chunks_total: int = 0
    chunks_copied: int = 0
    bytes_total: int = 0
    bytes_copied: int = 0
    duration_s: float = 0.0
    locks_extended: int = 0

    def to_json(self) -> dict:
        return {
            "snapshot_id": self.snapshot_id,
            "source": self.source,
            "destination": self.destination,
            "already_present": self.already_present,
            "chunks_total": self.chunks_total,
            "chunks_copied": self.chunks_copied,
            "bytes_total": self.bytes_total,
            "bytes_copied": self.bytes_copied,
            "duration_s": round(self.duration_s, 3),
            "locks_extended": self.locks_extended,
        }


def replicate_snapshot(
    src: Repository,
    dst: Repository,
    snapshot_id: str,
    *,
    workers: int = 8,
    progress: Progress | None = None,
    recheck: bool = False,
    memory_bytes: int = DEFAULT_MEMORY,
) -> ReplicateResult:
    """Make ``snapshot_id`` complete in ``dst``. With ``recheck``, a snapshot already listed there has its chunks
    looked up again (missing ones are copied); otherwise its catalog entry proves it complete. Read buffers take at
    most ``memory_bytes`` (fewer workers read when their buffers would not fit; one always does)."""
    progress = progress or NoProgress()
    t0 = time.perf_counter()
    started_ts = time.time()
    res = ReplicateResult(snapshot_id, src.location, dst.location)
    record = src.load_record(snapshot_id)
    manifest = src.load_manifest(snapshot_id)
    needed = manifest.chunk_set()
    res.chunks_total = len(needed)
    res.bytes_total = sum(needed.values())
    cfg = dst.ensure_config(src.config())
    with hold(dst.store, SHARED, "replicate", settle_s=0.0, repo_id=cfg.repo_id) as lock:
        return _copy(src, dst, snapshot_id, record, manifest, res, lock, workers=workers, progress=progress,
                     recheck=recheck, t0=t0, started_ts=started_ts, memory=memory_bytes)


def _copy(src: Repository, dst: Repository, snapshot_id: str, record: dict, manifest, res: ReplicateResult,
          lock: RepoLock, *, workers: int, progress: Progress, recheck: bool, t0: float,
          started_ts: float, memory: int) -> ReplicateResult:
    bundle = manifest.bundle
    needed = manifest.chunk_set()
    listed = dst.has_snapshot(snapshot_id, bundle=bundle)
    if listed and not recheck:
        res.already_present = True
        res.duration_s = time.perf_counter() - t0
        return res

    present = dst.list_chunks() if recheck else None
    idx = dst.index(refresh=True)
    missing = [(d, n) for d, n in sorted(needed.items())
               if (present.get(d) != n if present is not None else not idx.has(bytes.fromhex(d)))]
    progress.start(f"replicate {snapshot_id[:12]}", sum(n for _, n in missing))

    then = (f"It was not copied and the snapshot was not published in {dst.location}. Replicate from another "
            "healthy region.")
    try:
        _copy_chunks(src, dst, missing, snapshot_id, then, res, workers=workers, progress=progress, memory=memory)
    finally:
        progress.finish()
    res.chunks_copied = len(missing)
    for tid in tree_ids(record["tree"], src.tree_bytes):
        dst.save_tree(BuiltTree(tid, {tid: src.tree_bytes(tid)}))
    locker = Locker.of(dst.store)
    if locker is not None:  # chunks already there must stay locked as long as this snapshot
        copied = {d for d, _ in missing}
        res.locks_extended = locker.extend_reused(dst, [d for d in needed if d not in copied], written=copied,
                                                  started=started_ts, workers=workers)
    if not listed:
        lock.check()
        # Last: the catalog entry makes the snapshot visible in the destination region. The record is the
        # source's, byte for byte (same id); its place in the destination's order is the entry's.
        dst.publish(bundle, lambda prev: (snapshot_id, record))
        dst.compact_if_needed()
    res.duration_s = time.perf_counter() - t0
    log.info("replicated %s to %s: %d of %d chunks copied (%d bytes) in %.2fs", snapshot_id[:12], dst.location,
             res.chunks_copied, res.chunks_total, res.bytes_copied, res.duration_s)
    return res


def _copy_chunks(src: Repository, dst: Repository, missing: list[tuple[str, int]], snapshot_id: str, then: str,
                 res: ReplicateResult, *, workers: int, progress: Progress, memory: int) -> None:
    """Copy ``missing`` (hex id, size) into packs of ``dst``, read from ``src`` by pack range as a restore reads:
    each worker streams its ranges into its own buffers, proves every blob against its id (a damaged source copy is
    never propagated; another copy in the source is tried) and hands it to the one pack writer."""
    if not missing:
        return
    sizes = {bytes.fromhex(d): n for d, n in missing}
    of = f" of snapshot {snapshot_id[:12]} (source)"
    ranges = plan_for(locate(src, sizes, of=lambda c: of, then=then).values(), workers)
    lock = threading.Lock()  # one pack writer, fed by every worker in turn

    def gone(r: Range) -> str:
        return f"pack {pack_key(r.pack.hex())}, which holds chunks{of}, is missing from {src.location}. {then}"

    def fetch(r: Range, buf: memoryview, stop: threading.Event) -> None:
        for e, plain in range_chunks(src, r, buf, stop, sizes=sizes, of=lambda c: of, then=then, gone=gone):
            with lock:
                writer.add(e.chunk.hex(), e.chunk, plain)  # the writer copies (or seals) it into its pack
                res.bytes_copied += len(plain)
            progress.advance(len(plain))

    with PackWriter(dst, workers=max(1, workers // 2)) as writer:
        fetch_ranges(ranges, workers, memory, fetch, name="llmdr-copy")
