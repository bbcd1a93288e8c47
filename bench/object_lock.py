"""The cost of S3 Object Lock in the DR region: the same copies into a plain bucket and a locked one, same run.

    uv run python bench/object_lock.py                     # 512 MiB bundle, 3 runs, 30 s lock period (~3 min)
    uv run python bench/object_lock.py --runs 1 --shard-mb 8   # a quick run
    uv run python bench/object_lock.py --smoke --results DIR   # 1 run, 2 MiB, 4 s lock period, free ports

Two `weed mini` servers on 127.0.0.1 (llmdr's own stack code, `start_region` / `stop_region`, stopped by PID in a
``finally``): a primary (ports 39133-39141 and 49141) and a DR server (39233-39241 and 49241) holding two buckets,
``llmdr-dr-plain`` and ``llmdr-dr-locked`` (created with Object Lock, hence versioning). One config, seven regions:
the primary and, per run, ``plain-N`` and ``locked-N`` (prefix ``runN/`` in each bucket, so every run starts from
empty destinations; locked objects cannot be deleted). The locked regions have ``object_lock: {mode: COMPLIANCE,
period: 30s}``, short so that the lock rules' deadlines (slack = period/4, retention extends at period/2) come due
within the run.

Three snapshots of the bundle go into the primary first (S2 and S3 each change one small file). Then each run, per
destination (the order alternates between runs): 1 cold copy of S1, 2 copy of S2 right after (its reused chunks are
covered by S1's fresh lock: ``locks_extended`` 0); wait until the locked S2 is older than the slack; 3 copy of S3
(every reused chunk re-locked: in repository format v2 a lock is on the pack holding the chunk, so one
PutObjectRetention per pack); 4 retention ``keep_last=1, grace_s=0`` right after, and again once the kept S3 is older
than half the period (its packs, trees and record re-locked). Request counts come
from a botocore ``before-call`` hook on llmdr's shared session, lock-extension time from a wrapper around
``Locker.extend`` (nothing in llmdr is changed).

Results: bench/results/object-lock-latest.json|.md (the JSON has every run, request counts and llmdr's results), or
``--results DIR``; a smoke run writes ``object-lock-smoke.json|.md`` there, never into bench/results/.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(REPO_DIR))
sys.path.insert(0, str(BENCH_DIR))

import harness  # noqa: E402
from harness import HOST, MB, MiB, common_args, parse, ports_in_use, prepare_work, utc_now  # noqa: E402
from report import git_version, results_dir, write_results  # noqa: E402

from tests.support.config import config_yaml, region_yaml  # noqa: E402

P_PORT, DR_PORT = 39133, 39233
PLAIN_BUCKET, LOCKED_BUCKET = "llmdr-dr-plain", "llmdr-dr-locked"
WORK_MARKER = ".llmdr-bench-work"  # only a folder holding this marker is ever emptied
CHANGED_FILE = "prompts/system.jinja"


def config_text(runs: int, period_s: int, p_port: int, dr_port: int) -> str:
    regions = [region_yaml("primary", "primary", p_port, "llmdr-primary", keys="LOCKBENCH_P", local=True)]
    for n in range(1, runs + 1):
        # plain-1 is the DR server's local region (start_region / stop_region); the others share its endpoint and keys
        regions += [
            region_yaml(f"plain-{n}", "secondary", dr_port, PLAIN_BUCKET, keys="LOCKBENCH_DR", prefix=f"run{n}",
                        local=n == 1),
            region_yaml(f"locked-{n}", "secondary", dr_port, LOCKED_BUCKET, keys="LOCKBENCH_DR", prefix=f"run{n}",
                        lines=f"    object_lock: {{mode: COMPLIANCE, period: {period_s}s}}"),
        ]
    return config_yaml(regions, bundle="{name: lock-bench, path: model}")


# instrumentation ----------------------------------------------------------------------------------------------------
class Probe:
    """S3 requests by operation (botocore ``before-call`` on llmdr's shared session) and time spent in
    ``Locker.extend`` (PutObjectRetention fan-out), both cumulative; ``delta`` between two snapshots of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.extend_s = 0.0
        self.extend_keys = 0

    def install(self) -> None:
        from llmdr.repo import locks
        from llmdr.storage.s3 import shared_session

        def on_call(model, **_kw) -> None:
            with self._lock:
                self.calls[model.name] += 1

        shared_session().register("before-call.s3", on_call)
        orig = locks.Locker.extend
        probe = self

        def extend(self, keys, **kw):  # noqa: ANN001 - same signature as Locker.extend
            keys = list(keys)
            t0 = time.perf_counter()
            try:
                return orig(self, keys, **kw)
            finally:
                with probe._lock:
                    probe.extend_s += time.perf_counter() - t0
                    probe.extend_keys += len(keys)

        locks.Locker.extend = extend  # type: ignore[method-assign]

    def mark(self) -> tuple[Counter[str], float, int]:
        with self._lock:
            return Counter(self.calls), self.extend_s, self.extend_keys

    def delta(self, mark: tuple[Counter[str], float, int]) -> dict:
        calls, ext_s, ext_k = self.mark()
        d = calls - mark[0]
        return {"requests": dict(sorted(d.items())), "extend_s": round(ext_s - mark[1], 3),
                "extend_keys": ext_k - mark[2]}


# steps --------------------------------------------------------------------------------------------------------------
SETTLE_S = 1.0  # 0 in a smoke run


def copy(cfg, probe: Probe, sid: str, region: str) -> dict:
    from llmdr.repo import ops

    m = probe.mark()
    load1 = os.getloadavg()[0]
    t0 = time.perf_counter()
    (res,) = ops.replicate(cfg, sid, to=region)
    wall = time.perf_counter() - t0
    out = res.to_json() | {"region": region, "wall_s": round(wall, 3), "published_at": time.time(),
                          "load1_before": round(load1, 2)}
    out |= probe.delta(m)
    out["mb_s"] = round(res.bytes_copied / res.duration_s / MB, 1) if res.bytes_copied else None
    out["reused"] = res.chunks_total - res.chunks_copied
    return out


def retention(cfg, probe: Probe, region: str) -> dict:
    from llmdr.repo import ops

    m = probe.mark()
    t0 = time.perf_counter()
    res = ops.forget(cfg, keep_last=1, region=region, grace_s=0)
    secs = time.perf_counter() - t0
    j = res.to_json()
    return {"region": region, "seconds": round(secs, 3), "kept": len(j["kept"]), "forgotten": len(j["forgotten"]),
            "locked": len(j["locked"]), "chunks_deleted": j["chunks_deleted"], "chunks_locked": j["chunks_locked"],
            "locks_extended": j["locks_extended"], "result": j} | probe.delta(m)


def lock_margin(cfg, region: str, sid: str) -> dict:
    """The lock rule for a published snapshot: every chunk (the pack holding it) locked until at least its record's
    lock - slack. Returns the smallest such lock minus that bound (>= 0: the rule holds)."""
    from llmdr.repo import ops
    from llmdr.repo.locks import Locker

    repo = ops.open_repo(cfg, region)  # writable: Locker.of a read-only store is None (it only reads here)
    locker = Locker.of(repo.store)
    man = locker.snapshot_lock(sid)
    chunks = sorted(repo.load_manifest(sid).chunk_set())
    until = [locker.chunk_lock(repo, d).until for d in chunks]
    return {"manifest_until": man.until, "min_chunk_until": min(until),
            "margin_s": round(min(until) - (man.until - locker.slack_s), 2), "chunks": len(chunks)}


def wait_until(t: float, why: str) -> float:
    left = t - time.time()
    if left > 0:
        print(f"  waiting {left:.1f}s ({why})", flush=True)
        time.sleep(left)
    return max(0.0, left)


def one_run(cfg, probe: Probe, n: int, sids: list[str], period_s: float) -> dict:
    """Both destinations in turn (order alternating with ``n``), each through all its steps, so the locked one's
    timeline (what its lock rules see) does not depend on how long the plain one's copies take."""
    slack, half = period_s / 4, period_s / 2
    plain, locked = f"plain-{n}", f"locked-{n}"
    order = [plain, locked] if n % 2 else [locked, plain]
    steps: dict[str, dict] = {"cold": {}, "incremental": {}, "due": {}}
    rets: dict[str, dict] = {}
    out: dict = {"run": n, "order": order}
    print(f"run {n}: order {' then '.join(order)}", flush=True)
    for dst in order:
        harness.settle(SETTLE_S)  # the previous copy's writeback finished before a cold copy
        c = steps["cold"][dst] = copy(cfg, probe, sids[0], dst)
        i = steps["incremental"][dst] = copy(cfg, probe, sids[1], dst)  # right after: no settle
        if dst == locked:
            out["lock_margin_s2"] = lock_margin(cfg, locked, sids[1])
            out["waited_for_slack_s"] = round(wait_until(i["published_at"] + slack + 1.0,
                                                         f"locked S2 older than the slack, {slack:.1f}s"), 2)
        d = steps["due"][dst] = copy(cfg, probe, sids[2], dst)
        kind = "locked" if dst == locked else "plain"
        print(f"  {kind:6} cold {c['duration_s']:.2f}s {c['mb_s']} MB/s; right after {i['duration_s']:.2f}s "
              f"(locks_extended {i['locks_extended']}); later {d['duration_s']:.2f}s (locks_extended "
              f"{d['locks_extended']} of {d['reused']} reused, extend {d['extend_s']:.2f}s)", flush=True)
        if dst == plain:
            rets["plain"] = retention(cfg, probe, plain)
            print(f"  plain  retention {rets['plain']['seconds']:.2f}s", flush=True)
            continue
        rets["locked_fresh"] = retention(cfg, probe, locked)
        out["waited_for_half_s"] = round(wait_until(d["published_at"] + half + 1.0,
                                                    f"locked S3 older than half the period, {half:.1f}s"), 2)
        rets["locked_due"] = retention(cfg, probe, locked)
        rets["locked_due"]["s1_lock_left_s"] = round(c["published_at"] + period_s - time.time(), 1)
        f, u = rets["locked_fresh"], rets["locked_due"]
        print(f"  locked retention right after {f['seconds']:.2f}s (extended {f['locks_extended']}, kept by lock "
              f"{f['locked']}); after half the period {u['seconds']:.2f}s (extended {u['locks_extended']}, kept by "
              f"lock {u['locked']})", flush=True)
    return out | steps | {"retention": rets}


STEPS = {"cold": "1 cold copy", "incremental": "2 copy right after", "due": "3 copy after the slack",
         "plain": "4a retention", "locked_fresh": "4a retention", "locked_due": "4b retention after half the period"}


def steps_of(runs: list[dict]) -> list[dict]:
    """Every step each run went through, per destination, in order (the results list them; the smoke test checks)."""
    out = []
    for r in runs:
        for key in ("cold", "incremental", "due"):
            out += [{"run": r["run"], "step": STEPS[key], "region": dst, "status": "ran"} for dst in r["order"]
                    if dst in r.get(key, {})]
        out += [{"run": r["run"], "step": STEPS[key], "region": key.split("_")[0], "status": "ran"}
                for key in ("plain", "locked_fresh", "locked_due") if key in r.get("retention", {})]
    return out


# summary ------------------------------------------------------------------------------------------------------------
def med(xs: list[float]) -> float:
    return statistics.median(xs)


def summarize(runs: list[dict]) -> dict:
    def pair(step: str, field: str = "duration_s") -> tuple[list[float], list[float]]:
        return ([r[step][f"plain-{r['run']}"][field] for r in runs], [r[step][f"locked-{r['run']}"][field] for r in runs])

    s: dict = {}
    for step in ("cold", "incremental", "due"):
        p, lk = pair(step)
        s[step] = {"plain_s": p, "locked_s": lk, "plain_s_median": med(p), "locked_s_median": med(lk),
                   "ratio_median": round(med(lk) / med(p), 2),
                   "locks_extended": [r[step][f"locked-{r['run']}"]["locks_extended"] for r in runs],
                   "reused": [r[step][f"locked-{r['run']}"]["reused"] for r in runs],
                   "plain_put_retention": [r[step][f"plain-{r['run']}"]["requests"].get("PutObjectRetention", 0)
                                           for r in runs],
                   "locked_put_retention": [r[step][f"locked-{r['run']}"]["requests"].get("PutObjectRetention", 0)
                                            for r in runs],
                   "locked_head": [r[step][f"locked-{r['run']}"]["requests"].get("HeadObject", 0) for r in runs],
                   "extend_s": [r[step][f"locked-{r['run']}"]["extend_s"] for r in runs]}
    pm, lm = pair("cold", "mb_s")
    s["cold"] |= {"plain_mb_s": pm, "locked_mb_s": lm, "plain_mb_s_median": med(pm), "locked_mb_s_median": med(lm)}
    due = s["due"]
    due["put_retention_per_s"] = [round(n / t) if t else None for n, t in
                                  zip(due["locked_put_retention"], due["extend_s"], strict=True)]
    due["overhead_s"] = [round(lk - p, 3) for p, lk in zip(due["plain_s"], due["locked_s"], strict=True)]
    for key in ("plain", "locked_fresh", "locked_due"):
        rr = [r["retention"][key] for r in runs]
        s[f"retention_{key}"] = {f: [x[f] for x in rr] for f in
                                 ("seconds", "kept", "forgotten", "locked", "chunks_deleted", "chunks_locked",
                                  "locks_extended", "extend_s")}
        s[f"retention_{key}"]["seconds_median"] = med([x["seconds"] for x in rr])
        s[f"retention_{key}"]["put_retention"] = [x["requests"].get("PutObjectRetention", 0) for x in rr]
    s["lock_margin_s2_s"] = [r["lock_margin_s2"]["margin_s"] for r in runs]
    return s


def _l(xs: list) -> str:
    return ", ".join("-" if x is None else (f"{x:.2f}" if isinstance(x, float) else str(x)) for x in xs)


def render(res: dict) -> str:
    s, cfgd = res["summary"], res["setup"]
    n = len(res["runs"])
    P = cfgd["period_s"]
    c, i, d = s["cold"], s["incremental"], s["due"]
    rf, rd, rp = s["retention_locked_fresh"], s["retention_locked_due"], s["retention_plain"]
    lines = [
        f"# Object Lock cost in the DR region ({res['started']})", "",
        f"Bundle {cfgd['bundle_mb']:.0f} MB ({cfgd['shards']} shards of {cfgd['shard_mb']} MiB + small files; "
        f"{res['runs'][0]['cold']['plain-1']['chunks_total']} chunks). "
        f"Lock: COMPLIANCE, period {P:.0f} s (slack = period/4 = {P / 4:.1f} s, retention extends below period/2 = "
        f"{P / 2:.1f} s). One primary and one DR `weed mini` server on 127.0.0.1; plain and locked buckets on the "
        f"same DR server, fresh prefixes per run. Median of {n} runs (each listed); destination order alternates "
        f"between runs. Machine: {cfgd['cpus']} CPUs, load average (1 min) {cfgd['load1_start']:.1f} at the start and "
        f"{cfgd['load1_end']:.1f} at the end (other work on the machine shows here); llmdr {cfgd['git']}.", "",
        "| step | plain s | locked s | locked ÷ plain | locks_extended (locked) | PutObjectRetention | note |",
        "|---|---:|---:|---:|---:|---:|---|",
        f"| 1 cold copy of S1 | {c['plain_s_median']:.2f} ({c['plain_mb_s_median']:.0f} MB/s) | "
        f"{c['locked_s_median']:.2f} ({c['locked_mb_s_median']:.0f} MB/s) | {c['ratio_median']:.2f} | "
        f"{_l(c['locks_extended'])} | {_l(c['locked_put_retention'])} | every object put with ObjectLockMode + "
        f"RetainUntilDate; runs: plain {_l(c['plain_s'])} s, locked {_l(c['locked_s'])} s |",
        f"| 2 copy of S2 right after (1 small file changed) | {i['plain_s_median']:.2f} | {i['locked_s_median']:.2f} | "
        f"{i['ratio_median']:.2f} | {_l(i['locks_extended'])} | {_l(i['locked_put_retention'])} | "
        f"{i['reused'][0]} reused chunks covered by S1's fresh lock (HEADs in locked: {_l(i['locked_head'])}); "
        f"runs: plain {_l(i['plain_s'])}, locked {_l(i['locked_s'])} |",
        f"| 3 copy of S3 after the slack (> {P / 4:.1f} s) | {d['plain_s_median']:.2f} | {d['locked_s_median']:.2f} | "
        f"{d['ratio_median']:.2f} | {_l(d['locks_extended'])} (reused: {_l(d['reused'])}) | "
        f"{_l(d['locked_put_retention'])} | full re-lock: extend {_l(d['extend_s'])} s = "
        f"{_l(d['put_retention_per_s'])} PutObjectRetention/s (8 threads); locked − plain {_l(d['overhead_s'])} s |",
        f"| 4a retention right after (keep_last=1, grace 0) | {rp['seconds_median']:.2f} | "
        f"{rf['seconds_median']:.2f} | {rf['seconds_median'] / rp['seconds_median']:.2f} | "
        f"{_l(rf['locks_extended'])} | {_l(rf['put_retention'])} | plain: forgot {_l(rp['forgotten'])}, deleted "
        f"{_l(rp['chunks_deleted'])} chunks; locked: forgot {_l(rf['forgotten'])}, kept by lock "
        f"{_l(rf['locked'])} snapshots + {_l(rf['chunks_locked'])} unreferenced chunks |",
        f"| 4b retention after > period/2 ({P / 2:.1f} s) | | {rd['seconds_median']:.2f} | | "
        f"{_l(rd['locks_extended'])} | {_l(rd['put_retention'])} | kept S3 re-locked (packs, trees, record) in "
        f"{_l(rd['extend_s'])} s; kept by lock {_l(rd['locked'])} snapshots + {_l(rd['chunks_locked'])} chunks; "
        f"runs {_l(rd['seconds'])} s |",
        "",
        "Every run (seconds are llmdr's in-process `duration_s` for copies, wall time around `forget` for retention):",
        "",
        "| run | order | step | region | s | MB/s | chunks copied / total | locks_extended | load 1 min before | "
        "S3 requests |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["runs"]:
        first = r["order"][0].split("-")[0] + " first"
        for step, label in (("cold", "1 cold"), ("incremental", "2 right after"), ("due", "3 after slack")):
            for dst in r["order"]:
                x = r[step][dst]
                req = ", ".join(f"{k} {v}" for k, v in x["requests"].items())
                lines.append(f"| {r['run']} | {first} | {label} | {dst.split('-')[0]} | {x['duration_s']:.2f} | "
                             f"{x['mb_s'] or ''} | {x['chunks_copied']} / {x['chunks_total']} | "
                             f"{x['locks_extended']} | {x['load1_before']:.1f} | {req} |")
        for key, label, reg in (("plain", "4a retention", "plain"), ("locked_fresh", "4a retention", "locked"),
                                ("locked_due", "4b retention", "locked")):
            x = r["retention"][key]
            req = ", ".join(f"{k} {v}" for k, v in x["requests"].items())
            left = f"; S1 lock left {x['s1_lock_left_s']:.0f} s" if "s1_lock_left_s" in x else ""
            lines.append(f"| {r['run']} | {first} | {label} | {reg} | {x['seconds']:.2f} | | kept {x['kept']}, forgot "
                         f"{x['forgotten']}, locked {x['locked']}{left} | {x['locks_extended']} | | {req} |")
    lines += [
        "",
        "Notes:",
        "- Step 2 runs right after step 1 into the same destination: S1's record lock (snaps/<id>) still ends after "
        "now + period − slack, so the reused chunks are not re-locked (one HEAD of S1's record). Step 3 waits until "
        "the locked S2 is older than the slack (+1 s), so every pack holding a reused chunk gets one "
        "PutObjectRetention (plain: no wait, nothing is due). Each destination goes through all its steps before the "
        "other starts.",
        "- Repository format v2: chunks live inside packs (packs/), and an Object Lock is on a whole pack; chunk "
        "counts are chunks inside packs, locks_extended and PutObjectRetention count objects (packs, trees, "
        "records).",
        f"- Lock rule check after step 2 (smallest lock of S2's packs − (S2 record lock − slack), ≥ 0 holds): "
        f"{_l(s['lock_margin_s2_s'])} s. Packs are locked when put and the record when published, so the rule "
        "holds only while a copy takes less than the slack (here "
        f"{P / 4:.1f} s; cold copies took {_l(c['locked_s'])} s). HEAD returns RetainUntilDate in whole seconds.",
        "- PutObjectRetention/s = PutObjectRetention requests ÷ time inside `Locker.extend` (8 threads, the copy's "
        "`transfer.workers`).",
        "- The three primary snapshots are taken before the runs (not measured); S2 and S3 each change "
        f"`{CHANGED_FILE}`.",
    ]
    return "\n".join(lines) + "\n"


# main ---------------------------------------------------------------------------------------------------------------
def stop_previous(work: Path) -> None:
    """The servers of a previous run that died without stopping them."""
    if (work / "llmdr.yaml").exists():
        from llmdr.config import load_config
        from llmdr.devstack.regions import local_regions, stop_region

        old = load_config(work / "llmdr.yaml")
        for r in local_regions(old):
            stop_region(old, r)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Object Lock cost bench")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--shard-mb", type=int, default=64)
    ap.add_argument("--period", type=int, default=30, help="lock period in seconds (default 30)")
    ap.add_argument("--primary-port", type=int, default=P_PORT)
    ap.add_argument("--dr-port", type=int, default=DR_PORT)
    common_args(ap, work=BENCH_DIR / "work" / "object-lock",
                smoke="check the harness: 1 run, 2 shards of 1 MiB, 4 s lock period, free loopback ports; writes "
                      "object-lock-smoke.json|.md, never into bench/results/")
    args = parse(ap, argv, smoke={"runs": 1, "shards": 2, "shard_mb": 1, "period": 4})
    if args.smoke:
        from tests.support.ports import free_base_ports

        global SETTLE_S
        SETTLE_S = 0.0
        args.primary_port, args.dr_port = free_base_ports()
    if args.runs < 1 or args.period < 4:
        ap.error("--runs >= 1 and --period >= 4")
    out = results_dir(args.results, args.smoke, "object-lock-")

    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for var in ("LOCKBENCH_P_AK", "LOCKBENCH_P_SK", "LOCKBENCH_DR_AK", "LOCKBENCH_DR_SK"):
        os.environ.pop(var, None)  # keys come from the work folder's local.env, generated by start_region
    from llmdr.common.process import alive
    from llmdr.config import load_config
    from llmdr.devstack.regions import local_regions, start_region, stop_region
    from llmdr.devstack.samples import write_sample_bundle
    from llmdr.repo import ops
    from llmdr.storage.factory import adapter

    started = utc_now()
    load1_start = os.getloadavg()[0]
    t_start = time.perf_counter()
    work = args.work.resolve()
    prepare_work(work, WORK_MARKER, "bench/object_lock.py", stop_previous)
    (work / "llmdr.yaml").write_text(config_text(args.runs, args.period, args.primary_port, args.dr_port))
    cfg = load_config(work / "llmdr.yaml")
    busy = ports_in_use([p for r in local_regions(cfg) for p in r.local_ports])
    if busy:
        sys.exit(f"ports in use on {HOST}: {busy}; pick --primary-port / --dr-port elsewhere")

    t0 = time.perf_counter()
    bundle = work / "model"
    write_sample_bundle(bundle, shards=args.shards, shard_size=args.shard_mb * MiB, seed=7)
    files = [p for p in bundle.rglob("*") if p.is_file()]
    for p in files:  # into the page cache, so reading the source is alike for every copy
        p.read_bytes()
    bundle_bytes = sum(p.stat().st_size for p in files)
    print(f"bundle: {len(files)} files, {bundle_bytes / MB:.0f} MB in {time.perf_counter() - t0:.1f}s", flush=True)

    probe = Probe()
    probe.install()
    pids: list[int] = []
    runs: list[dict] = []
    try:
        for r in local_regions(cfg):
            st = start_region(cfg, r)
            if not st.healthy:
                raise SystemExit(f"region {r.name} did not come up: {st.detail}")
            pids.append(st.pid)
        locked_store = adapter(cfg, cfg.region("locked-1"))  # the raw S3 adapter: bucket set-up is not a repository's
        locked_store.ensure_bucket(object_lock=True)
        prot = locked_store.bucket_protection()
        if not prot["object_lock"]:
            raise SystemExit(f"{LOCKED_BUCKET} has no Object Lock: {prot}")
        print(f"servers: weed pids {pids}; {LOCKED_BUCKET}: {prot}", flush=True)

        sids = []
        for k in range(3):
            if k:
                with open(bundle / CHANGED_FILE, "a") as fh:
                    fh.write(f"{{# revision {k} #}}\n")
            snap = ops.snapshot_bundle(cfg)
            sids.append(snap.snapshot_id)
        print(f"primary: snapshots {', '.join(s[:12] for s in sids)}", flush=True)
        for n in range(1, args.runs + 1):
            runs.append(one_run(cfg, probe, n, sids, float(args.period)))
    finally:
        for r in local_regions(cfg):
            stop_region(cfg, r)
        left = [p for p in pids if alive(p)]
        if left:
            print(f"WARNING: weed pids still alive after stop_region: {left}", file=sys.stderr)

    res = {"started": started, "elapsed_s": round(time.perf_counter() - t_start, 1), "smoke": args.smoke,
           "steps": steps_of(runs),
           "setup": {"bundle_mb": bundle_bytes / MB, "bundle_files": len(files), "shards": args.shards,
                     "shard_mb": args.shard_mb, "period_s": args.period, "mode": "COMPLIANCE", "runs": args.runs,
                     "ports": {"primary": args.primary_port, "dr": args.dr_port}, "snapshots": sids,
                     "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                     "git": git_version(), "servers_stopped": not left, "load1_start": round(load1_start, 2),
                     "load1_end": round(os.getloadavg()[0], 2)},
           "summary": summarize(runs), "runs": runs}
    text = render(res)
    path = write_results(out, "object-lock-", res, text, smoke=args.smoke, started=started, stamped=False)
    if not args.keep:
        shutil.rmtree(work)
    print(text)
    print(f"elapsed {res['elapsed_s']:.0f}s; results in {path} and .json", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
