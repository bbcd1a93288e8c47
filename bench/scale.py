"""Scale: a 10,000-file bundle, and 50 successive snapshots of a changing bundle (issue #9, item 8).

    uv run python bench/scale.py                                  # 10,000 files (~290 MB), 50 steps; ~15 min, 2 cores
    uv run python bench/scale.py --files 2000 --steps 6 --no-peer  # a quick run, about 2 minutes
    uv run python bench/scale.py --smoke --results DIR             # every step, 200 files, 2 steps: checks the harness

restic must be installed for a measuring run (or pass --no-peer); ``--smoke`` runs without it when it is missing and
records its steps as skipped, and writes ``scale-smoke.json|.md`` into ``--results`` (never into bench/results/).

(a) One bundle of ``--files`` files: the sample bundle's 4 safetensors shards of 32 MiB with its tokenizer and
configs, plus thousands of small files (1-64 KB, log-uniform: prompt templates, few-shot/eval examples, knowledge
snippets, security rules). Cold snapshot, warm re-snapshot (nothing changed), ``llmdr snapshots``, replicate to the
secondary, restore from the secondary (every file's SHA-256 checked). Peer: restic backup (cold, warm) and restore
of the same tree.

(b) A fresh repository (another key prefix in the same two buckets), then ``--steps`` snapshots of the bundle, each
after changing ``--change-pct`` % of the small files (modify, add, delete, rename; every 10th step also 8 MiB in the
middle of one shard), each replicated. The harness keeps a {path: SHA-256} map of the tree at the steps it restores
(not copies). Then: listing with all snapshots (local cache warm, and empty as on a fresh DR machine), restores of
the 1st, middle and last snapshot from the secondary, ``llmdr forget --keep-last 10 --grace 0s`` on the primary (it
forgets and marks the unused packs: phase one of the two-phase prune), ``llmdr prune --safety-time 0s`` (phase two:
deletes them), and a restore of the oldest kept snapshot afterwards. Peer: restic backup per step, ``restic snapshots``,
``restic forget --keep-last 10 --prune``.

Every llmdr command is a subprocess run under bench/rusage_launcher.py (wall time, exact peak RSS from os.wait4).
The stack (``llmdr stack up --no-serving``, 127.0.0.1:38833 and :38933 by default, each also +1..+8 and +10008) is
stopped by PID in a ``finally``. Results: bench/results/scale-<UTC>.json|.md and scale-latest.*.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time

import peers
import scale_report
from harness import (
    BENCH_DIR,
    MB,
    CommandFailed,
    LocalStack,
    common_args,
    parse,
    run_quiet,
    slug,
)
from report import conclude, environment, results_dir
from scale_report import Run
from scale_tree import KINDS, SHARD_MIB, Tree, check_identical, tree_digest

# Not used by bench.py (38333/38433), bench/rto.py (38533/38633, 38700-38710) or the tests (10000-32758).
PRIMARY_PORT, SECONDARY_PORT, ROUTER_PORT = 38833, 38933, 38880
RESTIC_BUCKET_A, RESTIC_BUCKET_B = "scale-restic-a", "scale-restic-b"
HISTORY_PREFIX = "scale-history"  # part (b)'s repository: the same buckets, another key prefix
WORK_MARKER = ".llmdr-scale-work"
KEEP_LAST = 10
RESTORE_REPEATS = 2  # runs of each restore in part (a), interleaved; the fastest is kept


class Scale(LocalStack):
    def __init__(self, args: argparse.Namespace) -> None:
        found = {} if args.no_peer else peers.find(("restic",), required=not args.smoke, script="bench/scale.py",
                                                   instead="pass --no-peer to measure llmdr alone")
        super().__init__(args.work.resolve(), ports=(args.primary_port, args.secondary_port), smoke=args.smoke,
                         bytecode_cache=not args.no_bytecode_cache, found=found,
                         left_out="--no-peer" if args.no_peer else None)
        self.args = args
        self.restic = found.get("restic")
        self.bundle = self.work / "bundle"
        self.config_b = self.work / "llmdr-history.yaml"
        self.runs: list[Run] = []
        self.details: dict = {}
        self.shard_mib = 2 if self.smoke else SHARD_MIB
        self.shard_every = 2 if self.smoke else 10  # a shard region rewritten every Nth step of part (b)
        self.keep_last = 1 if self.smoke else KEEP_LAST  # smoke: forget does forget and prune something

    def measure(self, part: str, step: str, tool: str, cmd: list[str], *, env: dict | None = None,
                settle_s: float = 1.0, as_json: bool = False, note: str = "") -> Run:
        """Flush dirty pages, run ``cmd`` under the rusage launcher and record it; ``--json`` output goes in data."""
        run = Run(part, step, tool, note=note,
                  **self.timed(cmd, log=slug(tool), env=env, settle_s=settle_s, as_json=as_json))
        self.runs.append(run)
        self.ran(part=part, step=step, tool=tool)
        print(f"  {part} {step:<18} {tool:<38} {run.line()}", flush=True)
        return run


# stack -----------------------------------------------------------------------------------------------------------------
def stack_up(s: Scale) -> None:
    s.init("--router-port", str(ROUTER_PORT))
    text = s.config.read_text()
    # Part (b)'s repository: the same buckets under another key prefix (a fresh, empty repository).
    s.config_b.write_text(text.replace("    bucket: llmdr-primary\n",
                                       f"    bucket: llmdr-primary\n    prefix: {HISTORY_PREFIX}\n")
                          .replace("    bucket: llmdr-secondary\n",
                                   f"    bucket: llmdr-secondary\n    prefix: {HISTORY_PREFIX}\n"))
    s.up()
    if s.restic:
        for bucket in (RESTIC_BUCKET_A, RESTIC_BUCKET_B):
            s.s3("primary").create_bucket(Bucket=bucket)
    print(f"stack: weed pids {s.weed_pids} at {s.endpoint('primary')} and {s.endpoint('secondary')}", flush=True)


# part (a): one 10,000-file bundle --------------------------------------------------------------------------------------
def part_a(s: Scale, tree: Tree) -> None:
    print("(a) one bundle of many files", flush=True)
    cold = s.measure("a", "cold", "llmdr snapshot", s.llmdr_cmd("snapshot", "--json"), as_json=True)
    sid = cold.data["json"]["snapshot_id"]
    if cold.data["json"]["files"] != len(tree.digests):
        raise CommandFailed(f"cold snapshot holds {cold.data['json']['files']} files, the bundle {len(tree.digests)}")
    cold.note = _snap_note(cold.data["json"])
    warm = s.measure("a", "warm (no change)", "llmdr snapshot", s.llmdr_cmd("snapshot", "--json"), as_json=True)
    warm.note = _snap_note(warm.data["json"])
    if warm.data["json"]["bytes_new"] != 0 or warm.data["json"]["files_unchanged"] != len(tree.digests):
        raise CommandFailed(f"the warm snapshot read or uploaded something: {warm.data['json']}")
    listing = s.measure("a", "list (2 snapshots)", "llmdr snapshots", s.llmdr_cmd("snapshots", "--json"), as_json=True)
    listing.note = f"{len(listing.data['json'])} snapshots"
    rep = s.measure("a", "replicate", "llmdr replicate", s.llmdr_cmd("replicate", sid, "--to", "secondary", "--json"),
                    as_json=True)
    r = rep.data["json"][0]
    rep.note = f"{r['chunks_copied']} chunks, {r['bytes_copied'] / MB:.0f} MB to the empty secondary"
    s.details["a_snapshot_id"] = sid
    if s.restic:
        run_quiet(s.restic_cmd(RESTIC_BUCKET_A, "init"), env=s.restic_env(), cwd=s.work)
        s.measure("a", "cold", "restic backup", s.restic_cmd(RESTIC_BUCKET_A, "backup", "-q", "--host", "scale",
                                                               "bundle"), env=s.restic_env())
        s.measure("a", "warm (no change)", "restic backup",
                  s.restic_cmd(RESTIC_BUCKET_A, "backup", "-q", "--host", "scale", "bundle"), env=s.restic_env())
        s.measure("a", "list (2 snapshots)", "restic snapshots", s.restic_cmd(RESTIC_BUCKET_A, "snapshots", "--json"),
                  env=s.restic_env())
    # Restores: each tool twice, interleaved, into fresh folders, the fastest kept; nothing is deleted until all
    # have run. ext4 skips inodes freed in the last minutes when it creates files, so a restore of 10,000 files
    # right after 10,000 were deleted spends seconds of system time scanning (measured: 1.2 s -> 5.7 s for the same
    # restore); deleting one tool's restore before the other's would hand the second tool that cost.
    runs: dict[str, list[Run]] = {"llmdr restore": [], "restic restore": []}
    targets = []
    for i in range(RESTORE_REPEATS):
        target = s.work / f"restore-a-{i}"
        res = s.measure("a", "restore", "llmdr restore",
                        s.llmdr_cmd("restore", sid, "--region", "secondary", "--to", str(target), "--json"),
                        as_json=True)
        res.data["verified"] = check_identical(target, tree.digests)
        res.note = (f"from the secondary, {res.data['json']['files']} files, "
                    f"{res.data['json']['bytes_downloaded'] / MB:.0f} MB; SHA-256 of every file identical")
        runs["llmdr restore"].append(res)
        targets.append(target)
        if s.restic:
            target = s.work / f"restore-restic-{i}"
            rr = s.measure("a", "restore", "restic restore",
                           s.restic_cmd(RESTIC_BUCKET_A, "restore", "latest", "--target", str(target)),
                           env=s.restic_env(), note="from the primary server (restic has no cross-region copy here)")
            check_identical(target / "bundle", tree.digests)
            rr.note += "; identical"
            runs["restic restore"].append(rr)
            targets.append(target)
    for rows in runs.values():
        if rows:
            best = min(rows, key=lambda r: r.wall_s)
            for r in rows:
                if r is not best:
                    s.runs.remove(r)
            best.note += f"; fastest of {len(rows)}: " + ", ".join(f"{r.wall_s:.2f}" for r in rows) + " s"
    for target in targets:
        shutil.rmtree(target)
    print(f"  restores verified: {len(tree.digests)} files identical each", flush=True)
    if not s.restic:
        for step, tool in (("cold", "restic backup"), ("warm (no change)", "restic backup"),
                           ("list (2 snapshots)", "restic snapshots"), ("restore", "restic restore")):
            s.skip(s.missing("restic"), part="a", step=step, tool=tool)


def _snap_note(j: dict) -> str:
    return (f"{j['files']} files, {j['files_unchanged']} unchanged (stat cache), {j['bytes_read'] / MB:.1f} MB read, "
            f"{j['bytes_new'] / MB:.1f} MB new in {j['chunks_new']}/{j['chunks_total']} chunks")


# part (b): many snapshots of a changing bundle -------------------------------------------------------------------------
def part_b(s: Scale, tree: Tree) -> None:
    steps = s.args.steps
    middle = (steps + 1) // 2
    restore_steps = sorted({1, middle, steps})
    keep_last = s.keep_last
    oldest_kept = max(1, steps - keep_last + 1)
    keep_maps = set(restore_steps) | {oldest_kept}
    print(f"(b) {steps} snapshots of a changing bundle into a fresh repository (prefix {HISTORY_PREFIX})", flush=True)
    cfg = s.config_b
    expected: dict[int, dict[str, str]] = {}
    ids: dict[int, str] = {}
    series: list[dict] = []
    if s.restic:
        run_quiet(s.restic_cmd(RESTIC_BUCKET_B, "init"), env=s.restic_env(), cwd=s.work)
    for step in range(1, steps + 1):
        ops = {} if step == 1 else tree.mutate(step, s.args.change_pct, s.args.seed, s.shard_every)
        snap = s.measure("b", f"step {step}", "llmdr snapshot", s.llmdr_cmd("snapshot", "--json", config=cfg),
                         settle_s=0.2, as_json=True)
        j = snap.data["json"]
        if j["files"] != len(tree.digests):
            raise CommandFailed(f"step {step}: the snapshot holds {j['files']} files, the bundle {len(tree.digests)}")
        ids[step] = j["snapshot_id"]
        snap.note = _snap_note(j)
        rep = s.measure("b", f"step {step}", "llmdr replicate",
                        s.llmdr_cmd("replicate", ids[step], "--to", "secondary", "--json", config=cfg),
                        settle_s=0.2, as_json=True)
        r = rep.data["json"][0]
        rep.note = f"{r['chunks_copied']} chunks, {r['bytes_copied'] / MB:.1f} MB"
        row = {"step": step, "ops": ops, "snapshot_id": ids[step], "files": j["files"], "bytes": j["bytes_total"],
               "files_unchanged": j["files_unchanged"], "bytes_read": j["bytes_read"], "bytes_new": j["bytes_new"],
               "chunks_new": j["chunks_new"], "snapshot_wall_s": snap.wall_s, "snapshot_inproc_s": snap.inproc_s,
               "snapshot_rss_mb": snap.peak_rss_mb, "replicate_wall_s": rep.wall_s, "replicate_inproc_s": rep.inproc_s,
               "replicate_rss_mb": rep.peak_rss_mb, "chunks_copied": r["chunks_copied"],
               "bytes_copied": r["bytes_copied"], "tree_digest": tree_digest(tree.digests)}
        if s.restic:
            rb = s.measure("b", f"step {step}", "restic backup",
                           s.restic_cmd(RESTIC_BUCKET_B, "backup", "-q", "--host", "scale", "bundle"),
                           env=s.restic_env(), settle_s=0.2)
            row |= {"restic_wall_s": rb.wall_s, "restic_rss_mb": rb.peak_rss_mb}
        else:
            s.skip(s.missing("restic"), part="b", step=f"step {step}", tool="restic backup")
        series.append(row)
        if step in keep_maps:
            expected[step] = dict(tree.digests)
        if step == 1 or step % 10 == 0 or step == steps:  # listing time as the history grows
            ls = s.measure("b", f"list ({step} snapshots)", "llmdr snapshots",
                           s.llmdr_cmd("snapshots", "--json", config=cfg), settle_s=0.2, as_json=True)
            if len(ls.data["json"]) != step:
                raise CommandFailed(f"llmdr snapshots lists {len(ls.data['json'])} snapshots after {step} steps")
            ls.note = "primary, local cache warm"
    s.details["series"] = series

    print("  after the series", flush=True)
    s.drop_cache()
    ls = s.measure("b", f"list ({steps} snapshots), no cache", "llmdr snapshots",
                   s.llmdr_cmd("snapshots", "--region", "secondary", "--json", config=cfg), as_json=True,
                   note="secondary, local cache empty (a fresh DR machine)")
    if len(ls.data["json"]) != steps:
        raise CommandFailed(f"the secondary lists {len(ls.data['json'])} snapshots, expected {steps}")
    for step in restore_steps:
        target = s.work / f"restore-b-{step}"
        res = s.measure("b", f"restore step {step}", "llmdr restore",
                        s.llmdr_cmd("restore", ids[step], "--region", "secondary", "--to", str(target), "--json",
                                    config=cfg), as_json=True)
        res.data["verified"] = check_identical(target, expected[step])
        res.note = (f"from the secondary, {res.data['json']['files']} files; identical to the tree at step {step}")
        shutil.rmtree(target)
        print(f"  restore of step {step} verified: {res.data['verified']['files']} files identical", flush=True)
    fg = s.measure("b", f"forget --keep-last {keep_last}", "llmdr forget",
                   s.llmdr_cmd("forget", "--keep-last", str(keep_last), "--grace", "0s", "--json", config=cfg),
                   as_json=True)
    f = fg.data["json"]
    if len(f["kept"]) != min(keep_last, steps) or len(f["forgotten"]) != max(0, steps - keep_last) or f["raced"]:
        raise CommandFailed(f"forget kept {len(f['kept'])}, forgot {len(f['forgotten'])}, raced {f['raced']}")
    p1 = f["prune"]
    fg.note = (f"primary: forgot {len(f['forgotten'])}, kept {len(f['kept'])}; prune phase one marked {p1['planned']} "
               f"unused pack(s) ({p1['repacked']} repacked), deleted {p1['deleted']}")
    pr = s.measure("b", "prune (phase two)", "llmdr prune",
                   s.llmdr_cmd("prune", "--safety-time", "0s", "--json", config=cfg), as_json=True)
    p2 = pr.data["json"]
    # A pack is freed only when no kept snapshot uses it (or repacked when less than half of it is used): with a few
    # changed files per step, old packs stay mostly in use, so a short series may free nothing. Reported, not judged.
    pr.note = (f"primary: deleted {p2['deleted']} pack(s), {p2['chunks_deleted']} chunks, "
               f"{p2['bytes_freed'] / MB:.1f} MB freed, {p2['records_deleted']} record(s); rescued {p2['rescued']}, "
               f"marked {p2['planned']} more")
    target = s.work / f"restore-b-kept-{oldest_kept}"
    res = s.measure("b", f"restore step {oldest_kept} after forget", "llmdr restore",
                    s.llmdr_cmd("restore", ids[oldest_kept], "--to", str(target), "--json", config=cfg), as_json=True)
    res.data["verified"] = check_identical(target, expected[oldest_kept])
    res.note = f"oldest kept snapshot, from the pruned primary; identical to the tree at step {oldest_kept}"
    shutil.rmtree(target)
    s.details["restored_steps"] = restore_steps
    s.details["oldest_kept"] = oldest_kept
    if s.restic:
        s.measure("b", f"list ({steps} snapshots)", "restic snapshots",
                  s.restic_cmd(RESTIC_BUCKET_B, "snapshots", "--json"), env=s.restic_env())
        rf = s.measure("b", f"forget --keep-last {keep_last}", "restic forget --prune",
                       s.restic_cmd(RESTIC_BUCKET_B, "forget", "--keep-last", str(keep_last), "--prune"),
                       env=s.restic_env())
        rf.note = "restic 0.14: forget, then prune (repacks partly used packs)"
    else:
        s.skip(s.missing("restic"), part="b", step=f"list ({steps} snapshots)", tool="restic snapshots")
        s.skip(s.missing("restic"), part="b", step=f"forget --keep-last {keep_last}", tool="restic forget --prune")


def restic_version(s: Scale) -> str:
    if not s.restic:
        return "not run"
    return run_quiet([s.restic, "version"], env=s.base_env, cwd=s.work).strip().splitlines()[0]


# main ------------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="llmdr at scale: many files, many snapshots.")
    ap.add_argument("--files", type=int, default=10_000, help="files in the bundle (default 10000)")
    ap.add_argument("--steps", type=int, default=50, help="successive snapshots in part (b) (default 50)")
    ap.add_argument("--change-pct", type=float, default=3.0, help="percent of the files changed per step (default 3)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-peer", action="store_true", help="skip restic")
    common_args(ap, work=BENCH_DIR / "work" / "scale", ports=(PRIMARY_PORT, SECONDARY_PORT),
                smoke="check the harness: 200 files with 2 MiB shards, 2 steps, keep-last 1, restic only if "
                      "installed; writes scale-smoke.json|.md, never into bench/results/")
    return parse(ap, argv, smoke={"files": 200, "steps": 2})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.files < 200 or args.steps < 1:
        sys.exit("--files must be at least 200 and --steps at least 1")
    out = results_dir(args.results, args.smoke, "scale-")
    s = Scale(args)
    started, t0 = s.start(WORK_MARKER, "bench/scale.py")
    tree = Tree(s.bundle)
    tree.generate(args.files, args.seed, s.shard_mib)
    small = [r for r in tree.digests if r in tree.small]
    by_kind = {k: sum(1 for r in small if tree.small[r] == k) for k in KINDS}
    s.details["bundle"] = {"files": len(tree.digests), "bytes": tree.total_bytes(), "small_files": len(small),
                           "small_bytes": sum((s.bundle / r).stat().st_size for r in small),
                           "small_by_kind": by_kind, "generated_s": round(time.perf_counter() - t0, 1)}
    print(f"bundle: {s.details['bundle']}", flush=True)
    try:
        stack_up(s)
        s.warm_bytecode("llmdr.cli, llmdr.repo.snapshot, llmdr.repo.restore, llmdr.repo.replicate, "
                        "llmdr.repo.retention, llmdr.repo.statcache, llmdr.storage.factory, boto3.s3.transfer, "
                        "botocore.config, pyfastcdc, jinja2, tokenizers")
        meta = environment(s, started, args, restic=restic_version(s))
        s.details["rss_floor_mb"] = s.rss_floor_mb()
        part_a(s, tree)
        part_b(s, tree)
    finally:
        s.down()
    conclude(s, out, "scale-", meta, scale_report, started=started, t0=t0, keep=args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
