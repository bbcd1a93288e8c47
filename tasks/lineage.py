"""Tasks for datasets (DVC + Great Expectations) and the MLflow model registry."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from llmdr.config import load_config
from llmdr.errors import LlmdrError

from .retry import RETRY_DELAYS, retry_if_transient


class DatasetInvalid(LlmdrError):
    """A dataset failed its expectation suite and blocks the snapshot (datasets[].block_on_failure)."""

    exit_code = 4


def _dataset(cfg, name: str):
    return next(d for d in cfg.datasets if d.name == name)


@task(name="validate-dataset", cache_policy=NO_CACHE)
def validate_dataset(config_path: str, name: str) -> dict:
    """The dataset against its expectation suite (profiled from the data on first backup, then user-editable)."""
    from llmdr.lineage.expectations import ensure_suite, validate

    cfg = load_config(config_path)
    ds = _dataset(cfg, name)
    suite, created = ensure_suite(cfg, ds)
    rep = validate(cfg, ds)
    log = get_run_logger()
    if created:
        log.info("expectation suite for %s profiled from the data into %s (edit it to tighten)", name, suite)
    if not rep.success:
        log.warning("%s", rep.summary())
        if ds.block_on_failure:
            raise DatasetInvalid(f"{rep.summary()}; the snapshot was not taken. Fix the data or the suite "
                                 f"({suite}); datasets[].block_on_failure: false only flags it")
    return rep.to_json() | {"suite_created": created}


@task(name="push-dataset", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=RETRY_DELAYS,
      retry_condition_fn=retry_if_transient)
def push_dataset(config_path: str, name: str) -> dict:
    """This version of the dataset (its DVC md5) into every region's DVC remote."""
    from llmdr.lineage.datasets import push_all, remote_url, version

    cfg = load_config(config_path)
    ds = _dataset(cfg, name)
    v = version(cfg, ds)
    pushes = push_all(cfg, ds)
    return {"name": name, "md5": v.md5, "size": v.size, "path": v.path,
            "remotes": {r.name: remote_url(r) for r in cfg.regions},
            "pushes": [{"region": p.region, "pushed": p.pushed, "already": p.already, "duration_s": p.duration_s}
                       for p in pushes]}


@task(name="register-model-version", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 15])
def register_model_version(config_path: str, snapshot_id: str, regions: list[str], datasets: list[dict]) -> dict:
    """The protected snapshot as a model version in the MLflow registry (alias `production`), with its digests,
    regions and dataset versions as tags."""
    from llmdr.lineage.registry import register_snapshot

    cfg = load_config(config_path)
    return register_snapshot(cfg, snapshot_id, regions={r: snapshot_id for r in regions},
                             datasets=[{"name": d["name"], "md5": d["md5"], "remotes": d["remotes"]}
                                       for d in datasets], tracking_uri=cfg.tracking.uri)


@task(name="store-dataset-evidence", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 15],
      retry_condition_fn=retry_if_transient)
def store_dataset_evidence(config_path: str, snapshot_id: str, validations: list[dict], datasets: list[dict]) -> list[str]:
    """The datasets' versions and full validation results as ``evidence/<snapshot>/datasets.json`` in every region,
    beside the snapshot they were checked for (a DR region keeps its own copy)."""
    import hashlib
    import json

    from llmdr.repo import ops

    cfg = load_config(config_path)
    data = json.dumps({"snapshot_id": snapshot_id, "datasets": datasets, "validations": validations},
                      sort_keys=True, default=str).encode()
    key = f"evidence/{snapshot_id}/datasets.json"
    done = []
    for r in cfg.regions:
        ops.open_repo(cfg, r).store.put(key, data, sha256=hashlib.sha256(data).digest())
        done.append(r.name)
    return done
