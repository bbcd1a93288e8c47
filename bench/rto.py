"""Failover RTO on the local stack: warm standby and cold start, through the real chain.

    uv run python bench/rto.py                   # 3 warm trials + 2 cold trials, 512 MB of extra bundle bytes
    uv run python bench/rto.py --pad-mb 64 --warm 1 --cold 1     # quick
    uv run python bench/rto.py --smoke --results DIR               # 1 warm + 1 cold trial, no padding, free ports

Two SeaweedFS regions, a replica per region restored from its own store, Caddy, a Prefect server with the
deployments, the failover automation, a process worker and the warm failover runner, and the monitor-endpoints
deployment probing every 0.5 s (``--monitor-interval``). The router's fallback is armed on the verified warm standby.
Each trial kills the primary region (its S3 server and its replica) while a client sends a request through the
router every 100 ms, waits for the automation-driven failover, reads its record (RTO from the first failed probe to
the first golden-correct answer through the router, with detection / dispatch / recovery), counts the client's
requests and failures (and what they got), then restarts the primary and fails back (the failback deployment)
before the next trial. At the end, the monitor's probes outside the outages say whether the interval produced
false failures.

Warm: the secondary's replica runs (the default). Cold: the secondary's replica is stopped and its restored copy
deleted before the outage, so the failover restores the bundle from the secondary's store and starts the server;
the restore throughput is reported next to an s5cmd download of the same objects (the peer, same run).

Results: bench/results/rto-<UTC>.json|.md and rto-latest.* (or ``--results DIR``). Ports 38533/38633 (S3) and
38700-38710 on 127.0.0.1. The s5cmd peer must be installed (``uv sync``); a ``--smoke`` run (which checks the harness,
judges nothing and uses free ports) goes on without it, records that step as skipped and writes ``rto-smoke.json|.md``,
never into bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(REPO_DIR))
sys.path.insert(0, str(BENCH_DIR))

import peers  # noqa: E402
from harness import common_args, parse, prepare_work, utc_now  # noqa: E402
from report import results_dir, write_results  # noqa: E402

from tests.support.config import two_region_yaml  # noqa: E402

PORTS = {"p": 38533, "s": 38633, "ps": 38700, "ss": 38701, "rl": 38702, "ra": 38703, "api": 38704}
EXTRA = """\
router: {{kind: caddy, listen: "http://127.0.0.1:{rl}", admin: "http://127.0.0.1:{ra}"}}
monitor: {{interval: {interval}, timeout: 1s, down_after: 2, golden_every: 10}}
failover: {{confirm_probes: 2, confirm_interval: 0.2}}
"""


def config_text(ports: dict[str, int], extra: str = "", interval: str = "1s") -> str:
    """The bench's llmdr.yaml; ``extra``: more top-level lines (bench/fleet.py adds its control plane);
    ``interval``: the monitor's probe interval."""
    return two_region_yaml(ports["p"], ports["s"], keys=("RTO_P", "RTO_S"), local=True,
                           bundle="\n  name: rto-bench\n  path: model\n",
                           primary_lines=f'    serving: {{url: "http://127.0.0.1:{ports["ps"]}"}}',
                           secondary_lines=f'    serving: {{url: "http://127.0.0.1:{ports["ss"]}"}}',
                           extra=EXTRA.format(**ports, interval=interval) + extra)


def smoke_ports() -> dict[str, int]:
    """Free loopback ports (the tests' helpers): two S3 regions, the replicas, the router and the Prefect API."""
    from tests.support.ports import free_base_ports, port_picker, region_ports

    p, s = free_base_ports()
    port = port_picker(region_ports(p) | region_ports(s))
    return {"p": p, "s": s, "ps": port(), "ss": port(), "rl": port(), "ra": port(), "api": port()}


class Client(threading.Thread):
    """A request through the router every 100 ms: (time, ok, answering region, error or None)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.log: list[tuple[float, bool, str | None, str | None]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        body = json.dumps({"prompt": "how do I restore a snapshot ?", "max_tokens": 8, "temperature": 0}).encode()
        while not self.stop.is_set():
            t = time.time()
            try:
                req = urllib.request.Request(self.url + "/v1/completions", data=body,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=2) as r:  # noqa: S310 - loopback
                    r.read()
                    self.log.append((t, True, r.headers.get("X-Llmdr-Region"), None))
            except urllib.error.HTTPError as e:
                self.log.append((t, False, None, f"HTTP {e.code}"))
            except Exception as e:  # noqa: BLE001 - a failed request is the measurement
                self.log.append((t, False, None, f"{type(e).__name__}: {e}"[:120]))
            time.sleep(0.1)


def client_view(log: list[tuple[float, bool, str | None, str | None]], t_outage: float) -> dict:
    """What the client saw from the outage to the verified failover: its requests, the failed ones, the outage it
    lived through (first failed request -> first answer after the last failed one; 0 without failures) and when the
    DR region first answered it."""
    failed = [e for e in log if not e[1]]
    first_dr = next((e[0] for e in log if e[1] and e[2] == "secondary"), None)
    outage = 0.0
    if failed:
        after = next((e[0] for e in log if e[1] and e[0] > failed[-1][0]), None)
        outage = round((after or failed[-1][0]) - failed[0][0], 3)
    errors: dict[str, int] = {}
    for e in failed:
        errors[e[3] or "?"] = errors.get(e[3] or "?", 0) + 1
    return {"client_requests_during": len(log), "client_failed_during": len(failed), "client_errors": errors,
            "client_outage_s": outage,
            "client_first_dr_answer_s": None if first_dr is None else round(first_dr - t_outage, 3)}


def wait(what: str, cond, timeout: float, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(step)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def prefect(env: dict, *args: str, timeout: float = 300) -> str:
    from llmdr.devstack import orchestration

    r = subprocess.run([orchestration._prefect(), *args], env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"prefect {' '.join(args)} failed:\n{r.stdout[-1500:]}{r.stderr[-1500:]}")
    return r.stdout


def trial(cfg, env, client: Client, kind: str, *, lose_workers: bool = False) -> dict:
    """One outage of the primary and its failback. ``lose_workers``: the primary region's Prefect workers are
    stopped with it (as a drill's local outage does) and started again before the failback."""
    from llmdr.devstack import orchestration
    from llmdr.devstack.regions import start_region, stop_region
    from llmdr.failover import steps as fo
    from llmdr.failover.router import open_router
    from llmdr.serving.replica import replica_dir, stop_replica

    router = open_router(cfg)
    sec = cfg.region("secondary")
    windows: dict[str, list[float]] = {}  # when each endpoint was down on purpose (its failed probes are expected)
    if kind == "cold":
        windows["secondary"] = [time.time()]
        stop_replica(cfg, sec)
        for d in replica_dir(cfg, sec).glob("model-*"):
            shutil.rmtree(d) if d.is_dir() else d.unlink()
        from llmdr.failover.steps import rearm_fallback

        rearm_fallback(cfg)  # a stopped standby is no fallback (a check would find it so; the bench runs one)
        time.sleep(3)  # let the monitor see the secondary down first: its event is not the one under test
    before = len(fo.history(cfg))
    armed = router.fallback()  # the verified standby failed dials go to (None: none, e.g. the cold trial)
    t_outage = time.time()
    stop_replica(cfg, cfg.primary)
    stop_region(cfg, cfg.primary)
    if lose_workers:
        orchestration.stop_workers(cfg, cfg.primary.name, timeout=3.0)  # fast, like simulate_outage's
    wait("the router to switch to secondary", lambda: router.active() == "secondary", 600)
    rec = wait("the failover record", lambda: next((h for h in fo.history(cfg)[before:] if h.kind == "failover"),
                                                   None), 60)
    time.sleep(1.0)
    during = [e for e in client.log if t_outage <= e[0] <= (rec.verified_ts or t_outage)]
    after = [e for e in client.log if e[0] > (rec.verified_ts or 0)]
    cold = bool((rec.replica or {}).get("cold"))  # a warm standby's restore/start happened long before
    out = {"kind": kind, "ok": rec.ok, "rto_s": rec.rto_s, **(rec.rto_breakdown() or {}), "cold": cold,
           "fallback_armed": armed, **client_view(during, t_outage),
           "restore_s": (rec.replica or {}).get("restore_s") if cold else None,
           "start_s": (rec.replica or {}).get("start_s") if cold else None, "outage_to_first_failed_probe_s":
           round((rec.first_failure_ts or t_outage) - t_outage, 3),
           "client_ok_after": all(e[1] and e[2] == "secondary" for e in after)}
    start_region(cfg, cfg.primary)
    if lose_workers:
        orchestration.start_workers(cfg, [cfg.primary.name])  # failback runs on the primary's pool
    t_failback = time.time()
    prefect(env, "deployment", "run", "failback/failback", "--watch", "--watch-timeout", "300")
    wait("the router back on primary", lambda: router.active() == "primary", 60)
    time.sleep(0.5)
    back = [e for e in client.log if e[0] >= t_failback]
    out |= {"client_requests_failback": len(back), "client_failed_failback": sum(not e[1] for e in back),
            "fallback_after_failback": router.fallback()}
    if kind == "cold":
        from llmdr.serving.replica import start_replica

        start_replica(cfg, sec)
        windows["secondary"].append(time.time())
        from llmdr.failover.steps import rearm_fallback

        rearm_fallback(cfg)  # the standby is back: verified, it is the fallback again
    from llmdr.failover.watch import read_status

    wait("the monitor to see primary healthy", lambda: read_status(cfg).get("primary", {}).get("status") == "healthy",
         120, 0.5)
    out["down_windows"] = windows | {"primary": [t_outage, time.time()]}
    return out


def _pct(xs: list[float], q: float) -> float | None:
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 3) if xs else None


def probe_stats(cfg, trials: list[dict], since: float) -> list[dict]:
    """The monitor's probes of each endpoint outside the trials' outages (``down_windows``): how many, how many
    failed, the longest streak of failures (``down_after`` of them in a row is a false "down"), and the latency of
    the successful ones. What a shorter interval would risk: probes that fail while nothing is wrong."""
    import sqlite3

    from llmdr.failover.watch import store_path

    con = sqlite3.connect(f"file:{store_path(cfg)}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT target, ts, ok, latency_s FROM samples WHERE ts >= ? ORDER BY target, ts",
                           (since,)).fetchall()
    finally:
        con.close()
    out = []
    for target in sorted({r[0] for r in rows}):
        # the router is down with the primary when no standby was armed (the cold trials): expected failures too
        windows = [w for t in trials for name, w in t.get("down_windows", {}).items()
                   if name == target or (target == "router" and name == "primary" and not t.get("fallback_armed"))]
        mine = [r for r in rows if r[0] == target and not any(w[0] - 1 <= r[1] <= w[-1] + 1 for w in windows)]
        streak = longest = 0
        for r in mine:
            streak = 0 if r[2] else streak + 1
            longest = max(longest, streak)
        lat = sorted(r[3] for r in mine if r[2] and r[3] is not None)
        out.append({"target": target, "probes": len(mine), "failed": sum(not r[2] for r in mine),
                    "longest_failed_streak": longest, "latency_p50_s": _pct(lat, 0.5),
                    "latency_p99_s": _pct(lat, 0.99), "latency_max_s": lat[-1] if lat else None})
    return out


def write_project(work: Path, ports: dict[str, int], pad_mb: int, extra: str = "", interval: str = "1s"):
    """llmdr.yaml (``config_text``) and the tiny model, with ``pad_mb`` MiB of random padding, in ``work``; returns
    the loaded config and the bundle's bytes."""
    from llmdr.config import load_config
    from llmdr.serving.tinymodel import write_demo_bundle

    (work / "llmdr.yaml").write_text(config_text(ports, extra, interval))
    write_demo_bundle(work / "model")
    if pad_mb:
        (work / "model" / "extra").mkdir()
        with open(work / "model" / "extra" / "padding.bin", "wb") as f:
            for _ in range(pad_mb):
                f.write(os.urandom(1 << 20))
    cfg = load_config(work / "llmdr.yaml")
    return cfg, sum(p.stat().st_size for p in (work / "model").rglob("*") if p.is_file())


def start_stack(cfg, api: int) -> tuple[dict, Client]:
    """Both regions, a snapshot copied to the secondary, a replica per region and the router, the golden set,
    Prefect (``orchestration.start``: server, deployments, automation, a worker per region, the warm runner), a
    long monitor-endpoints run once the monitor sees the primary healthy, and the client (started). Returns the
    Prefect environment and the client; ``stop_stack`` undoes it all, also after a failure half-way."""
    from llmdr.devstack import orchestration
    from llmdr.devstack.regions import start_region
    from llmdr.devstack.serving import start_router, start_serving
    from llmdr.failover.watch import read_status
    from llmdr.repo import ops
    from llmdr.serving import golden
    from llmdr.serving.endpoint import OpenAIEndpoint

    for r in cfg.regions:
        start_region(cfg, r)
    sid = ops.snapshot_bundle(cfg).snapshot_id
    ops.replicate(cfg, sid, to="secondary")
    start_serving(cfg)
    start_router(cfg)
    golden.record(golden.default_cases(), OpenAIEndpoint(cfg.primary.serving.url).answer).save(cfg.golden_path)
    from llmdr.failover.steps import rearm_fallback

    print(f"router fallback: {rearm_fallback(cfg)}", flush=True)  # the standby, verified against the golden set
    print("starting Prefect (server, deployments, automation, worker, warm runner)...", flush=True)
    orchestration.start(cfg, api, start_monitor=False)
    env = orchestration.env(cfg, api)
    prefect(env, "deployment", "run", "monitor-endpoints/monitor-endpoints", "-p", "duration_s=3600")
    wait("the monitor", lambda: read_status(cfg).get("primary", {}).get("status") == "healthy", 180, 0.5)
    client = Client(cfg.router.url)
    client.start()
    return env, client


def stop_stack(cfg, client: Client | None, timeout: float = 20.0) -> None:
    """Stop the client, Prefect (workers, runner, server: each given ``timeout`` s after SIGTERM), the replicas and
    router, and both regions."""
    from llmdr.devstack import orchestration
    from llmdr.devstack.regions import stop_region
    from llmdr.devstack.serving import stop_serving

    if client is not None:
        client.stop.set()
    orchestration.stop(cfg, timeout)
    stop_serving(cfg, router=True)
    for r in cfg.regions:
        stop_region(cfg, r)


def s5cmd_download_rate(cfg, work: Path) -> dict:
    """The peer: s5cmd downloads the secondary bucket's objects (the packs a cold start restores, with the repository's other objects)."""
    from llmdr.storage.credentials import resolve_keys

    sec = cfg.region("secondary")
    keys = resolve_keys(cfg, sec)
    exe = peers.s5cmd_binary()
    target = work / "s5cmd-download"
    shutil.rmtree(target, ignore_errors=True)
    env = dict(os.environ, AWS_ACCESS_KEY_ID=keys.access_key_id, AWS_SECRET_ACCESS_KEY=keys.secret_access_key,
               AWS_REGION="us-east-1")
    t0 = time.perf_counter()
    subprocess.run([str(exe), "--endpoint-url", sec.endpoint, "cp", f"s3://{sec.bucket}/*", str(target) + "/"],
                   env=env, check=True, capture_output=True)
    secs = time.perf_counter() - t0
    nbytes = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    shutil.rmtree(target, ignore_errors=True)
    return {"bytes": nbytes, "seconds": round(secs, 3), "mb_s": round(nbytes / secs / 1e6, 1)}


def _interval(v: str) -> str:
    return f"{v} s" if v.replace(".", "", 1).isdigit() else v


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def render(res: dict) -> str:
    lines = [f"# Failover RTO, local stack ({res['started']})", "",
             f"Bundle {res['bundle_mb']:.0f} MB (tiny model + {res['pad_mb']} MB padding), monitor every "
             f"{_interval(res.get('monitor_interval', '1s'))}, down "
             "after 2 failed probes, confirmation 2 probes 0.2 s apart; client request through the router every "
             "100 ms.", "",
             "| trial | fallback armed | outage → first failed probe s | RTO s | detection s | dispatch s "
             "(automation + pickup) | recovery s | restore s | start s | client requests failed | client outage s | "
             "first DR answer s | answers after from DR | failed during failback |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for t in res["trials"]:
        lines.append(f"| {t['kind']} | {t.get('fallback_armed') or 'none'} | "
                     f"{t['outage_to_first_failed_probe_s']:.2f} | {t['rto_s']:.2f} | {t.get('detection_s', 0):.2f} | "
                     f"{t.get('dispatch_s', 0):.2f} ({_f(t.get('automation_s'))} + {_f(t.get('pickup_s'))})"
                     f" | {t.get('recovery_s', 0):.2f} | {_f(t['restore_s'])} | {_f(t['start_s'])} | "
                     f"{t['client_failed_during']}/{t['client_requests_during']} | {_f(t.get('client_outage_s'))} | "
                     f"{_f(t.get('client_first_dr_answer_s'))} | {'all ok' if t['client_ok_after'] else 'FAILURES'} | "
                     f"{t.get('client_failed_failback', 0)}/{t.get('client_requests_failback', 0)} |")
    lines += ["", "| target | value | goal | verdict |", "|---|---:|---|---|"]
    for c in res["checks"]:
        lines.append(f"| {c['name']} | {c['value']} | {c['goal']} | {c['verdict']} |")
    errs = [f"{t['kind']} trial {n}: " + ", ".join(f"{k} × {v}" for k, v in t["client_errors"].items())
            for n, t in enumerate(res["trials"], 1) if t.get("client_errors")]
    if errs:
        lines += ["", "What the failed client requests got: " + "; ".join(errs) + "."]
    if res.get("probes"):
        lines += ["", "Monitor probes outside the outages (a failed streak of `down_after` = 2 would be a false "
                  "\"down\"):", "", "| endpoint | probes | failed | longest failed streak | latency p50 / p99 / max s |",
                  "|---|---:|---:|---:|---|"]
        for p in res["probes"]:
            lines.append(f"| {p['target']} | {p['probes']} | {p['failed']} | {p['longest_failed_streak']} | "
                         f"{_f(p['latency_p50_s'])} / {_f(p['latency_p99_s'])} / {_f(p['latency_max_s'])} |")
    lines += ["", "Notes:",
              "- Fallback armed: the verified standby the router retries failed dials on (Caddy, policy first, "
              "passive health); the client's requests go there from the outage on, so its outage is shorter than "
              "the record's RTO, which still measures the formal failover.",
              "- RTO: first failed probe of the primary → first golden-correct answer through the router (the "
              "failover record). Detection: → the monitor declares it down and emits the event. Dispatch: event → "
              "automation → flow run → the warm runner starts it. Recovery: confirm the outage, replica (warm or cold "
              "start), golden set, router switch, golden set through the router.",
              "- Cold: the secondary replica is stopped and its restored folder deleted before the outage; the "
              "failover restores from the secondary's store and starts the server. Restore MB/s = bundle bytes ÷ "
              "restore s; the peer is s5cmd downloading the secondary bucket in the same run.",
              "- Clouds in the seed: 22–45 min of recovery; a GCP load balancer's detection alone ~10 s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="failover RTO bench")
    ap.add_argument("--pad-mb", type=int, default=512)
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--cold", type=int, default=2)
    ap.add_argument("--monitor-interval", default="0.5",
                    help="monitor.interval: seconds (0.5, the default) or a duration (1s); down after 2 failed probes")
    common_args(ap, work=BENCH_DIR / "work" / "rto",
                smoke="check the harness: 1 warm and 1 cold trial, no padding, free loopback ports, s5cmd only if "
                      "installed, nothing judged; writes rto-smoke.json|.md, never into bench/results/")
    args = parse(ap, argv, smoke={"pad_mb": 0, "warm": 1, "cold": 1})
    ports = smoke_ports() if args.smoke else dict(PORTS)
    out_dir = results_dir(args.results, args.smoke, "rto-")
    s5cmd = peers.find(("s5cmd",), required=bool(args.cold) and not args.smoke, script="bench/rto.py",
                       instead="pass --cold 0")["s5cmd"]
    api = ports["api"]

    from llmdr.integrations.prefect import quiet_console

    quiet_console()  # a quiet console; the flows' run logs still reach the Prefect API
    started = utc_now()
    work = args.work
    prepare_work(work, ".llmdr-bench-rto", "bench/rto.py")  # never empties a folder this harness did not make
    cfg, bundle_bytes = write_project(work, ports, args.pad_mb, interval=args.monitor_interval)
    client = None
    try:
        env, client = start_stack(cfg, api)
        trials = []
        for kind in ["warm"] * args.warm + ["cold"] * args.cold:
            t = trial(cfg, env, client, kind)
            print(json.dumps(t), flush=True)
            trials.append(t)
        probes = probe_stats(cfg, trials, 0.0)  # the baseline before the first trial included
        peer = s5cmd_download_rate(cfg, work) if args.cold and s5cmd else None
    finally:
        stop_stack(cfg, client)
    warm = [t["rto_s"] for t in trials if t["kind"] == "warm"]
    cold = [t for t in trials if t["kind"] == "cold"]
    checks = []
    if warm:
        med = statistics.median(warm)
        checks.append({"name": "warm-standby RTO (failover record), median of %d" % len(warm),
                       "value": f"{med:.2f} s", "goal": "<= 2 s (#19)", "verdict": "PASS" if med <= 2 else "FAIL"})
        wt = [t for t in trials if t["kind"] == "warm"]
        failed = sum(t["client_failed_during"] for t in wt)
        checks.append({"name": "warm trials: client requests failed, outage → verified",
                       "value": f"{failed}/{sum(t['client_requests_during'] for t in wt)}", "goal": "0 (#19)",
                       "verdict": "PASS" if failed == 0 else "FAIL"})
        checks.append({"name": "warm trials: client outage (first failed → next answer), median",
                       "value": f"{statistics.median(t['client_outage_s'] for t in wt):.2f} s", "goal": "report",
                       "verdict": "report"})
    if cold:
        med = statistics.median(t["rto_s"] for t in cold)
        rate = statistics.median(bundle_bytes / t["restore_s"] / 1e6 for t in cold if t["restore_s"])
        checks.append({"name": "cold-start RTO, median of %d" % len(cold), "value": f"{med:.2f} s",
                       "goal": f"report ({bundle_bytes / 1e6:.0f} MB bundle)", "verdict": "report"})
        checks.append({"name": "cold-start restore throughput", "value": f"{rate:.0f} MB/s", "goal": "report",
                       "verdict": "report"})
        if peer:
            checks.append({"name": "cold-start restore ÷ s5cmd download (MB/s)",
                           "value": f"{rate / peer['mb_s']:.2f}", "goal": f"report (s5cmd {peer['mb_s']} MB/s)",
                           "verdict": "report"})
    if args.smoke:
        for c in checks:
            c["verdict"] = "not judged (smoke run)" if c["verdict"] != "report" else c["verdict"]
    steps = [{"step": f"{t['kind']} trial", "status": "ran", "ok": t["ok"]} for t in trials]
    if args.cold:
        steps.append({"step": "s5cmd download (peer)", "status": "ran"} if peer else
                     {"step": "s5cmd download (peer)", "status": "skipped", "reason": peers.missing("s5cmd")})
    res = {"started": started, "smoke": args.smoke, "steps": steps, "bundle_mb": bundle_bytes / 1e6,
           "pad_mb": args.pad_mb, "monitor_interval": args.monitor_interval, "trials": trials, "probes": probes, "checks": checks, "peer_s5cmd": peer}
    text = render(res)
    write_results(out_dir, "rto-", res, text, smoke=args.smoke, started=started)
    print(text)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(c["verdict"] != "FAIL" for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
