"""Tasks for the protect-checkpoints procedure: each one core call plus its retry policy."""

from __future__ import annotations

from prefect import get_run_logger, task

from llmdr.config import load_config
from llmdr.repo import ops
from tasks.retry import RETRY_DELAYS, retry_if_transient


@task(name="protect-new-checkpoints", retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_if_transient)
def protect_new_checkpoints(config_path: str) -> dict:
    """Snapshot and copy every complete checkpoint not yet protected (or rewritten since); apply the checkpoint
    retention; re-running resumes and looks at incomplete folders again."""
    out = ops.protect_checkpoints(load_config(config_path))
    log = get_run_logger()
    log.info("%d checkpoint folder(s), %d new: %s", len(out["found"]), len(out["new"]),
             ", ".join(n["checkpoint"] for n in out["new"]) or "none")
    for c in out["incomplete"]:
        log.warning("checkpoint %s incomplete, not taken (looked at again next run): %s", c["checkpoint"],
                    "; ".join(c["problems"]))
    return out


@task(name="record-training-runs", retries=2, retry_delay_seconds=[5, 15])
def record_training_runs(config_path: str, new: list[dict]) -> list[dict]:
    """Each newly protected checkpoint as an MLflow training run: its trainer state / config as parameters, the
    loss history, the dataset versions, the hardware, the step and the checkpoint's snapshot id."""
    from llmdr.lineage.training import record_checkpoint_runs

    out = record_checkpoint_runs(load_config(config_path), new)
    for run in out:
        get_run_logger().info("training run %s for %s", run["run_id"], run["checkpoint"])
    return out
