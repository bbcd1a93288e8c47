"""protect-bundle: completeness → datasets (expectation suite, DVC push to every region) → snapshot (dataset md5s
in its tags) → copy to every secondary region → verify each copy → the snapshot's golden set (carried over or
recorded, in every region; a warning when it has none) → retention → RPO clock → warm standbys onto new content →
model version in the MLflow registry. Publishes a markdown summary and a table artifact."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.params import BUNDLE, CONFIG_PATH
from llmdr.artifacts import artifact_key, protect_summary_markdown, protect_table, run_retries
from llmdr.common.runs import record_run
from llmdr.config import Config, bundle_ref, load_config
from llmdr.failover.standby import standby_regions
from llmdr.integrations.prefect import concurrency_slot, protect_limit_name
from llmdr.lineage.tags import snapshot_dataset_tags
from llmdr.repo.goldens import versioned_tags
from llmdr.serving.snapgolden import golden_markdown
from tasks.lineage import push_dataset, register_model_version, store_dataset_evidence, validate_dataset
from tasks.protect import (
    apply_retention,
    attach_golden_set,
    check_bundle_complete,
    copy_snapshot_to_region,
    measure_rpo,
    refresh_standby,
    take_snapshot,
    verify_copy,
)


@flow(name="protect-bundle", log_prints=False)
def protect_bundle(config_path: str = CONFIG_PATH, bundle: str | None = BUNDLE) -> dict:
    """Fails (and publishes nothing partial) if any step fails; retention runs only after every copy verified."""
    config_path = bundle_ref(config_path, bundle)  # tasks load this bundle's view
    cfg = load_config(config_path)
    # one protect of this bundle at a time, whichever worker or deployment runs it (other bundles' run alongside)
    with concurrency_slot(protect_limit_name(cfg.bundle.name), 1):
        return _protect(config_path, cfg)


def _protect(config_path: str, cfg: Config) -> dict:
    log = get_run_logger()
    secondaries = ", ".join(r.name for r in cfg.secondaries)
    log.info("phase snapshot: bundle %s from %s into %s", cfg.bundle.name, cfg.bundle.path, cfg.primary.name)
    check_bundle_complete(config_path)
    validations = [validate_dataset(config_path, d.name) for d in cfg.datasets]
    datasets = [push_dataset(config_path, d.name) for d in cfg.datasets]
    snap = take_snapshot(config_path, tags=versioned_tags(snapshot_dataset_tags(datasets)))
    sid = snap["snapshot_id"]
    log.info("phase replicate: snapshot %s from %s to %s", sid[:12], cfg.primary.name, secondaries or "no region")
    futures = [copy_snapshot_to_region.submit(config_path, sid, r.name) for r in cfg.secondaries]
    copies = [f.result() for f in futures]
    log.info("phase verify: every chunk of %s present in %s", sid[:12], secondaries or "no region")
    verified = [verify_copy(config_path, sid, r.name) for r in cfg.secondaries]
    log.info("phase golden set: the set %s must answer, in every region", sid[:12])
    golden = attach_golden_set(config_path, sid)
    log.info("phase retention and RPO: %s", ", ".join(r.name for r in cfg.regions))
    retention = [apply_retention(config_path, r.name) for r in cfg.regions]
    rpo = [measure_rpo(config_path, r.name) for r in cfg.secondaries]
    standbys = [refresh_standby(config_path, region) for region in standby_regions(cfg)]
    if datasets:
        store_dataset_evidence(config_path, sid, validations, datasets)
    model = (register_model_version(config_path, sid, [r.name for r in cfg.regions], datasets)
             if cfg.tracking.register_models else None)
    key = artifact_key("protect-bundle", cfg.bundle.name)
    create_markdown_artifact(key=key, markdown=protect_summary_markdown(cfg.bundle.name, snap, copies, rpo, validations,
                                                                          datasets, verified=verified,
                                                                          retention=retention)
                             + golden_markdown(golden),
                             description="Newest protect-bundle run")
    create_table_artifact(key=f"{key}-table", table=protect_table(snap, copies, verified),
                          description="protect-bundle transfers")
    record_run(cfg.bundle_state_path, "protect", snapshot=sid, regions=[r.name for r in cfg.regions])
    return {"snapshot": snap, "copies": copies, "verified": verified, "retention": retention, "rpo": rpo,
            "standbys": standbys, "golden": golden, "datasets": datasets, "validations": validations,
            "model_version": model,
            "retries": run_retries([snap, *copies, *verified, *retention, *rpo])}
