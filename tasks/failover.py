"""Tasks of the failover / failback flows: each loads the config and calls one step of ``llmdr.failover.steps``."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.transactions import get_transaction

from llmdr.config import load_config
from llmdr.failover import steps as core
from tasks.retry import retry_if_transient


@task(name="read-active-region", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[1, 3])
def read_active_region(config_path: str) -> str | None:
    """Which region the router sends traffic to now (asked from the router itself)."""
    return core.active_region(load_config(config_path))


@task(name="confirm-outage", cache_policy=NO_CACHE)
def confirm_outage(config_path: str, region: str) -> dict:
    """Direct probes of the region's endpoint: confirmed only if every one fails (a blip does not move traffic)."""
    cfg = load_config(config_path)
    confirmed, samples = core.confirm_outage(cfg, cfg.region(region))
    get_run_logger().info("outage of %s %s after %d probe(s)", region, "confirmed" if confirmed else "NOT confirmed",
                          len(samples))
    return {"confirmed": confirmed, "samples": samples}


@task(name="ensure-replica", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 15],
      retry_condition_fn=retry_if_transient)
def ensure_replica(config_path: str, region: str, snapshot: str = "latest", restart: bool = False) -> dict:
    """A healthy replica in ``region``: the warm standby, or restored from that region's own store and started.
    ``restart``: (re)start it on ``snapshot`` even if a replica answers (failback onto current data)."""
    st = core.replica_for_traffic(load_config(config_path), region, snapshot=snapshot, restart=restart)
    get_run_logger().info("replica in %s: %s, snapshot %s, %s", region, "cold start" if st.get("cold") else "warm",
                          (st.get("snapshot") or "?")[:12], st.get("url"))
    return st


@task(name="golden-check", cache_policy=NO_CACHE)
def golden_check(config_path: str, region: str, accept_mismatch: bool = False) -> dict:
    """The golden set against the region's replica directly, judged by the bundle's golden gate; raises
    ``FailoverError`` if the answers fail it, unless a person accepted the mismatch (``accept_mismatch``)."""
    return core.check_replica(load_config(config_path), region, accept_mismatch=accept_mismatch)


@task(name="switch-router", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[1, 3])
def switch_router(config_path: str, region: str, reason: str, previous: str | None) -> dict:
    """Point the router at ``region``. Rolled back (pointed at ``previous``) if the transaction it runs in fails."""
    txn = get_transaction()
    if txn is not None:
        txn.set("previous", previous)
        txn.set("config_path", config_path)
    state = core.switch_traffic(load_config(config_path), region, reason=reason)
    get_run_logger().info("router now sends traffic to %s (was %s)", region, previous)
    return state


@switch_router.on_rollback
def _switch_back(txn) -> None:
    core.switch_back(load_config(txn.get("config_path")), txn.get("previous"))


@task(name="verify-through-router", cache_policy=NO_CACHE)
def verify_through_router(config_path: str, region: str, accept_mismatch: bool = False) -> dict:
    """Golden-check through the router until answers come, correct (or, ``accept_mismatch``, at all), from
    ``region``."""
    return core.verify_router(load_config(config_path), region, accept_mismatch=accept_mismatch)


@task(name="copy-back-snapshots", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 30],
      retry_condition_fn=retry_if_transient)
def copy_back_snapshots(config_path: str, source: str) -> dict:
    """Before failback: copy to the primary any snapshot taken in ``source`` that the primary lacks."""
    return core.copy_back(load_config(config_path), source)


@task(name="notify", cache_policy=NO_CACHE)
def send_notice(config_path: str, notice: dict) -> list[dict]:
    """Never fails the flow: a delivery problem is logged and returned."""
    from dataclasses import asdict

    from llmdr.notify import Notice, notify

    deliveries = notify(load_config(config_path).notifications, Notice(**notice))
    for d in deliveries:
        if not d.ok:
            get_run_logger().warning("notification via %s failed: %s", d.channel, d.detail)
    return [asdict(d) for d in deliveries]
