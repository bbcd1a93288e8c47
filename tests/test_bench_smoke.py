"""The benchmark harnesses run, so they cannot rot unnoticed: each bench script once with ``--smoke`` (the smallest
sizes, every step, the peers s5cmd/restic/rclone only where installed; history.py at 3 and 12 snapshots), its results
written to a temporary folder.

Only completion is asserted: exit 0, and a results file listing every step (ran, or skipped because a peer is not
installed, with the reason). No timing is asserted: speed is measured by the benchmarks themselves, not here. The
committed results under bench/results/ must not be touched."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.benchsmoke import BENCH, load, run_smoke
from tests.support.ports import free_base_ports

# each smoke run starts its own SeaweedFS regions

def check_statuses(steps: list[dict], peers: set[str]) -> None:
    """llmdr's own steps ran; a peer's step ran or was skipped with a reason."""
    for s in steps:
        if s["status"] == "skipped":
            assert any(p in s["tool"] for p in peers) and s["reason"], s
        else:
            assert s["status"] == "ran", s


@pytest.mark.s3
@pytest.mark.slow
def test_bench_smoke(tmp_path):
    p, s = free_base_ports()
    doc = load(run_smoke("bench.py", tmp_path, "--primary-port", str(p), "--secondary-port", str(s)), "smoke")
    steps = doc["steps"]
    assert {x["step"] for x in steps} == {"start-up", "cold upload", "warm (no change)", "incremental", "cross-region",
                                          "restore", "micro"}
    ran = {x["tool"] for x in steps if x["status"] == "ran"}
    assert {"llmdr --help", "llmdr snapshot (cold)", "llmdr snapshot (warm)", "llmdr snapshot (1 shard rewritten)",
            "llmdr snapshot (1 region rewritten)", "llmdr replicate (cold)", "llmdr restore",
            "boto3 upload_file (8 thr, 16 MiB)"} <= ran
    assert {"s5cmd cp (upload)", "restic backup (cold)", "restic backup (warm)", "rclone copy (8 transfers)",
            "s5cmd cp (download)"} <= {x["tool"] for x in steps}
    check_statuses(steps, {"s5cmd", "restic", "rclone"})
    assert doc["details"]["restore_verified"]["identical"]
    assert doc["meta"]["smoke"] and [m["name"] for m in doc["micro"]][-1] == "AES-256-GCM open (llmdr blob cipher)"
    assert len(doc["micro"]) == 5 and all(m["gb_s"] > 0 for m in doc["micro"])
    if any(x["tool"] == "s5cmd cp (download)" and x["status"] == "ran" for x in steps):
        names = {c["metric"] for c in doc["checks"]}  # where the restore's CPU goes, beside its ratio
        assert {"restore client CPU beyond s5cmd's ÷ verifying every byte at the micro-bench rates",
                "restore ÷ s5cmd download, as far as CPU allows (CPU-s floors, tool + servers)"} <= names


@pytest.mark.s3
@pytest.mark.slow
def test_scale_smoke(tmp_path):
    p, s = free_base_ports()
    doc = load(run_smoke("scale.py", tmp_path, "--primary-port", str(p), "--secondary-port", str(s)), "scale-smoke")
    steps = doc["steps"]
    llmdr = {(x["part"], x["step"], x["tool"]) for x in steps if x["tool"].startswith("llmdr")}
    assert {("a", "cold", "llmdr snapshot"), ("a", "warm (no change)", "llmdr snapshot"),
            ("a", "list (2 snapshots)", "llmdr snapshots"), ("a", "replicate", "llmdr replicate"),
            ("a", "restore", "llmdr restore"), ("b", "step 1", "llmdr snapshot"), ("b", "step 2", "llmdr snapshot"),
            ("b", "step 2", "llmdr replicate"), ("b", "list (2 snapshots), no cache", "llmdr snapshots"),
            ("b", "restore step 1", "llmdr restore"), ("b", "restore step 2", "llmdr restore"),
            ("b", "forget --keep-last 1", "llmdr forget"), ("b", "prune (phase two)", "llmdr prune"),
            ("b", "restore step 2 after forget", "llmdr restore")} <= llmdr
    assert {x["tool"] for x in steps if not x["tool"].startswith("llmdr")} == {
        "restic backup", "restic snapshots", "restic restore", "restic forget --prune"}
    check_statuses(steps, {"restic"})
    assert doc["details"]["series"][1]["ops"].get("shard_region_rewritten"), "step 2 rewrites a shard region"


@pytest.mark.s3
@pytest.mark.slow
def test_object_lock_smoke(tmp_path):
    doc = load(run_smoke("object_lock.py", tmp_path), "object-lock-smoke")
    got = [(x["step"], x["region"]) for x in doc["steps"]]
    for step in ("1 cold copy", "2 copy right after", "3 copy after the slack"):
        assert {(step, "plain-1"), (step, "locked-1")} <= set(got)
    assert {("4a retention", "plain"), ("4a retention", "locked"),
            ("4b retention after half the period", "locked")} <= set(got)
    assert all(x["status"] == "ran" for x in doc["steps"]) and doc["smoke"]


@pytest.mark.s3
@pytest.mark.slow
def test_history_smoke(tmp_path):
    p, s = free_base_ports()
    doc = load(run_smoke("history.py", tmp_path, "--primary-port", str(p), "--secondary-port", str(s)),
               "history-smoke")
    assert doc["meta"]["smoke"] and doc["meta"]["levels"] == [3, 12]
    assert all(x["status"] == "ran" for x in doc["steps"])
    measured = {(r["level"], r["mode"], r["command"]) for r in doc["runs"]}
    commands = ("llmdr snapshot", "llmdr replicate", "llmdr snapshots", "llmdr restore")
    assert measured == {(lv, m, c) for lv in (3, 12) for m in ("cold", "warm") for c in commands}
    listed = {(r["level"], r["mode"]): r["data"]["listed"] for r in doc["runs"] if r["command"] == "llmdr snapshots"}
    assert listed[(3, "cold")] >= 2 and listed[(12, "cold")] >= listed[(3, "warm")] + 5, "the history grows"
    assert {c["metric"].split(":")[0] for c in doc["checks"] if c["bound"] == 1.2} == {
        f"{c} ({m})" for c in commands for m in ("cold", "warm")}
    assert sum(b["added"] for b in doc["details"]["builds"]) >= 12 - 2, "the history was built in-process"


@pytest.mark.parametrize("script", ["bench.py", "scale.py", "object_lock.py", "rto.py", "history.py", "fleet.py"])
def test_a_work_folder_the_harness_did_not_make_is_never_emptied(script, tmp_path):
    work = tmp_path / "precious"
    work.mkdir()
    (work / "keep.txt").write_text("not the bench's")
    r = subprocess.run([sys.executable, str(BENCH / script), "--smoke", "--work", str(work),
                        "--results", str(tmp_path / "results")], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode != 0
    assert "was not made by this harness" in r.stderr and "pick another --work" in r.stderr
    assert [p.name for p in work.iterdir()] == ["keep.txt"] and (work / "keep.txt").read_text() == "not the bench's"
