"""Issue #18's fleet bench: protect throughput of several bundles with 1, 2 and 4 Prefect workers, and the warm
failover RTO through the DR region's runner against the single worker of the old topology, in one run.

    uv run python bench/fleet.py                        # 6 bundles of 64 MiB, 1/2/4 workers, 3 RTO trials each
    uv run python bench/fleet.py --bundles 3 --bundle-mb 16 --workers 1,2 --rto-trials 1     # quick
    uv run python bench/fleet.py --smoke --results DIR  # 3 tiny bundles, 1/2 workers, 1 trial each, free ports

Part A, protect throughput (``fleet_protect.py``): N bundles written with ``write_sample_bundle`` (distinct seeds) in one
project with ``bundles:``, on the two local SeaweedFS regions and a Prefect server on the PostgreSQL profile
(``control_plane: {database: postgres}``), started by ``orchestration.start``. The server's scheduler service is
off, so only the bench's runs exist (checked: any other protect run is counted and reported). For each worker count
(ascending; the primary region's process worker plus extra ``prefect worker start`` on its pool, all online first),
the repositories are new (a fresh key prefix per level, the bundles' local caches deleted): every level measures
cold protects of the same content. One run of every ``protect-bundle-<b>`` deployment is created at once through
the API; wall time is from before the first creation to the last run's end (the server's clock, on this host).
Bundles per minute, MB/s (bundle bytes ÷ wall), and the overlap achieved: the most protects doing work at once
(from each run's task spans, as tests/test_bundles.py reads them) and the most flow runs running at once.

Part B, warm RTO (``fleet_rto.py``), with bench/rto.py's stack and trials on a single-bundle project (a project with
``bundles:`` has no failover automation yet): (i) today's topology, the warm runner on the DR region's pool, the
primary cut off *with its workers*; (ii) the old one, ONE plain process worker serving every queue of one pool (all
deployments bound to the primary's pool), no warm runner, only the primary's replica and S3 lost: its worker
survives, else nothing could fail over; (iii) unless ``--no-dead-worker``: that lone worker lost with the region,
and the drill's wait (``objectives.rto``, set to ``--dead-worker-wait``) shows whether a failover ever starts.

Results: bench/results/fleet-<UTC>.json|.md and fleet-latest.* (``--smoke``: fleet-smoke.* in ``--results DIR``, never
bench/results/). Ports: ``--port-base`` (default 39700: regions +33/+133 and +233/+333, the rest +200..+205 and
+400..+406, all on 127.0.0.1); a smoke run takes free ones. Exit 1 if any protect did not complete or a check fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(REPO_DIR))
sys.path.insert(0, str(BENCH_DIR))

from fleet_protect import protect_part  # noqa: E402
from fleet_report import render_markdown  # noqa: E402
from fleet_rto import rto_part  # noqa: E402
from harness import HOST, common_args, parse, ports_in_use, prepare_work, region_ports, stop_on_sigterm, utc_now  # noqa: E402
from report import git_version, results_dir, write_results  # noqa: E402

MARKER = ".llmdr-bench-fleet"


def ports_for(args) -> tuple[dict[str, int], dict[str, int]]:
    """Part A's ports (regions p/s, Prefect api, PostgreSQL pg) and part B's (bench/rto.py's names, plus pg)."""
    if args.smoke:
        from tests.support.ports import free_base_ports, port_picker
        from tests.support.ports import region_ports as taken_by

        pa, sa = free_base_ports()
        pb, sb = free_base_ports()
        while {pb, sb} & {pa, sa} or min(abs(x - y) for x in (pa, sa) for y in (pb, sb)) < 10:
            pb, sb = free_base_ports()
        port = port_picker(taken_by(pa) | taken_by(sa) | taken_by(pb) | taken_by(sb))
        return ({"p": pa, "s": sa, "api": port(), "pg": port()},
                {"p": pb, "s": sb, "ps": port(), "ss": port(), "rl": port(), "ra": port(), "api": port(),
                 "pg": port()})
    n = args.port_base
    a = {"p": n + 33, "s": n + 133, "api": n + 200, "pg": n + 201}
    b = {"p": n + 233, "s": n + 333, "ps": n + 400, "ss": n + 401, "rl": n + 402, "ra": n + 403, "api": n + 404,
         "pg": n + 405}
    return a, b


def check_ports(a: dict[str, int], b: dict[str, int]) -> None:
    wanted = [*region_ports(a["p"]), *region_ports(a["s"]), a["api"], a["pg"], *region_ports(b["p"]),
              *region_ports(b["s"]), *(v for k, v in b.items() if k not in ("p", "s"))]
    busy = ports_in_use(wanted)
    if busy:
        sys.exit(f"port {busy[0]} on {HOST} is in use (bench/fleet.py needs {len(wanted)} ports from --port-base); "
                 "pick another --port-base")


def worker_levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        levels = []
    if not levels or any(n < 1 for n in levels) or levels != sorted(set(levels)):
        raise argparse.ArgumentTypeError(f"--workers {text!r}: give ascending worker counts, at least 1, e.g. 1,2,4 "
                                         "(workers are only ever added between levels)")
    return levels


def checks(res: dict) -> list[dict]:
    out = []
    for lv in res["protect"]["levels"]:
        ok = lv["completed"] == lv["runs_created"] and not lv["other_runs"]
        out.append({"name": f"{lv['workers']} worker(s): every protect COMPLETED, no other run",
                    "value": f"{lv['completed']}/{lv['runs_created']}, {len(lv['other_runs'])} other",
                    "goal": "all", "verdict": "PASS" if ok else "FAIL"})
    for topo in ("dr_runner", "single_worker"):
        t = res["rto"].get(topo) or {}
        ok = bool(t.get("trials")) and all(x["ok"] and x["rto_s"] for x in t["trials"])
        out.append({"name": f"RTO trials ({topo.replace('_', ' ')}): a failover record each, ok",
                    "value": f"{sum(bool(x['ok']) for x in t.get('trials', []))}/{len(t.get('trials', []))}",
                    "goal": "all", "verdict": "PASS" if ok else "FAIL"})
    dead = res["rto"].get("dead_worker")
    if dead:
        out.append({"name": "single worker lost with the region: no failover within the drill's wait",
                    "value": "none started" if not dead["failover_started"] else "a failover started",
                    "goal": "report", "verdict": "report"})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="fleet bench: protect throughput by worker count, warm RTO by topology")
    ap.add_argument("--bundles", type=int, default=6, help="bundles in the project (default 6)")
    ap.add_argument("--bundle-mb", type=int, default=64, help="MiB of safetensors shards per bundle (default 64)")
    ap.add_argument("--workers", type=worker_levels, default=[1, 2, 4],
                    help="ascending process-worker counts on the primary's pool (default 1,2,4)")
    ap.add_argument("--rto-trials", type=int, default=3, help="warm RTO trials per topology (default 3)")
    ap.add_argument("--dead-worker-wait", type=int, default=60,
                    help="seconds the lone-worker-lost trial waits for a failover: the project's objectives.rto, "
                         "which is the drill's wait (default 60)")
    ap.add_argument("--no-dead-worker", action="store_true", help="leave out the lone-worker-lost trial")
    ap.add_argument("--port-base", type=int, default=39700, help="first of the bench's port block (default 39700)")
    common_args(ap, work=BENCH_DIR / "work" / "fleet",
                smoke="check the harness: 3 tiny bundles, 1 and 2 workers, 1 RTO trial per topology, a 15 s "
                      "lone-worker wait, free loopback ports, nothing judged; writes fleet-smoke.json|.md, never "
                      "into bench/results/")
    args = parse(ap, argv, smoke={"bundles": 3, "bundle_mb": 1, "workers": [1, 2], "rto_trials": 1,
                                  "dead_worker_wait": 15})
    if args.bundles < 1 or args.bundle_mb < 1 or args.rto_trials < 1 or args.dead_worker_wait < 5:
        ap.error("--bundles, --bundle-mb and --rto-trials must be at least 1, --dead-worker-wait at least 5")
    out_dir = results_dir(args.results, args.smoke, "fleet-")
    stop_on_sigterm()
    pa, pb = ports_for(args)
    check_ports(pa, pb)

    from llmdr.integrations.prefect import quiet_console

    quiet_console()  # the flows' run logs still reach the Prefect API
    started, t0 = utc_now(), time.perf_counter()
    work = args.work
    prepare_work(work, MARKER, "bench/fleet.py")  # never empties a folder this harness did not make
    res = {"started": started, "smoke": args.smoke, "steps": [], "args": {k: str(v) for k, v in vars(args).items()},
           "machine": {"cpus": os.cpu_count(), "git": git_version(), "load_avg_start": os.getloadavg(),
                       "bytecode_cache": "PYTHONDONTWRITEBYTECODE" not in os.environ}}
    res["protect"] = protect_part(work / "protect", pa, bundles=args.bundles, bundle_mb=args.bundle_mb,
                                  levels=args.workers, steps=res["steps"])
    res["rto"] = rto_part(work / "rto", pb, trials=args.rto_trials,
                          dead_wait=None if args.no_dead_worker else args.dead_worker_wait, steps=res["steps"])
    if args.no_dead_worker:
        res["steps"].append({"step": "rto: single worker lost with the region", "status": "skipped",
                             "reason": "--no-dead-worker"})
    res["machine"]["load_avg_end"] = os.getloadavg()
    res["checks"] = checks(res)  # judged in a smoke run too: they say whether the numbers are real
    res["total_s"] = round(time.perf_counter() - t0, 1)
    text = render_markdown(res)
    path = write_results(out_dir, "fleet-", res, text, smoke=args.smoke, started=started)
    print(text)
    print(f"results: {path}; total {res['total_s']:.0f} s")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(c["verdict"] != "FAIL" for c in res["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
