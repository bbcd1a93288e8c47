"""Task of the monitor-endpoints flow."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from llmdr.config import load_config


@task(name="watch-endpoints", cache_policy=NO_CACHE)
def watch_endpoints(config_path: str, duration_s: float) -> dict:
    """Probe every endpoint and the router each ``monitor.interval`` for ``duration_s``; events on changes."""
    from llmdr.failover.watch import watch

    cfg = load_config(config_path)
    summary = watch(cfg, duration=duration_s)
    for e in summary.emitted:
        get_run_logger().warning("%s %s: %s", e["event"], e["target"], e["reason"])
    return summary.to_json()
