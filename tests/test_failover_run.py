"""The decisions of the failover / failback flows (llmdr.failover.run) and of protect-bundle's standby refresh
(llmdr.failover.standby), as plain functions: no network, no Prefect, snapshots in a memory store."""

from __future__ import annotations

import json

import pytest

from llmdr.config import parse_config
from llmdr.errors import IntegrityError, UsageError
from llmdr.failover import run as decide
from llmdr.failover import standby
from llmdr.failover.steps import FailoverError, FailoverRecord
from llmdr.notify import Notice
from llmdr.repo.repository import Repository
from llmdr.repo.snapshot import take_snapshot
from llmdr.serving import restoretest
from llmdr.storage.memory import MemoryStore

CONFIG = """\
version: 1
bundle: {{name: bot, path: model}}
regions:
  - name: primary
    role: primary
    endpoint: http://127.0.0.1:9000
    bucket: llmdr-primary
    credentials: {{access_key_env: T_P_AK, secret_key_env: T_P_SK}}
    serving: {{url: "http://127.0.0.1:9100"}}
  - name: secondary
    role: secondary
    endpoint: http://127.0.0.1:9010
    bucket: llmdr-secondary
    credentials: {{access_key_env: T_S_AK, secret_key_env: T_S_SK}}
    serving: {{url: "http://127.0.0.1:9101", warm: {warm}}}
{extra}
state_dir: .llmdr
"""


def _cfg(tmp_path, *, warm: bool = True, extra: str = ""):
    text = CONFIG.format(warm=str(warm).lower(), extra=extra)
    path = tmp_path / "llmdr.yaml"
    path.write_text(text)
    return parse_config(text, source=path)


def _failover(tmp_path, **kw) -> FailoverRecord:
    args = {"active": "primary", "reason": "llmdr.endpoint.down", "trigger": "automation", "now": 100.0} | kw
    return decide.new_failover(_cfg(tmp_path), **args)


# --- a new run ------------------------------------------------------------------------------------------------------


def test_parameters_from_the_automation_are_parsed():
    assert decide.parse_ts("1700000000.5") == 1_700_000_000.5 and decide.parse_ts(12) == 12.0
    assert decide.parse_ts(None) is None and decide.parse_ts("") is None and decide.parse_ts("None") is None
    assert decide.parse_event_time("2023-11-14T22:13:20Z") == 1_700_000_000.0
    assert decide.parse_event_time("2023-11-14T22:13:20.500+00:00") == 1_700_000_000.5
    for absent in (None, "", "None", "yesterday"):
        assert decide.parse_event_time(absent) is None


def test_new_failover_targets_the_secondary_and_starts_the_rto_clock_at_the_first_failed_probe(tmp_path):
    rec = _failover(tmp_path, first_failure_ts="95.5", detected_at="1970-01-01T00:01:38Z", scheduled_ts=99.0,
                    flow_run_id="run-1")
    assert (rec.kind, rec.bundle, rec.from_region, rec.to_region) == ("failover", "bot", "primary", "secondary")
    assert (rec.started_ts, rec.first_failure_ts, rec.detected_ts, rec.scheduled_ts) == (100.0, 95.5, 98.0, 99.0)
    assert rec.flow_run_id == "run-1" and not rec.ok and not rec.noop
    assert _failover(tmp_path, to="primary", active="secondary").to_region == "primary"
    with pytest.raises(UsageError, match="no region named 'tertiary'"):
        _failover(tmp_path, to="tertiary")


def test_new_failback_returns_to_the_primary(tmp_path):
    rec = decide.new_failback(_cfg(tmp_path), active="secondary", reason="primary healthy again", trigger="manual",
                              now=5.0)
    assert (rec.kind, rec.from_region, rec.to_region, rec.started_ts) == ("failback", "secondary", "primary", 5.0)
    assert decide.failback_source(_cfg(tmp_path), "secondary") == "secondary"
    assert decide.failback_source(_cfg(tmp_path), None) == "secondary"  # nothing routed: the failover target


def test_a_run_to_the_region_already_active_is_a_successful_noop(tmp_path):
    rec = _failover(tmp_path)
    assert decide.already_active(rec, "primary") is False and rec.steps == []
    assert decide.already_active(rec, "secondary") is True
    assert rec.noop and rec.ok and [s.name for s in rec.steps] == ["already-active"]
    assert decide.outcome_event(rec) is None and decide.notices(rec) == []


@pytest.mark.parametrize("trigger, active, expected", [
    ("automation", "primary", True), ("drill", "primary", True), ("manual", "primary", False),
    ("automation", None, False)])
def test_who_needs_the_outage_confirmed(trigger, active, expected):
    assert decide.needs_confirmation(trigger, active) is expected


def test_an_unconfirmed_outage_ends_the_run_and_traffic_stays(tmp_path):
    rec = _failover(tmp_path)
    assert decide.outage_confirmed(rec, "primary", {"confirmed": False, "samples": [{"ok": True}]}) is False
    assert rec.confirmed is False and rec.noop and rec.ok and "not an outage" in rec.error
    assert (rec.steps[-1].name, rec.steps[-1].ok, rec.steps[-1].detail) == (
        "confirm-outage", False, "1 direct probe(s) of primary")

    real = _failover(tmp_path)
    assert decide.outage_confirmed(real, "primary", {"confirmed": True, "samples": [{}, {}]}) is True
    assert real.confirmed is True and not real.noop and real.error is None


# --- steps recorded -------------------------------------------------------------------------------------------------


def test_a_verified_failover_is_recorded_step_by_step(tmp_path):
    rec = _failover(tmp_path, first_failure_ts=90.0)
    decide.replica_ready(rec, {"cold": True, "snapshot": "ab" * 32})
    decide.golden_direct(rec, {"passed": 6, "total": 6, "ok": True})
    decide.switched(rec, "primary", now=101.0)
    decide.verified(rec, {"verified_ts": 102.5, "golden": {"ok": True}})
    assert [(s.name, s.ok, s.detail) for s in rec.steps] == [
        ("ensure-replica", True, "cold start on abababababab"),
        ("golden-check", True, "6/6 cases"),
        ("switch-router", True, "primary -> secondary"),
        ("verify-through-router", True, "golden set correct through the router from secondary")]
    assert rec.ok and rec.switched_ts == 101.0 and rec.rto_s == 12.5 and rec.golden_router == {"ok": True}
    assert decide.outcome_event(rec) == "llmdr.failover.completed"
    [notice] = decide.notices(rec)
    assert notice.kind == "failover" and notice.severity == "warning" and "RTO" in notice.title
    assert notice.data["details"]["steps"] == ["ensure-replica ok", "golden-check ok", "switch-router ok",
                                               "verify-through-router ok"]


def test_wrong_answers_before_the_switch_fail_the_run_and_warn_about_the_region(tmp_path):
    rec = _failover(tmp_path)
    decide.replica_ready(rec, {"cold": False, "snapshot": None})
    err = FailoverError("the replica in 'secondary' gives wrong answers (3/6 golden cases pass)")
    decide.golden_direct(rec, None, err)
    decide.failed(rec, err)
    assert rec.steps[0].detail == "warm standby on ?" and rec.steps[-1].ok is False and not rec.ok
    assert rec.error == str(err) and rec.golden_direct is None
    assert decide.outcome_event(rec) == "llmdr.failover.failed"
    kinds = [(n.kind, n.severity) for n in decide.notices(rec)]
    assert kinds == [("failover", "critical"), ("verification_failed", "critical")]
    decide.failed(rec, RuntimeError("later"))
    assert rec.error == str(err), "the first error is the one kept"


def test_a_failed_check_through_the_router_records_whether_the_switch_was_undone(tmp_path):
    rec = _failover(tmp_path)
    decide.switched(rec, "primary", now=101.0)
    decide.router_check_failed(rec, FailoverError("not golden-correct"), "primary", active_after="primary")
    assert rec.rolled_back and rec.steps[-1].detail == "not golden-correct; switch rolled back to primary: True"
    stuck = _failover(tmp_path)
    decide.router_check_failed(stuck, FailoverError("x"), "primary", active_after="secondary")
    assert not stuck.rolled_back
    # only a golden step failing adds the verification notice
    decide.failed(stuck, FailoverError("x"))
    assert [n.kind for n in decide.notices(stuck)] == ["failover"]


def test_failback_steps_and_notice(tmp_path):
    rec = decide.new_failback(_cfg(tmp_path), active="secondary", reason="back", trigger="manual", now=10.0)
    decide.data_copied_back(rec, {"copied": [{}, {}], "source_newest": "cd" * 32})
    decide.replica_ready(rec, {"snapshot": "cd" * 32, "cold": True})
    decide.verified(rec, {"verified_ts": 12.0, "golden": {}})
    assert [s.detail for s in rec.steps[:2]] == ["2 snapshot(s) copied back; newest cdcdcdcdcdcd",
                                                 "primary replica on cdcdcdcdcdcd"]
    assert decide.outcome_event(rec) == "llmdr.failback.completed" and rec.rto_s == 2.0
    [notice] = decide.notices(rec)
    assert notice.kind == "failback" and notice.data["from_region"] == "secondary"


def test_notice_travels_as_task_arguments():
    n = Notice("failover", "title", "body", "warning", {"bundle": "bot"})
    back = Notice(**json.loads(json.dumps(n.to_args())))
    assert (back.kind, back.title, back.body, back.severity, back.data) == (n.kind, n.title, n.body, n.severity,
                                                                          n.data)


# --- the warm standby -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("warm, running, active, why", [
    (False, True, "primary", standby.NOT_WARM),
    (True, False, "primary", standby.NOT_RUNNING),
    (True, True, "secondary", standby.SERVES_TRAFFIC),  # also what "the router cannot say" maps to
    (True, True, "primary", None),
    (True, True, None, None),  # no router: nothing receives traffic through llmdr
])
def test_when_the_standby_may_move(warm, running, active, why):
    assert standby.why_not_refresh("secondary", warm=warm, running=running, active=active) == why


def test_runs_warm_standby_needs_warm_and_a_way_to_start(tmp_path):
    assert standby.runs_warm_standby(_cfg(tmp_path).region("secondary")) is False  # remote, no serving.command
    cmd = _cfg(tmp_path).model_copy(deep=True)
    sec = cmd.region("secondary")
    sec.serving.command = "serve {model_dir} --port {port}"
    assert standby.runs_warm_standby(sec) is True
    sec.serving.warm = False
    assert standby.runs_warm_standby(sec) is False


def test_the_standby_follows_content_not_snapshot_ids(tmp_path):
    repo = Repository(MemoryStore("secondary"))
    bundle = tmp_path / "model"
    bundle.mkdir()
    (bundle / "config.json").write_text('{"layers": 2}')
    (bundle / "weights.bin").write_bytes(b"w" * 5000)
    v1 = take_snapshot(repo, bundle, bundle="bot").snapshot_id
    v2 = take_snapshot(repo, bundle, bundle="bot", tags={"run": "2"}).snapshot_id
    (bundle / "config.json").write_text('{"layers": 3}')
    v3 = take_snapshot(repo, bundle, bundle="bot").snapshot_id
    assert len({v1, v2, v3}) == 3
    assert standby.same_content(repo, v1, v1) and standby.same_content(repo, v1, v2)
    assert not standby.same_content(repo, v2, v3)
    assert not standby.same_content(repo, None, v1)


def test_standby_refresh_results_keep_their_shape():
    assert standby.StandbyRefresh("secondary", False, standby.NOT_RUNNING).to_json() == {
        "region": "secondary", "refreshed": False, "why": "standby not running"}
    assert standby.StandbyRefresh("secondary", False, standby.SAME_CONTENT, snapshot="a").to_json() == {
        "region": "secondary", "refreshed": False, "why": "already serves this content", "snapshot": "a"}
    assert standby.StandbyRefresh("secondary", True, snapshot="b", previous="a").to_json() == {
        "region": "secondary", "refreshed": True, "snapshot": "b", "previous": "a"}


def test_protect_asks_every_secondary_with_an_endpoint(tmp_path):
    assert standby.standby_regions(_cfg(tmp_path)) == ["secondary"]
    cfg = _cfg(tmp_path).model_copy(deep=True)
    cfg.region("secondary").serving = None
    assert standby.standby_regions(cfg) == []


def test_refresh_standby_leaves_a_region_without_warm_standby_alone(tmp_path):
    cfg = _cfg(tmp_path, warm=False)
    assert standby.refresh_standby(cfg, "secondary").to_json() == {
        "region": "secondary", "refreshed": False, "why": "no warm standby llmdr runs here"}


# --- the verdict of verify-replicas ---------------------------------------------------------------------------------


def test_verify_replicas_verdict():
    checks = [{"region": "primary", "ok": True}, {"region": "secondary", "ok": False}]
    tests = [{"region": "secondary", "ok": False}, {"region": "dr2", "ok": False}]
    assert restoretest.unverified_regions(checks, []) == ["secondary"]
    assert restoretest.unverified_regions(checks, tests) == ["dr2", "secondary"]
    assert restoretest.unverified_regions(checks[:1], []) == []
    notices = restoretest.unverified_notices("bot", ["dr2", "secondary"], snapshot="latest", sample=None,
                                             restore_test=True)
    assert [(n.kind, n.data["region"], n.data["what"]) for n in notices] == [
        ("verification_failed", "dr2", "verify-replicas (read-back and restore test)"),
        ("verification_failed", "secondary", "verify-replicas (read-back and restore test)")]
    assert notices[0].data["details"] == {"snapshot": "latest", "sample": "every chunk"}
    err = restoretest.unverified_error(["dr2", "secondary"])
    assert isinstance(err, IntegrityError) and err.exit_code == 6 and "dr2, secondary" in str(err)
