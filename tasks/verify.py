"""Tasks for the verify-replicas procedure."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from llmdr.artifacts import retries_text
from llmdr.config import load_config
from llmdr.repo import ops
from llmdr.serving import restoretest
from llmdr.storage.retrying import count_retries
from tasks.retry import RETRY_DELAYS, retry_if_transient


@task(name="verify-snapshot", retries=3, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_if_transient)
def verify_snapshot(config_path: str, snapshot: str, region: str, sample: str | None = None,
                    repair: bool = True) -> dict:
    """Read back a snapshot's chunks in ``region`` (all, or subset ``sample``), repairing from other regions."""
    with count_retries() as retries:
        res = ops.verify(load_config(config_path), snapshot, region=region, sample=sample, repair=repair)
    log = get_run_logger()
    log.info("verify %s in %s: request retries: %s", res.snapshot_id[:12], region, retries_text(retries.to_json()))
    for chunk, source in res.repaired.items():
        log.warning("region %s: chunk %s was damaged; repaired from %s", region, chunk[:12], source)
    if res.unrepaired:
        log.error("region %s: %d chunk(s) have no intact copy anywhere", region, len(res.unrepaired))
    return res.to_json() | {"region": region, "retries": retries.to_json()}


@task(name="run-restore-test", retries=2, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=retry_if_transient)
def run_restore_test(config_path: str, snapshot: str, region: str, golden_path: str) -> dict:
    """Restore to scratch, check completeness, serve, compare with the golden set."""
    with count_retries() as retries:
        res = restoretest.run_restore_test(load_config(config_path), snapshot, region=region, golden_path=Path(golden_path))
    return res.to_json() | {"region": region, "retries": retries.to_json()}


@task(name="run-golden-check", retries=2, retry_delay_seconds=RETRY_DELAYS)
def run_golden_check(url: str, golden_path: str) -> dict:
    """Ask an OpenAI-compatible endpoint the golden set; the result says which cases differ (a mismatch is a result,
    not an error: the caller decides what it means)."""
    from llmdr.serving.endpoint import check_endpoint

    return check_endpoint(Path(golden_path), url).to_json() | {"url": url}
