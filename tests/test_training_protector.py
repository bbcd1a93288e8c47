"""The callbacks' shared part without a trainer library: ``CheckpointProtector`` waits for a checkpoint to become
complete (bounded), fails fast on one the trainer deleted, and protects in a background thread; two protections of
the same folder at once, and files dated in the future, do no harm."""

from __future__ import annotations

import os
import shutil
import threading

import pytest

from llmdr.repo import ops
from llmdr.training.protector import CheckpointNotComplete, CheckpointProtector
from tests.support.config import two_regions
from tests.test_checkpoint_complete import hf_checkpoint
from tests.test_checkpoints_protect import same_tree, series_tags


@pytest.fixture
def cfg(stack, tmp_path):
    return two_regions(stack, tmp_path, extra="checkpoints: {path: out, layout: hf}")


def test_a_checkpoint_that_never_completes_is_a_clear_error(cfg, tmp_path):
    d = hf_checkpoint(tmp_path / "out", 3)
    os.remove(d / "trainer_state.json")
    p = CheckpointProtector(cfg, timeout_s=0.5, settle_s=0)
    p.submit(d, {"step": "3"})
    with pytest.raises(CheckpointNotComplete, match=r"checkpoint-3 was not complete after waiting 0.5 s: "
                                                    r"trainer_state.json: missing"):
        p.close()
    assert series_tags(cfg, "primary") == []


def test_a_deleted_checkpoint_fails_fast_and_the_others_are_protected(cfg, tmp_path):
    gone = hf_checkpoint(tmp_path / "out", 5)
    shutil.rmtree(gone)  # rotated away (save_total_limit) before its turn
    kept = hf_checkpoint(tmp_path / "out", 10)
    p = CheckpointProtector(cfg, timeout_s=300, settle_s=0)  # would wait 5 minutes if a missing folder were "late"
    p.submit(gone)
    p.submit(kept)
    with pytest.raises(CheckpointNotComplete, match=r"checkpoint-5 is gone before it could be protected"):
        p.close()
    assert [r["checkpoint"] for r in p.results] == ["checkpoint-10"]
    assert [t["checkpoint"] for t in series_tags(cfg, "secondary")] == ["checkpoint-10"]


def test_waits_for_the_trainer_to_finish_writing(cfg, tmp_path):
    d = hf_checkpoint(tmp_path / "out", 5)
    state = (d / "trainer_state.json").read_text()
    os.remove(d / "trainer_state.json")
    p = CheckpointProtector(cfg, background=True, timeout_s=60, settle_s=0.2)
    p.submit(d, {"run_name": "r"})
    finished = threading.Timer(0.5, lambda: (d / "trainer_state.json").write_text(state))
    finished.start()
    finished.join()
    [res] = p.close()
    assert res["checkpoint"] == "checkpoint-5" and res["new"][0]["tags"]["run_name"] == "r"


def test_two_protections_at_once_and_a_future_clock(cfg, tmp_path):
    d = hf_checkpoint(tmp_path / "out", 5)
    future = 4102444800_000_000_000  # files dated 2100-01-01: the wrong clock of some NFS server
    for f in d.iterdir():
        os.utime(f, ns=(future, future))
    errors: list[BaseException] = []

    def protect():
        try:
            ops.protect_checkpoints(cfg)
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=protect) for _ in range(2)]
    for t in threads:
        t.start()
    CheckpointProtector(cfg, background=False, settle_s=0).submit(d)  # the callback too, at the same time
    for t in threads:
        t.join()
    assert errors == []
    tags = series_tags(cfg, "secondary")
    assert {t["checkpoint"] for t in tags} == {"checkpoint-5"} and 1 <= len(tags) <= 3  # duplicates: same content
    assert ops.protect_checkpoints(cfg)["new"] == []  # a future mtime is only compared for equality
    ops.restore_checkpoint(cfg, "step:5", tmp_path / "r5", region="secondary")
    assert same_tree(d, tmp_path / "r5")


def test_config_without_checkpoints_and_a_bad_mode(stack, tmp_path):
    from llmdr.errors import UsageError

    bare = two_regions(stack, tmp_path)
    with pytest.raises(UsageError, match="has no checkpoints: section"):
        CheckpointProtector(bare)
    cfg = two_regions(stack, tmp_path, extra="checkpoints: {path: out}")
    with pytest.raises(UsageError, match="mode 'cloud'"):
        CheckpointProtector(cfg, mode="cloud")  # type: ignore[arg-type]


def test_deployment_mode_starts_a_protect_checkpoints_run(prefect_harness, cfg, tmp_path):
    """mode="deployment": a run of the protect-checkpoints deployment is created for this bundle (a worker would take
    it); a deployment that does not exist is a clear error."""
    import asyncio

    from prefect import get_client

    from flows.protect_checkpoints import protect_checkpoints
    from llmdr.errors import UsageError

    d = hf_checkpoint(tmp_path / "out", 5)
    missing = CheckpointProtector(cfg, mode="deployment", background=False, settle_s=0, deployment="nope/nope")
    with pytest.raises(UsageError, match="no Prefect deployment 'nope/nope'.*llmdr deploy"):
        missing.submit(d)
    protect_checkpoints.to_deployment(name="protect-checkpoints").apply()
    p = CheckpointProtector(cfg, mode="deployment", background=False, settle_s=0)
    p.submit(d)
    [res] = p.results
    assert res["checkpoint"] == "checkpoint-5"

    async def params():
        async with get_client() as client:
            return (await client.read_flow_run(res["flow_run_id"])).parameters

    assert asyncio.run(params()) == {"config_path": str(cfg.source_file), "bundle": None}
    assert series_tags(cfg, "primary") == []  # nothing uploaded from this process: the worker's run does it
