"""A work pool and workers per region (#18 item 2).

The rule that binds each flow to a region's pool (``llmdr.config.pools``), `llmdr stack down REGION` stopping that
region's workers, and, for real (two SeaweedFS regions, replicas, a Caddy router, a Prefect server with the
deployments, a worker per region and the warm runner): the primary region is lost together with its worker, the
automation still fails over through the DR region's runner (its flow run on the DR pool, RTO measured); a run bound
to the primary's pool waits for the primary's worker, never taken by the DR region's; a region renamed in llmdr.yaml
after the deploy is reported by configure.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from llmdr.cli.stackstop import stop_stack
from llmdr.common.process import alive
from llmdr.config import load_config, parse_config
from llmdr.config.pools import deploy_env, pool_queue, pool_region, region_pools, stale_pools
from llmdr.devstack import orchestration
from llmdr.devstack.regions import start_region, stop_region
from llmdr.devstack.serving import start_router, start_serving, stop_serving
from llmdr.drill.record import end_outage, simulate_outage
from llmdr.failover import steps as fo
from llmdr.failover.router import open_router
from llmdr.integrations.prefect import retry_api
from llmdr.repo import ops
from llmdr.serving import golden
from llmdr.serving.endpoint import OpenAIEndpoint
from llmdr.serving.tinymodel import write_demo_bundle
from tests.support.config import config_yaml, make_config, region_yaml, two_region_yaml
from tests.support.ports import free_base_ports, port_picker, region_ports
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent


# --- the rule -----------------------------------------------------------------------------------------------------
def _three_regions(tmp_path, target: str | None = "ap-south"):
    text = config_yaml([region_yaml("eu-west", "primary", 18000, "b-eu", keys="K1"),
                        region_yaml("us-east", "secondary", 18100, "b-us", keys="K2"),
                        region_yaml("ap-south", "secondary", 18200, "b-ap", keys="K3")],
                       extra=f"failover: {{target: {target}}}" if target else "")
    path = tmp_path / "llmdr.yaml"
    path.write_text(text)
    return parse_config(text, source=path)


def test_each_flow_runs_on_the_pool_of_the_region_it_acts_in(tmp_path):
    cfg = _three_regions(tmp_path)
    assert region_pools(cfg) == {"eu-west": "llmdr-eu-west", "us-east": "llmdr-us-east", "ap-south": "llmdr-ap-south"}
    on = {f: pool_region(cfg, f) for f in ("protect-bundle", "protect-checkpoints", "failback", "failover",
                                            "monitor-endpoints", "dr-drill", "readiness-check", "verify-replicas",
                                            "restore-bundle", "some-new-flow")}
    assert on == {"protect-bundle": "eu-west", "protect-checkpoints": "eu-west", "failback": "eu-west",
                  # the failover target's pool: it outlives the primary, and the monitor never watches from inside
                  "failover": "ap-south", "monitor-endpoints": "ap-south", "dr-drill": "ap-south",
                  "readiness-check": "ap-south", "verify-replicas": "ap-south", "restore-bundle": "ap-south",
                  "some-new-flow": "ap-south"}
    # a deployment whose default parameters name a region runs there; an unknown name does not pick a pool
    assert pool_region(cfg, "failover", {"to": "us-east"}) == "us-east"
    assert pool_region(cfg, "restore-bundle", {"region": "us-east"}) == "us-east"
    assert pool_region(cfg, "restore-bundle", {"region": "nowhere"}) == "ap-south"
    assert pool_region(cfg, "failover", {"to": ""}) == "ap-south"
    assert [pool_queue(f) for f in ("failover", "monitor-endpoints", "failback", "dr-drill")] == [
        "failover", "failover", "default", "default"]
    assert deploy_env(cfg) == {"LLMDR_PRIMARY_POOL": "llmdr-eu-west", "LLMDR_DR_POOL": "llmdr-ap-south"}
    # without failover.target: the first secondary
    assert deploy_env(_three_regions(tmp_path, None))["LLMDR_DR_POOL"] == "llmdr-us-east"
    # pools of regions no longer configured, and of the single-pool layout, are stale; other pools are not ours
    assert stale_pools(cfg, ["llmdr-eu-west", "llmdr-us-west", "llmdr-process", "llmdr-failover", "gpu-pool"]) == [
        "llmdr-failover", "llmdr-process", "llmdr-us-west"]


def test_stack_down_region_stops_that_regions_workers_only(tmp_path):
    """`llmdr stack down primary` (the region's loss) stops the primary's worker with its S3 server and replica; the
    DR region's worker and runner keep running. Real processes stand in for the workers (PID files as
    orchestration writes them); the full chain with real Prefect workers is the test below."""
    p, s = free_base_ports()
    cfg = make_config(tmp_path, p, s, tmp_path / ".llmdr")
    procs = {}
    try:
        for region in ("primary", "secondary"):
            for name in orchestration.worker_names(cfg, region):
                procs[name] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
                pid_file = cfg.state_path / "prefect" / f"{name}.pid"
                pid_file.parent.mkdir(parents=True, exist_ok=True)
                pid_file.write_text(f"{procs[name].pid}\n")
        assert sorted(procs) == ["runner-secondary", "worker-primary", "worker-secondary"]
        assert orchestration.status(cfg).workers == {"primary": procs["worker-primary"].pid,
                                                     "secondary": procs["worker-secondary"].pid}
        rows = stop_stack(cfg, "primary")
        worker_rows = [r for r in rows if "Prefect" in r.what]
        assert [(r.what, r.region, r.pid, r.state) for r in worker_rows] == [
            ("Prefect worker", "primary", procs["worker-primary"].pid, "stopped")]
        assert procs["worker-primary"].wait(10) is not None
        assert alive(procs["worker-secondary"].pid) and alive(procs["runner-secondary"].pid)
        assert orchestration.status(cfg).workers["primary"] is None
        # the DR region's loss takes its runner too
        rows = stop_stack(cfg, "secondary")
        assert {(r.what, r.state) for r in rows if "Prefect" in r.what} == {
            ("Prefect worker", "stopped"), ("Prefect failover runner", "stopped")}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


# --- for real -----------------------------------------------------------------------------------------------------
EXTRA = """\
router: {{kind: caddy, listen: "http://127.0.0.1:{rl}", admin: "http://127.0.0.1:{ra}"}}
monitor: {{interval: 1s, timeout: 1s, down_after: 2, recent_window: 5, baseline_window: 20, golden_every: 5}}
failover: {{confirm_probes: 2, confirm_interval: 0.2}}
golden: golden.jsonl
"""


def _api(port: int, path: str, body: dict | None = None, method: str = "POST"):
    """One call to the Prefect REST API; retried on 503 (Prefect on SQLite: "database is locked" under load)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api{path}", method=method,
                                 data=json.dumps(body or {}).encode() if method != "GET" else None,
                                 headers={"Content-Type": "application/json"})

    def call():
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - loopback
            return json.loads(r.read())

    return retry_api(call)


def _run_deployment(port: int, flow: str, name: str, parameters: dict | None = None) -> dict:
    dep = _api(port, f"/deployments/name/{flow}/{name}", method="GET")
    return _api(port, f"/deployments/{dep['id']}/create_flow_run", {"parameters": parameters or {}})


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(kv.decode(errors="replace").split("=", 1) for kv in raw if b"=" in kv)


def _polled_since(port: int, pool: str, since: datetime) -> bool:
    """Every queue of the pool was polled by a worker after ``since`` (the server's last_polled)."""
    queues = _api(port, f"/work_pools/{pool}/queues/filter", {})
    return bool(queues) and all(q["last_polled"] and datetime.fromisoformat(q["last_polled"]) > since for q in queues)


@pytest.mark.s3
@pytest.mark.slow
def test_primary_lost_with_its_worker_fails_over_through_the_dr_regions_runner(tmp_path):
    p, s = free_base_ports()
    port = port_picker(region_ports(p) | region_ports(s))

    ps, ss = port(), port()
    text = two_region_yaml(p, s, keys=("POOLS_P", "POOLS_S"), local=True, bundle="{name: poolbot, path: model}",
                           primary_lines=f'    serving: {{url: "http://127.0.0.1:{ps}"}}',
                           secondary_lines=f'    serving: {{url: "http://127.0.0.1:{ss}", warm: true}}',
                           extra=EXTRA.format(rl=port(), ra=port()))
    (tmp_path / "llmdr.yaml").write_text(text)
    write_demo_bundle(tmp_path / "model")
    cfg = load_config(tmp_path / "llmdr.yaml")
    api_port = port()
    configure = None
    try:
        for r in cfg.regions:
            start_region(cfg, r)
        snap = ops.snapshot_bundle(cfg)
        ops.replicate(cfg, snap.snapshot_id, to="secondary")
        assert [n.started for n in start_serving(cfg)] == [True, True]
        start_router(cfg)
        gs = golden.record(golden.default_cases(), OpenAIEndpoint(cfg.primary.serving.url).answer)
        gs.save(cfg.golden_path)

        st = orchestration.start(cfg, api_port, start_monitor=False)
        # a pool per region; each deployment on the pool of the region it acts in
        pools = {wp["name"] for wp in _api(api_port, "/work_pools/filter", {})}
        assert {"llmdr-primary", "llmdr-secondary"} <= pools and not pools & {"llmdr-process", "llmdr-failover"}
        bound = {d["name"]: (d["work_pool_name"], d["work_queue_name"])
                 for d in _api(api_port, "/deployments/filter", {})}
        assert bound["protect-bundle"] == bound["failback"] == ("llmdr-primary", "default")
        assert bound["failover"] == bound["monitor-endpoints"] == ("llmdr-secondary", "failover")
        assert bound["dr-drill-on-demand"] == bound["restore-bundle"] == ("llmdr-secondary", "default")
        # a worker per region, started with its region named; the warm runner on the DR region's failover queue
        assert set(st.workers) == {"primary", "secondary"} and all(st.workers.values()) and st.runner_pid
        for region, pid in st.workers.items():
            assert _environ(pid)["LLMDR_REGION"] == region
            assert f"llmdr-{region}" in " ".join(Path(f"/proc/{pid}/cmdline").read_text().split("\0"))
        assert _environ(st.runner_pid)["LLMDR_REGION"] == "secondary"
        # the DR region's process worker leaves the failover queue to the runner (no race for a failover run)
        assert Path(f"/proc/{st.workers['secondary']}/cmdline").read_text().split("\0")[-3:-1] == [
            "--work-queue", "default"]

        monitor = _run_deployment(api_port, "monitor-endpoints", "monitor-endpoints", {"duration_s": 240})
        status_file = cfg.state_path / "monitor" / "status.json"
        wait_for("the monitor to judge the primary healthy", lambda: status_file.exists() and json.loads(
            status_file.read_text()).get("primary", {}).get("status") == "healthy", 120, 0.5)

        # --- the primary region is lost: store, replica and its Prefect worker (the drill's local outage) ---
        t_outage = time.time()
        action = simulate_outage(cfg, "primary")
        assert action["workers_stopped"] == ["worker-primary"], action
        assert not alive(st.workers["primary"]) and alive(st.workers["secondary"]) and alive(st.runner_pid)

        router = open_router(cfg)
        wait_for("the router to switch to secondary", lambda: router.active() == "secondary", 120)
        rec = wait_for("the failover record", lambda: next((h for h in fo.history(cfg) if h.kind == "failover"), None),
                    30)
        assert rec.ok and rec.trigger == "automation" and not rec.replica["cold"], rec.to_json()
        assert t_outage - 0.5 <= rec.first_failure_ts and 0 < rec.rto_s
        # the automation's failover run and the monitor ran on the DR region's pool, its failover queue
        run = wait_for("the failover run to finish (its record is written before it ends)", lambda: (
            lambda r: r if r["state"]["type"] not in ("PENDING", "RUNNING") else None)(
            _api(api_port, f"/flow_runs/{rec.flow_run_id}", method="GET")), 60, 0.3)
        assert (run["work_pool_name"], run["work_queue_name"]) == ("llmdr-secondary", "failover")
        assert run["state"]["type"] == "COMPLETED", run["state"]
        # started by the warm runner (it records its child's bare pid; a process worker records "host:pid")
        assert run["infrastructure_pid"] and ":" not in run["infrastructure_pid"], run["infrastructure_pid"]
        mon = _api(api_port, f"/flow_runs/{monitor['id']}", method="GET")
        assert mon["work_pool_name"] == "llmdr-secondary"
        print(f"\nRTO {rec.rto_s:.2f}s with the primary's worker lost {rec.rto_breakdown()}")

        # a run for the primary's pool is never taken by the DR region's worker or runner: it waits for its own
        protect = _run_deployment(api_port, "protect-bundle", "protect-bundle")
        # each queue of the DR pool polled again 2 s after the run existed (the worker polls every second)
        after = datetime.fromisoformat(protect["created"]) + timedelta(seconds=2)
        wait_for("the DR region's worker and runner to poll after the run was created",
              lambda: _polled_since(api_port, "llmdr-secondary", after), 60, 0.5)
        waiting = _api(api_port, f"/flow_runs/{protect['id']}", method="GET")
        assert waiting["state"]["type"] == "SCHEDULED" and waiting["work_pool_name"] == "llmdr-primary", waiting
        # --- meanwhile, a region renamed in llmdr.yaml after the deploy: configure.py moves the deployments and says
        # so (run beside the primary's return below; it leaves the primary's pool alone) ---
        renamed = tmp_path / "renamed.yaml"
        renamed.write_text(text.replace("  - name: secondary\n", "  - name: dr\n"))
        env = orchestration.env(cfg, api_port) | {"LLMDR_CONFIG": str(renamed)}
        configure = subprocess.Popen([sys.executable, str(ROOT / "deployments" / "configure.py")], env=env, cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # the primary comes back (the drill's end of outage): its worker too, and it takes the run
        back = end_outage(cfg, "primary")
        assert "worker-primary (pid" in back["action"], back
        taken_by = wait_for("the primary's worker to take the protect run", lambda: (lambda r: r if r["state"]["name"]
                         not in ("Scheduled", "Late") else None)(_api(api_port, f"/flow_runs/{protect['id']}",
                                                                          method="GET")), 120, 0.5)
        assert taken_by["work_pool_name"] == "llmdr-primary"

        out, err = configure.communicate(timeout=120)
        assert configure.returncode == 0, out[-2000:] + err[-2000:]
        assert "work pool llmdr-dr (region dr): created" in out
        assert "failover/failover: pool llmdr-dr/failover (was llmdr-secondary/failover)" in out
        warning = next(line for line in err.splitlines() if "llmdr-secondary" in line)
        assert "belongs to no region in llmdr.yaml (regions: primary, dr; renamed or removed?): 0 deployment(s)" \
            in warning and "online worker(s)" in warning and "stop its workers" in warning, warning
        bound = {d["name"]: d["work_pool_name"] for d in _api(api_port, "/deployments/filter", {})}
        assert bound["failover"] == bound["dr-drill-on-demand"] == "llmdr-dr" and bound["failback"] == "llmdr-primary"
    finally:
        if configure is not None and configure.poll() is None:
            configure.kill()
            configure.wait(10)
        orchestration.stop(cfg, timeout=5.0)  # a Prefect worker takes ~15 s to obey SIGTERM: then SIGKILL
        stop_serving(cfg, router=True)
        for r in cfg.regions:
            stop_region(cfg, r)
    assert not any(orchestration.status(cfg).workers.values()) and orchestration.status(cfg).runner_pid is None


def _configure_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("llmdr_deploy_configure_pools", ROOT / "deployments" / "configure.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_configure_moves_deployments_off_a_renamed_regions_pool_and_prunes_it(prefect_harness, tmp_path):
    """A deployment left on the pool of a region llmdr.yaml no longer has is moved to its rule's pool; the old pool
    is reported, and deleted by --prune only once nothing uses it (a pool another deployment still uses stays)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    from flows.failover import failback

    conf = _configure_module()
    cfg = make_config(tmp_path, 21000, 24000, tmp_path / ".llmdr")  # never connected to: only names are used
    tag = tmp_path.name[-20:]
    old, shared = f"llmdr-gone-{tag}"[:60], f"llmdr-shared-{tag}"[:60]
    with get_client(sync_client=True) as client:
        for pool in (old, shared):
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id = client.create_flow_from_name(failback.name)
        ours = client.create_deployment(flow_id=flow_id, name=f"failback-{tag}", tags=["llmdr", "kind:failover"],
                                        work_pool_name=old)
        theirs = client.create_deployment(flow_id=flow_id, name=f"other-{tag}", tags=["not-llmdr"],
                                          work_pool_name=shared)
        lines = conf.apply(cfg)
        assert any(f"failback/failback-{tag}: pool llmdr-primary/default (was {old}/default)" in x for x in lines), \
            lines
        assert client.read_deployment(ours).work_pool_name == "llmdr-primary"
        warned = {w.split()[2]: w for w in conf.stale(cfg)}
        assert "0 deployment(s), 0 online worker(s), 0 waiting run(s)" in warned[old]
        assert f"prefect work-pool delete {old}" in warned[old]
        assert "1 deployment(s)" in warned[shared] and f"other-{tag}" in warned[shared]
        pruned = {w.split()[2]: w for w in conf.stale(cfg, prune=True)}
        assert pruned[old].endswith("; deleted") and "not deleted: something still uses it" in pruned[shared]
        with pytest.raises(ObjectNotFound):
            client.read_work_pool(old)
        assert client.read_work_pool(shared).name == shared
        assert client.read_deployment(theirs).work_pool_name == shared  # not ours: left alone
        client.delete_deployment(theirs)
        client.delete_deployment(ours)
        client.delete_work_pool(shared)


def test_each_bundles_deployment_copy_runs_on_the_pool_of_the_region_it_acts_in(tmp_path):
    """configure.py's per-bundle copies follow the one-bundle rule (``pool_region`` of the bundle's view and the
    copy's parameters), not their base deployment's pool: alpha's restore-bundle copy that reads from us-east runs on
    us-east's pool, beta's on the DR region's; protect on the primary's; failover on the DR pool's failover queue."""
    conf = _configure_module()
    text = config_yaml([region_yaml("eu-west", "primary", 18000, "b-eu", keys="K1"),
                        region_yaml("us-east", "secondary", 18100, "b-us", keys="K2"),
                        region_yaml("ap-south", "secondary", 18200, "b-ap", keys="K3")],
                       extra="failover: {target: ap-south}")
    text = text.replace("bundle: {name: testbundle, path: bundle}\n",
                        "bundles:\n  - {name: alpha, path: a}\n  - {name: beta, path: b}\n")
    (tmp_path / "llmdr.yaml").write_text(text)
    cfg = parse_config(text, source=tmp_path / "llmdr.yaml")
    assert cfg.multi_bundle
    schema = {"properties": {"region": {"type": "string"}, "bundle": {"type": "string"}}}

    def copies(flow: str, parameters: dict) -> dict[str, tuple[str, str, str | None]]:
        return {c["bundle"]: (c["work_pool_name"], c["work_queue_name"], c["parameters"].get("region"))
                for c in conf.per_bundle(cfg, flow, flow, ["llmdr"], parameters, schema)}

    assert copies("restore-bundle", {"region": "us-east"}) == {
        "alpha": ("llmdr-us-east", "default", "us-east"), "beta": ("llmdr-us-east", "default", "us-east")}
    # prefect.yaml's default "secondary" names no region here: the failover target's, and its pool
    assert copies("restore-bundle", {"region": "secondary"}) == {
        "alpha": ("llmdr-ap-south", "default", "ap-south"), "beta": ("llmdr-ap-south", "default", "ap-south")}
    assert {b: c[:2] for b, c in copies("protect-bundle", {}).items()} == {
        "alpha": ("llmdr-eu-west", "default"), "beta": ("llmdr-eu-west", "default")}
    assert {b: c[:2] for b, c in copies("failover", {}).items()} == {
        "alpha": ("llmdr-ap-south", "failover"), "beta": ("llmdr-ap-south", "failover")}
    made = conf.per_bundle(cfg, "restore-bundle", "restore-bundle", ["llmdr"], {"region": "us-east"}, schema)
    assert [c["name"] for c in made] == ["restore-bundle-alpha", "restore-bundle-beta"]
    assert [c["parameters"]["bundle"] for c in made] == ["alpha", "beta"]
    # what a one-bundle project deletes when it was a project with bundles: before (its copies), and keeps
    assert conf.is_bundle_copy("protect-bundle-alpha", {"bundle": "alpha"})
    assert not conf.is_bundle_copy("protect-bundle", {"bundle": None})
    assert not conf.is_bundle_copy("protect-bundle", {})
    assert not conf.is_bundle_copy("my-own-protect", {"bundle": "alpha"})  # someone's deployment, not a copy
