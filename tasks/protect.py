"""Tasks for the protect / restore procedures."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from llmdr import ops
from llmdr.config import load_config

from .retry import RETRY_DELAYS, retry_if_transient


@task(name="take-snapshot", retries=3, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_if_transient)
def take_snapshot(config_path: str, region: str | None = None) -> dict:
    """Snapshot the configured bundle into ``region`` (default: the primary)."""
    cfg = load_config(config_path)
    res = ops.snapshot_bundle(cfg, region=region)
    get_run_logger().info("snapshot %s: %d files, %d new bytes of %d", res.snapshot_id[:12], res.files,
                          res.bytes_new, res.bytes_total)
    return res.to_json() | {"region": cfg.region(region).name}


@task(name="copy-snapshot-to-region", retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_if_transient)
def copy_snapshot_to_region(config_path: str, snapshot_id: str, to_region: str,
                            from_region: str | None = None) -> dict:
    """Make ``snapshot_id`` complete in ``to_region``; the snapshot appears there only when all of it is."""
    cfg = load_config(config_path)
    [res] = ops.replicate(cfg, snapshot_id, to=to_region, source=from_region)
    get_run_logger().info("%s -> %s: %d/%d chunks copied", snapshot_id[:12], to_region, res.chunks_copied,
                          res.chunks_total)
    return res.to_json() | {"region": to_region}


@task(name="restore-snapshot", retries=2, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_if_transient)
def restore_snapshot(config_path: str, snapshot: str, region: str, target: str, force: bool = False) -> dict:
    """Restore ``snapshot`` from ``region`` into ``target``; a retry resumes where the last attempt stopped."""
    cfg = load_config(config_path)
    res = ops.restore(cfg, snapshot, Path(target), region=region, force=force)
    return res.to_json() | {"region": region}
