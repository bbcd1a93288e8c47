"""Cross-region copy: only the chunks the destination lacks, each verified, the manifest last.

Each chunk read from the source is hashed before it is sent (a damaged source copy is never propagated) and sent
with its SHA-256 so the destination server refuses bytes damaged on the way. The manifest is written after every
chunk is in place, so the snapshot appears in the destination region all at once or not at all. Re-running after a
crash or an outage of either region copies only what is still missing.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass

from llmdr.common.progress import NoProgress, Progress
from llmdr.repo.locks import Locker
from llmdr.repo.manifest import Manifest
from llmdr.repo.repository import Repository

log = logging.getLogger(__name__)


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
) -> ReplicateResult:
    """Make ``snapshot_id`` complete in ``dst``. With ``recheck``, a snapshot already there has its chunk list
    compared again (missing chunks are copied); otherwise its manifest's presence proves it complete."""
    progress = progress or NoProgress()
    t0 = time.perf_counter()
    started_ts = time.time()
    res = ReplicateResult(snapshot_id, src.location, dst.location)
    data = src.load_manifest_bytes(snapshot_id)
    manifest = Manifest.from_bytes(data, expect_id=snapshot_id)
    needed = manifest.chunk_set()
    res.chunks_total = len(needed)
    res.bytes_total = sum(needed.values())
    if dst.has_snapshot(snapshot_id) and not recheck:
        res.already_present = True
        res.duration_s = time.perf_counter() - t0
        return res

    src_cfg = src.load_config()
    dst.ensure_config(src_cfg)
    present = dst.list_chunks()
    missing = [(d, n) for d, n in sorted(needed.items()) if present.get(d) != n]
    progress.start(f"replicate {snapshot_id[:12]}", sum(n for _, n in missing))

    then = (f"It was not copied and the snapshot was not published in {dst.location}. Replicate from another "
            "healthy region.")

    def copy(hexd: str, n: int) -> int:
        # proven against its id before it is sent: a damaged source copy is never propagated
        dst.save_chunk(hexd, src.load_chunk(hexd, size=n, of=f" of snapshot {snapshot_id[:12]} (source)", then=then))
        progress.advance(n)
        return n

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llmdr-copy") as pool:
            futures = [pool.submit(copy, d, n) for d, n in missing]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for f in pending:
                f.cancel()
            for f in futures:
                if not f.cancelled() and f.done() and f.exception() is not None:
                    raise f.exception()  # type: ignore[misc]
            res.bytes_copied = sum(f.result() for f in futures)
    finally:
        progress.finish()
    res.chunks_copied = len(missing)
    locker = Locker.of(dst.store)
    if locker is not None:  # chunks already there must stay locked as long as this snapshot
        copied = {d for d, _ in missing}
        res.locks_extended = locker.extend_reused(dst, [d for d in needed if d not in copied], written=copied,
                                                  started=started_ts, workers=workers)
    # Last: publishing the manifest makes the snapshot visible in the destination region.
    dst.save_manifest(snapshot_id, data)
    res.duration_s = time.perf_counter() - t0
    log.info("replicated %s to %s: %d of %d chunks copied (%d bytes) in %.2fs", snapshot_id[:12], dst.location,
             res.chunks_copied, res.chunks_total, res.bytes_copied, res.duration_s)
    return res
