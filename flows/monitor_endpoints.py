"""monitor-endpoints: deployed every minute, each run watches for ``duration_s`` (just under a minute), so the
endpoints are probed continuously every ``monitor.interval``; status changes become Prefect events
(``llmdr.endpoint.down`` for the active region starts the failover automation). Publishes the latest assessment
of every target as a table artifact."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.params import BUNDLE, CONFIG_PATH, DURATION_S
from llmdr.artifacts import artifact_key, monitor_markdown, monitor_table
from llmdr.config import bundle_ref, load_config
from tasks.monitor import watch_endpoints


@flow(name="monitor-endpoints")
def monitor_endpoints(duration_s: float = DURATION_S, config_path: str = CONFIG_PATH,
                      bundle: str | None = BUNDLE) -> dict:
    config_path = bundle_ref(config_path, bundle)  # tasks load this bundle's view
    cfg = load_config(config_path)
    get_run_logger().info("phase watch: %s's endpoints and router for %.0f s", cfg.bundle.name, duration_s)
    summary = watch_endpoints(config_path, duration_s)
    key = artifact_key("monitor-endpoints", cfg.bundle.name)
    create_markdown_artifact(key=key, markdown=monitor_markdown(cfg.bundle.name, summary),
                             description="Latest endpoint assessments")
    create_table_artifact(key=f"{key}-table", table=monitor_table(summary), description="Endpoint health")
    return summary
