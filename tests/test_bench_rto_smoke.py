"""bench/rto.py --smoke: one warm and one cold failover through the real chain (its own file, so the
suite's parallel workers run it beside the other bench smokes)"""

from __future__ import annotations

import pytest

from tests.support.benchsmoke import load, run_smoke


@pytest.mark.s3
@pytest.mark.slow
def test_rto_smoke(tmp_path):
    doc = load(run_smoke("rto.py", tmp_path, timeout=1200), "rto-smoke")
    steps = {x["step"]: x for x in doc["steps"]}
    assert steps["warm trial"]["status"] == "ran" and steps["cold trial"]["status"] == "ran"
    peer = steps["s5cmd download (peer)"]
    assert peer["status"] == "ran" or (peer["status"] == "skipped" and peer["reason"])
    assert [t["kind"] for t in doc["trials"]] == ["warm", "cold"] and doc["smoke"]
    warm, cold = doc["trials"]
    # the warm standby was verified and armed as the router's fallback: the client's requests during the outage went
    # there, none failed; the cold trial's stopped standby was no fallback
    assert warm["fallback_armed"] == "secondary" and cold["fallback_armed"] is None
    assert warm["client_requests_during"] > 0 and warm["client_failed_during"] == 0 and warm["client_outage_s"] == 0
    for t in doc["trials"]:
        assert {"client_requests_failback", "client_failed_failback", "detection_s", "dispatch_s",
                "recovery_s"} <= set(t)
