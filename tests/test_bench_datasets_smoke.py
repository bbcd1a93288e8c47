"""bench/datasets.py runs, so it cannot rot unnoticed: once with ``--smoke`` (a few MB of Parquet and CSV partitions,
every step once), its results written to a temporary folder. Only completion and shape are asserted (exit 0, every
step ran, each validation checked every row or its sample in capped batches); no timing is asserted. It starts no
server."""

from __future__ import annotations

import pytest

from tests.support.benchsmoke import load, run_smoke


@pytest.mark.slow
def test_datasets_smoke(tmp_path):
    doc = load(run_smoke("datasets.py", tmp_path), "datasets-smoke")
    ran = {(r["variant"], r["step"]) for r in doc["runs"]}
    assert ran == {(v, s) for v in ("parquet", "csv") for s in ("profile + validate", "full", "sample",
                                                                "peer: whole read")} | {("parquet",
                                                                                         "peer: streamed scan")}
    assert all(s["status"] == "ran" for s in doc["steps"])
    for r in doc["runs"]:
        if r["tool"].startswith("llmdr"):
            j = r["data"]
            shape = doc["details"][r["variant"]]
            assert j["success"] and j["total_rows"] == shape["rows"] and j["partitions"] == shape["partitions"]
            assert 0 < j["max_batch_rows"] <= j["batch_rows"] == 5_000
            if r["step"] == "sample":
                assert j["sample"]["seed"] == 1 and j["rows"] == j["sample"]["rows"] == 1_000
            else:
                assert j["rows"] == shape["rows"]
    assert doc["meta"]["args"]["smoke"] == "True"
    assert {c["metric"].split(":")[0] for c in doc["checks"]} == {"parquet", "csv"}
