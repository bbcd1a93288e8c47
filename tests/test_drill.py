"""The drill's verdict logic and history, without running a drill: controls from measurements, the rule that a
drill left failed over never passes, and `llmdr drills` warning when the last passing drill is too old."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

from llmdr.config import parse_config
from llmdr.drill import record as core
from tests.support.config import OFFLINE_CONFIG as CONFIG


def _cfg(tmp_path):
    path = tmp_path / "llmdr.yaml"
    path.write_text(CONFIG)
    return parse_config(CONFIG, source=path)


def _good(started: float) -> core.DrillRecord:
    rec = core.DrillRecord(bundle="b", started_ts=started, started_by={"kind": "cli"}, tool_version="0.1.0",
                           scope={})
    rec.measurements.update(rto_s=4.2, rpo_s=61.0)
    rec.evidence.update(golden_after_failover={"ok": True, "passed": 6, "total": 6},
                        restore_test={"ok": True, "summary": "ok"}, bundle_complete_dr={"complete": True},
                        failback={"ok": True})
    rec.ended_ts = started + 30
    return rec


def test_every_control_passes_and_a_first_drill_still_passes(tmp_path):
    cfg = _cfg(tmp_path)
    rec = _good(time.time())
    core.evaluate(rec, cfg, previous_pass_ts=None)
    ctl = {c.id: c.passed for c in rec.controls}
    assert set(ctl) == {"rto", "rpo", "golden_after_failover", "restore_test", "bundle_complete_dr", "failback",
                        "previous_drill"}
    assert rec.passed and ctl["previous_drill"] is None and rec.failure_reasons == []  # N/A, not FAIL


def test_each_failed_control_fails_the_drill(tmp_path):
    cfg = _cfg(tmp_path)
    cases = {"rto": lambda r: r.measurements.update(rto_s=16 * 60),
             "rpo": lambda r: r.measurements.update(rpo_s=301),
             "golden_after_failover": lambda r: r.evidence.update(golden_after_failover={"ok": False, "passed": 5,
                                                                                         "total": 6}),
             "restore_test": lambda r: r.evidence.update(restore_test={"ok": False, "summary": "tokenizer missing"}),
             "bundle_complete_dr": lambda r: r.evidence.update(bundle_complete_dr={"complete": False}),
             "failback": lambda r: r.evidence.update(failback={"ok": False, "error": "primary store down"})}
    for control, breaks in cases.items():
        rec = _good(time.time())
        breaks(rec)
        core.evaluate(rec, cfg, previous_pass_ts=time.time() - 86400)
        assert not rec.passed, control
        assert [c.id for c in rec.controls if not c.passed] == [control]


def test_a_drill_left_failed_over_never_passes(tmp_path):
    cfg = _cfg(tmp_path)
    rec = _good(time.time())
    rec.failed_over_at_end = True
    core.evaluate(rec, cfg, previous_pass_ts=time.time() - 86400)
    assert not rec.passed and not {c.id: c.passed for c in rec.controls}["failback"]


def test_no_failover_is_unrecovered(tmp_path):
    cfg = _cfg(tmp_path)
    rec = _good(time.time())
    rec.measurements.pop("rto_s")
    core.evaluate(rec, cfg, previous_pass_ts=None)
    rto = next(c for c in rec.controls if c.id == "rto")
    assert not rto.passed and rto.value == "not recovered" and not rec.passed


def test_record_round_trip_and_timeline_order(tmp_path):
    rec = _good(1_800_000_000.0)
    rec.mark("switch", "router switched", ok=True, ts=1_800_000_003.0)
    rec.mark("outage", "primary down", ts=1_800_000_001.0)
    assert [e.event for e in rec.timeline] == ["primary down", "router switched"]
    again = core.DrillRecord.from_json(json.loads(json.dumps(rec.to_json())))
    assert again.to_json() == rec.to_json() and rec.to_json()["duration_s"] == 30.0


def _write(cfg, rec: core.DrillRecord) -> None:
    folder = core.drills_dir(cfg) / rec.id
    folder.mkdir(parents=True)
    (folder / "evidence.json").write_text(json.dumps(rec.to_json()))


def _drills(cfg) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmdr.cli", "--config", str(cfg.source_file), "drills"],
                          capture_output=True, text=True, timeout=60)


def test_drills_lists_history_and_warns_when_the_last_pass_is_too_old(tmp_path):
    cfg = _cfg(tmp_path)
    out = _drills(cfg)
    assert out.returncode == 0 and "no passing drill on record" in out.stdout
    old = _good(time.time() - 100 * 86400)
    core.evaluate(old, cfg, previous_pass_ts=None)
    _write(cfg, old)
    failed = _good(time.time() - 3600)
    failed.failed_over_at_end = True
    core.evaluate(failed, cfg, previous_pass_ts=old.started_ts)
    _write(cfg, failed)
    assert core.last_pass_ts(cfg) == old.started_ts
    out = _drills(cfg)
    assert old.id in out.stdout and failed.id in out.stdout and "left failed over" in out.stdout
    assert re.search(r"WARNING: the last passing drill was 100d(\d+s)? ago, more than the 90d drill interval",
                     out.stdout), out.stdout
    fresh = _good(time.time() - 60)
    core.evaluate(fresh, cfg, previous_pass_ts=old.started_ts)
    _write(cfg, fresh)
    out = _drills(cfg)
    assert "WARNING" not in out.stdout and re.search(r"last passing drill 1m(\d+s)? ago", out.stdout), out.stdout


def _publish(cfg, rec: core.DrillRecord) -> dict:
    from prefect.logging import disable_run_logger

    from tasks.drill import publish_report

    with disable_run_logger():  # the task's logic, without a Prefect run around it
        return publish_report.fn(str(cfg.source_file), rec.to_json())


def test_the_signed_report_holds_the_runbook_in_force(tmp_path):
    from pathlib import Path

    from llmdr.drill.signing import key_paths, verify_folder

    cfg = _cfg(tmp_path)
    rec = _good(time.time())
    core.evaluate(rec, cfg, previous_pass_ts=None)
    out = _publish(cfg, rec)
    folder = Path(out["folder"])
    runbook = folder / "RUNBOOK.md"
    assert out["files"]["runbook"] == str(runbook)
    text = runbook.read_text()
    assert text.startswith("# DR runbook: b\n") and "## 9. Drills and readiness" in text
    assert "failover --to secondary" in text and "No contacts configured" in text
    assert json.loads((folder / "evidence.json").read_text())["evidence"]["runbook"] == "RUNBOOK.md"
    assert '<a href="RUNBOOK.md">RUNBOOK.md</a>' in (folder / "report.html").read_text()
    res = verify_folder(folder, public_key=key_paths(cfg.drill.signing, cfg.state_path)[1])
    assert res.ok and "RUNBOOK.md" in [f["path"] for f in res.files]


def test_a_runbook_that_fails_to_render_does_not_stop_the_report(tmp_path, monkeypatch):
    from pathlib import Path

    from llmdr.drill import runbook

    cfg = _cfg(tmp_path)
    rec = _good(time.time())
    core.evaluate(rec, cfg, previous_pass_ts=None)
    stale = core.drills_dir(cfg) / rec.id / "RUNBOOK.md"
    stale.parent.mkdir(parents=True)
    stale.write_text("an older playbook that must not be signed as this drill's")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(runbook, "write_runbook", broken)
    out = _publish(cfg, rec)
    folder = Path(out["folder"])
    assert not (folder / "RUNBOOK.md").exists() and "runbook" not in out["files"]
    ev = json.loads((folder / "evidence.json").read_text())["evidence"]
    assert ev["runbook"] is None and ev["runbook_error"] == "OSError: disk full"
    assert "The runbook could not be written into this report: OSError: disk full" in \
        (folder / "report.html").read_text()
    assert (folder / "SIGNATURE.json").exists()
