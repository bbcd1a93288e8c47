"""Task for the protect-checkpoints procedure."""

from __future__ import annotations

from prefect import get_run_logger, task

from llmdr.config import load_config
from llmdr.repo import ops

from .retry import RETRY_DELAYS, retry_if_transient


@task(name="protect-new-checkpoints", retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_if_transient)
def protect_new_checkpoints(config_path: str) -> dict:
    """Snapshot and copy every checkpoint not yet protected; apply the checkpoint retention; re-running resumes."""
    out = ops.protect_checkpoints(load_config(config_path))
    get_run_logger().info("%d checkpoint folder(s), %d new: %s", len(out["found"]), len(out["new"]),
                          ", ".join(n["checkpoint"] for n in out["new"]) or "none")
    return out


@task(name="record-training-runs", retries=2, retry_delay_seconds=[5, 15])
def record_training_runs(config_path: str, new: list[dict]) -> list[dict]:
    """Each newly protected checkpoint as an MLflow training run: its trainer state / config as parameters, the
    loss history, the dataset versions, the hardware, the step and the checkpoint's snapshot id."""
    from pathlib import Path

    from llmdr.lineage.registry import record_training_run

    cfg = load_config(config_path)
    if not cfg.tracking.register_models or cfg.checkpoints is None:
        return []
    root = Path(cfg.checkpoints.path)
    root = root if root.is_absolute() else cfg.base_dir / root
    datasets = []
    if cfg.datasets:
        from llmdr.lineage.datasets import remote_url, version

        for d in cfg.datasets:
            v = version(cfg, d, check_workspace=False)
            datasets.append({"name": d.name, "md5": v.md5, "remotes": {r.name: remote_url(r) for r in cfg.regions}})
    out = []
    for n in new:
        step = n.get("tags", {}).get("step") if isinstance(n.get("tags"), dict) else None
        run_id = record_training_run(cfg, checkpoint=str(root / n["checkpoint"]), snapshot_id=n["snapshot_id"],
                                     step=int(step) if step and step.lstrip("-").isdigit() else None, params={},
                                     datasets=datasets, tracking_uri=cfg.tracking.uri)
        out.append({"checkpoint": n["checkpoint"], "snapshot_id": n["snapshot_id"], "run_id": run_id})
        get_run_logger().info("training run %s for %s", run_id, n["checkpoint"])
    return out
