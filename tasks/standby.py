"""Task of the prewarm-standby flow."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from llmdr.config import load_config


@task(name="prewarm-standby", cache_policy=NO_CACHE)
def prewarm_standby(config_path: str, degraded: str) -> dict:
    """Make sure the failover target answers because ``degraded`` (the active region) degraded: start its replica
    from its own store if llmdr can and it does not answer (``llmdr.failover.standby.prewarm_standby``)."""
    from llmdr.failover.standby import prewarm_standby as core

    cfg = load_config(config_path)
    out = core(cfg, degraded)
    logger = get_run_logger()
    if out.answers:  # warm now: verified, it becomes the router's fallback should the degraded region die
        from llmdr.failover.steps import rearm_fallback

        fb = rearm_fallback(cfg)
        logger.info("router fallback: %s", fb["fallback"] or f"none ({fb['why']})")
    if out.started:
        logger.info("standby in %s started on %s in %.1f s; %s", out.region, (out.snapshot or "?")[:12],
                    out.seconds or 0, out.detail)
    else:
        logger.info("standby in %s not started: %s%s", out.region, out.why or "failed",
                    f"; {out.detail}" if out.detail else "")
    return out.to_json()
