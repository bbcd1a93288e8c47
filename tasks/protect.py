"""Tasks for the protect / restore procedures."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from llmdr.artifacts import retries_text
from llmdr.config import load_config
from llmdr.integrations.prefect import concurrency_slot, transfer_limit_name
from llmdr.repo import ops
from llmdr.storage.retrying import count_retries
from tasks.retry import RETRY_DELAYS, retry_if_transient


@task(name="take-snapshot", retries=3, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_if_transient)
def take_snapshot(config_path: str, region: str | None = None, tags: dict[str, str] | None = None) -> dict:
    """Snapshot the configured bundle into ``region`` (default: the primary); ``tags`` go into the manifest."""
    cfg = load_config(config_path)
    name = cfg.region(region).name
    with concurrency_slot(transfer_limit_name(name), cfg.transfer.region_slots), count_retries() as retries:
        res = ops.snapshot_bundle(cfg, region=region, tags=tags)
    get_run_logger().info("snapshot %s: %d files, %d new bytes of %d; request retries: %s", res.snapshot_id[:12],
                          res.files, res.bytes_new, res.bytes_total, retries_text(retries.to_json()))
    return res.to_json() | {"region": name, "retries": retries.to_json()}


@task(name="copy-snapshot-to-region", retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_if_transient)
def copy_snapshot_to_region(config_path: str, snapshot_id: str, to_region: str,
                            from_region: str | None = None) -> dict:
    """Make ``snapshot_id`` complete in ``to_region``; the snapshot appears there only when all of it is."""
    cfg = load_config(config_path)
    with concurrency_slot(transfer_limit_name(to_region), cfg.transfer.region_slots), count_retries() as retries:
        [res] = ops.replicate(cfg, snapshot_id, to=to_region, source=from_region)
    get_run_logger().info("%s -> %s: %d/%d chunks copied; request retries: %s", snapshot_id[:12], to_region,
                          res.chunks_copied, res.chunks_total, retries_text(retries.to_json()))
    return res.to_json() | {"region": to_region, "retries": retries.to_json()}


@task(name="restore-snapshot", retries=2, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_if_transient)
def restore_snapshot(config_path: str, snapshot: str, region: str, target: str, force: bool = False) -> dict:
    """Restore ``snapshot`` from ``region`` into ``target``; a retry resumes where the last attempt stopped."""
    cfg = load_config(config_path)
    with count_retries() as retries:
        res = ops.restore(cfg, snapshot, Path(target), region=region, force=force)
    get_run_logger().info("restore %s from %s: request retries: %s", res.snapshot_id[:12], region,
                          retries_text(retries.to_json()))
    return res.to_json() | {"region": region, "retries": retries.to_json()}


@task(name="check-bundle-complete")
def check_bundle_complete(config_path: str) -> dict:
    """Refuse to protect an incomplete bundle (not retried: the files must be fixed first)."""
    report = ops.require_complete(load_config(config_path))
    if report is None:
        get_run_logger().warning("bundle.components is empty in %s: completeness is not checked", config_path)
        return {"complete": None, "components": []}
    return report.to_json()


@task(name="verify-copy", retries=3, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_if_transient)
def verify_copy(config_path: str, snapshot_id: str, region: str) -> dict:
    """Every chunk of the snapshot is present, at the right size, in ``region`` (one listing, no reads)."""
    with count_retries() as retries:
        res = ops.require_copy(load_config(config_path), snapshot_id, region)
    return res.to_json() | {"region": region, "retries": retries.to_json()}


@task(name="apply-retention", retries=3, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_if_transient)
def apply_retention(config_path: str, region: str) -> dict:
    """The configured retention policy in ``region`` (skipped when llmdr.yaml sets none)."""
    with count_retries() as retries:
        res = ops.apply_configured_retention(load_config(config_path), region)
    if res is None:
        return {"region": region, "skipped": True}
    return res.to_json() | {"region": region, "skipped": False, "retries": retries.to_json()}


@task(name="measure-rpo", retries=2, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_if_transient)
def measure_rpo(config_path: str, region: str) -> dict:
    with count_retries() as retries:
        out = ops.rpo_clock(load_config(config_path), region)
    return out | {"retries": retries.to_json()}


@task(name="refresh-standby", retries=1, retry_delay_seconds=[10], retry_condition_fn=retry_if_transient)
def refresh_standby(config_path: str, region: str) -> dict:
    """Move a running warm standby onto the newest content in its own region (``llmdr.failover.standby``)."""
    from llmdr.failover.standby import refresh_standby as refresh

    cfg = load_config(config_path)
    res = refresh(cfg, region)
    if not res.refreshed:
        return res.to_json()
    get_run_logger().info("standby in %s moved %s -> %s", region, (res.previous or "?")[:12],
                          (res.snapshot or "?")[:12])
    from llmdr.failover.steps import rearm_fallback

    # the refresh removed the router's fallback to it: armed again once verified on the new snapshot
    return res.to_json() | {"fallback": rearm_fallback(cfg)}


@task(name="attach-golden-set", retries=2, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_if_transient)
def attach_golden_set(config_path: str, snapshot_id: str) -> dict:
    """Give the new snapshot its golden set in every region: carried over, recorded from the snapshot, or flagged
    missing with a warning (``llmdr.serving.snapgolden.attach_at_protect``); a missing set does not fail protect."""
    from llmdr.serving.snapgolden import attach_at_protect

    res = attach_at_protect(load_config(config_path), snapshot_id)
    log = get_run_logger()
    if res.warning:
        log.warning("golden set of %s: %s", snapshot_id[:12], res.warning)
    else:
        log.info("golden set of %s: %s (%s)", snapshot_id[:12], res.state, res.detail)
    return res.to_json()
