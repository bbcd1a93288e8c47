"""Prefect as operators use it (#17): run logs reach the API while the CLI's console stays quiet, every flow logs
its phases, the Custom-run forms (descriptions, no plumbing, region choices enforced by the server), relative
restore targets inside the project folder, deployment tags and the on-demand drill, and the retry of transient
Prefect API errors against a real HTTP server."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from llmdr.devstack.samples import MiB, write_sample_bundle
from llmdr.errors import UsageError
from llmdr.integrations.prefect import is_transient_api_error, retry_api
from tests.support.config import make_config, two_regions
from tests.support.trees import read_tree

ROOT = Path(__file__).resolve().parent.parent
PLUMBING = {"trigger", "first_failure_ts", "detected_at", "started_by"}


def _deployments() -> list[dict]:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


def _flow(entrypoint: str):
    module, _, attr = entrypoint.partition(":")
    return getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), attr)


def _configure():
    spec = importlib.util.spec_from_file_location("llmdr_deploy_configure", ROOT / "deployments" / "configure.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run_logs(flow_name: str, config_path: str) -> tuple[str, list]:
    """The newest run of ``flow_name`` for ``config_path`` and its logs, read back through the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort, LogSort

    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                                 sort=FlowRunSort.START_TIME_DESC, limit=50)
                if r.parameters.get("config_path") == config_path]
        assert runs, f"no {flow_name} run for {config_path} on the API"
        logs: list = []
        for _ in range(20):  # the run's last batch of logs may still be on its way
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[runs[0].id])),
                                    sort=LogSort.TIMESTAMP_ASC)
            if any(x.message.startswith("phase retention") for x in logs):
                break
            time.sleep(0.25)
        return str(runs[0].id), logs


# --- 1. logs: quiet console, INFO run logs on the API ------------------------------------------------------------
@pytest.mark.s3
def test_cli_protect_keeps_the_console_quiet_and_sends_phase_logs_to_the_api(prefect_harness, stack, tmp_path):
    """`llmdr protect` for real, in its own process, against a Prefect API: nothing below WARNING on the terminal,
    and the run's INFO lines (the flow's phases, the tasks' details) on the API. The drill's phases are asserted on
    a whole drill in test_drill_e2e."""
    from prefect.settings import PREFECT_API_URL

    cfg = two_regions(stack, tmp_path, extra="tracking: {register_models: false}")  # no MLflow: seconds, not tens
    write_sample_bundle(cfg.source_file.parent / "bundle", shards=1, shard_size=MiB)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING")}
    env.update({"PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_HOME": str(tmp_path / "prefect-home"),
                "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")})
    r = subprocess.run([sys.executable, "-m", "llmdr.cli", "--config", str(cfg.source_file), "protect"],
                       capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert not re.search(r"\bINFO\b", r.stderr), r.stderr[-2000:]  # the terminal: warnings and errors only
    _, logs = _run_logs("protect-bundle", str(cfg.source_file.resolve()))
    info = [x.message for x in logs if x.level == 20]
    for phase in ("snapshot", "replicate", "verify"):
        assert any(m.startswith(f"phase {phase}:") for m in info), (phase, info)
    assert any(m.startswith("snapshot ") and "files" in m for m in info), info  # the tasks' INFO lines too


# --- 2. Custom-run forms --------------------------------------------------------------------------------------------
def test_every_deployed_flow_form_describes_its_fields_and_hides_plumbing():
    from prefect.utilities.callables import parameter_schema

    seen = set()
    for dep in _deployments():
        fl = _flow(dep["entrypoint"])
        props = parameter_schema(fl).model_dump_for_openapi()["properties"]  # as `prefect deploy` builds it
        assert not PLUMBING & set(props), (dep["name"], sorted(PLUMBING & set(props)))
        for name, prop in props.items():
            assert len(prop.get("description", "")) > 20, (dep["name"], name)
        seen |= set(props)
    assert {"config_path", "target", "region", "to", "reason", "sample"} <= seen
    from flows.restore_bundle import restore_bundle

    schema = parameter_schema(restore_bundle.fn).model_dump_for_openapi()
    assert schema["required"] == ["target"]
    assert "relative path resolves against the project folder" in schema["properties"]["target"]["description"]


def test_hidden_plumbing_is_still_accepted_and_defaults_still_apply():
    """The automation passes the hidden parameters: Prefect's schema validation (the server's) accepts them, and
    a call without them gets the defaults, not pydantic FieldInfo objects."""
    from prefect.utilities.callables import get_call_parameters, parameter_schema
    from prefect.utilities.schema_tools import validate

    from flows.failover import failover

    schema = parameter_schema(failover.fn).model_dump_for_openapi()
    auto = yaml.safe_load((ROOT / "deployments" / "automations.yaml").read_text())["automations"][0]
    params = {k: "x" for k in auto["actions"][0]["parameters"]}  # the templates render to text
    validate(params, schema, raise_on_error=True)
    assert get_call_parameters(failover.fn, (), {}) == {"to": "", "reason": "manual failover", "trigger": "manual",
                                                        "first_failure_ts": None, "detected_at": "",
                                                        "config_path": "", "bundle": None,
                                                        "accept_golden_mismatch": False}


# --- relative restore target -------------------------------------------------------------------------------------
def test_restore_flow_resolves_a_relative_target_against_the_project_folder(prefect_harness, region_config,
                                                                            tmp_path, monkeypatch):
    from flows.restore_bundle import restore_bundle
    from llmdr.repo import ops

    cfg = region_config
    bundle = cfg.source_file.parent / "bundle"
    write_sample_bundle(bundle, shards=1, shard_size=MiB // 4)
    sid = ops.snapshot_bundle(cfg).snapshot_id
    elsewhere = tmp_path / "worker-checkout"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    res = restore_bundle(target="restored", region="primary", snapshot=sid[:8], config_path=str(cfg.source_file))
    assert res["snapshot_id"] == sid
    assert read_tree(cfg.source_file.parent / "restored") == read_tree(bundle)
    assert list(elsewhere.iterdir()) == []
    for bad, match in (("  ", "'target' is empty"), ("restored2", "no region named 'nowhere'.*primary, secondary")):
        with pytest.raises(UsageError, match=match):
            restore_bundle(target=bad, region="nowhere" if bad.strip() else "primary",
                           config_path=str(cfg.source_file))


# --- 3. deployments: tags, on-demand drill, region choices ---------------------------------------------------------
def test_deployments_carry_kind_tags_and_the_drill_runs_on_demand():
    deps = _deployments()
    for d in deps:
        tags = d.get("tags", [])
        assert "llmdr" in tags and len([t for t in tags if t.startswith("kind:")]) == 1, d["name"]
    drills = {d["name"]: d for d in deps if d["entrypoint"] == "flows/dr_drill.py:dr_drill"}
    assert drills["dr-drill-quarterly"]["schedules"] and "schedules" not in drills["dr-drill-on-demand"]
    assert all("kind:drill" in d["tags"] for d in drills.values())
    kinds = {d["name"]: next(t for t in d["tags"] if t.startswith("kind:")) for d in deps}
    assert kinds["protect-bundle"] == "kind:protect" and kinds["failover"] == "kind:failover"


def test_configure_adds_bundle_and_region_tags_and_region_choices_the_server_enforces(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.utilities.callables import parameter_schema

    from flows.failover import failover
    from flows.restore_bundle import restore_bundle

    conf = _configure()
    cfg = make_config(tmp_path, 21000, 24000, tmp_path / ".llmdr")  # never connected to: only names are used
    tag = f"llmdr-test-{tmp_path.name}"[:60]
    with get_client(sync_client=True) as client:
        ids = {}
        for fl, name, params in ((restore_bundle, "restore-bundle", {"region": "dr-east"}),
                                 (failover, "failover", {})):
            flow_id = client.create_flow_from_name(fl.name)
            ids[fl.name] = client.create_deployment(
                flow_id=flow_id, name=f"{name}-{tag}", tags=["llmdr", "kind:x", "bundle:old", "keep"],
                parameters=params, parameter_openapi_schema=parameter_schema(fl.fn).model_dump_for_openapi(),
                enforce_parameter_schema=True)
        lines = conf.apply(cfg)
        assert any(f"restore-bundle/restore-bundle-{tag}" in x for x in lines), lines
        rb = client.read_deployment(ids["restore-bundle"])
        fo = client.read_deployment(ids["failover"])
        assert sorted(rb.tags) == sorted(["llmdr", "kind:x", "keep", "bundle:testbundle", "region:secondary"])
        assert "region:secondary" in fo.tags and "bundle:old" not in fo.tags
        assert rb.parameters["region"] == "secondary"  # "dr-east" names no configured region
        assert rb.parameter_openapi_schema["properties"]["region"]["enum"] == ["primary", "secondary"]
        assert fo.parameter_openapi_schema["properties"]["to"]["enum"] == ["", "primary", "secondary"]
        assert "trigger" not in fo.parameter_openapi_schema["properties"]
        # the automation's parameters still create a run; a region the config lacks is refused by the server
        run = client.create_flow_run_from_deployment(ids["failover"], parameters={
            "trigger": "automation", "first_failure_ts": "95.5", "detected_at": "2026-12-03T18:00:00Z"})
        assert run.parameters["trigger"] == "automation"
        with pytest.raises(PrefectHTTPStatusError, match="409"):
            client.create_flow_run_from_deployment(ids["failover"], parameters={"to": "nowhere"})
        assert len(conf.apply(cfg)) >= 2 and sorted(client.read_deployment(ids["restore-bundle"]).tags) == sorted(
            rb.tags)  # a second run changes nothing


# --- 4. transient Prefect API errors are retried -------------------------------------------------------------------
class _Scripted(BaseHTTPRequestHandler):
    """Answers POST /api/automations/filter from a script: a status, or "reset" (close without an answer)."""

    script: list = []
    seen: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append(self.path)
        step = self.script.pop(0) if self.script else 200
        if step == "reset":
            self.close_connection = True
            self.connection.shutdown(2)
            return
        body = b"[]" if step == 200 else json.dumps({"detail": "database is locked"}).encode()
        self.send_response(step)
        if step != 200:
            # Prefect's client waits 2 s after a 429/502/503 even with its own retries off, unless told otherwise
            self.send_header("Retry-After", "0")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def scripted_api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("script, attempts, ok", [
    ([503, 503], 3, True),           # Prefect on SQLite under load: "database is locked"
    ([502, "reset", 504], 4, True),  # a proxy's answers and a reset connection
    ([404], 1, False),               # a wrong request is never repeated
    ([422], 1, False),
    ([503] * 9, 5, False),           # bounded: four retries, then the error
])
def test_retry_api_against_a_real_http_server(scripted_api, script, attempts, ok):
    from prefect.client.orchestration import get_client
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_CLIENT_CSRF_SUPPORT_ENABLED,
        PREFECT_CLIENT_MAX_RETRIES,
        temporary_settings,
    )

    _Scripted.script, _Scripted.seen = list(script), []
    url = f"http://127.0.0.1:{scripted_api.server_address[1]}/api"
    waits: list[float] = []
    # Prefect's own client retries (503 only, with seconds of backoff) are off: this is llmdr's layer on its own
    with temporary_settings({PREFECT_API_URL: url, PREFECT_CLIENT_MAX_RETRIES: 0,
                             PREFECT_CLIENT_CSRF_SUPPORT_ENABLED: False}):
        with get_client(sync_client=True) as client:
            if ok:
                assert retry_api(client.read_automations, sleep=waits.append) == []
            else:
                with pytest.raises(Exception) as info:
                    retry_api(client.read_automations, sleep=waits.append)
                assert is_transient_api_error(info.value) == (attempts > 1)
    assert _Scripted.seen == ["/api/automations/filter"] * attempts
    assert waits == [0.5, 1.0, 2.0, 4.0][:attempts - 1]
