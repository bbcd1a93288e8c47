"""The demo's training step: a tiny GPT-2 (1 layer, 32 wide) trains 10 steps on CPU with the Hugging Face Trainer,
saving a checkpoint every 5; llmdr's callback snapshots each one into the primary and copies it to the secondary.

    python scripts/demo_training.py llmdr.yaml train/out
"""

from __future__ import annotations

import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments, set_seed

from llmdr.training.hf import LlmdrCallback


def main(config: str, out: str) -> int:
    torch.set_num_threads(1)
    set_seed(7)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=16,
                                       bos_token_id=0, eos_token_id=0))
    ids = torch.randint(0, 64, (40, 16), generator=torch.Generator().manual_seed(7))
    args = TrainingArguments(output_dir=out, max_steps=10, save_steps=5, per_device_train_batch_size=4,
                             logging_steps=5, learning_rate=1e-2, seed=7, report_to=[], use_cpu=True,
                             disable_tqdm=True, run_name="demo-tiny-gpt2")
    callback = LlmdrCallback(config)
    t0 = time.perf_counter()
    Trainer(model=model, args=args, train_dataset=[{"input_ids": x, "labels": x} for x in ids],
            callbacks=[callback]).train()
    took = time.perf_counter() - t0
    for r in callback.results:
        snap = r["new"][0] if r["new"] else None
        tags = snap["tags"] if snap else {}
        print(f"{r['checkpoint']}: snapshot {snap['snapshot_id'][:12] if snap else '(already protected)'} "
              f"(step {tags.get('step')}, epoch {tags.get('epoch')}, loss {tags.get('loss')}), copied to "
              f"{', '.join(c['region'] for c in r['copies']) or 'no region'}; waited {r['waited_s']:.2f} s for it "
              f"to be complete, protected in {r['duration_s']:.2f} s")
    print(f"trained 10 steps and protected {len(callback.results)} checkpoints in {took:.1f} s")
    return 0 if len(callback.results) == 2 else 1


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
