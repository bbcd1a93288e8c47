"""What the dr-drill flow decides, without running a drill: who started it, which precheck findings block it, the
DR copy read from a repository (memory store), RPO and RTO arithmetic, the failover timeline, when to fail back,
a drill left failed over, the notice and the verdict. Each decision on its passing and its failing path."""

from __future__ import annotations

import json
import pickle

import pytest

from llmdr.config import parse_config
from llmdr.drill import procedure
from llmdr.drill.evidence import dr_copy
from llmdr.drill.readiness import ReadinessFailed, failure_notice, raise_if_failed
from llmdr.drill.record import DrillFailed, DrillRecord, drills_dir
from llmdr.failover.steps import utc
from llmdr.repo.bundle import specs_from_config
from llmdr.repo.manifest import parse_utc
from llmdr.repo.repository import Repository
from llmdr.repo.snapshot import take_snapshot
from llmdr.serving.tinymodel import write_demo_bundle
from llmdr.storage.memory import MemoryStore
from tests.support.config import OFFLINE_CONFIG as DRILL_CONFIG

T0 = 1_700_000_000.0  # in the past: marks made "now" come after the ones at T0 + n
HEALTHY = {"healthy": True, "detail": "ok"}
AUTOMATION = {"name": "llmdr-failover-when-active-region-down", "enabled": True}


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "llmdr.yaml"
    path.write_text(DRILL_CONFIG)
    return parse_config(DRILL_CONFIG, source=path)


def _record(cfg) -> DrillRecord:
    return procedure.start_record(cfg, {"kind": "cli", "who": "ana", "flow_run_id": "fr-1"}, now=T0)


def _copy(created_ts: float = T0 - 120, **more) -> dict:
    return {"region": "secondary", "id": "ab" * 32, "created": utc(created_ts), "created_ts": created_ts,
            "components": {"tokenizer": "cd" * 32}, "complete": True, "detail": "every required component recorded"
            } | more


def _pre(problems=(), warnings=(), copy=None, automation=AUTOMATION) -> dict:
    return {"problems": list(problems), "warnings": list(warnings), "active": "primary", "replicas": {},
            "copies": {"primary": _copy(), "secondary": copy if copy is not None else _copy()}, "monitor": {"x": 1},
            "automation": automation, "checked_at": T0}


def _failover(t_out: float, **more) -> dict:
    return {"ok": True, "to_region": "secondary", "error": None, "first_failure_ts": t_out + 1.5,
            "detected_ts": t_out + 3.0, "scheduled_ts": t_out + 3.4, "started_ts": t_out + 4.0,
            "switched_ts": t_out + 6.0, "verified_ts": t_out + 7.24, "verified_utc": utc(t_out + 7.24),
            "rto_breakdown": {"detection_s": 3.0, "dispatch_s": 1.0, "recovery_s": 3.24}} | more


# --- who started it ------------------------------------------------------------------------------------------------
def test_started_by_the_cli_a_schedule_the_ui_or_the_api():
    ids = {"flow_run_id": "fr-1", "deployment": "dr-drill-quarterly"}
    assert procedure.started_by("cli:ana", run=None, **ids) == ids | {"kind": "cli", "who": "ana"}
    assert procedure.started_by("cli", run=None, **ids)["who"] is None
    assert procedure.started_by("", run={"auto_scheduled": True}, **ids) == ids | {"kind": "schedule",
                                                                                  "who": "prefect scheduler"}
    assert procedure.started_by("", run={"auto_scheduled": False, "creator": "bo"}, **ids)["who"] == "bo"
    assert procedure.started_by("", run={"auto_scheduled": False, "creator": None}, **ids) == \
        ids | {"kind": "ui", "who": "Prefect UI / API"}
    assert procedure.started_by("", run=None, flow_run_id="", deployment=None) == \
        {"flow_run_id": None, "deployment": None, "kind": "api", "who": None}


def test_a_new_record_names_its_scope_and_starter(cfg):
    rec = _record(cfg)
    assert rec.bundle == "b" and rec.started_ts == T0 and rec.scope["objectives"]["rto_s"] == 900
    assert rec.evidence == {"prefect_flow_run_id": "fr-1", "model_version": None, "dataset_versions": [],
                            "residency": rec.evidence["residency"]}
    assert rec.evidence["residency"]["summary"] == "no residency policy (data may be stored in any region)"
    assert [(e.kind, e.event, e.detail) for e in rec.timeline] == [("info", "drill started", "by cli")]


# --- prechecks -----------------------------------------------------------------------------------------------------
def test_prechecks_all_clear():
    problems, warnings = procedure.assess_prechecks(
        "primary", active="primary", router_error=None, replicas={"primary": HEALTHY, "secondary": HEALTHY},
        monitor={"primary": {}}, automation=AUTOMATION)
    assert problems == [] and warnings == []


@pytest.mark.parametrize("change, problem", [
    ({"router_error": "connection refused"}, "the router does not answer: connection refused"),
    ({"active": "secondary"}, "traffic is already on secondary, not the primary: fail back first"),
    ({"replicas": {"primary": {"healthy": False, "detail": "no process"}}},
     "the replica in primary does not answer (no process)"),
])
def test_what_blocks_a_drill(change, problem):
    args = {"active": "primary", "router_error": None, "replicas": {"primary": HEALTHY}, "monitor": {"p": {}},
            "automation": AUTOMATION} | change
    problems, _ = procedure.assess_prechecks("primary", **args)
    assert len(problems) == 1 and problems[0].startswith(problem)


@pytest.mark.parametrize("change, warning", [
    ({"replicas": {"secondary": {"healthy": False, "detail": "cold"}}}, "the replica in secondary does not answer"),
    ({"monitor": {}}, "the monitor has never run"),
    ({"automation": {"name": "auto", "enabled": False}}, "the failover automation 'auto' is disabled"),
    ({"automation": {"name": "auto", "enabled": None}}, "the failover automation was not found"),
])
def test_what_only_warns(change, warning):
    args = {"active": "primary", "router_error": None, "replicas": {}, "monitor": {"p": {}},
            "automation": AUTOMATION} | change
    problems, warnings = procedure.assess_prechecks("primary", **args)
    assert problems == [] and len(warnings) == 1 and warnings[0].startswith(warning)


def test_precheck_problems_stop_the_drill_with_the_reasons(cfg):
    rec = _record(cfg)
    assert not procedure.record_prechecks(rec, _pre(problems=["the router does not answer: x"]), "secondary")
    assert rec.failure_reasons == ["precheck: the router does not answer: x"]
    assert rec.timeline[-1].ok is False and rec.timeline[-1].detail == "the router does not answer: x"


def test_clear_prechecks_keep_the_dr_copy_as_evidence(cfg):
    rec = _record(cfg)
    assert procedure.record_prechecks(rec, _pre(warnings=["the monitor has never run"]), "secondary")
    ev = rec.evidence
    assert rec.failure_reasons == [] and ev["manifest_digests"] == {"primary": "ab" * 32, "secondary": "ab" * 32}
    assert ev["snapshots"]["secondary"] == {"id": "ab" * 32, "created": utc(T0 - 120)}
    assert ev["components"] == {"tokenizer": "cd" * 32}
    assert ev["bundle_complete_dr"] == {"complete": True, "detail": "every required component recorded"}
    assert rec.timeline[-1].ok is True and rec.timeline[-1].detail == "the monitor has never run"


# --- the DR copy, from a repository ---------------------------------------------------------------------------------
def test_dr_copy_of_an_empty_region(cfg):
    out = dr_copy(Repository(MemoryStore("secondary")), cfg, "secondary")
    assert out == {"region": "secondary", "id": None, "created": None, "complete": False,
                   "detail": "no snapshot of b in secondary"}


def test_dr_copy_complete_and_incomplete(cfg, tmp_path):
    src = tmp_path / "model"
    write_demo_bundle(src)
    repo = Repository(MemoryStore("secondary"))
    res = take_snapshot(repo, src, bundle="b", components=specs_from_config(cfg.bundle.components))
    out = dr_copy(repo, cfg, "secondary")
    assert out["id"] == res.snapshot_id and out["complete"] and out["files"] == len(res.manifest.files)
    assert out["created_ts"] == parse_utc(out["created"]).timestamp() and set(out["components"]) == {"tokenizer"}
    assert out["detail"] == "every required component recorded: tokenizer"
    bare = Repository(MemoryStore("secondary"))
    take_snapshot(bare, src, bundle="b")  # components not recorded in the manifest
    out = dr_copy(bare, cfg, "secondary")
    assert not out["complete"] and out["detail"] == "missing from the manifest: tokenizer"


# --- RPO, outage, RTO ------------------------------------------------------------------------------------------------
def test_rpo_is_outage_start_minus_the_newest_dr_snapshot(cfg):
    rec = _record(cfg)
    procedure.record_prechecks(rec, _pre(copy=_copy(created_ts=T0 - 61.04)), "secondary")
    procedure.record_rpo(rec, "secondary", T0 + 10)
    assert rec.measurements["rpo_s"] == 71.0
    assert rec.measurements["rpo_detail"] == (f"outage {utc(T0 + 10)} − newest snapshot complete in secondary "
                                              f"{utc(T0 - 61.04)} ({'ab' * 6})")


def test_no_dr_snapshot_no_rpo_and_the_control_fails(cfg):
    rec = _record(cfg)
    procedure.record_prechecks(rec, _pre(copy={"complete": False, "detail": "no snapshot of b in secondary"}),
                               "secondary")
    procedure.record_rpo(rec, "secondary", T0 + 10)
    assert "rpo_s" not in rec.measurements
    procedure.finish(rec, cfg, now=T0 + 60)
    rpo = next(c for c in rec.controls if c.id == "rpo")
    assert not rpo.passed and rpo.value == "no snapshot in the DR region" and not rec.passed


def test_outage_on_the_timeline(cfg):
    rec = _record(cfg)
    procedure.record_outage(rec, "primary", {"action": "local: stopped"}, T0 + 10)
    assert rec.outage == {"region": "primary", "scope": "region", "action": "local: stopped",
                          "started_utc": utc(T0 + 10)}
    assert (rec.timeline[-1].kind, rec.timeline[-1].event, rec.timeline[-1].t_s) == ("outage", "primary region down",
                                                                                    10.0)


def test_the_failover_is_awaited_from_just_before_the_outage_for_the_rto(cfg):
    assert procedure.failover_wait(cfg, T0) == (T0 - 1.0, 900.0)


def test_rto_is_outage_start_to_the_first_golden_correct_answer(cfg):
    rec = _record(cfg)
    t_out = T0 + 10
    assert procedure.record_failover(rec, cfg, _failover(t_out), t_out)
    m = rec.measurements
    assert m["rto_s"] == 7.2 and m["undetected_s"] == 1.5 and m["detection_s"] == 3.0 and m["recovery_s"] == 3.24
    assert m["rto_detail"] == f"outage {utc(t_out)} → first golden-correct answer through the router {utc(t_out + 7.24)}"
    kinds = [(e.kind, e.ok) for e in rec.timeline[1:]]
    assert kinds == [("detection", None)] * 3 + [("switch", True)] * 2 + [("recovery", True)]
    assert rec.failure_reasons == [] and rec.evidence["failover"]["to_region"] == "secondary"


def test_a_failover_that_failed_fails_the_drill(cfg):
    rec = _record(cfg)
    fo = _failover(T0 + 10, ok=False, verified_ts=None, error="golden check failed")
    assert procedure.record_failover(rec, cfg, fo, T0 + 10)
    assert "rto_s" not in rec.measurements
    assert rec.failure_reasons == ["the failover ran but failed: golden check failed"]
    assert rec.timeline[-1].event == "failover failed" and rec.timeline[-1].ok is False


@pytest.mark.parametrize("enabled, suffix", [
    (True, " (a failover run needs a worker on the DR region's work pool llmdr-secondary: see the Prefect UI's Work "
           "Pools, or `llmdr stack status` for the local stack)"),
    (False, " — the failover automation is disabled")])
def test_no_failover_within_the_rto_fails_the_drill(cfg, enabled, suffix):
    rec = _record(cfg)
    procedure.record_prechecks(rec, _pre(automation={"name": "a", "enabled": enabled}), "secondary")
    assert not procedure.record_failover(rec, cfg, None, T0 + 10)
    assert rec.failure_reasons == ["no failover within the RTO objective (900 s): the monitor → automation → "
                                   "failover chain did not fire" + suffix]
    assert (rec.timeline[-1].event, rec.timeline[-1].detail) == ("no failover", "waited 900 s")


# --- checks in the DR region ------------------------------------------------------------------------------------------
def test_checks_are_recorded_with_their_result(cfg):
    rec = _record(cfg)
    procedure.record_golden(rec, {"ok": False, "passed": 5, "total": 6, "region": "secondary"})
    procedure.record_restore_test(rec, {"ok": True, "summary": "abc from secondary: 6/6 golden"}, "secondary")
    procedure.record_datasets(rec, [{"name": "d1", "md5": "m1", "remote": "s3://x", "valid": True, "validation": "ok"},
                                    {"name": "d2", "remote": "s3://x", "valid": False, "error": "md5 mismatch"}],
                              "secondary")
    marks = {e.event: (e.ok, e.detail) for e in rec.timeline}
    assert marks["golden set through the router"] == (False, "5/6 from secondary")
    procedure.record_golden(rec, {"ok": True, "passed": 2, "total": 2, "region": "secondary",
                                  "gate": {"mode": "similarity"}, "cases": [{"id": "a", "score": 1.0},
                                                                            {"id": "b", "score": 0.93}]})
    assert rec.timeline[-1].detail == "2/2 from secondary, similarity gate; scores a 1.0, b 0.93"
    assert marks["restore test from the secondary store"] == (True, "abc from secondary: 6/6 golden")
    assert marks["datasets from the secondary DVC remote"] == (False, "ok; md5 mismatch")
    assert rec.evidence["dataset_versions"] == [{"name": "d1", "md5": "m1", "remote": "s3://x"},
                                                {"name": "d2", "md5": None, "remote": "s3://x"}]


def test_a_step_that_raised_fails_the_drill(cfg):
    rec = _record(cfg)
    procedure.record_step_failure(rec, OSError("disk full"))
    assert rec.failure_reasons == ["drill step failed: disk full"] and rec.timeline[-1].ok is False


# --- back to normal ---------------------------------------------------------------------------------------------------
def test_when_to_fail_back(cfg):
    assert procedure.needs_failback(cfg, {"active": "secondary", "error": None})
    assert not procedure.needs_failback(cfg, {"active": "primary", "error": None})
    with pytest.raises(procedure.RouterUnreachable, match="connection refused"):
        procedure.needs_failback(cfg, {"active": None, "error": "connection refused"})


def test_failback_records(cfg):
    rec = _record(cfg)
    procedure.record_outage(rec, "primary", {"action": "stopped"}, T0 + 1)
    procedure.record_region_back(rec, "primary", {"action": "local: started again"})
    assert rec.outage["restored_utc"] and rec.timeline[-1].event == "primary region back"
    procedure.record_failback(rec, {"ok": True, "rto_s": 2.5})
    assert rec.timeline[-1].detail == "RTO 2.5 s"
    procedure.record_failback(rec, {"ok": False, "error": "primary store down"})
    assert rec.timeline[-1].detail == "primary store down" and rec.timeline[-1].ok is False
    procedure.record_no_failback(rec)
    assert rec.evidence["failback"] == {"ok": True, "noop": True, "detail": "traffic never left the primary"}
    procedure.record_failback_error(rec, procedure.RouterUnreachable("connection refused"))
    assert rec.evidence["failback"] == {"ok": False, "error": "connection refused"}


@pytest.mark.parametrize("traffic, left", [({"active": "primary", "error": None}, False),
                                           ({"active": "secondary", "error": None}, True),
                                           ({"active": None, "error": "connection refused"}, True)])
def test_a_drill_left_failed_over_says_so(cfg, traffic, left):
    rec = _record(cfg)
    procedure.record_traffic_at_end(rec, cfg, traffic)
    assert rec.failed_over_at_end is left
    assert bool(rec.failure_reasons) is left and rec.timeline[-1].ok is (not left)
    if left:
        where = traffic["active"] or "an unknown region"
        assert rec.failure_reasons == [f"THE SYSTEM IS LEFT FAILED OVER: traffic is on {where}, not primary. "
                                       "Fail back by hand: `llmdr failback`"]


# --- the end ----------------------------------------------------------------------------------------------------------
def _whole_drill(cfg, *, traffic_at_end: str = "primary") -> DrillRecord:
    """Every decision in the flow's order, fed the results a passing drill's steps return."""
    rec = _record(cfg)
    assert procedure.record_prechecks(rec, _pre(), "secondary")
    t_out = T0 + 5
    procedure.record_rpo(rec, "secondary", t_out)
    procedure.record_outage(rec, "primary", {"action": "local: stopped"}, t_out)
    if procedure.record_failover(rec, cfg, _failover(t_out), t_out):
        procedure.record_golden(rec, {"ok": True, "passed": 6, "total": 6, "region": "secondary"})
    procedure.record_restore_test(rec, {"ok": True, "summary": "ok"}, "secondary")
    procedure.record_region_back(rec, "primary", {"action": "started"})
    assert procedure.needs_failback(cfg, {"active": "secondary", "error": None})
    procedure.record_failback(rec, {"ok": True, "rto_s": 2.0})
    procedure.record_traffic_at_end(rec, cfg, {"active": traffic_at_end, "error": None})
    procedure.finish(rec, cfg, now=T0 + 60)
    return rec


def test_a_passing_drill_end_to_end_of_the_decisions(cfg):
    rec = _whole_drill(cfg)
    assert rec.passed and rec.failure_reasons == [] and rec.ended_ts == T0 + 60
    assert rec.measurements["rpo_s"] == 125.0 and rec.measurements["rto_s"] == 7.2
    assert procedure.dr_snapshot_id(rec, cfg) == "ab" * 32
    record = rec.to_json() | {"report": {"folder": "/r/x"}}
    assert procedure.raise_if_failed(rec, record) is record
    notice = procedure.drill_notice(cfg, rec, "/r/x")
    assert notice == {"kind": "drill", "severity": "info", "title": "llmdr: DR drill of b PASS (RTO 7.2 s)",
                      "body": "every control passed", "data": {"bundle": "b", "drill_id": rec.id, "report": "/r/x"}}


def test_a_failed_drill_raises_drill_failed_after_its_report(cfg):
    rec = _whole_drill(cfg, traffic_at_end="secondary")
    assert not rec.passed and rec.failed_over_at_end
    record = rec.to_json() | {"report": {"folder": "/r/x"}}
    with pytest.raises(DrillFailed) as info:
        procedure.raise_if_failed(rec, record)
    err = info.value
    assert err.exit_code == 8 and err.folder == "/r/x" and err.reasons == rec.failure_reasons
    assert "THE SYSTEM IS LEFT FAILED OVER" in str(err) and pickle.loads(pickle.dumps(err)).folder == "/r/x"
    notice = procedure.drill_notice(cfg, rec, "/r/x")
    assert notice["severity"] == "critical" and notice["title"] == "llmdr: DR drill of b FAIL (RTO 7.2 s)"
    assert notice["body"] == "\n".join(rec.failure_reasons)


def test_the_previous_passing_drill_comes_from_the_history(cfg):
    old = _whole_drill(cfg)
    folder = drills_dir(cfg) / old.id
    folder.mkdir(parents=True)
    (folder / "evidence.json").write_text(json.dumps(old.to_json()))
    rec = procedure.start_record(cfg, {"kind": "cli"}, now=T0 + 86400)
    procedure.finish(rec, cfg, now=T0 + 86460)
    prev = next(c for c in rec.controls if c.id == "previous_drill")
    assert prev.passed and prev.value.startswith("1d ago")
    rows = procedure.history_rows(cfg)
    assert [(r["drill"], r["passed"], r["rto_s"]) for r in rows] == [(old.id, True, 7.2)]


def test_model_version_and_no_snapshot(cfg):
    rec = _record(cfg)
    assert procedure.dr_snapshot_id(rec, cfg) is None
    procedure.record_model_version(rec, {"version": "3"})
    assert rec.evidence["model_version"] == {"version": "3"}


# --- the readiness-check flow's decisions -----------------------------------------------------------------------------
def _readiness(*statuses: str) -> dict:
    return {"bundle": "b", "verdict": "FAIL" if "FAIL" in statuses else "WARN" if "WARN" in statuses else "PASS",
            "score": 50, "checks": [{"id": f"c{i}", "title": f"Check {i}", "status": s, "summary": f"found {i}",
                                     "action": "fix it"} for i, s in enumerate(statuses)]}


def test_readiness_passes_without_a_failing_check():
    rep = _readiness("PASS", "WARN")
    assert failure_notice(rep) is None and raise_if_failed(rep) is rep


def test_readiness_failure_notifies_and_raises():
    rep = _readiness("PASS", "FAIL", "WARN")
    notice = failure_notice(rep)
    assert notice["kind"] == "readiness" and notice["severity"] == "critical" and "Check 1" in notice["body"]
    with pytest.raises(ReadinessFailed, match=r"readiness FAIL \(score 50/100\): Check 1: found 1$") as info:
        raise_if_failed(rep)
    assert info.value.exit_code == 9 and pickle.loads(pickle.dumps(info.value)).report == rep
