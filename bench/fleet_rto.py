"""bench/fleet.py part B: the warm failover RTO through the DR region's runner (today's topology) against one plain
process worker for everything (the old one), with bench/rto.py's stack and trials (see fleet.py)."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import rto
from fleet_protect import Api
from harness import sigterm_deferred

STOP_S = 2.0  # SIGTERM → SIGKILL at the end and at the topology switch (a Prefect worker takes ~15 s to heed SIGTERM)
DR_RUNNER = ("a process worker per region's pool; the warm runner (deployments/warm_runner.py) on the DR region's "
             "`failover` queue runs the monitor and the failover; each outage stops the primary's replica, S3 server "
             "AND its Prefect workers (as a drill's local outage does)")
SINGLE = ("ONE plain `prefect worker start` on the primary's pool serving all its queues, every deployment bound to "
          "that pool (monitor and failover included), no warm runner; each outage stops the primary's replica and "
          "S3 server only: the worker survives (on the primary's host it would die too, and then nothing fails "
          "over: see the lone-worker trial)")


def stop_tree(pid: int, timeout: float, *, kill: bool = False) -> None:
    """Stop a worker and the flow runs it started (its child processes); ``kill``: SIGKILL at once, all of them
    together (a host that is lost does not shut down politely)."""
    import psutil

    from llmdr.common.process import terminate

    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        procs = []
    if kill:
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(procs, timeout=timeout)
        return
    for p in procs:
        if p.is_running():
            terminate(p.pid, timeout)


def cancel_running(api: Api, deployment: str, why: str) -> list[str]:
    """Mark the deployment's running runs Cancelled (their process is gone): its one concurrency slot frees."""
    dep = api.deployment(deployment)["id"]
    runs = api("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [dep]},
                                                   "state": {"type": {"any_": ["RUNNING", "PENDING"]}}}})
    for r in runs:
        got = api(f"/flow_runs/{r['id']}/set_state", {"state": {"type": "CANCELLED", "name": "Cancelled",
                                                                 "message": why}})
        if got.get("status") != "ACCEPT":
            raise SystemExit(f"could not cancel {deployment} run {r['name']}: {got}")
    return [r["name"] for r in runs]


def wait_monitor(cfg, since: float) -> None:
    """Until the monitor has written a round after ``since`` that sees the primary healthy."""
    from llmdr.failover.watch import _status_path, read_status

    def fresh() -> bool:
        p = _status_path(cfg)
        return (p.exists() and p.stat().st_mtime > since
                and read_status(cfg).get("primary", {}).get("status") == "healthy")

    rto.wait("the monitor on the single worker", fresh, 180, 0.5)


def single_worker_topology(cfg, env: dict, api: Api, log: Path) -> int:
    """Today's workers and runner stopped; every llmdr deployment bound to the primary's pool; one plain process
    worker on it (all queues); the monitor started again there. Returns the worker's PID."""
    from llmdr.common.process import spawn
    from llmdr.config.pools import region_pool
    from llmdr.devstack import orchestration

    for r in cfg.regions:
        orchestration.stop_workers(cfg, r.name, timeout=STOP_S)
    cancel_running(api, "monitor-endpoints", "bench/fleet.py: its runner was stopped (topology switch)")
    pool = region_pool(cfg.primary.name)
    for d in api("/deployments/filter", {"deployments": {"tags": {"all_": ["llmdr"]}}}):
        api(f"/deployments/{d['id']}", {"work_pool_name": pool, "work_queue_name": d["work_queue_name"]},
            method="PATCH")
        if api(f"/deployments/{d['id']}", method="GET")["work_pool_name"] != pool:
            raise SystemExit(f"deployment {d['name']} could not be moved to {pool}")
    pid = spawn([orchestration._prefect(), "worker", "start", "--pool", pool, "--name", "llmdr-single-worker"], log,
                cwd=orchestration.code_root(), env=env | {"LLMDR_REGION": cfg.primary.name}).pid
    since = time.time()
    monitor = api.deployment("monitor-endpoints")["id"]
    api(f"/deployments/{monitor}/create_flow_run", {"parameters": {"duration_s": 3600}})
    wait_monitor(cfg, since)
    return pid


def dead_worker_trial(cfg, api: Api, client: rto.Client, worker_pid: int) -> dict:
    """The lone worker lost with the primary (its replica, S3 server and the worker with its flow runs, the monitor
    among them); wait as a drill does (``objectives.rto``) for a failover record, and look for failover runs."""
    from llmdr.devstack.regions import stop_region
    from llmdr.drill.procedure import failover_wait
    from llmdr.drill.record import wait_for_failover
    from llmdr.failover.router import open_router
    from llmdr.failover.watch import _status_path
    from llmdr.serving.replica import stop_replica

    router = open_router(cfg)
    t_outage = time.time()
    stop_tree(worker_pid, 5.0, kill=True)  # the host is gone: its worker and flow runs first, without warning
    stop_replica(cfg, cfg.primary)
    stop_region(cfg, cfg.primary)
    since, limit = failover_wait(cfg, t_outage)
    rec = wait_for_failover(cfg, since, limit)
    dep = api.deployment("failover")["id"]
    runs = [r for r in api("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [dep]}}})
            if rto_ts(r["created"]) >= t_outage]
    during = [e for e in client.log if e[0] >= t_outage]
    last_round = _status_path(cfg).stat().st_mtime
    return {"waited_s": limit, "failover_started": rec is not None,
            "failover_runs_created": [f"{r['name']}: {r['state_name']}" for r in runs],
            "router_active_after": router.active(), "last_monitor_round_after_outage_s": round(last_round - t_outage, 2),
            "client_failed": sum(not e[1] for e in during), "client_requests": len(during)}


def rto_ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def summary(trials: list[dict]) -> dict:
    from statistics import median

    def med(key: str):
        xs = [t[key] for t in trials if t.get(key) is not None]
        return round(median(xs), 3) if xs else None

    return {k: med(k) for k in ("rto_s", "detection_s", "dispatch_s", "automation_s", "pickup_s", "recovery_s")}


def rto_part(work: Path, ports: dict[str, int], *, trials: int, dead_wait: int | None, steps: list[dict]) -> dict:
    from llmdr.devstack import postgres

    work.mkdir(parents=True)
    # the drill's wait for a failover is objectives.rto: the lone-worker trial waits that long
    extra = (f"control_plane: {{database: postgres, postgres_port: {ports['pg']}}}\n"
             f"objectives: {{rto: {dead_wait or 900}s}}\n")
    cfg, bundle_bytes = rto.write_project(work, ports, 0, extra)
    out = {"database": "postgresql (control_plane: {database: postgres})", "bundle_mb": round(bundle_bytes / 1e6, 2),
           "dr_runner": {"topology": DR_RUNNER, "trials": []}, "single_worker": {"topology": SINGLE, "trials": []},
           "dead_worker": None}
    api = Api(ports["api"])
    client = single = None
    phases = out["phases_s"] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        phases[name] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()

    try:
        print("part B: starting the failover stack (regions, replicas, router, PostgreSQL, Prefect)...", flush=True)
        env, client = rto.start_stack(cfg, ports["api"])
        lap("start")
        env = {k: v for k, v in env.items() if not k.startswith("PREFECT__")}
        for _ in range(trials):
            tr = rto.trial(cfg, env, client, "warm", lose_workers=True)
            print(json.dumps({"topology": "dr_runner", **tr}), flush=True)
            out["dr_runner"]["trials"].append(tr)
            steps.append({"step": "rto: DR runner, primary lost with its workers", "status": "ran", "ok": tr["ok"]})
        lap("dr runner trials")
        single = single_worker_topology(cfg, env, api, work / "single-worker.log")
        lap("switch to one worker")
        for _ in range(trials):
            tr = rto.trial(cfg, env, client, "warm")
            print(json.dumps({"topology": "single_worker", **tr}), flush=True)
            out["single_worker"]["trials"].append(tr)
            steps.append({"step": "rto: single worker, primary's S3 and replica lost", "status": "ran",
                          "ok": tr["ok"]})
        lap("single worker trials")
        if dead_wait:
            d = dead_worker_trial(cfg, api, client, single)
            single = None
            print(json.dumps({"topology": "single_worker_lost", **d}), flush=True)
            out["dead_worker"] = d
            steps.append({"step": "rto: single worker lost with the region", "status": "ran",
                          "ok": not d["failover_started"]})
            lap("lone worker lost")
    finally:
        with sigterm_deferred():
            if single is not None:
                stop_tree(single, STOP_S)
            rto.stop_stack(cfg, client, timeout=STOP_S)
            postgres.stop(cfg)
            lap("stop")
    for topo in ("dr_runner", "single_worker"):
        out[topo]["median"] = summary(out[topo]["trials"])
    return out
