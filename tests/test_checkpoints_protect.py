"""protect-checkpoints on the real test regions: an incomplete checkpoint is refused and reported, then taken on a
later run once complete; a rewritten one is taken again; a folder still changing is held back; `llmdr restore
--checkpoint latest|step:N` restores byte-identical from the DR region and names the steps there are."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from llmdr.repo import ops
from llmdr.repo.checkpoints import IncompleteCheckpoint
from tests.support.config import two_regions
from tests.test_checkpoint_complete import hf_checkpoint

LLMDR = [sys.executable, "-m", "llmdr.cli"]


def cli(cfg, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LLMDR, "--config", str(cfg.source_file), *args], capture_output=True, text=True,
                          timeout=120)


def same_tree(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    if files != sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()):
        return False
    return all(filecmp.cmp(a / f, b / f, shallow=False) for f in files)


@pytest.fixture
def cfg(stack, tmp_path):
    return two_regions(stack, tmp_path, extra="checkpoints: {path: out}")


def series_tags(cfg, region: str) -> list[dict]:
    return [s.manifest.tags for s in ops.open_repo(cfg, region, cache=False).snapshots(bundle="testbundle-checkpoints")]


def test_incomplete_refused_then_taken_rewritten_taken_again_and_restored_by_step(cfg, tmp_path):
    out = tmp_path / "out"
    hf_checkpoint(out, 5)
    c10 = hf_checkpoint(out, 10)
    (c10 / "trainer_state.json").unlink()  # the trainer is still writing step 10
    c15 = hf_checkpoint(out, 15)
    whole = (c15 / "model.safetensors").read_bytes()
    (c15 / "model.safetensors").write_bytes(whole[:20])  # cut short

    first = ops.protect_checkpoints(cfg)
    assert [n["checkpoint"] for n in first["new"]] == ["checkpoint-5"]
    assert {c["checkpoint"]: c["problems"][0].split(":")[0] for c in first["incomplete"]} == {
        "checkpoint-10": "trainer_state.json", "checkpoint-15": "model.safetensors"}
    assert [c["region"] for c in first["copies"]] == ["secondary"]
    tags = series_tags(cfg, "secondary")[0]
    assert tags["checkpoint"] == "checkpoint-5" and tags["step"] == "5" and tags["epoch"] == "0.5"
    assert len(tags["fingerprint"]) == 32

    (c10 / "trainer_state.json").write_text(json.dumps({"global_step": 10, "epoch": 1.0, "log_history": [
        {"loss": 0.75, "step": 10}]}))
    (c15 / "model.safetensors").write_bytes(whole)
    second = ops.protect_checkpoints(cfg)
    assert [n["checkpoint"] for n in second["new"]] == ["checkpoint-10", "checkpoint-15"]
    assert second["incomplete"] == [] and not any(n["revisit"] for n in second["new"])
    assert ops.protect_checkpoints(cfg)["new"] == []  # nothing changed: nothing taken

    (c10 / "optimizer.pt").write_bytes(b"rewritten by the trainer")  # same name, other content
    fourth = ops.protect_checkpoints(cfg)
    assert [(n["checkpoint"], n["revisit"]) for n in fourth["new"]] == [("checkpoint-10", True)]
    assert [t["checkpoint"] for t in series_tags(cfg, "secondary")] == [
        "checkpoint-5", "checkpoint-10", "checkpoint-15", "checkpoint-10"]
    assert series_tags(cfg, "secondary")[1]["loss"] == "0.75"

    r = cli(cfg, "restore", "--checkpoint", "step:10", "--region", "secondary", "--to", str(tmp_path / "r10"))
    assert r.returncode == 0, r.stderr
    assert "restored checkpoint step:10" in r.stdout and same_tree(c10, tmp_path / "r10")  # the rewritten one
    r = cli(cfg, "restore", "--checkpoint", "latest", "--region", "secondary", "--to", str(tmp_path / "rl"), "--json")
    assert r.returncode == 0, r.stderr
    assert same_tree(c15, tmp_path / "rl")


def test_restore_checkpoint_errors(cfg, tmp_path):
    hf_checkpoint(tmp_path / "out", 5)
    hf_checkpoint(tmp_path / "out", 20)
    r = cli(cfg, "restore", "--checkpoint", "latest", "--to", str(tmp_path / "x"))
    assert r.returncode != 0 and "no checkpoint snapshot in series testbundle-checkpoints" in r.stderr
    assert "llmdr protect --checkpoints" in r.stderr and "Traceback" not in r.stderr
    ops.protect_checkpoints(cfg)
    r = cli(cfg, "restore", "--checkpoint", "step:7", "--region", "secondary", "--to", str(tmp_path / "x"))
    assert r.returncode != 0 and "no checkpoint of step 7" in r.stderr and "steps there: 5, 20" in r.stderr
    for bad, msg in (("step:seven", "step:N with N a whole number"), ("newest", "write latest or step:N")):
        r = cli(cfg, "restore", "--checkpoint", bad, "--to", str(tmp_path / "x"))
        assert r.returncode != 0 and msg in r.stderr and "Traceback" not in r.stderr
    r = cli(cfg, "restore", "latest", "--checkpoint", "latest", "--to", str(tmp_path / "x"))
    assert r.returncode != 0 and "not both" in r.stderr
    assert not (tmp_path / "x").exists()  # nothing half-written by any refusal


def test_a_folder_still_changing_is_held_back_by_settle(stack, tmp_path):
    cfg = two_regions(stack, tmp_path, extra="checkpoints: {path: out, settle: 1s}")
    d = hf_checkpoint(tmp_path / "out", 5)
    stop = threading.Event()

    def writer():  # something the layout cannot see keeps growing a file
        with open(d / "extra.log", "ab") as fh:
            while not stop.is_set():
                fh.write(b"x" * 64)
                fh.flush()
                stop.wait(0.02)

    t = threading.Thread(target=writer)
    t.start()
    try:
        out = ops.protect_checkpoints(cfg)
    finally:
        stop.set()
        t.join()
    assert out["new"] == [] and "changed within the 1 s settle window" in out["incomplete"][0]["problems"][0]
    assert [n["checkpoint"] for n in ops.protect_checkpoints(cfg)["new"]] == ["checkpoint-5"]


def test_protect_one_checkpoint_refuses_an_incomplete_one(cfg, tmp_path):
    d = hf_checkpoint(tmp_path / "out", 5)
    os.remove(d / "trainer_state.json")
    with pytest.raises(IncompleteCheckpoint, match=r"checkpoint-5 was not snapshotted: .*trainer_state.json: missing"):
        ops.protect_checkpoint(cfg, d)
    assert series_tags(cfg, "primary") == []
    (d / "trainer_state.json").write_text('{"global_step": 5}')
    res = ops.protect_checkpoint(cfg, d, tags={"run_name": "r1"})
    assert [n["tags"]["run_name"] for n in res["new"]] == ["r1"] and len(res["copies"]) == 1
    assert ops.protect_checkpoint(cfg, d)["new"] == []  # the same content again: nothing new
