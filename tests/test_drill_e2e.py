"""DR drills for real, on one local stack (two SeaweedFS regions, replicas, Caddy, a Prefect server with the
deployments, the failover automation, a worker, the warm runner and the monitor): the dr-drill deployment is run
through the API exactly as the quarterly schedule or the UI's Run button would.

1. a drill passes and produces every format (evidence JSON, HTML, PDF, charts, signature, MLflow run, Prefect
   artifacts), and `llmdr report verify` accepts it until a byte is changed;
2. with the DR copy older than the RPO objective, the RPO control fails;
3. with the failover automation paused, nothing fails over within the RTO objective and the drill fails, saying so;
4. after those drills and a protect-bundle run, no secret (either region's S3 keys, the webhook URL's token, the
   report-signing key) is in any output: command output, files under the project and state folders, Prefect
   artifacts / logs / events / runs, MLflow runs and model versions, the objects in both buckets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from llmdr.config import load_config
from llmdr.devstack import orchestration
from llmdr.devstack.regions import start_region, stop_region
from llmdr.devstack.serving import start_router, start_serving, stop_serving
from llmdr.failover.router import open_router
from llmdr.repo import ops
from llmdr.serving import golden
from llmdr.serving.endpoint import OpenAIEndpoint
from llmdr.serving.tinymodel import write_demo_bundle
from tests.support.config import two_region_yaml
from tests.support.ports import free_base_port, port_picker, region_ports

BUNDLE = """
  name: drillbot
  path: model
  components:
    weights: {paths: ["*.safetensors"], required: true}
    tokenizer: {paths: ["tokenizer.json"], required: true}
    prompt_templates: {paths: ["*.jinja"], required: true}
    generation_config: {paths: ["generation_config.json"], required: true}
"""
EXTRA = """\
router: {{kind: caddy, listen: "http://127.0.0.1:{rl}", admin: "http://127.0.0.1:{ra}"}}
objectives: {{rpo: {rpo}, rto: {rto}, drill_interval: 90d}}
monitor: {{interval: 1s, timeout: 1s, down_after: 2, recent_window: 5, baseline_window: 20, golden_every: 0}}
failover: {{confirm_probes: 2, confirm_interval: 0.2}}
golden: golden.jsonl
notifications: {{webhook_url_env: DRILL_WEBHOOK_URL}}
checkpoints: {{path: ckpts}}
drill: {{training_restore: true}}
"""


def drill_config(*, p: int, s: int, ps: int, ss: int, rl: int, ra: int, rpo: str, rto: str) -> str:
    return two_region_yaml(p, s, keys=("DRILL_P", "DRILL_S"), local=True, bundle=BUNDLE,
                           primary_lines=f'    serving: {{url: "http://127.0.0.1:{ps}"}}',
                           secondary_lines=f'    serving: {{url: "http://127.0.0.1:{ss}"}}',
                           extra=EXTRA.format(rl=rl, ra=ra, rpo=rpo, rto=rto))

pytestmark = pytest.mark.slow  # one module-wide stack (~45 s to start), each drill 25-50 s

_OUTPUTS: list[tuple[str, str]] = []  # (command, stdout + stderr) of every command this module runs: checked for secrets


class _Webhook:
    """A loopback incoming-webhook receiver (Slack-style URL with a token in the path) that records each POST."""

    def __init__(self) -> None:
        import secrets
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append((self.path, body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.token = secrets.token_urlsafe(24)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/services/T0LLMDR/B0DRILL/{self.token}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def _api(port: int, path: str, body: dict | None = None, method: str = "POST"):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        raw = r.read()
        return json.loads(raw) if raw else None


def _llmdr(cfg, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "llmdr.cli", "--config", str(cfg.source_file), *args],
                       capture_output=True, text=True, timeout=120)
    _OUTPUTS.append((f"llmdr {' '.join(args)}", r.stdout + r.stderr))
    return r


@pytest.fixture(scope="module")
def drill_stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("drill")
    p = free_base_port()
    s = free_base_port()
    while abs(s - p) < 10 or abs(s - p) == 10000:
        s = free_base_port()
    port = port_picker(region_ports(p) | region_ports(s))

    ports = {"p": p, "s": s, "ps": port(), "ss": port(), "rl": port(), "ra": port()}
    path = tmp / "llmdr.yaml"
    path.write_text(drill_config(**ports, rpo="1h", rto="2m"))
    write_demo_bundle(tmp / "model")
    cfg = load_config(path)
    api = port()
    webhook = _Webhook()  # before the Prefect processes start: they inherit its URL from the environment
    os.environ["DRILL_WEBHOOK_URL"] = webhook.url
    try:
        for r in cfg.regions:
            start_region(cfg, r)
        sid = ops.snapshot_bundle(cfg).snapshot_id
        ops.replicate(cfg, sid, to="secondary")
        from tests.support.trainobj import write_checkpoint

        write_checkpoint(tmp / "ckpts", 500)  # the drill's training-restore control restores it from secondary
        ops.protect_checkpoints(cfg)
        start_serving(cfg)
        start_router(cfg)
        golden.record(golden.default_cases(), OpenAIEndpoint(cfg.primary.serving.url).answer).save(cfg.golden_path)
        orchestration.start(cfg, api, start_monitor=False)
        env = orchestration.env(cfg, api)
        run = subprocess.run([orchestration._prefect(), "deployment", "run", "monitor-endpoints/monitor-endpoints",
                              "-p", "duration_s=900"], env=env, capture_output=True, text=True, timeout=120)
        _OUTPUTS.append(("prefect deployment run monitor-endpoints", run.stdout + run.stderr))
        assert run.returncode == 0, run.stdout + run.stderr
        from llmdr.failover.watch import read_status

        deadline = time.monotonic() + 120
        while read_status(cfg).get("primary", {}).get("status") != "healthy":
            assert time.monotonic() < deadline, "the monitor never judged the primary healthy"
            time.sleep(0.5)
        yield {"cfg": cfg, "api": api, "env": env, "ports": ports, "sid": sid, "webhook": webhook}
    finally:
        orchestration.stop(cfg)
        stop_serving(cfg, router=True)
        for r in cfg.regions:
            stop_region(cfg, r)
        webhook.close()
        os.environ.pop("DRILL_WEBHOOK_URL", None)


def _run_drill(st) -> tuple[subprocess.CompletedProcess, dict]:
    from llmdr.drill import record as core

    before = {r.id for r in core.history(st["cfg"])}
    r = subprocess.run([orchestration._prefect(), "deployment", "run", "dr-drill/dr-drill-quarterly", "--watch",
                        "--watch-timeout", "400"], env=st["env"], capture_output=True, text=True, timeout=450)
    _OUTPUTS.append(("prefect deployment run dr-drill", r.stdout + r.stderr))
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
    assert ctl["previous_drill"] is None  # the first drill on record: N/A, not blocking
    tr = rec["evidence"]["training_restore"]
    assert ctl["training_restore"] and (tr["checkpoint"], tr["verified"], tr["complete"]) == ("checkpoint-500", True,
                                                                                              True)
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
    # every phase is in the run's logs on the API (the UI's Logs tab), not only on the worker's console
    logs = _api(st["api"], "/logs/filter",
                {"logs": {"flow_run_id": {"any_": [rec["evidence"]["prefect_flow_run_id"]]}}, "limit": 200})
    phases = {x["message"].split(":")[0] for x in logs if x["level"] == 20 and x["message"].startswith("phase ")}
    assert {f"phase {p}" for p in ("prechecks", "outage", "failover", "golden", "restore", "training restore",
                                   "failback", "report")} <= phases, phases
    mlflow_id = rec["evidence"].get("mlflow_run_id")
    assert mlflow_id, rec["evidence"].get("mlflow_error")
    from llmdr.lineage.drills import drill_runs
    from llmdr.lineage.tracking import target_for

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
    assert bad.returncode == 12 and "evidence.json" in bad.stdout
    ev.write_bytes(data)

    listed = _llmdr(cfg, "drills")
    assert listed.returncode == 0 and rec["id"] in listed.stdout and "PASS" in listed.stdout


@pytest.mark.s3
def test_drill_fails_when_the_automation_is_off_and_the_dr_copy_is_stale(drill_stack):
    """Two findings in one drill (a drill costs a minute): the failover automation paused, so nothing fails over
    within the RTO, and an RPO of 5 s that the DR copy (taken minutes ago) exceeds at the outage. Each control fails
    with its own reason; the failback control still passes."""
    st = drill_stack
    name = "llmdr-failover-when-active-region-down"

    def automation(action: str) -> None:
        r = subprocess.run([orchestration._prefect(), "automation", action, name], env=st["env"],
                           capture_output=True, text=True, timeout=120)
        _OUTPUTS.append((f"prefect automation {action}", r.stdout + r.stderr))
        assert r.returncode == 0, r.stdout + r.stderr

    automation("pause")
    assert not next(a for a in _api(st["api"], "/automations/filter", {}) if a["name"] == name)["enabled"]
    cfg_path = st["cfg"].source_file
    cfg_path.write_text(drill_config(**st["ports"], rpo="5s", rto="20s"))
    try:
        run, rec = _run_drill(st)
    finally:
        cfg_path.write_text(drill_config(**st["ports"], rpo="1h", rto="2m"))
        automation("resume")
    assert run.returncode != 0 and not rec["passed"]
    ctl = _controls(rec)
    assert not ctl["rto"] and not ctl["rpo"] and ctl["failback"], ctl
    assert ctl["previous_drill"] is True  # the first drill passed minutes ago
    reason = " ".join(rec["failure_reasons"])
    assert "no failover within the RTO objective" in reason and "automation is disabled" in reason
    assert "RPO" in reason
    assert not rec["failed_over_at_end"] and open_router(st["cfg"]).active() == "primary"


# --- secrets never leak (issue #9 item 6) ------------------------------------------------------------------------------
# The only files allowed to hold a secret, relative to the project folder: the local stack's key file, each local S3
# server's identity file, the report-signing private key. The test fails if any other file holds one, and if one of
# these does not (then the list is stale).
SECRET_FILES = {".llmdr/local.env", ".llmdr/stack/primary/s3.json", ".llmdr/stack/secondary/s3.json",
                ".llmdr/keys/report-signing.key"}


def _forms(secret: str) -> set[bytes]:
    """``secret`` as it could appear in an output: plain, URL-encoded, hex, and base64 (standard and URL-safe) at each
    of the three alignments it can have inside a longer encoded string (only the characters that depend on the secret
    alone are kept)."""
    import base64
    from urllib.parse import quote, quote_plus

    raw = secret.encode()
    out = {raw, quote(secret, safe="").encode(), quote_plus(secret).encode(), raw.hex().encode()}
    for enc in (base64.b64encode, base64.urlsafe_b64encode):
        for k in range(3):  # k bytes before the secret in its 3-byte group; 4 characters encode each full group
            text = enc(b"\0" * k + raw)
            part = text[4 if k else 0:4 * ((k + len(raw)) // 3)]  # drop the groups shared with other bytes
            if len(part) >= 16:
                out.add(part)
    return out


def _prefect_records(api: int) -> dict[str, bytes]:
    """Everything the Prefect server holds that a user or an integration can read, one JSON document per kind."""
    out: dict[str, bytes] = {}
    for kind, path in (("flow runs", "/flow_runs/filter"), ("task runs", "/task_runs/filter"),
                       ("logs", "/logs/filter"), ("artifacts", "/artifacts/filter"),
                       ("deployments", "/deployments/filter"), ("work pools", "/work_pools/filter"),
                       ("automations", "/automations/filter"), ("variables", "/variables/filter"),
                       ("block documents", "/block_documents/filter")):
        rows, offset = [], 0
        while True:
            page = _api(api, path, {"limit": 200, "offset": offset}) if kind != "automations" else _api(api, path, {})
            rows += page
            if kind == "automations" or len(page) < 200:
                break
            offset += 200
        out[f"prefect {kind}"] = json.dumps(rows).encode()
    events, page = [], _api(api, "/events/filter", {"limit": 50})
    while page:
        events += page.get("events", [])
        nxt = page.get("next_page")
        page = _api_url(nxt) if nxt else None
    out["prefect events"] = json.dumps(events).encode()
    assert json.loads(out["prefect logs"]) and json.loads(out["prefect artifacts"]) and events
    return out


def _api_url(url: str):
    with urllib.request.urlopen(url, timeout=30) as r:  # noqa: S310 - loopback
        return json.loads(r.read())


def _mlflow_records(cfg) -> bytes:
    """Params, tags and metrics of every MLflow run, and every registered model version's tags."""
    from llmdr.lineage.tracking import open_client, target_for

    client = open_client(target_for(cfg))
    runs = [r.to_dictionary() for exp in client.search_experiments() for r in client.search_runs([exp.experiment_id])]
    versions = [dict(v) for v in client.search_model_versions()]
    assert runs and versions, "no MLflow run or model version to check"
    return json.dumps({"runs": runs, "model_versions": versions}, default=str).encode()


def _bucket_objects(cfg) -> dict[str, bytes]:
    """Every object in both regions' buckets (snapshots, chunks, the drill evidence MLflow uploaded), as served."""
    from llmdr.storage.factory import open_region

    out = {}
    for r in cfg.regions:
        store = open_region(cfg, r, read_only=True)
        for info in store.list(""):
            out[f"s3://{r.bucket}/{info.key}"] = store.get(info.key)
    return out


@pytest.mark.s3
def test_no_secret_in_any_output(drill_stack):
    st = drill_stack
    cfg = st["cfg"]
    from cryptography.hazmat.primitives import serialization

    from llmdr.drill import record as core
    from llmdr.storage.credentials import read_env_file

    t0 = time.monotonic()
    if not core.history(cfg):  # run on its own: the drills above did not run
        _run_drill(st)
    protect = _llmdr(cfg, "protect")
    assert protect.returncode == 0, protect.stdout + protect.stderr
    assert st["webhook"].received, "no notification reached the webhook, so its URL was never used"

    root = cfg.base_dir
    secrets = {f"local.env {k}": v for k, v in read_env_file(cfg.state_path / "local.env").items()}
    assert {"DRILL_P_AK", "DRILL_P_SK", "DRILL_S_AK", "DRILL_S_SK"} <= {k.split()[1] for k in secrets}
    secrets["webhook token"] = st["webhook"].token
    pem = (root / ".llmdr/keys/report-signing.key").read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    raw_key = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    secrets["signing key (PEM body)"] = "".join(pem.decode().strip().splitlines()[1:-1])
    patterns = {form: name for name, value in secrets.items() for form in _forms(value)}
    patterns[raw_key] = "signing key (raw)"

    sources: dict[str, bytes] = {f"output of {cmd}": out.encode() for cmd, out in _OUTPUTS}
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    for p in files:
        rel = p.relative_to(root).as_posix()
        sources[rel] = p.read_bytes()
        if p.suffix == ".pdf":
            import pypdfium2

            sources[rel + " (text)"] = "\n".join(page.get_textpage().get_text_range()
                                                 for page in pypdfium2.PdfDocument(p)).encode()
    assert any(k.endswith("report.pdf (text)") for k in sources) and any(k.endswith("evidence.json") for k in sources)
    assert any(k.endswith("RUNBOOK.md") for k in sources) and any("caddy" in k and k.endswith(".log") for k in sources)
    sources |= _prefect_records(st["api"])
    sources["mlflow runs and model versions"] = _mlflow_records(cfg)
    sources |= _bucket_objects(cfg)

    leaks: dict[str, set[str]] = {}
    for where, data in sources.items():
        for form, name in patterns.items():
            if form in data:
                leaks.setdefault(where, set()).add(name)
    took = time.monotonic() - t0
    print(f"\nsecrets: {len(secrets) + 1} values, {len(patterns)} forms, searched in {len(sources)} outputs "
          f"({sum(map(len, sources.values())) / 2**20:.1f} MiB) in {took:.1f}s; found only in {sorted(leaks)}")
    unexpected = {k: sorted(v) for k, v in leaks.items() if k not in SECRET_FILES}
    assert not unexpected, f"secrets leaked into: {unexpected}"
    assert set(leaks) == SECRET_FILES, f"files that should hold a secret but do not: {SECRET_FILES - set(leaks)}"
