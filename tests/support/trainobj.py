"""Training checkpoint folders as a Hugging Face Trainer writes them (weights, optimizer state, trainer_state.json
last), protected into the real test regions with protect-checkpoints' core function."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

from llmdr.config import Config

KiB = 1024


def write_checkpoint(root: Path, step: int, *, global_step: int | None = None, size: int = 96 * KiB) -> Path:
    """``root/checkpoint-<step>`` with random weights and optimizer state (seeded by the step) and a
    trainer_state.json whose global_step is ``global_step`` (default: the step)."""
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    rnd = random.Random(step)
    head = json.dumps({"w": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}).encode()
    # a safetensors file whose header parses and fits: protect-checkpoints takes only complete checkpoints
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + rnd.randbytes(size))
    (d / "optimizer.pt").write_bytes(rnd.randbytes(size // 2))
    (d / "trainer_state.json").write_text(json.dumps({"global_step": step if global_step is None else global_step,
                                                      "epoch": step / 100, "log_history": []}))
    return d


def checkpoint_config(cfg: Config, extra: str = "") -> Config:
    """``cfg`` with a ``checkpoints: {path: ckpts}`` section (and ``extra`` top-level lines), re-read."""
    from tests.support.config import write_config

    path = cfg.source_file
    return write_config(path, path.read_text() + "\ncheckpoints: {path: ckpts}\n" + extra)


def protect(cfg: Config) -> dict:
    """protect-checkpoints' core: every new checkpoint folder snapshotted into the primary and copied to the DR
    region."""
    from llmdr.repo.ops import protect_checkpoints

    return protect_checkpoints(cfg)
