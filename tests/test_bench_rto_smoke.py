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
