"""verify-replicas: in every region, read back the newest snapshot (all chunks or a rotating subset), repair what
is damaged from a healthy region, and optionally run the restore test; publish one artifact, fail if anything is
left wrong."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from llmdr.artifacts import artifact_key, run_retries, verify_summary_markdown, verify_table
from llmdr.config import load_config
from tasks.verify import run_restore_test, verify_snapshot


@flow(name="verify-replicas")
def verify_replicas(config_path: str = "", snapshot: str = "latest", sample: str | None = None,
                    repair: bool = True, restore_test: bool = False, golden_path: str = "golden.jsonl") -> dict:
    """``sample``: None reads every chunk; "N/T" a fixed subset; "T" today's share of T (rotates daily)."""
    cfg = load_config(config_path)
    checks = [verify_snapshot(config_path, snapshot, r.name, sample, repair) for r in cfg.regions]
    tests = [run_restore_test(config_path, snapshot, r.name, golden_path) for r in cfg.regions] if restore_test else []
    create_markdown_artifact(key=artifact_key("verify-replicas", cfg.bundle.name),
                             markdown=verify_summary_markdown(cfg.bundle.name, checks, tests),
                             description="Newest verify-replicas run")
    create_table_artifact(key=f"{artifact_key('verify-replicas', cfg.bundle.name)}-table",
                          table=verify_table(checks, tests), description="verify-replicas per region")
    failed = [c["region"] for c in checks if not c["ok"]] + [t["region"] for t in tests if not t["ok"]]
    if failed:
        from llmdr.notify import verification_failed_notice
        from tasks.failover import send_notice

        for region in sorted(set(failed)):
            n = verification_failed_notice(cfg.bundle.name, region, what="verify-replicas (read-back"
                                           + (" and restore test)" if restore_test else ")"),
                                           details={"snapshot": snapshot, "sample": sample or "every chunk"})
            send_notice(config_path, {"kind": n.kind, "title": n.title, "body": n.body, "severity": n.severity,
                                      "data": n.data})
        raise RuntimeError(f"verify-replicas: problems left in region(s) {', '.join(sorted(set(failed)))}; "
                           "see the artifact")
    return {"checks": checks, "restore_tests": tests, "retries": run_retries([*checks, *tests])}
