"""bench/fleet.py part A: protect throughput of a ``bundles:`` project by the number of process workers on the
primary region's pool, on the PostgreSQL profile (see fleet.py for what is measured and why)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.request
from datetime import datetime
from pathlib import Path

from harness import sigterm_deferred

SUBMITTED = re.compile(r"Worker '([^']+)' submitting flow run")
SLOT_WAIT = re.compile(r"holding a slot of concurrency limit (\S+) .*after waiting ([0-9.]+) s")
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
KEYS = ("FLEET_P", "FLEET_S")


class Api:
    """The Prefect REST API on 127.0.0.1 (JSON in, JSON out; transient errors retried like llmdr's own calls)."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/api"

    def __call__(self, path: str, body: dict | None = None, method: str = "POST"):
        from llmdr.integrations.prefect import retry_api

        def call():
            data = None if method == "GET" else json.dumps(body or {}).encode()
            req = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - loopback
                return json.loads(r.read() or b"null")

        return retry_api(call, delays=(0.5, 1, 2, 4, 8))

    def deployment(self, name: str) -> dict:
        found = self("/deployments/filter", {"deployments": {"name": {"any_": [name]}}})
        if len(found) != 1:
            raise SystemExit(f"deployment {name!r}: {len(found)} found on {self.url} (configure.py should make one)")
        return found[0]

    def runs(self, ids: list[str]) -> dict[str, dict]:
        return {r["id"]: r for r in self("/flow_runs/filter", {"flow_runs": {"id": {"any_": ids}}})}

    def wait(self, ids: list[str], timeout: float) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        while True:
            runs = self.runs(ids)
            if all(r["state_type"] in FINAL for r in runs.values()):
                return runs
            if time.monotonic() > deadline:
                return runs  # the caller records those not final
            time.sleep(0.5)

    def task_span(self, flow_run_id: str) -> tuple[float, float] | None:
        """From the run's first task start to its last task end (None: it ran no task)."""
        tasks = [t for t in self("/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
                 if t["start_time"] and t["end_time"]]
        if not tasks:
            return None
        return (min(ts(t["start_time"]) for t in tasks), max(ts(t["end_time"]) for t in tasks))

    def online_workers(self, pool: str) -> set[str]:
        return {w["name"] for w in self(f"/work_pools/{pool}/workers/filter", {})
                if w.get("status") == "ONLINE"}


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one instant (an end and a start at the same instant do not overlap)."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def project_yaml(ports: dict[str, int], names: list[str], prefix: str) -> str:
    from tests.support.config import region_yaml

    bundles = "".join(f"\n  - {{name: {b}, path: models/{b}}}" for b in names)
    regions = [region_yaml("primary", "primary", ports["p"], "llmdr-primary", keys=KEYS[0], prefix=prefix,
                           local=True),
               region_yaml("secondary", "secondary", ports["s"], "llmdr-secondary", keys=KEYS[1], prefix=prefix,
                           local=True)]
    # MLflow registration and the metrics exporter off: this measures the data path and Prefect's dispatch
    extra = (f"tracking: {{register_models: false}}\nmetrics: {{with_stack: false}}\n"
             f"control_plane: {{database: postgres, postgres_port: {ports['pg']}}}\n")
    return f"version: 1\nbundles:{bundles}\nregions:\n" + "".join(regions) + extra + "state_dir: .llmdr\n"


def from_run_log(api: Api, run_id: str) -> tuple[str | None, dict[str, float]]:
    """From the run's log: the worker that submitted it ("Worker 'NAME' submitting flow run"), and the seconds it
    waited for each concurrency limit's slot, summed (llmdr's concurrency_slot logs each wait)."""
    worker, waited = None, {}
    for x in api("/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200}):
        msg = x.get("message") or ""
        if m := SUBMITTED.search(msg):
            worker = m.group(1)
        elif m := SLOT_WAIT.search(msg):
            waited[m.group(1)] = round(waited.get(m.group(1), 0.0) + float(m.group(2)), 2)
    return worker, waited


def protect_part(work: Path, ports: dict[str, int], *, bundles: int, bundle_mb: int, levels: list[int],
                 steps: list[dict]) -> dict:
    from llmdr.common.process import spawn, terminate
    from llmdr.config import load_config
    from llmdr.config.pools import region_pool
    from llmdr.devstack import orchestration, postgres
    from llmdr.devstack.regions import start_region, stop_region
    from llmdr.devstack.samples import MiB, write_sample_bundle

    work.mkdir(parents=True)
    names = [f"b{i:02d}" for i in range(1, bundles + 1)]
    for i, b in enumerate(names):
        write_sample_bundle(work / "models" / b, shards=2, shard_size=bundle_mb * MiB // 2, seed=1000 + i)
    sizes = {b: sum(p.stat().st_size for p in (work / "models" / b).rglob("*") if p.is_file()) for b in names}
    total = sum(sizes.values())
    cfg_path = work / "llmdr.yaml"
    cfg_path.write_text(project_yaml(ports, names, "fleet-setup"))
    cfg = load_config(cfg_path, whole=True)
    pool = region_pool(cfg.primary.name)
    extra: dict[str, int] = {}  # extra worker name -> pid
    logs = {"llmdr-worker-primary": cfg.state_path / "prefect" / "worker-primary.log"}
    out = {"database": "postgresql (control_plane: {database: postgres}, local PostgreSQL "
                       f"{postgres_version()})", "bundles": names, "bundle_bytes": sizes, "total_bytes": total,
           "transfer_region_slots": cfg.transfer.region_slots, "levels": []}
    # only the bench's runs: the server's scheduler service would start every per-bundle schedule at once
    os.environ["PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED"] = "false"
    api = Api(ports["api"])
    phases = out["phases_s"] = {}
    t = time.perf_counter()
    try:
        for r in cfg.regions:
            start_region(cfg, r)
        phases["regions"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        print("part A: starting PostgreSQL, Prefect (server, pools, deployments per bundle, workers)...", flush=True)
        orchestration.start(cfg, ports["api"], start_monitor=False)
        out["control_plane_start_s"] = round(time.perf_counter() - t, 1)
        env = {k: v for k, v in orchestration.env(cfg, ports["api"]).items() if not k.startswith("PREFECT__")}
        deps = {b: api.deployment(f"protect-bundle-{b}")["id"] for b in names}
        for n in levels:
            t = time.perf_counter()
            for k in range(len(extra) + 2, n + 1):  # worker 1 is orchestration's; add the others, never remove
                name = f"fleet-worker-{k}"
                logs[name] = work / "logs" / f"{name}.log"
                logs[name].parent.mkdir(parents=True, exist_ok=True)
                extra[name] = spawn([orchestration._prefect(), "worker", "start", "--pool", pool, "--name", name],
                                    logs[name], cwd=orchestration.code_root(),
                                    env=env | {"LLMDR_REGION": cfg.primary.name}).pid
            want = set(list(logs)[:n])
            deadline = time.monotonic() + 120
            while not want <= api.online_workers(pool):
                if time.monotonic() > deadline:
                    raise SystemExit(f"workers {sorted(want - api.online_workers(pool))} not online on {pool} "
                                     f"after 120 s (logs: {work / 'logs'})")
                time.sleep(0.5)
            phases[f"workers {n} online"] = round(time.perf_counter() - t, 1)
            t = time.perf_counter()
            level = measure_level(api, cfg_path, ports, names, deps, n, sizes)
            phases[f"level {n}"] = round(time.perf_counter() - t, 1)
            out["levels"].append(level)
            steps.append({"step": f"protect: {n} worker(s)", "status": "ran",
                          "ok": level["completed"] == level["runs_created"]})
            print(json.dumps({k: v for k, v in level.items() if k != "runs"}), flush=True)
    finally:
        with sigterm_deferred():
            t = time.perf_counter()
            for pid in extra.values():
                terminate(pid, 2.0)  # a Prefect worker takes ~15 s to heed SIGTERM; its runs are over: SIGKILL then
            orchestration.stop(cfg, timeout=2.0)
            postgres.stop(cfg)
            for r in cfg.regions:
                stop_region(cfg, r)
            os.environ.pop("PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED", None)
            phases["stop"] = round(time.perf_counter() - t, 1)
    return out


def measure_level(api: Api, cfg_path: Path, ports: dict[str, int], names: list[str], deps: dict[str, str], n: int,
                  sizes: dict[str, int]) -> dict:
    """One run of every bundle's protect-bundle deployment at once, into new repositories (a fresh prefix, the
    bundles' caches deleted): cold protects of the same content at every level."""
    state = cfg_path.parent / ".llmdr"
    cfg_path.write_text(project_yaml(ports, names, f"fleet-w{n}"))  # each flow run reads the file afresh
    for b in names:
        shutil.rmtree(state / "bundles" / b / "cache", ignore_errors=True)
    before = {r["id"] for r in api("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": list(deps.values())}}})}
    t0 = time.time()
    ids = {api(f"/deployments/{deps[b]}/create_flow_run", {"parameters": {"bundle": b}})["id"]: b for b in names}
    created_s = time.time() - t0
    runs = api.wait(list(ids), timeout=1800)
    all_now = api("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": list(deps.values())}}})
    other = [r["name"] for r in all_now if r["id"] not in ids and r["id"] not in before]
    done = [r for r in runs.values() if r["state_type"] == "COMPLETED"]
    rows = []
    for rid, b in ids.items():
        r = runs[rid]
        span = api.task_span(rid) if r["start_time"] else None
        worker, waited = from_run_log(api, rid)
        rows.append({"bundle": b, "id": rid, "state": r["state_name"], "worker": worker, "slot_wait_s": waited,
                     "start_after_s": round(ts(r["start_time"]) - t0, 2) if r["start_time"] else None,
                     "end_after_s": round(ts(r["end_time"]) - t0, 2) if r["end_time"] else None,
                     "task_span": [round(span[0] - t0, 2), round(span[1] - t0, 2)] if span else None,
                     "message": (r.get("state") or {}).get("message") if r["state_type"] != "COMPLETED" else None})
    ends = [x["end_after_s"] for x in rows if x["end_after_s"] is not None]
    wall = max(ends) if ends and len(done) == len(ids) else None
    done_bytes = sum(sizes[x["bundle"]] for x in rows if x["state"] == "Completed")
    per_worker: dict[str, int] = {}
    slot_wait: dict[str, float] = {}
    for x in rows:
        per_worker[x["worker"] or "?"] = per_worker.get(x["worker"] or "?", 0) + 1
        for limit, secs in x["slot_wait_s"].items():
            slot_wait[limit] = round(slot_wait.get(limit, 0.0) + secs, 2)
    return {"workers": n, "prefix": f"fleet-w{n}", "runs_created": len(ids), "create_s": round(created_s, 2),
            "completed": len(done), "other_runs": other, "wall_s": wall,
            "bundles_per_min": round(len(done) / wall * 60, 2) if wall else None,
            "mb_s": round(done_bytes / wall / 1e6, 1) if wall else None,
            "overlap_protecting": max_overlap([tuple(x["task_span"]) for x in rows if x["task_span"]]),
            "overlap_runs": max_overlap([(x["start_after_s"], x["end_after_s"]) for x in rows
                                         if x["start_after_s"] is not None and x["end_after_s"] is not None]),
            "first_start_s": min((x["start_after_s"] for x in rows if x["start_after_s"] is not None), default=None),
            "runs_per_worker": per_worker, "slot_wait_s": slot_wait, "runs": rows}


def postgres_version() -> str:
    from llmdr.devstack.postgres import binaries, server_version

    try:
        return server_version(binaries()["postgres"])
    except Exception:  # noqa: BLE001 - orchestration.start names what is missing
        return "?"
