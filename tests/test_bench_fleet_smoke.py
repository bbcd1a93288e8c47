"""bench/fleet.py --smoke (#18): three bundles protected by one and two workers on the PostgreSQL profile, the
warm RTO through the DR runner and through one worker, and that worker lost with its region (its own file, so the
suite's parallel workers run it beside the other bench smokes)"""

from __future__ import annotations

import pytest

from tests.support.benchsmoke import load, run_smoke


@pytest.mark.s3
@pytest.mark.slow
def test_fleet_smoke(tmp_path):
    doc = load(run_smoke("fleet.py", tmp_path, timeout=1200), "fleet-smoke")
    assert doc["smoke"] and all(x["status"] == "ran" and x["ok"] for x in doc["steps"]), doc["steps"]
    protect = doc["protect"]
    assert protect["database"].startswith("postgresql") and len(protect["bundles"]) == 3
    assert [lv["workers"] for lv in protect["levels"]] == [1, 2]
    for lv in protect["levels"]:
        # every protect of every bundle completed, and only the bench's runs ran
        assert lv["runs_created"] == lv["completed"] == 3 and lv["other_runs"] == [], lv
        assert sorted(r["bundle"] for r in lv["runs"]) == protect["bundles"]
        assert all(r["state"] == "Completed" and r["task_span"] for r in lv["runs"]), lv["runs"]
        assert lv["wall_s"] > 0 and lv["bundles_per_min"] > 0 and lv["mb_s"] > 0
        assert 1 <= lv["overlap_protecting"] <= 3 and 1 <= lv["overlap_runs"] <= 3
        # each run was submitted by one of this level's workers (named in its run log)
        workers = {"llmdr-worker-primary"} | {f"fleet-worker-{k}" for k in range(2, lv["workers"] + 1)}
        assert {r["worker"] for r in lv["runs"]} <= workers, lv["runs"]
    rto = doc["rto"]
    for topology in ("dr_runner", "single_worker"):
        [trial] = rto[topology]["trials"]
        # the RTO and its split come from the failover record the automation-driven failover stored
        assert trial["ok"] and trial["rto_s"] > 0 and trial["client_ok_after"], trial
        assert all(trial[k] is not None and trial[k] >= 0 for k in ("detection_s", "dispatch_s", "recovery_s"))
        assert rto[topology]["median"]["rto_s"] == trial["rto_s"]
    dead = rto["dead_worker"]
    assert dead["failover_started"] is False and dead["router_active_after"] == "primary", dead
    assert all(c["verdict"] != "FAIL" for c in doc["checks"])
