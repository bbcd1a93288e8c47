"""Scale, against the real test stack: a 10,000-file bundle, and 50 successive snapshots of a changing bundle.

Correctness at scale (counts, bytes, trees identical to the expected state, the parent chain, retention keeping
exactly what it should) and memory that stays bounded, asserted with a bound far above what is used so it cannot
flake. Speed is measured in bench/scale.py (`make bench-scale`), never asserted here.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from llmdr.repo.ops import open_repo, replicate, restore, snapshot_bundle
from llmdr.repo.prune import prune
from llmdr.repo.retention import Policy, apply_retention
from tests.support.damage import pack_keys

REPO_DIR = Path(__file__).resolve().parents[1]
LAUNCHER = REPO_DIR / "bench" / "rusage_launcher.py"
pytestmark = pytest.mark.slow  # 1.5-3 min each on 2 cores

RSS_BOUND_MB = 400  # several times what the commands use (~70-150 MB): a leak or a bundle held in memory, not noise


def _digests(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _cli_measured(cfg, tmp_path: Path, *args: str) -> tuple[dict, float]:
    """``llmdr --config CFG ARGS --json`` as a user runs it, spawned by bench/rusage_launcher.py (a ~9 MB process,
    so the peak RSS os.wait4 reports is the command's own, not a copy of pytest's); returns (its JSON, peak RSS MB)."""
    usage = tmp_path / f"rusage-{args[0]}.json"
    cmd = [sys.executable, "-I", "-S", str(LAUNCHER), str(usage), sys.executable, "-m", "llmdr.cli",
           "--config", str(cfg.source_file), *args, "--json"]
    p = subprocess.run(cmd, cwd=cfg.base_dir, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "LLMDR_CONFIG": ""})
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout), json.loads(usage.read_text())["maxrss_kib"] / 1024


def test_ten_thousand_files_snapshot_list_restore(region_config, tmp_path):
    cfg = region_config
    bundle = cfg.bundle_path
    rng = random.Random(10_000)
    expected: dict[str, str] = {}
    for i in range(10_000):
        rel = f"d{i // 100:03d}/f{i:05d}.txt"
        data = f"{rel}\n".encode() + rng.randbytes(rng.randint(0, 200))
        (bundle / rel).parent.mkdir(parents=True, exist_ok=True)
        (bundle / rel).write_bytes(data)
        expected[rel] = hashlib.sha256(data).hexdigest()
    total = sum((bundle / r).stat().st_size for r in expected)

    snap, snap_rss = _cli_measured(cfg, tmp_path, "snapshot")
    assert (snap["files"], snap["bytes_total"], snap["files_unchanged"]) == (10_000, total, 0)
    assert snap["chunks_total"] == snap["chunks_new"] == 10_000  # every tiny file is one distinct chunk

    again = snapshot_bundle(cfg)  # nothing changed: every file from the stat cache, nothing read or uploaded
    assert (again.files_unchanged, again.bytes_read, again.bytes_new) == (10_000, 0, 0)
    assert again.manifest.files == open_repo(cfg, "primary").load_manifest(snap["snapshot_id"]).files

    listed, list_rss = _cli_measured(cfg, tmp_path, "snapshots")
    assert [(s["id"], s["files"], s["bytes"]) for s in listed] == [
        (snap["snapshot_id"], 10_000, total), (again.snapshot_id, 10_000, total)]

    # (Replication at scale is covered by the 50-snapshot test; 10,000 more copies would not fit the time budget.)
    target = tmp_path / "restored"
    res, restore_rss = _cli_measured(cfg, tmp_path, "restore", snap["snapshot_id"], "--to", str(target))
    assert (res["files"], res["bytes_total"], res["bytes_downloaded"]) == (10_000, total, total)
    assert _digests(target) == expected

    for name, rss in (("snapshot", snap_rss), ("snapshots", list_rss), ("restore", restore_rss)):
        assert rss < RSS_BOUND_MB, f"llmdr {name} of 10,000 files peaked at {rss:.0f} MB"


def _mutate(root: Path, step: int, rng: random.Random, live: dict[str, str]) -> None:
    """Change ~5 % of the files: modify 6, add 4, delete 3, rename 3 (same folder or another)."""
    paths = sorted(live)
    picked = rng.sample(paths, 12)
    for rel in picked[:6]:
        data = f"{rel} v{step}\n".encode() + rng.randbytes(rng.randint(0, 3000))
        (root / rel).write_bytes(data)
        live[rel] = hashlib.sha256(data).hexdigest()
    for rel in picked[6:9]:
        (root / rel).unlink()
        del live[rel]
    for i, rel in enumerate(picked[9:12]):
        new = f"g{rng.randrange(10)}/r{step:02d}-{i}.bin"
        (root / new).parent.mkdir(exist_ok=True)
        os.rename(root / rel, root / new)
        live[new] = live.pop(rel)
    for i in range(4):
        rel = f"g{rng.randrange(10)}/a{step:02d}-{i}.bin"
        data = f"{rel}\n".encode() + rng.randbytes(rng.randint(0, 3000))
        (root / rel).write_bytes(data)
        live[rel] = hashlib.sha256(data).hexdigest()


def test_fifty_snapshots_of_a_changing_bundle(region_config, tmp_path):
    cfg = region_config
    root = cfg.bundle_path
    rng = random.Random(50)
    live: dict[str, str] = {}
    for i in range(300):
        rel = f"g{i % 10}/f{i:03d}.bin"
        data = f"{rel}\n".encode() + rng.randbytes(rng.randint(0, 3000))
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        live[rel] = hashlib.sha256(data).hexdigest()

    ids: list[str] = []
    expected: dict[int, dict[str, str]] = {}
    for step in range(1, 51):
        if step > 1:
            _mutate(root, step, rng, live)
        snap = snapshot_bundle(cfg)
        assert snap.files == len(live) and snap.manifest.parent == (ids[-1] if ids else None)
        assert snap.files - snap.files_unchanged == (300 if step == 1 else 13)  # only modified/new paths are read
        assert replicate(cfg, snap.snapshot_id, to="secondary")[0].chunks_total == len(snap.manifest.chunk_set())
        ids.append(snap.snapshot_id)
        if step in (1, 25, 42, 50):
            expected[step] = dict(live)

    primary, secondary = open_repo(cfg, "primary"), open_repo(cfg, "secondary")
    for repo in (primary, secondary):
        assert [s.id for s in repo.snapshots(bundle=cfg.bundle.name)] == ids
    for step in (1, 25, 50):
        out = tmp_path / f"restored-{step}"
        res = restore(cfg, ids[step - 1], out, region="secondary")
        assert res.files == len(expected[step])
        assert _digests(out) == expected[step]

    # A 51st snapshot with 50 in the history, as a user runs it: memory must not grow with the history.
    (root / "g0" / "last.bin").write_bytes(b"the 51st snapshot")
    snap51, rss = _cli_measured(cfg, tmp_path, "snapshot")
    assert snap51["files"] == len(live) + 1 and snap51["parent"] == ids[-1]
    assert rss < RSS_BOUND_MB, f"the 51st snapshot peaked at {rss:.0f} MB"
    ids.append(snap51["snapshot_id"])

    before = primary.list_chunks()
    res = apply_retention(primary, cfg.bundle.name, Policy(keep_last=10), grace_s=0)
    assert res.kept == ids[-10:] and res.forgotten == ids[:-10] and not res.raced
    assert res.chunks_deleted == 0 and res.prune["planned"] > 0  # forget, then phase one: nothing deleted yet
    assert set(open_repo(cfg, "primary").list_chunks()) == set(before)
    pruned = prune(primary, safety_s=0)  # phase two: the plan is at least 0 s old
    kept_chunks: dict[str, int] = {}
    for sid in res.kept:
        kept_chunks |= primary.load_manifest(sid).chunk_set()
    fresh = open_repo(cfg, "primary")
    after = fresh.list_chunks()
    assert set(after) >= set(kept_chunks)  # every chunk a kept snapshot needs
    assert (set(before) - set(after)).isdisjoint(kept_chunks)  # and only unused ones went
    assert pruned.deleted and pruned.rescued == [] and len(after) < len(before)
    assert pruned.bytes_freed >= sum(n for d, n in before.items() if d not in after) > 0
    # what is left unused sits in packs mostly used (below the repack threshold they were repacked)
    idx = fresh.index()
    for key in pack_keys(fresh):
        entries = idx.entries_of_pack(bytes.fromhex(key.rsplit("/", 1)[1]))
        used = sum(e.stored_length for e in entries if e.chunk.hex() in kept_chunks)
        assert used >= 0.5 * sum(e.stored_length for e in entries) > 0, key
    out = tmp_path / "restored-oldest-kept"
    restore(cfg, ids[41], out)  # the oldest kept snapshot (step 42 of 51), from the pruned primary
    assert _digests(out) == expected[42]
