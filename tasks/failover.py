"""Tasks of the failover / failback flows: each builds what it needs from the config and calls one core step."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.transactions import get_transaction

from llmdr.config import load_config
from llmdr.failover import steps as core

from .retry import retry_if_transient


@task(name="read-active-region", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[1, 3])
def read_active_region(config_path: str) -> str | None:
    """Which region the router sends traffic to now (asked from the router itself)."""
    from llmdr.failover.router import open_router

    return open_router(load_config(config_path)).active()


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
    from llmdr.serving.replica import ensure_replica as ensure
    from llmdr.serving.replica import start_replica

    cfg = load_config(config_path)
    reg = cfg.region(region)
    st = start_replica(cfg, reg, ref=snapshot) if restart else ensure(cfg, reg, ref=snapshot)
    get_run_logger().info("replica in %s: %s, snapshot %s, %s", region, "cold start" if st.cold else "warm",
                          (st.snapshot or "?")[:12], st.url)
    return st.to_json()


@task(name="golden-check", cache_policy=NO_CACHE)
def golden_check(config_path: str, region: str) -> dict:
    """The golden set against the region's replica directly; raises if any answer is wrong."""
    cfg = load_config(config_path)
    reg = cfg.region(region)
    assert reg.serving is not None
    rep = core.golden_check(cfg, reg.serving.url, model=reg.serving.model)
    if not rep.ok:
        raise core.FailoverError(f"the replica in '{region}' gives wrong answers ({rep.passed}/{len(rep.results)} "
                                 "golden cases pass); traffic was not moved. Check its bundle with `llmdr verify "
                                 f"latest --region {region} --restore-test`")
    return rep.to_json()


@task(name="switch-router", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[1, 3])
def switch_router(config_path: str, region: str, reason: str, previous: str | None) -> dict:
    """Point the router at ``region``. Rolled back (pointed at ``previous``) if the transaction it runs in fails."""
    from llmdr.failover.router import open_router

    txn = get_transaction()
    if txn is not None:
        txn.set("previous", previous)
        txn.set("config_path", config_path)
    state = open_router(load_config(config_path)).switch(region, reason=reason)
    get_run_logger().info("router now sends traffic to %s (was %s)", region, previous)
    return state.to_json()


@switch_router.on_rollback
def _switch_back(txn) -> None:
    from llmdr.failover.router import open_router

    previous = txn.get("previous")
    if previous:
        open_router(load_config(txn.get("config_path"))).switch(previous, reason="rollback: verification through "
                                                                                 "the router failed")


@task(name="verify-through-router", cache_policy=NO_CACHE)
def verify_through_router(config_path: str, region: str) -> dict:
    """Golden-check through the router until answers come, correct, from ``region``."""
    from llmdr.failover.router import open_router

    cfg = load_config(config_path)
    router = open_router(cfg)
    ts, report = core.verify_through_router(cfg, router.url, region, model=cfg.region(region).serving.model)
    return {"verified_ts": ts, "golden": report}


@task(name="copy-back-snapshots", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 30],
      retry_condition_fn=retry_if_transient)
def copy_back_snapshots(config_path: str, source: str) -> dict:
    """Before failback: copy to the primary any snapshot taken in ``source`` that the primary lacks."""
    from llmdr.repo import ops

    cfg = load_config(config_path)
    state = core.primary_data_current(cfg, source=source)
    copied = []
    for sid in state["missing_in_primary"]:
        [res] = ops.replicate(cfg, sid, to=cfg.primary.name, source=source)
        copied.append(res.to_json())
    return state | {"copied": copied}


@task(name="notify", cache_policy=NO_CACHE)
def send_notice(config_path: str, notice: dict) -> list[dict]:
    """Never fails the flow: a delivery problem is logged and returned."""
    from dataclasses import asdict

    from llmdr.notify import Notice, notify

    cfg = load_config(config_path)
    deliveries = notify(cfg.notifications, Notice(**notice))
    for d in deliveries:
        if not d.ok:
            get_run_logger().warning("notification via %s failed: %s", d.channel, d.detail)
    return [asdict(d) for d in deliveries]
