"""Training objectives (issue #20 item 3): ``objectives.training`` in llmdr.yaml, and the readiness checks of the
checkpoints against it on the real test regions: fresh / ageing / stale checkpoint copies (ages fabricated with the
check's clock, never by sleeping), a newer incomplete copy passed over, a checkpoint folder not on this host, a
writer's clock running ahead, the restore-time check, and no checkpoints at all (N/A, never FAIL)."""

from __future__ import annotations

import shutil
from datetime import timedelta

import pytest

from llmdr.config import parse_config
from llmdr.drill import readiness as rd
from llmdr.drill import training as tr
from llmdr.errors import ConfigError
from llmdr.repo.ops import open_repo
from tests.support.config import OFFLINE_CONFIG, two_regions
from tests.support.damage import remove_chunk
from tests.support.trainobj import checkpoint_config, protect, write_checkpoint

HOUR = 3600.0


# --- config ------------------------------------------------------------------------------------------------------
def _parse(tmp_path, extra: str):
    return parse_config(OFFLINE_CONFIG + "\n" + extra, source=tmp_path / "llmdr.yaml")


@pytest.mark.parametrize("extra, rpo, rto", [
    ("", None, None),
    ("objectives: {training: null}", None, None),
    ("objectives: {training: {}}", 24 * HOUR, 24 * HOUR),  # given without values: the seed's 24h / 24h
    ("objectives: {training: {rpo: 4h}}", 4 * HOUR, 24 * HOUR),
    ("objectives: {rpo: 5m, training: {rpo: 1h30m, rto: 7200}}", 1.5 * HOUR, 2 * HOUR),
])
def test_training_objectives_parse(tmp_path, extra, rpo, rto):
    t = _parse(tmp_path, extra).objectives.training
    assert (t.rpo.total_seconds() if t else None, t.rto.total_seconds() if t else None) == (rpo, rto)


@pytest.mark.parametrize("extra, words", [
    ("objectives: {training: {rpo: soon}}", "objectives.training.rpo (line"),
    ("objectives: {training: {rto: 0s}}", "must be longer than 0s"),
    ("objectives: {training: {rto: -5}}", "cannot be negative"),
    ("objectives: {training: {rpo_hours: 4}}", "objectives.training.rpo_hours (line"),
    ("objectives: {training: 24h}", "objectives.training"),
    ("drill: {training_restore: maybe}", "drill.training_restore"),
])
def test_bad_training_objectives_are_refused_saying_where(tmp_path, extra, words):
    with pytest.raises(ConfigError) as exc:
        _parse(tmp_path, extra)
    assert words in str(exc.value) and "llmdr.yaml" in str(exc.value)


def test_the_defaults_stand_in_and_say_so(tmp_path):
    cfg = _parse(tmp_path, "")
    obj, explicit = tr.objectives(cfg)
    assert (obj.rpo, obj.rto, explicit) == (timedelta(hours=24), timedelta(hours=24), False)
    assert cfg.drill.training_restore is False


# --- readiness on the real regions ----------------------------------------------------------------------------------
def one(rep, cid):
    hits = [c for c in rep.checks if c.id == cid]
    assert len(hits) == 1, [c.id for c in rep.checks]
    return hits[0]


@pytest.fixture
def trained(stack, tmp_path):
    """Two checkpoints protected into both regions, training RPO 10h and RTO 24h."""
    cfg = checkpoint_config(two_regions(stack, tmp_path),
                            "objectives: {training: {rpo: 10h, rto: 24h}}\nreadiness: {probe_mb: 1}\n")
    root = cfg.base_dir / "ckpts"
    for step in (100, 200):
        write_checkpoint(root, step)
    out = protect(cfg)
    assert [n["checkpoint"] for n in out["new"]] == ["checkpoint-100", "checkpoint-200"]
    dr = open_repo(cfg, "secondary", cache=False)
    newest = tr.by_step(dr, cfg)[0]
    assert {k: newest.tags[k] for k in ("checkpoint", "step", "epoch")} == {  # + the folder's fingerprint
        "checkpoint": "checkpoint-200", "step": "200", "epoch": "2"}
    return cfg, root, newest


def training(cfg, now):
    return rd.run_checks(cfg, now=now, only={"training"})


def test_the_dr_copy_holds_the_newest_checkpoint_passes_at_any_age(trained):
    cfg, _, newest = trained
    rep = training(cfg, newest.taken_at + 30 * 24 * HOUR)  # training finished a month ago: nothing at risk
    c = one(rep, "training-rpo/secondary")
    assert c.status == "PASS", c.summary
    assert "checkpoint-200 (step 200" in c.summary and "is the newest checkpoint on this host" in c.summary
    assert c.data["step"] == 200 and c.data["local"]["name"] == "checkpoint-200"
    assert [x.id for x in rep.checks] == ["training-rpo/secondary", "training-rto/secondary"]


@pytest.mark.parametrize("hours, status", [(1, "PASS"), (8, "WARN"), (11, "FAIL")])
def test_a_newer_local_checkpoint_not_yet_copied_ages_against_the_training_rpo(trained, hours, status):
    cfg, root, newest = trained
    write_checkpoint(root, 300)  # written, not protected yet
    c = one(training(cfg, newest.taken_at + hours * HOUR), "training-rpo/secondary")
    assert c.status == status, c.summary
    assert f"is {hours}h old vs training RPO 10h" in c.summary
    assert "this host has a newer one, checkpoint-300 (step 300), not yet in secondary" in c.summary
    assert (c.action == "") == (status == "PASS")


def test_a_host_clock_behind_the_store_never_shows_a_negative_age(trained):
    cfg, root, newest = trained
    write_checkpoint(root, 300)
    c = one(training(cfg, newest.taken_at - 5 * HOUR), "training-rpo/secondary")
    assert c.status == "PASS" and "is 0s old vs training RPO 10h" in c.summary and c.data["age_s"] < 0


def test_a_step_tag_that_is_no_number_never_counts_as_newest(trained):
    """A snapshot in the DR region tagged step "latest" (made by hand, or forged): ordered below every numbered one."""
    from llmdr.repo.snapshot import take_snapshot

    cfg, root, _ = trained
    odd = write_checkpoint(root.parent / "odd", 900)
    take_snapshot(open_repo(cfg, "secondary"), odd, bundle=tr.series(cfg), kind="checkpoint",
                  tags={"checkpoint": "checkpoint-odd", "step": "latest"})
    dr = open_repo(cfg, "secondary", cache=False)
    assert [tr.snapshot_step(s) for s in tr.by_step(dr, cfg)] == [200, 100, None]
    c = one(training(cfg, None), "training-rpo/secondary")
    assert c.status == "PASS" and c.data["checkpoint"] == "checkpoint-200"


def test_a_newer_incomplete_copy_is_passed_over(trained):
    cfg, root, _ = trained
    write_checkpoint(root, 300)
    protect(cfg)
    dr = open_repo(cfg, "secondary", cache=False)
    s300 = tr.by_step(dr, cfg)[0]
    mine = {f.path: f for f in s300.manifest.files}["model.safetensors"]
    remove_chunk(dr, mine.chunks[0][0])  # its pack is lost in the DR region
    c = one(training(cfg, s300.taken_at + HOUR), "training-rpo/secondary")
    assert c.data["snapshot"] != s300.id and c.data["checkpoint"] == "checkpoint-200"
    assert "1 newer snapshot(s) passed over as incomplete (checkpoint-300:" in c.summary
    assert "chunks missing" in c.summary


def test_without_the_folder_on_this_host_only_the_age_is_judged(trained):
    cfg, root, newest = trained
    shutil.rmtree(root)
    c = one(training(cfg, newest.taken_at + 11 * HOUR), "training-rpo/secondary")
    assert c.status == "FAIL" and "the checkpoint folder is not on this host" in c.summary
    assert one(training(cfg, newest.taken_at + HOUR), "training-rpo/secondary").status == "PASS"


def test_a_clock_running_ahead_cannot_make_an_old_copy_fresh(trained, monkeypatch):
    """The writer claims its checkpoint is from tomorrow: its age is taken by the store's time."""
    from datetime import datetime, timezone

    from llmdr.repo import snapshot as snapshot_module

    cfg, root, _ = trained
    ahead = (datetime.now(timezone.utc) + timedelta(hours=20)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    monkeypatch.setattr(snapshot_module, "utc_now", lambda: ahead)
    write_checkpoint(root, 300)
    protect(cfg)
    monkeypatch.undo()
    write_checkpoint(root, 400)  # newer, not protected: the copy's age is judged
    dr = open_repo(cfg, "secondary", cache=False)
    s300 = tr.by_step(dr, cfg)[0]
    assert s300.created == ahead and s300.taken_at < datetime.now(timezone.utc).timestamp() + 60
    c = one(training(cfg, s300.taken_at + 11 * HOUR), "training-rpo/secondary")
    assert c.status == "FAIL" and c.data["checkpoint"] == "checkpoint-300"


def test_no_checkpoint_in_the_dr_region_fails(stack, tmp_path):
    cfg = checkpoint_config(two_regions(stack, tmp_path))
    write_checkpoint(cfg.base_dir / "ckpts", 100)
    rep = training(cfg, None)
    assert [(c.id, c.status) for c in rep.checks] == [("training-rpo/secondary", "FAIL"),
                                                      ("training-rto/secondary", "FAIL")]
    assert "no complete checkpoint snapshot (testbundle-checkpoints) in secondary" in rep.checks[0].summary
    assert "(default: objectives.training not set)" not in rep.checks[0].summary  # no age to judge, no objective


def test_no_checkpoint_written_yet_passes(stack, tmp_path):
    cfg = checkpoint_config(two_regions(stack, tmp_path))
    (cfg.base_dir / "ckpts").mkdir()
    c = one(training(cfg, None), "training-rpo/secondary")
    assert c.status == "PASS" and c.summary.startswith("no checkpoint yet")


def test_restore_time_against_the_training_rto(trained, tmp_path):
    cfg, _, newest = trained
    c = one(training(cfg, None), "training-rto/secondary")
    assert c.status == "PASS", c.summary
    assert c.data["restore_bytes"] == sum(newest.manifest.chunk_set().values()) and c.data["probe"]["bytes"] > 0
    assert "checkpoint-200" in c.summary and "vs training RTO 1d" in c.summary
    text = cfg.source_file.read_text().replace("rto: 24h}", "rto: 0.000001}")  # 1 µs: no real read is that fast
    cfg.source_file.write_text(text)
    fast = parse_config(text, source=cfg.source_file)
    c = one(training(fast, None), "training-rto/secondary")
    assert c.status == "FAIL" and "needs ≥" in c.action


def test_without_checkpoints_the_check_says_n_a_and_never_fails(stack, tmp_path):
    cfg = two_regions(stack, tmp_path)
    rep = training(cfg, None)
    assert [(c.id, c.status) for c in rep.checks] == [("training", "PASS")]
    assert rep.checks[0].summary.startswith("N/A: no checkpoints: section")
    with_obj = two_regions(stack, tmp_path, extra="objectives: {training: {}}")
    c = one(training(with_obj, None), "training")
    assert c.status == "WARN" and "objectives.training is set but" in c.summary and "checkpoints:" in c.action


def test_the_cli_runs_the_training_checks(trained):
    import json
    import os
    import subprocess
    import sys

    cfg, _, _ = trained
    r = subprocess.run([sys.executable, "-m", "llmdr.cli", "--config", str(cfg.source_file), "readiness",
                        "--only", "training", "--json"], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [c["id"] for c in out["checks"]] == ["training-rpo/secondary", "training-rto/secondary"]
