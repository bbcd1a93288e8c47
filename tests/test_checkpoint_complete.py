"""The completeness check of a checkpoint folder (no server): each layout, each broken or missing file, and the
fingerprint protect-checkpoints records to find a rewritten folder."""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

import pytest

from llmdr.repo.checkpoint_check import check_checkpoint, fingerprint, step_of


def safetensors_bytes(n_floats: int = 16) -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [n_floats], "data_offsets": [0, 4 * n_floats]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\x00" * (4 * n_floats)


def hf_checkpoint(root: Path, step: int, *, only_model: bool = False) -> Path:
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(safetensors_bytes())
    if not only_model:
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
            (d / name).write_bytes(b"PK-not-empty")
    (d / "trainer_state.json").write_text(json.dumps({"global_step": step, "epoch": 0.5, "log_history": []}))
    return d


def problems(d: Path, layout: str = "auto", require=()) -> list[str]:
    return check_checkpoint(d, layout, require).problems


def test_complete_hf_checkpoint_in_every_layout_that_fits(tmp_path):
    d = hf_checkpoint(tmp_path, 10)
    for layout in ("auto", "hf", "files"):
        c = check_checkpoint(d, layout)
        assert c.complete, (layout, c.problems)
    assert c.step == 10 and check_checkpoint(d).layout == "hf"


def test_missing_trainer_state_is_the_trainers_not_done_signal(tmp_path):
    d = hf_checkpoint(tmp_path, 10)
    (d / "trainer_state.json").unlink()
    [p] = problems(d)
    assert p.startswith("trainer_state.json: missing") and "still being written" in p


@pytest.mark.parametrize("text, why", [('{"global_step": 1', "does not parse"), ('{"epoch": 1}', "no integer global_step"),
                                       ("[]", "no integer global_step")])
def test_broken_trainer_state(tmp_path, text, why):
    d = hf_checkpoint(tmp_path, 10)
    (d / "trainer_state.json").write_text(text)
    [p] = problems(d)
    assert p.startswith("trainer_state.json: ") and why in p


def test_truncated_safetensors_names_the_file(tmp_path):
    d = hf_checkpoint(tmp_path, 10)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:-7])
    [p] = problems(d)
    assert p == "model.safetensors: tensor 'w' spans bytes 0-64, past the 57 data bytes in the file"


def test_hf_layout_requires_optimizer_scheduler_rng_but_auto_accepts_a_model_only_save(tmp_path):
    d = hf_checkpoint(tmp_path, 10, only_model=True)
    assert problems(d, "auto") == []
    hf = problems(d, "hf")
    assert [p.split(":")[0] for p in hf] == ["optimizer.pt", "scheduler.pt", "rng_state*.pth"]


def test_empty_optimizer_is_refused_in_auto_too(tmp_path):
    d = hf_checkpoint(tmp_path, 10)
    (d / "optimizer.pt").write_bytes(b"")
    assert problems(d) == ["optimizer.pt: is empty"]


def test_no_weights_and_missing_index_shard(tmp_path):
    d = hf_checkpoint(tmp_path, 10)
    (d / "model.safetensors").unlink()
    assert problems(d) == ["weights: no *.safetensors, *.bin or *.pt model file"]
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "model-00001.safetensors"}}))
    assert problems(d) == ["model.safetensors.index.json: points at shard model-00001.safetensors, which is missing"]


def test_lightning_archive_complete_and_truncated(tmp_path):
    d = tmp_path / "checkpoint-5"
    d.mkdir()
    with zipfile.ZipFile(d / "model.ckpt", "w") as zf:
        zf.writestr("archive/data.pkl", os.urandom(4096))
    c = check_checkpoint(d)
    assert c.layout == "lightning" and c.complete
    data = (d / "model.ckpt").read_bytes()
    (d / "model.ckpt").write_bytes(data[: len(data) // 2])  # the central directory comes last: a cut file has none
    [p] = problems(d, "lightning")
    assert p.startswith("model.ckpt: is not a complete torch.save archive")
    e = tmp_path / "checkpoint-6"
    e.mkdir()
    (e / "weights.safetensors").write_bytes(safetensors_bytes())
    assert problems(e, "lightning") == ["*.ckpt: no Lightning checkpoint file (layout lightning)"]


def test_require_patterns_and_an_empty_folder(tmp_path):
    d = tmp_path / "step-7"
    d.mkdir()
    assert problems(d, "files") == ["(folder): holds no files yet"]
    (d / "state.bin").write_bytes(b"")
    assert problems(d, "files", ["state.bin", "DONE"]) == [
        "state.bin: is empty", "DONE: no file matches this required pattern (checkpoints.require)"]
    (d / "state.bin").write_bytes(b"x")
    (d / "DONE").write_text("ok")
    assert problems(d, "files", ["state.bin", "DONE"]) == []


def test_unknown_layout_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown checkpoint layout 'deepspeed'"):
        check_checkpoint(tmp_path, "deepspeed")


def test_fingerprint_follows_names_sizes_and_mtimes(tmp_path):
    d = hf_checkpoint(tmp_path, 10)
    fp = fingerprint(d)
    assert fingerprint(d) == fp  # reads nothing that changes by itself
    st = (d / "optimizer.pt").stat()
    os.utime(d / "optimizer.pt", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert fingerprint(d) != fp
    fp2 = fingerprint(d)
    (d / "extra.txt").write_text("x")
    assert fingerprint(d) != fp2


def test_step_of():
    assert [step_of(n) for n in ("checkpoint-500", "run-3-checkpoint-20", "final")] == [500, 20, -1]
