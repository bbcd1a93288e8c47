"""Trainer integrations (optional extra ``training``): callbacks that protect each checkpoint as the trainer saves it.

- :mod:`llmdr.training.hf`: ``LlmdrCallback``, a ``transformers.TrainerCallback``;
- :mod:`llmdr.training.lightning`: ``LlmdrCheckpointCallback``, a ``lightning.pytorch.Callback``;
- :mod:`llmdr.training.protector`: what both call: wait until the checkpoint folder is complete, then protect it
  in this process (snapshot into the primary, copy to every secondary) or start the protect-checkpoints deployment.

Only ``hf`` and ``lightning`` import transformers / lightning / torch; the rest of llmdr imports without them.
"""
