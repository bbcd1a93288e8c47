"""``LlmdrCheckpointCallback``: a PyTorch Lightning ``Callback`` that protects every checkpoint ``ModelCheckpoint``
writes (needs the optional extra ``training``).

A checkpoint is one folder (llmdr snapshots folders): give ``ModelCheckpoint`` a ``filename`` with a folder part,
    ModelCheckpoint(dirpath="ckpts", filename="checkpoint-{step}/model", auto_insert_metric_name=False,
                    save_top_k=-1, every_n_train_steps=5)
and set ``checkpoints: {path: ckpts}`` in llmdr.yaml. Lightning calls a callback's ``on_save_checkpoint`` *before*
the file is written (to fill the checkpoint dict) and runs ``ModelCheckpoint`` after the other callbacks, so this
callback notes step, epoch and loss there and picks the written file up at its next hook (the next batch, the end
of validation, epoch or training), then hands its folder to :class:`llmdr.training.protector.CheckpointProtector`
(wait until the ``.ckpt`` archive is complete, then snapshot + copy, or start the protect-checkpoints deployment).
``on_train_end`` waits for every queued checkpoint and raises the first error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

from llmdr.config import Config
from llmdr.errors import UsageError
from llmdr.training.protector import CheckpointProtector, Mode


class LlmdrCheckpointCallback(Callback):
    """Protect each checkpoint file ``ModelCheckpoint`` saves; see the module docstring."""

    def __init__(self, config: str | Path | Config = "llmdr.yaml", *, mode: Mode = "inprocess",
                 background: bool = True, timeout_s: float = 300.0, settle_s: float = 0.5,
                 deployment: str | None = None) -> None:
        self.protector = CheckpointProtector(config, mode=mode, background=background, timeout_s=timeout_s,
                                             settle_s=settle_s, deployment=deployment)
        self._seen: set[str] = set()
        self._pending: dict[int, dict[str, str]] = {}  # global step -> tags noted when its checkpoint was dumped

    @property
    def results(self) -> list[dict[str, Any]]:
        return self.protector.results

    def setup(self, trainer, pl_module, stage: str) -> None:
        for cb in _model_checkpoints(trainer):
            if "/" not in (cb.filename or ""):
                raise UsageError("LlmdrCheckpointCallback protects one folder per checkpoint: give ModelCheckpoint a "
                                 "filename with a folder part, e.g. filename='checkpoint-{step}/model' with "
                                 "auto_insert_metric_name=False")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        loss = trainer.callback_metrics.get("train_loss", trainer.callback_metrics.get("loss"))
        self._pending[trainer.global_step] = {
            "step": str(trainer.global_step), "epoch": str(trainer.current_epoch),
            "loss": f"{float(loss):.6g}" if loss is not None else "", "run_name": _run_name(trainer)}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._collect(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._collect(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._collect(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._collect(trainer)
        if trainer.is_global_zero:
            self.protector.close()

    def _collect(self, trainer) -> None:
        if not trainer.is_global_zero:
            return
        for path in _saved_paths(trainer):
            if path in self._seen or not Path(path).is_file():
                continue
            self._seen.add(path)
            folder = Path(path).parent
            from llmdr.repo.checkpoint_check import step_of

            tags = self._pending.pop(step_of(folder.name), {})
            self.protector.submit(folder, {k: v for k, v in tags.items() if v})


def _model_checkpoints(trainer) -> list[ModelCheckpoint]:
    return [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]


def _saved_paths(trainer) -> list[str]:
    """Every checkpoint file the ModelCheckpoint callbacks report having written, in step order."""
    paths: set[str] = set()
    for cb in _model_checkpoints(trainer):
        paths |= {str(p) for p in cb.best_k_models}
        paths |= {p for p in (cb.last_model_path, cb.best_model_path, getattr(cb, "_last_checkpoint_saved", ""))
                  if p}
    from llmdr.repo.checkpoint_check import step_of

    return sorted(paths, key=lambda p: step_of(Path(p).parent.name))


def _run_name(trainer) -> str:
    logger = trainer.logger
    if logger is None:
        return ""
    run_id = getattr(logger, "run_id", None)  # MLFlowLogger
    return str(run_id) if run_id else f"{logger.name}/version_{logger.version}"
