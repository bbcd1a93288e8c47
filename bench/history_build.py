"""Grow the history bench's repository in-process, fast: ``history_build.py CONFIG --add N --first STEP
[--leave-last K]``.

Each step rewrites one small file of the bundle (``notes/history.txt``: new content, one new chunk), takes a snapshot
into the primary with ``llmdr.repo.snapshot.take_snapshot`` (the stat cache in use, as ``llmdr snapshot`` does) and
copies it to the secondary with ``replicate_snapshot``, all through one pair of repositories: no interpreter start-up
and no client set-up per snapshot. The last ``K`` snapshots are not copied (the measured ``llmdr replicate`` then has
the newest to copy). Run by bench/history.py as a subprocess, with the measured commands' environment and working
folder, so it opens the repositories as they do. Prints one JSON object: the ids added and the seconds taken.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

CHANGED = Path("notes") / "history.txt"  # the one file each step changes, relative to the bundle folder
SECONDARY = "secondary"


def change(bundle: Path, step: int) -> None:
    """New content for the step's file: ~1 KB unique to ``step`` (so every snapshot holds one new chunk)."""
    path = bundle / CHANGED
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(hashlib.sha256(f"{step}:{i}".encode()).hexdigest() for i in range(16))
    path.write_text(f"history step {step}\n{body}\n")


def grow(config: Path, add: int, first: int, leave_last: int) -> dict:
    """Add ``add`` snapshots (steps ``first`` ..), copying all but the last ``leave_last`` to the secondary."""
    from llmdr.config import load_config
    from llmdr.repo.bundle import specs_from_config
    from llmdr.repo.ops import open_repo
    from llmdr.repo.replicate import replicate_snapshot
    from llmdr.repo.snapshot import take_snapshot
    from llmdr.repo.statcache import StatCache

    cfg = load_config(config)
    src, dst = open_repo(cfg, cfg.region(None)), open_repo(cfg, cfg.region(SECONDARY))
    source = cfg.bundle_path
    stat_cache = StatCache.for_source(cfg.state_path / "cache", source)
    specs = specs_from_config(cfg.bundle.components)
    t0 = time.perf_counter()
    ids: list[str] = []
    copied = 0
    snapshot_s: list[float] = []  # in-process seconds of each take_snapshot and replicate_snapshot: how the core
    replicate_s: list[float] = []  # functions' cost grows with the history, warm, without start-up
    for step in range(first, first + add):
        change(source, step)
        t1 = time.perf_counter()
        res = take_snapshot(src, source, bundle=cfg.bundle.name, stat_cache=stat_cache, workers=cfg.transfer.workers,
                            max_inflight_bytes=cfg.transfer.max_inflight_mb * 1024 * 1024, components=specs)
        if step > 1 and res.chunks_new != 1:
            raise SystemExit(f"step {step}: the snapshot stored {res.chunks_new} new chunks, expected 1 (the changed "
                             f"{CHANGED}); the history would not be what the bench describes")
        ids.append(res.snapshot_id)
        snapshot_s.append(round(time.perf_counter() - t1, 4))
        if step < first + add - leave_last:
            t2 = time.perf_counter()
            replicate_snapshot(src, dst, res.snapshot_id, workers=cfg.transfer.workers)
            replicate_s.append(round(time.perf_counter() - t2, 4))
            copied += 1
    return {"added": len(ids), "copied": copied, "first_step": first, "ids": ids,
            "seconds": round(time.perf_counter() - t0, 3), "snapshot_s": snapshot_s, "replicate_s": replicate_s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Add snapshots to the history bench's repository, in-process.")
    ap.add_argument("config", type=Path)
    ap.add_argument("--add", type=int, required=True, help="snapshots to add")
    ap.add_argument("--first", type=int, required=True, help="step number of the first one (its file content)")
    ap.add_argument("--leave-last", type=int, default=0, help="the last K are not copied to the secondary")
    args = ap.parse_args(argv)
    if args.add < 0 or not 0 <= args.leave_last <= max(args.add, 0):
        sys.exit("--add must be >= 0 and --leave-last between 0 and --add")
    print(json.dumps(grow(args.config, args.add, args.first, args.leave_last)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
