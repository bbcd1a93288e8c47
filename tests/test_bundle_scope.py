"""What one bundle's operations touch in a project with several (``bundles:``): a drill's ``replica`` outage stops
only that bundle's replica (the region's S3 store, its workers and the other bundles go on: a protect of another
bundle succeeds during it), and one Prometheus exporter, started by `llmdr stack up`, serves every bundle's
metrics. Real regions (the session's SeaweedFS servers) and real replicas; the Prefect side is in
tests/test_bundles.py."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from llmdr.config import load_config, parse_config
from llmdr.drill import procedure
from llmdr.drill.record import DrillRecord, end_outage, scope_of, simulate_outage
from llmdr.errors import UsageError
from tests.support.config import TEST_KEYS, copy_keys, fresh_prefix, region_yaml, two_region_yaml
from tests.support.ports import free_port

LLMDR = [sys.executable, "-m", "llmdr.cli"]


def _project(tmp_path: Path, p: int, s: int, *, bundles: str, extra: str = "", state: Path | None = None,
             prefix: str = "llmdr") -> Path:
    regions = [region_yaml("primary", "primary", p, "llmdr-primary", keys=TEST_KEYS[0], prefix=prefix, local=True),
               region_yaml("secondary", "secondary", s, "llmdr-secondary", keys=TEST_KEYS[1], prefix=prefix,
                           local=True)]
    text = (f"version: 1\nbundles:{bundles}\nregions:\n" + "".join(regions) + extra
            + f"state_dir: {state or '.llmdr'}\n")
    (tmp_path / "llmdr.yaml").write_text(text)
    return tmp_path / "llmdr.yaml"


def _served(name: str, ps: int, ss: int) -> str:
    return (f"\n  - name: {name}\n    path: models/{name}\n"
            f"    serving: {{primary: {{url: 'http://127.0.0.1:{ps}'}}, secondary: {{url: 'http://127.0.0.1:{ss}'}}}}")


def test_a_bundles_drill_cuts_only_its_replica_unless_the_project_says_otherwise(tmp_path):
    bundles = _served("alpha", 19501, 19502) + _served("beta", 19503, 19504)
    cfg = load_config(_project(tmp_path, 19600, 19700, bundles=bundles), whole=True)
    alpha, beta = cfg.views()
    assert alpha.drill.outage == beta.drill.outage == "replica"  # the default with several bundles
    scope = scope_of(alpha)
    assert scope["outage_action"] == "replica" and "bundle alpha's serving replica" in scope["outage_scope"]
    # the whole region, asked for: kept, and the report's scope says what it does to the other bundles
    cfg = load_config(_project(tmp_path, 19600, 19700, bundles=bundles, extra="drill: {outage: local}\n"), whole=True)
    assert cfg.for_bundle("alpha").drill.outage == "local"
    assert "shared by every bundle" in scope_of(cfg.for_bundle("alpha"))["outage_scope"]
    # other drill settings stay the project's; a one-bundle project keeps local
    cfg = load_config(_project(tmp_path, 19600, 19700, bundles=bundles, extra="drill: {approval: none}\n"), whole=True)
    assert cfg.for_bundle("beta").drill.outage == "replica" and cfg.for_bundle("beta").drill.approval == "none"
    one = two_region_yaml(19600, 19700, local=True)
    assert parse_config(one, source=tmp_path / "one.yaml").drill.outage == "local"
    assert "shared by every bundle" not in scope_of(parse_config(one, source=tmp_path / "one.yaml"))["outage_scope"]
    with pytest.raises(Exception, match="outage"):
        parse_config(one + "drill: {outage: bundle}\n", source=tmp_path / "one.yaml")


def test_record_outage_states_its_scope():
    rec = DrillRecord(bundle="alpha", started_ts=1000.0, started_by={}, tool_version="t", scope={})
    procedure.record_outage(rec, "primary", {"action": "replica: stopped ...", "scope": "replica"}, 1001.0)
    assert rec.outage["scope"] == "replica" and rec.timeline[-1].event == "alpha's replica in primary down"
    rec = DrillRecord(bundle="alpha", started_ts=1000.0, started_by={}, tool_version="t", scope={})
    procedure.record_outage(rec, "primary", {"action": "local: stopped ..."}, 1001.0)
    assert rec.outage["scope"] == "region" and rec.timeline[-1].event == "primary region down"


def _two_served_bundles(stack, tmp_path: Path) -> Path:
    from llmdr.serving.tinymodel import write_demo_bundle

    state = tmp_path / ".llmdr"
    copy_keys(stack, state)
    for b in ("alpha", "beta"):
        write_demo_bundle(tmp_path / "models" / b)
    bundles = "".join(_served(b, free_port(), free_port()) for b in ("alpha", "beta"))
    path = _project(tmp_path, stack.primary.port, stack.secondaries[0].port, bundles=bundles, state=state,
                    prefix=fresh_prefix(), extra="transfer: {workers: 4, fsync: false}\n"
                                                 "tracking: {register_models: false}\n")
    return path


@pytest.mark.s3
def test_replica_outage_stops_one_bundles_replica_and_nothing_else(stack, tmp_path):
    from llmdr.devstack.serving import start_serving, stop_serving
    from llmdr.repo import ops
    from llmdr.serving.replica import replica_status

    cfg = load_config(_two_served_bundles(stack, tmp_path), whole=True)
    alpha, beta = cfg.views()
    try:
        for v in (alpha, beta):
            ops.snapshot_bundle(v)
            assert all(n.started for n in start_serving(v, [v.primary])), v.bundle.name
        before = replica_status(alpha, alpha.primary)
        out = simulate_outage(alpha, "primary")
        assert out["scope"] == "replica" and f"pid {before.pid}" in out["action"]
        assert "S3 store, its Prefect workers and other bundles' replicas left running" in out["action"]
        assert not replica_status(alpha, alpha.primary).healthy
        assert replica_status(beta, beta.primary).healthy  # the other bundle still serves
        # the region's store still answers: the other bundle protects during the outage, and so could alpha
        assert ops.snapshot_bundle(beta).snapshot_id
        back = end_outage(alpha, "primary")
        after = replica_status(alpha, alpha.primary)
        assert back["healthy"] and after.healthy and after.pid != before.pid and "its own store" in back["action"]
        # a replica llmdr did not start (none running here: beta's secondary) cannot be cut by PID: a clear error
        with pytest.raises(UsageError, match=r"drill.outage: replica: the replica of 'beta' in 'secondary'.*not "
                                             r"started by llmdr"):
            simulate_outage(beta, "secondary")
    finally:
        for v in (alpha, beta):
            stop_serving(v)
    # a bundle with no replica in the region
    (tmp_path / "bare").mkdir()
    bare = load_config(_project(tmp_path / "bare", 19600, 19700, bundles="\n  - {name: a, path: a}\n  - "
                                "{name: b, path: b}"), whole=True)
    with pytest.raises(UsageError, match="bundle 'a' has no serving replica in region 'primary'"):
        simulate_outage(bare.for_bundle("a"), "primary")


def _scrape(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as r:
        assert r.status == 200
        return r.read().decode()


@pytest.mark.s3
def test_stack_up_starts_one_exporter_for_every_bundle(stack, tmp_path):
    """`llmdr stack up` on a project with three bundles starts one exporter; a scrape has each family once, with
    every bundle's samples (each its own repository: alpha's snapshot is not beta's); the page lists the bundles;
    `llmdr metrics show --bundle beta` shows beta alone."""
    from prometheus_client.parser import text_string_to_metric_families

    from llmdr.common.process import alive
    from llmdr.metrics import service
    from llmdr.repo import ops

    port = free_port()
    bundles = "".join(f"\n  - {{name: {b}, path: models/{b}}}" for b in ("alpha", "beta", "gamma"))
    (tmp_path / "models" / "alpha").mkdir(parents=True)
    (tmp_path / "models" / "alpha" / "w.bin").write_bytes(b"alpha" * 1000)
    path = _project(tmp_path, stack.primary.port, stack.secondaries[0].port, bundles=bundles, state=stack.state_path,
                    prefix=fresh_prefix(), extra=f"metrics: {{listen: '127.0.0.1:{port}', cache: 0s}}\n"
                                                 "tracking: {register_models: false}\n")
    cfg = load_config(path, whole=True)
    ops.snapshot_bundle(cfg.for_bundle("alpha"))
    ex = None
    try:
        r = subprocess.run([*LLMDR, "--config", str(path), "stack", "up", "--no-serving", "--json"],
                           capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr
        ex = json.loads(r.stdout)["metrics"]
        assert ex["healthy"] and ex["started"] and not ex["error"], ex
        text = _scrape(ex["url"])
        types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
        assert len(types) == len(set(types)), "a family appears twice in one exposition"
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        has = {(s.labels["bundle"], s.labels["region"]): s.value for s in fams["llmdr_region_has_snapshot"].samples}
        assert has == {("alpha", "primary"): 1, ("alpha", "secondary"): 0, ("beta", "primary"): 0,
                       ("beta", "secondary"): 0, ("gamma", "primary"): 0, ("gamma", "secondary"): 0}
        assert {s.labels["bundle"] for s in fams["llmdr_rpo_objective_seconds"].samples} == {"alpha", "beta", "gamma"}
        with urllib.request.urlopen(f"{ex['url']}/", timeout=30) as resp:
            page = resp.read().decode()
        assert "llmdr metrics: 3 bundles: alpha, beta, gamma" in page
        assert all(f'id="bundle-{b}"' in page for b in ("alpha", "beta", "gamma"))
        shown = subprocess.run([*LLMDR, "--config", str(path), "--bundle", "beta", "metrics", "show"],
                               capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0, shown.stderr
        got = {s.labels["bundle"] for f in text_string_to_metric_families(shown.stdout) for s in f.samples}
        assert got == {"beta"}
    finally:
        stopped = service.stop(cfg)
    assert ex is None or (stopped == ex["pid"] and not alive(stopped))


def test_a_bundles_runbook_names_its_own_deployments_and_automation(tmp_path):
    from llmdr.drill.runbook import render_runbook

    bundles = _served("alpha", 19501, 19502) + _served("beta", 19503, 19504)
    cfg = load_config(_project(tmp_path, 19600, 19700, bundles=bundles), whole=True)
    md = render_runbook(cfg.for_bundle("beta"), drills=[])
    for name in ("failover/failover-beta", "failback/failback-beta", "restore-bundle/restore-bundle-beta",
                 "monitor-endpoints/monitor-endpoints-beta", "dr-drill/dr-drill-quarterly-beta",
                 "llmdr-failover-when-active-region-down-beta"):
        assert f"`{name}`" in md, name
    assert "`failover/failover`" not in md and "-alpha" not in md
    one = parse_config(two_region_yaml(19600, 19700, local=True), source=tmp_path / "one.yaml")
    assert "`failover/failover`" in render_runbook(one, drills=[])


def test_readiness_finds_each_bundles_own_failover_automation(tmp_path):
    """The readiness check ``automation`` (what the Prefect API would answer for deployments/automations.py's
    per-bundle automations) passes each bundle on its own automation, and fails a bundle whose automation is gone
    even though another bundle's is there."""
    import importlib.util
    import time

    import yaml

    from llmdr.drill.readiness import automation as ra

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("llmdr_deploy_automations2", root / "deployments" / "automations.py")
    auto = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(auto)
    specs = auto.automation_specs(yaml.safe_load((root / "deployments" / "automations.yaml").read_text()),
                                  {"alpha": True, "beta": True})

    def answered(s: dict) -> dict:  # as integrations.prefect.failover_paths reads it back from the server
        act = s["actions"][0]
        flow, name = act["deployment"].split("/")
        return {"name": s["name"], "enabled": s["enabled"], "expect": s["trigger"]["expect"],
                "match": s["trigger"]["match"], "deployments": [{
                    "id": name, "name": name, "flow": flow, "paused": False, "bundle": act["parameters"]["bundle"],
                    "pool": "llmdr-secondary", "queue": "failover", "queue_status": "READY", "queue_paused": False,
                    "last_polled": time.time()}]}

    cfg = load_config(_project(tmp_path, 19600, 19700, bundles=_served("alpha", 19501, 19502)
                               + _served("beta", 19503, 19504)), whole=True)
    both = [answered(s) for s in specs]
    for b in ("alpha", "beta"):
        c = ra.judge(cfg.for_bundle(b), both, time.time(), "http://127.0.0.1:1/api")
        assert c.status == "PASS" and f"llmdr-failover-when-active-region-down-{b} → failover/failover-{b}" \
            in c.summary and ("beta" if b == "alpha" else "alpha") not in c.summary, c
    only_alpha = [a for a in both if a["name"].endswith("-alpha")]
    c = ra.judge(cfg.for_bundle("beta"), only_alpha, time.time(), "http://127.0.0.1:1/api")
    assert c.status == "FAIL" and "no automation" in c.summary, c
