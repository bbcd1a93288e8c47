"""verify-replicas: in every region, read back the newest snapshot (all chunks or a rotating subset), repair what
is damaged from a healthy region, and optionally run the restore test; publish one artifact, fail if anything is
left wrong."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.params import BUNDLE, CONFIG_PATH, GOLDEN_PATH, REPAIR, RESTORE_TEST, SAMPLE, VERIFY_SNAPSHOT
from llmdr.artifacts import artifact_key, run_retries, verify_summary_markdown, verify_table
from llmdr.config import bundle_ref, load_config
from llmdr.serving import restoretest
from tasks.failover import send_notice
from tasks.verify import run_restore_test, verify_snapshot


@flow(name="verify-replicas")
def verify_replicas(config_path: str = CONFIG_PATH, snapshot: str = VERIFY_SNAPSHOT, sample: str | None = SAMPLE,
                    repair: bool = REPAIR, restore_test: bool = RESTORE_TEST, golden_path: str = GOLDEN_PATH,
                    bundle: str | None = BUNDLE) -> dict:
    """``sample``: None reads every chunk; "N/T" a fixed subset; "T" today's share of T (rotates daily)."""
    config_path = bundle_ref(config_path, bundle)  # tasks load this bundle's view
    cfg = load_config(config_path)
    log = get_run_logger()
    regions = ", ".join(r.name for r in cfg.regions)
    log.info("phase verify: snapshot %s, %s of the chunks, in %s%s", snapshot, sample or "all", regions,
             " (repairing from a healthy region)" if repair else "")
    checks = [verify_snapshot(config_path, snapshot, r.name, sample, repair) for r in cfg.regions]
    if restore_test:
        log.info("phase restore test: %s from every region, golden set %s", snapshot, golden_path)
    tests = [run_restore_test(config_path, snapshot, r.name, golden_path) for r in cfg.regions] if restore_test else []
    create_markdown_artifact(key=artifact_key("verify-replicas", cfg.bundle.name),
                             markdown=verify_summary_markdown(cfg.bundle.name, checks, tests),
                             description="Newest verify-replicas run")
    create_table_artifact(key=f"{artifact_key('verify-replicas', cfg.bundle.name)}-table",
                          table=verify_table(checks, tests), description="verify-replicas per region")
    failed = restoretest.unverified_regions(checks, tests)
    if failed:
        for n in restoretest.unverified_notices(cfg.bundle.name, failed, snapshot=snapshot, sample=sample,
                                                restore_test=restore_test):
            send_notice(config_path, n.to_args())
        raise restoretest.unverified_error(failed)
    return {"checks": checks, "restore_tests": tests, "retries": run_retries([*checks, *tests])}
