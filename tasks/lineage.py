"""Tasks for datasets (DVC + Great Expectations) and the MLflow model registry: each one core call from
:mod:`llmdr.lineage` plus its retry policy."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from llmdr.config import load_config
from tasks.retry import RETRY_DELAYS, retry_if_transient


@task(name="validate-dataset", cache_policy=NO_CACHE)
def validate_dataset(config_path: str, name: str) -> dict:
    """The dataset against its expectation suite (profiled from the data on first backup, then user-editable);
    fails with ``DatasetInvalid`` when it blocks the snapshot."""
    from llmdr.lineage.evidence import check_dataset

    check = check_dataset(load_config(config_path), name)
    log = get_run_logger()
    if check.suite_created:
        log.info("expectation suite for %s profiled from the data into %s (edit it to tighten)", name, check.suite)
    if not check.report.success or check.report.mode == "off":
        log.warning("%s", check.report.summary())
    return check.to_json()


@task(name="push-dataset", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_if_transient)
def push_dataset(config_path: str, name: str) -> dict:
    """This version of the dataset (its DVC md5) into every region's DVC remote."""
    from llmdr.lineage.evidence import push_dataset as push

    return push(load_config(config_path), name)


@task(name="register-model-version", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 15])
def register_model_version(config_path: str, snapshot_id: str, regions: list[str], datasets: list[dict]) -> dict:
    """The protected snapshot as a model version in the MLflow registry (alias `production`), with its digests,
    regions and dataset versions as tags."""
    from llmdr.lineage.registry import register_protected

    return register_protected(load_config(config_path), snapshot_id, regions, datasets)


@task(name="store-dataset-evidence", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 15],
      retry_condition_fn=retry_if_transient)
def store_dataset_evidence(config_path: str, snapshot_id: str, validations: list[dict],
                           datasets: list[dict]) -> list[str]:
    """The datasets' versions and full validation results as ``evidence/<snapshot>/datasets.json`` in every region,
    beside the snapshot they were checked for (a DR region keeps its own copy)."""
    from llmdr.lineage.evidence import store_dataset_evidence as store

    return store(load_config(config_path), snapshot_id, validations, datasets)
