"""The Lightning callback with a real ``lightning.pytorch.Trainer`` on CPU: a tiny regression module trains 9 steps,
``ModelCheckpoint`` saves a folder every 3; each is snapshotted (tags step, epoch, loss) and copied to the DR
region, and restored by step byte-identical. A ModelCheckpoint without a folder per checkpoint is refused.

Needs the optional extra ``training``."""

from __future__ import annotations

import pytest

from llmdr.errors import UsageError
from llmdr.repo import ops
from tests.support.config import two_regions
from tests.support.requirements import need
from tests.test_checkpoints_protect import same_tree, series_tags

try:
    import lightning.pytorch as pl
    import torch
except ImportError:  # the test says what is missing (a failure in CI)
    pl = torch = None


def tiny_fit(out, callbacks, filename="checkpoint-{step}/model"):
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.set_num_threads(1)
    pl.seed_everything(7, verbose=False)

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(8, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    x = torch.randn(36, 8)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)
    ckpt = ModelCheckpoint(dirpath=str(out), filename=filename, auto_insert_metric_name=False, save_top_k=-1,
                           every_n_train_steps=3)
    trainer = pl.Trainer(max_steps=9, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[*callbacks, ckpt])
    trainer.fit(Tiny(), data)
    return trainer


@pytest.fixture
def lightning_libs():
    need(pl is not None, "lightning/torch are not installed: `uv sync --extra training`")


def test_every_modelcheckpoint_save_is_protected(lightning_libs, stack, tmp_path):
    from llmdr.training.lightning import LlmdrCheckpointCallback

    cfg = two_regions(stack, tmp_path, extra="checkpoints: {path: ckpts, layout: lightning}")
    cb = LlmdrCheckpointCallback(cfg)
    tiny_fit(tmp_path / "ckpts", [cb])
    assert [r["checkpoint"] for r in cb.results] == ["checkpoint-3", "checkpoint-6", "checkpoint-9"]
    tags = series_tags(cfg, "secondary")
    assert [(t["checkpoint"], t["step"], t["epoch"]) for t in tags] == [
        ("checkpoint-3", "3", "0"), ("checkpoint-6", "6", "0"), ("checkpoint-9", "9", "0")]  # 9 batches: one epoch
    assert all(float(t["loss"]) >= 0 for t in tags)
    ops.restore_checkpoint(cfg, "step:6", tmp_path / "r6", region="secondary")
    assert same_tree(tmp_path / "ckpts" / "checkpoint-6", tmp_path / "r6")


def test_a_flat_modelcheckpoint_is_refused(lightning_libs, stack, tmp_path):
    from llmdr.training.lightning import LlmdrCheckpointCallback

    cfg = two_regions(stack, tmp_path, extra="checkpoints: {path: ckpts, layout: lightning}")
    with pytest.raises(UsageError, match="one folder per checkpoint"):
        tiny_fit(tmp_path / "ckpts", [LlmdrCheckpointCallback(cfg)], filename="model-{step}")
