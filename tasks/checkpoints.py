"""Task for the protect-checkpoints procedure."""

from __future__ import annotations

from prefect import get_run_logger, task

from llmdr import ops
from llmdr.config import load_config

from .retry import RETRY_DELAYS, retry_if_transient


@task(name="protect-new-checkpoints", retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_if_transient)
def protect_new_checkpoints(config_path: str) -> dict:
    """Snapshot and copy every checkpoint not yet protected; apply the checkpoint retention; re-running resumes."""
    out = ops.protect_checkpoints(load_config(config_path))
    get_run_logger().info("%d checkpoint folder(s), %d new: %s", len(out["found"]), len(out["new"]),
                          ", ".join(n["checkpoint"] for n in out["new"]) or "none")
    return out
