"""History: what a DR host's everyday commands cost with 10 snapshots in the repository and with 1,000 (issue #15).

    uv run python bench/history.py                          # 10 and 1,000 snapshots; ~15-25 min on 2 cores
    uv run python bench/history.py --steps 10,200           # a quicker run
    uv run python bench/history.py --smoke --results DIR    # 3 and 12 snapshots, every command once: the harness

A tiny bundle (the sample bundle, 2 shards of 64 KiB) and its repository in the two local regions. The history is
built in-process (bench/history_build.py: one small file changed per snapshot, each snapshot copied to the
secondary), never by 1,000 CLI runs. At each level N of ``--steps`` (ascending; the first is the baseline), once
with the local cache emptied before every command (``cold``: a fresh DR host) and once with it as the previous
commands left it (``warm``), each a subprocess under bench/rusage_launcher.py (wall time, exact peak RSS):

1. one more snapshot taken in-process and not copied (unmeasured), so the newest is missing in the secondary;
2. ``llmdr snapshot`` with nothing changed since (primary);
3. ``llmdr replicate latest --to secondary`` (copies the newest: its record, tree and the one new chunk);
4. ``llmdr snapshots --region secondary`` (lists them all);
5. ``llmdr restore latest --region secondary`` of the tiny bundle (every file's SHA-256 checked).

Targets (issue #15): each command at the largest level ÷ the same command at the first ≤ 1.2, peak RSS ≤ 200 MB.
The stack (``llmdr stack up --no-serving``, 127.0.0.1:39533 and :39633 by default, each also +1..+8 and +10008) is
stopped by PID in a ``finally``. Results: bench/results/history-<UTC>.json|.md and history-latest.* (a smoke run:
history-smoke.* in --results only).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import history_report
from harness import (
    BENCH_DIR,
    CommandFailed,
    LocalStack,
    common_args,
    parse,
    run_quiet,
    sha256_file,
    slug,
)
from history_report import Run
from report import conclude, environment, results_dir

# Not used by bench.py (38333/38433), scale.py (38833/38933), rto.py (38533/38633), object_lock.py (39133/39233)
# or the tests (10000-32758).
PRIMARY_PORT, SECONDARY_PORT = 39533, 39633
WORK_MARKER = ".llmdr-history-work"
SHARDS, SHARD_KIB = 2, 64
MODES = ("cold", "warm")


class History(LocalStack):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args.work.resolve(), ports=(args.primary_port, args.secondary_port), smoke=args.smoke,
                         bytecode_cache=not args.no_bytecode_cache, found={})
        self.args = args
        self.bundle = self.work / "bundle"
        self.runs: list[Run] = []
        self.builds: list[dict] = []  # every in-process growth: snapshots added, seconds
        self.details: dict = {}
        self.steps_taken = 0  # snapshots taken so far (in-process and measured)

    def measure(self, level: int, mode: str, command: str, cmd: list[str], *, snapshots: int) -> Run:
        """Empty the local cache first when ``mode`` is cold, then run ``cmd`` (with --json) measured and record it."""
        if mode == "cold":
            self.drop_cache()
        run = Run(level, mode, command, snapshots,
                  **self.timed(cmd, log=f"{slug(command)}-{level}-{mode}", settle_s=0.5, as_json=True))
        self.runs.append(run)
        self.ran(level=level, mode=mode, step=f"{command} ({level}, {mode})", tool=command)
        print(f"  {level:>6} {mode:<5} {command:<34} {run.line()}", flush=True)
        return run

    def grow(self, add: int, *, leave_last: int) -> dict:
        """Add ``add`` snapshots in-process (bench/history_build.py), all but the last ``leave_last`` copied."""
        cmd = [sys.executable, str(BENCH_DIR / "history_build.py"), str(self.config), "--add", str(add),
               "--first", str(self.steps_taken + 1), "--leave-last", str(leave_last)]
        out = json.loads(run_quiet(cmd, env=self.base_env, cwd=self.work))
        self.steps_taken += out["added"]
        self.builds.append({k: v for k, v in out.items() if k != "ids"} | {"newest": out["ids"][-1] if out["ids"]
                                                                          else None})
        if add:
            print(f"  built {add} snapshot(s) in {out['seconds']:.1f} s ({out['copied']} copied to the secondary)",
                  flush=True)
        return out


# the bundle and the stack ----------------------------------------------------------------------------------------------
def make_bundle(h: History) -> None:
    from llmdr.devstack.samples import write_sample_bundle

    write_sample_bundle(h.bundle, shards=SHARDS, shard_size=SHARD_KIB * 1024, seed=1)
    files = bundle_digests(h.bundle)
    h.details["bundle"] = {"files": len(files), "bytes": sum(p.stat().st_size for p in h.bundle.rglob("*")
                                                             if p.is_file())}
    print(f"bundle: {h.details['bundle']}", flush=True)


def bundle_digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def stack_up(h: History) -> None:
    h.init()
    h.up()
    print(f"stack: weed pids {h.weed_pids} at {h.endpoint('primary')} and {h.endpoint('secondary')}", flush=True)


# one level ---------------------------------------------------------------------------------------------------------------
def measure_level(h: History, level: int) -> None:
    """Grow the history to ``level`` - 1 snapshots (all copied), then each mode ``--repeats`` times: one more (not
    copied) and the four commands."""
    h.grow(max(0, level - 1 - h.steps_taken), leave_last=0)
    print(f"level {level}: {h.steps_taken} snapshots so far", flush=True)
    for mode in MODES:
        for _ in range(h.args.repeats):
            measure_round(h, level, mode)


def measure_round(h: History, level: int, mode: str) -> None:
    """One more snapshot in-process (not copied), then the four commands measured in ``mode``."""
    newest = h.grow(1, leave_last=1)["ids"][-1]
    snap = h.measure(level, mode, "llmdr snapshot", h.llmdr_cmd("snapshot", "--json"), snapshots=h.steps_taken)
    h.steps_taken += 1
    j = snap.data["json"]
    if j["bytes_new"] != 0 or j["parent"] != newest:
        raise CommandFailed(f"the nothing-changed snapshot stored {j['bytes_new']} new bytes or did not build on "
                            f"the newest ({j['parent']} vs {newest})")
    snap.note = (f"{j['files_unchanged']}/{j['files']} files unchanged by the stat cache, "
                 f"{j['bytes_read']} bytes read")
    rep = h.measure(level, mode, "llmdr replicate", h.llmdr_cmd("replicate", "latest", "--to", "secondary",
                                                                "--json"), snapshots=h.steps_taken)
    r = rep.data["json"][0]
    if r["snapshot_id"] != j["snapshot_id"] or r["already_present"]:
        raise CommandFailed(f"replicate latest copied {r['snapshot_id']}, not the newest {j['snapshot_id']}: {r}")
    rep.note = f"{r['chunks_copied']}/{r['chunks_total']} chunks copied, {r['bytes_copied']} bytes"
    ls = h.measure(level, mode, "llmdr snapshots", h.llmdr_cmd("snapshots", "--region", "secondary", "--json"),
                   snapshots=h.steps_taken)
    listed = ls.data["json"]
    if not listed or listed[-1]["id"] != j["snapshot_id"]:
        raise CommandFailed(f"the secondary's newest listed snapshot is not {j['snapshot_id']}")
    ls.note = f"{len(listed)} snapshots listed (the secondary lacks the unmeasured uncopied ones)"
    ls.data["listed"] = len(listed)
    ls.data.pop("json")  # the whole listing: its length is what matters
    target = h.work / f"restore-{level}-{mode}"
    res = h.measure(level, mode, "llmdr restore", h.llmdr_cmd("restore", "latest", "--region", "secondary",
                                                              "--to", str(target), "--json"),
                    snapshots=h.steps_taken)
    got = bundle_digests(target)
    if got != bundle_digests(h.bundle):
        raise CommandFailed(f"the restore of the newest snapshot into {target} differs from the bundle")
    shutil.rmtree(target)
    res.note = f"{res.data['json']['files']} files, {res.data['json']['bytes_downloaded']} bytes; identical"


# main --------------------------------------------------------------------------------------------------------------------
def levels_of(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",")]
    except ValueError:
        sys.exit(f"--steps {text!r}: give snapshot counts separated by commas, e.g. 10,1000")
    if len(levels) < 2 or levels != sorted(set(levels)) or levels[0] < 2:
        sys.exit(f"--steps {text!r}: at least two ascending counts, the first at least 2 (e.g. 10,1000)")
    return levels


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="llmdr's everyday commands with a long history of snapshots.")
    ap.add_argument("--steps", default="10,1000",
                    help="snapshot counts to measure at, ascending; the first is the baseline (default 10,1000)")
    common_args(ap, work=BENCH_DIR / "work" / "history", ports=(PRIMARY_PORT, SECONDARY_PORT),
                smoke="check the harness: 3 and 12 snapshots, every command once per mode; writes "
                      "history-smoke.json|.md, never into bench/results/")
    ap.add_argument("--repeats", type=int, default=3,
                    help="rounds per level and mode; each command's median round is compared (default 3)")
    args = parse(ap, argv, smoke={"steps": "3,12", "repeats": 1})
    if args.repeats < 1:
        sys.exit(f"--repeats {args.repeats}: give at least 1")
    args.levels = levels_of(args.steps)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = results_dir(args.results, args.smoke, "history-")
    h = History(args)
    started, t0 = h.start(WORK_MARKER, "bench/history.py")
    make_bundle(h)
    try:
        stack_up(h)
        h.warm_bytecode("llmdr.cli, llmdr.repo.snapshot, llmdr.repo.restore, llmdr.repo.replicate, "
                        "llmdr.repo.statcache, llmdr.storage.factory, boto3.s3.transfer, botocore.config, pyfastcdc")
        meta = environment(h, started, args, smoke=h.smoke, levels=args.levels)
        h.details["rss_floor_mb"] = h.rss_floor_mb()
        for level in args.levels:
            measure_level(h, level)
    finally:
        h.down()
    h.details["builds"] = h.builds
    conclude(h, out, "history-", meta, history_report, started=started, t0=t0, keep=args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
