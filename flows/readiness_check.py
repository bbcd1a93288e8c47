"""readiness-check: every readiness check, published as a Prefect artifact; the run fails (and notifies) when any
check fails, so a daily schedule turns silent process failures into a red run."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.params import BUNDLE, CONFIG_PATH, NOTIFY, ONLY
from llmdr.artifacts import artifact_key
from llmdr.config import bundle_ref, load_config
from llmdr.drill.readiness import failure_notice, raise_if_failed
from tasks.failover import send_notice
from tasks.readiness import run_readiness_checks


@flow(name="readiness-check")
def readiness_check(config_path: str = CONFIG_PATH, only: list[str] | None = ONLY, notify: bool = NOTIFY,
                    bundle: str | None = BUNDLE) -> dict:
    """Returns the readiness report; raises ``ReadinessFailed`` (after the artifacts and the notice) when a check
    failed."""
    config_path = bundle_ref(config_path, bundle)  # tasks load this bundle's view
    cfg = load_config(config_path)
    get_run_logger().info("phase checks: %s of %s", ", ".join(only) if only else "every readiness check",
                          cfg.bundle.name)
    rep = run_readiness_checks(config_path, only)
    key = artifact_key("readiness", cfg.bundle.name)
    create_markdown_artifact(key=key, markdown=rep.pop("markdown"), description="Newest readiness check")
    create_table_artifact(key=f"{key}-table", table=rep.pop("table"), description="Readiness checks")
    notice = failure_notice(rep)
    if notify and notice is not None:
        send_notice(config_path, notice)
    return raise_if_failed(rep)
