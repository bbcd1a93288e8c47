"""The Hugging Face callback with the real ``Trainer`` on CPU: a 1-layer GPT-2 (32 wide) trains 20 steps, saving
every 5; the callback snapshots every checkpoint (tags step, epoch, loss, run name) and copies it to the DR region.
Then the resume test: 10 steps (same seed), protected, the local output deleted, ``step:10`` restored from the DR
region and training resumed to 20 reaches the uninterrupted run's loss and weights.

Needs the optional extra ``training`` (`uv sync --extra training`; `make install` syncs it)."""

from __future__ import annotations

import shutil

import pytest

from llmdr.repo import ops
from tests.support.config import two_regions
from tests.support.requirements import need
from tests.test_checkpoints_protect import series_tags

try:
    import torch
    import transformers
except ImportError:  # the test below says what is missing (a failure in CI)
    torch = transformers = None

SEED = 1234
STEPS = 20


def tiny_trainer(out, *, callbacks=(), seed: int = SEED):
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments, set_seed

    torch.set_num_threads(1)  # 2 cores shared with the rest of the suite
    set_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=16,
                                       bos_token_id=0, eos_token_id=0))
    g = torch.Generator().manual_seed(seed)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (4 * STEPS, 16), generator=g)]
    args = TrainingArguments(output_dir=str(out), max_steps=STEPS, save_steps=5, save_strategy="steps",
                             per_device_train_batch_size=4, logging_steps=1, learning_rate=1e-2, seed=seed,
                             report_to=[], use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
                             run_name="tiny-gpt2")
    return Trainer(model=model, args=args, train_dataset=data, callbacks=list(callbacks))


def loss_at(trainer, step: int) -> float:
    return next(e["loss"] for e in trainer.state.log_history if e.get("step") == step and "loss" in e)


@pytest.fixture
def trainer_libs():
    need(transformers is not None, "transformers/torch are not installed: `uv sync --extra training`")


def test_every_saved_checkpoint_is_protected_and_a_resumed_run_matches(trainer_libs, stack, tmp_path):
    from llmdr.training.hf import LlmdrCallback

    cfg = two_regions(stack, tmp_path, extra="checkpoints: {path: out, layout: hf}")
    cb = LlmdrCallback(cfg)  # in-process, in a background thread
    full = tiny_trainer(tmp_path / "out", callbacks=[cb])
    full.train()
    assert [r["checkpoint"] for r in cb.results] == [f"checkpoint-{s}" for s in (5, 10, 15, 20)]
    assert all(len(r["new"]) == 1 and [c["region"] for c in r["copies"]] == ["secondary"] for r in cb.results)
    tags = series_tags(cfg, "secondary")
    assert [t["step"] for t in tags] == ["5", "10", "15", "20"]
    assert [t["epoch"] for t in tags] == ["0.25", "0.5", "0.75", "1"]
    assert tags[-1]["loss"] == f"{loss_at(full, 20):.6g}" and {t["run_name"] for t in tags} == {"tiny-gpt2"}
    # each protected checkpoint is an MLflow training run too, tied to its snapshot, with the trainer's loss history
    import mlflow

    from llmdr.lineage.tracking import default_tracking_uri

    runs = {r["snapshot_id"]: r["run_id"] for res in cb.results for r in res["training_runs"]}
    assert list(runs) == [res["new"][0]["snapshot_id"] for res in cb.results]
    client = mlflow.MlflowClient(default_tracking_uri(cfg))
    last = client.get_run(runs[cb.results[-1]["new"][0]["snapshot_id"]])
    assert last.data.tags["llmdr.checkpoint"] == "checkpoint-20"
    final_loss = loss_at(full, STEPS)

    # Interrupted: a fresh config and output, stopped after the step-10 save, protected by the callback (blocking).
    cfg2 = two_regions(stack, tmp_path, extra="checkpoints: {path: out2, layout: hf}")
    from transformers import TrainerCallback

    class StopAt10(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step >= 10
            return control

    cb2 = LlmdrCallback(cfg2, background=False)
    tiny_trainer(tmp_path / "out2", callbacks=[StopAt10(), cb2]).train()
    assert [r["checkpoint"] for r in cb2.results] == ["checkpoint-5", "checkpoint-10"]
    shutil.rmtree(tmp_path / "out2")  # the training machine's disk is lost
    restored = tmp_path / "out2" / "checkpoint-10"
    ops.restore_checkpoint(cfg2, "step:10", restored, region="secondary")
    resumed = tiny_trainer(tmp_path / "out2")
    resumed.train(resume_from_checkpoint=str(restored))
    assert resumed.state.global_step == STEPS
    # Same seed, same data order, optimizer/scheduler/RNG restored, one CPU thread: bit-identical loss and weights.
    assert loss_at(resumed, STEPS) == final_loss, (loss_at(resumed, STEPS), final_loss)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name

