"""DR drills for real, on one local stack (two SeaweedFS regions, replicas, Caddy, a Prefect server with the
deployments, the failover automation, a worker, the warm runner and the monitor): the dr-drill deployment is run
through the API exactly as the quarterly schedule or the UI's Run button would.

1. a drill passes and produces every format (evidence JSON, HTML, PDF, charts, signature, MLflow run, Prefect
   artifacts), and `llmdr report verify` accepts it until a byte is changed;
2. with the DR copy older than the RPO objective, the RPO control fails;
3. with the failover automation paused, nothing fails over within the RTO objective and the drill fails, saying so.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import pytest

from llmdr import golden, ops, orchestration
from llmdr.config import load_config
from llmdr.endpoint import OpenAIEndpoint
from llmdr.router import open_router
from llmdr.stack import start_region, start_router, start_serving, stop_region, stop_serving
from llmdr.tinymodel import write_demo_bundle

from conftest import _free_base_port, free_port

CONFIG = """\
version: 1
bundle:
  name: drillbot
  path: model
  components:
    weights: {{paths: ["*.safetensors"], required: true}}
    tokenizer: {{paths: ["tokenizer.json"], required: true}}
    prompt_templates: {{paths: ["*.jinja"], required: true}}
    generation_config: {{paths: ["generation_config.json"], required: true}}
regions:
  - name: primary
    role: primary
    endpoint: http://127.0.0.1:{p}
    bucket: llmdr-primary
    credentials: {{access_key_env: DRILL_P_AK, secret_key_env: DRILL_P_SK}}
    local: {{}}
    serving: {{url: "http://127.0.0.1:{ps}"}}
  - name: secondary
    role: secondary
    endpoint: http://127.0.0.1:{s}
    bucket: llmdr-secondary
    credentials: {{access_key_env: DRILL_S_AK, secret_key_env: DRILL_S_SK}}
    local: {{}}
    serving: {{url: "http://127.0.0.1:{ss}"}}
router: {{kind: caddy, listen: "http://127.0.0.1:{rl}", admin: "http://127.0.0.1:{ra}"}}
objectives: {{rpo: {rpo}, rto: {rto}, drill_interval: 90d}}
monitor: {{interval: 1s, timeout: 1s, down_after: 2, recent_window: 5, baseline_window: 20, golden_every: 0}}
failover: {{confirm_probes: 2, confirm_interval: 0.2}}
golden: golden.jsonl
state_dir: .llmdr
"""


def _api(port: int, path: str, body: dict | None = None, method: str = "POST"):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        raw = r.read()
        return json.loads(raw) if raw else None


def _llmdr(cfg, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmdr.cli", "--config", str(cfg.source_file), *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def drill_stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("drill")
    p = _free_base_port()
    s = _free_base_port()
    while abs(s - p) < 10 or abs(s - p) == 10000:
        s = _free_base_port()
    taken = {*range(p, p + 9), p + 10008, *range(s, s + 9), s + 10008}

    def port() -> int:
        while (n := free_port()) in taken:
            pass
        taken.add(n)
        return n

    ports = {"p": p, "s": s, "ps": port(), "ss": port(), "rl": port(), "ra": port()}
    path = tmp / "llmdr.yaml"
    path.write_text(CONFIG.format(**ports, rpo="1h", rto="2m"))
    write_demo_bundle(tmp / "model")
    cfg = load_config(path)
    api = port()
    try:
        for r in cfg.regions:
            start_region(cfg, r)
        sid = ops.snapshot_bundle(cfg).snapshot_id
        ops.replicate(cfg, sid, to="secondary")
        start_serving(cfg)
        start_router(cfg)
        golden.record(golden.default_cases(), OpenAIEndpoint(cfg.primary.serving.url).answer).save(cfg.golden_path)
        orchestration.start(cfg, api, start_monitor=False)
        env = orchestration.env(cfg, api)
        run = subprocess.run([orchestration._prefect(), "deployment", "run", "monitor-endpoints/monitor-endpoints",
                              "-p", "duration_s=900"], env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        from llmdr.watch import read_status

        deadline = time.monotonic() + 120
        while read_status(cfg).get("primary", {}).get("status") != "healthy":
            assert time.monotonic() < deadline, "the monitor never judged the primary healthy"
            time.sleep(0.5)
        yield {"cfg": cfg, "api": api, "env": env, "ports": ports, "sid": sid}
    finally:
        orchestration.stop(cfg)
        stop_serving(cfg, router=True)
        for r in cfg.regions:
            stop_region(cfg, r)


def _run_drill(st) -> tuple[subprocess.CompletedProcess, dict]:
    from llmdr import drill as core

    before = {r.id for r in core.history(st["cfg"])}
    r = subprocess.run([orchestration._prefect(), "deployment", "run", "dr-drill/dr-drill-quarterly", "--watch",
                        "--watch-timeout", "400"], env=st["env"], capture_output=True, text=True, timeout=450)
    new = [x for x in core.history(st["cfg"]) if x.id not in before]
    assert len(new) == 1, r.stdout[-3000:] + r.stderr[-3000:]
    return r, new[0].to_json()


def _controls(rec: dict) -> dict[str, bool]:
    return {c["id"]: c["passed"] for c in rec["controls"]}


@pytest.mark.s3
def test_drill_passes_and_produces_every_format(drill_stack):
    st = drill_stack
    cfg = st["cfg"]
    t0 = time.monotonic()
    run, rec = _run_drill(st)
    took = time.monotonic() - t0
    assert run.returncode == 0 and "Completed" in run.stdout, run.stdout[-3000:]
    assert rec["passed"] and not rec["failed_over_at_end"], rec["failure_reasons"]
    ctl = _controls(rec)
    assert all(ctl[k] for k in ("rto", "rpo", "golden_after_failover", "restore_test", "bundle_complete_dr",
                                "failback"))
    assert ctl["previous_drill"] is False  # the first drill on record: shown, not blocking
    m = rec["measurements"]
    assert 0 < m["rto_s"] < 120 and m["rto_s"] == round(m["rto_s"], 1)
    assert m["rpo_s"] > 0 and rec["evidence"]["snapshots"]["secondary"]["id"] == st["sid"]
    assert rec["evidence"]["failover"]["trigger"] == "automation"
    assert rec["started_by"]["kind"] in ("ui", "api") and rec["evidence"]["prefect_flow_run_id"]
    kinds = [e["kind"] for e in rec["timeline"]]
    for k in ("outage", "detection", "switch", "recovery", "check", "failback"):
        assert k in kinds, k
    assert open_router(cfg).active() == "primary"
    print(f"\ndrill took {took:.1f}s, RTO {m['rto_s']} s, RPO {m['rpo_s']} s")

    folder = cfg.reports_path / "drills" / rec["id"]
    for name in ("evidence.json", "report.html", "report.pdf", "timeline.png", "SIGNATURE.json"):
        assert (folder / name).stat().st_size > 0, name
    ok = _llmdr(cfg, "report", "verify", str(folder))
    assert ok.returncode == 0 and "signature OK" in ok.stdout, ok.stdout + ok.stderr
    html = (folder / "report.html").read_text()
    assert "PASS" in html and rec["id"] in html

    arts = _api(st["api"], "/artifacts/filter", {"artifacts": {"key": {"any_": ["dr-drill-drillbot"]}}})
    assert arts and "PASS" in arts[0]["data"]
    mlflow_id = rec["evidence"].get("mlflow_run_id")
    assert mlflow_id, rec["evidence"].get("mlflow_error")
    from llmdr.tracking import drill_runs, target_for

    run = next(r for r in drill_runs(target_for(cfg), bundle="drillbot") if r["id"] == mlflow_id)
    assert run["status"] == "FINISHED" and run["metrics"]["passed"] == 1
    assert run["metrics"]["rto_seconds"] == pytest.approx(m["rto_s"], abs=0.05)
    assert run["metrics"]["rpo_seconds"] == pytest.approx(m["rpo_s"], abs=0.05)
    assert run["artifact_uri"].startswith("s3://llmdr-secondary/")  # the evidence lives in the DR region

    # tampering with any byte is detected
    ev = folder / "evidence.json"
    data = ev.read_bytes()
    ev.write_bytes(data.replace(b'"passed": true', b'"passed": false', 1) if b'"passed": true' in data
                   else data + b" ")
    bad = _llmdr(cfg, "report", "verify", str(folder))
    assert bad.returncode == 10 and "evidence.json" in bad.stdout
    ev.write_bytes(data)

    listed = _llmdr(cfg, "drills")
    assert listed.returncode == 0 and rec["id"] in listed.stdout and "PASS" in listed.stdout


@pytest.mark.s3
def test_stale_dr_copy_fails_the_rpo_control(drill_stack):
    st = drill_stack
    cfg_path = st["cfg"].source_file
    cfg_path.write_text(CONFIG.format(**st["ports"], rpo="5s", rto="2m"))
    try:
        run, rec = _run_drill(st)
    finally:
        cfg_path.write_text(CONFIG.format(**st["ports"], rpo="1h", rto="2m"))
    assert run.returncode != 0
    ctl = _controls(rec)
    assert not ctl["rpo"] and ctl["rto"] and ctl["failback"] and not rec["passed"]
    assert any("RPO" in r for r in rec["failure_reasons"])
    assert ctl["previous_drill"] is True  # the first drill passed minutes ago


@pytest.mark.s3
def test_drill_fails_when_the_automation_is_off(drill_stack):
    st = drill_stack
    name = "llmdr-failover-when-active-region-down"

    def automation(action: str) -> None:
        r = subprocess.run([orchestration._prefect(), "automation", action, name], env=st["env"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr

    automation("pause")
    assert not next(a for a in _api(st["api"], "/automations/filter", {}) if a["name"] == name)["enabled"]
    cfg_path = st["cfg"].source_file
    cfg_path.write_text(CONFIG.format(**st["ports"], rpo="1h", rto="20s"))
    try:
        run, rec = _run_drill(st)
    finally:
        cfg_path.write_text(CONFIG.format(**st["ports"], rpo="1h", rto="2m"))
        automation("resume")
    assert run.returncode != 0 and not rec["passed"]
    assert not _controls(rec)["rto"]
    reason = " ".join(rec["failure_reasons"])
    assert "no failover within the RTO objective" in reason and "automation is disabled" in reason
    assert not rec["failed_over_at_end"] and open_router(st["cfg"]).active() == "primary"
