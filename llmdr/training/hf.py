"""``LlmdrCallback``: a Hugging Face ``transformers`` ``TrainerCallback`` that protects every checkpoint the
``Trainer`` saves (needs the optional extra ``training``).

    trainer = Trainer(..., args=TrainingArguments(output_dir="out", save_steps=500),
                      callbacks=[LlmdrCallback("llmdr.yaml")])

``on_save`` runs after the Trainer wrote ``checkpoint-<step>`` (``trainer_state.json`` last) and hands the folder to
:class:`llmdr.training.protector.CheckpointProtector`: wait until complete, then snapshot + copy (or start the
protect-checkpoints deployment). The snapshot is tagged with ``step``, ``epoch``, ``loss`` (the last logged one),
``run_name``, ``output_dir`` and the active MLflow run id when there is one. ``on_train_end`` waits for the queued
checkpoints and raises the first error, so a training job does not end "successfully" with unprotected checkpoints.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from llmdr.config import Config
from llmdr.training.protector import CheckpointProtector, Mode

CHECKPOINT_PREFIX = "checkpoint"  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR


class LlmdrCallback(TrainerCallback):
    """Protect each checkpoint the Trainer saves; see the module docstring. Arguments as ``CheckpointProtector``."""

    def __init__(self, config: str | Path | Config = "llmdr.yaml", *, mode: Mode = "inprocess",
                 background: bool = True, timeout_s: float = 300.0, settle_s: float = 0.5,
                 deployment: str | None = None) -> None:
        self.protector = CheckpointProtector(config, mode=mode, background=background, timeout_s=timeout_s,
                                             settle_s=settle_s, deployment=deployment)

    @property
    def results(self) -> list[dict[str, Any]]:
        return self.protector.results

    def on_save(self, args, state, control, **kwargs):
        if not args.should_save:  # only the process that writes checkpoints (world process zero) protects them
            return control
        folder = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}-{state.global_step}"
        self.protector.submit(folder, run_tags(args, state))
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if args.should_save:
            self.protector.close()
        return control


def run_tags(args, state) -> dict[str, str]:
    losses = [e["loss"] for e in state.log_history if isinstance(e.get("loss"), (int, float))]
    tags = {"step": str(state.global_step), "epoch": f"{state.epoch:g}" if state.epoch is not None else None,
            "loss": f"{losses[-1]:.6g}" if losses else None, "run_name": getattr(args, "run_name", None),
            "output_dir": str(Path(args.output_dir).resolve())}
    mlflow = sys.modules.get("mlflow")  # only when the training script uses MLflow: never imported here
    run = mlflow.active_run() if mlflow is not None else None
    if run is not None:
        tags["mlflow_run_id"] = run.info.run_id
    return {k: v for k, v in tags.items() if v}
