"""Which Prefect work pool runs which of llmdr's flows: one pool per region (``llmdr-<region>``), so a flow that acts
in a region runs on a worker there and the loss of one region's workers stops only that region's work.

The rule (deployments/configure.py applies it to every deployment after each deploy; docs/guide/prefect.md):

- protect-bundle, protect-checkpoints: the primary's pool (they read the bundle and checkpoints there);
- failover: the pool of the region it moves traffic to (its ``to`` parameter, else ``failover.target``);
- failback: the primary's pool (the region it moves traffic back to);
- restore-bundle: the pool of the region it restores from (its ``region`` parameter, else the failover target);
- monitor-endpoints, dr-drill, readiness-check, verify-replicas and any other flow: the DR region's pool (the
  failover target), which outlives the primary: the monitor never runs inside the region it watches, and the drill
  keeps running through the outage it simulates.

Pure: no Prefect here; names only.
"""

from __future__ import annotations

from typing import Any

from llmdr.config.model import Config

POOL_PREFIX = "llmdr-"
# the pools of the single-pool layout before per-region pools: stale once configure.py has moved the deployments
LEGACY_POOLS = ("llmdr-process", "llmdr-failover")
# the DR pool's queue served by deployments/warm_runner.py alone (RTO-critical runs): the local stack starts the DR
# region's process worker on the "default" queue only, else it races the runner for a failover run and, when it
# wins, the run starts 3-14 s later (a new Python process); `prefect worker start --pool llmdr-<dr>` (every queue)
# is the by-hand fallback when the runner is down
FAILOVER_QUEUE = "failover"
DEFAULT_QUEUE = "default"
PRIMARY_FLOWS = frozenset({"protect-bundle", "protect-checkpoints", "failback"})
FAILOVER_FLOWS = frozenset({"failover", "monitor-endpoints"})  # on the FAILOVER_QUEUE: the warm runner's


def region_pool(region: str) -> str:
    """The work pool of a region: ``llmdr-<region>``."""
    return POOL_PREFIX + region


def region_pools(cfg: Config) -> dict[str, str]:
    """Every configured region's pool, by region name, in llmdr.yaml's order."""
    return {r.name: region_pool(r.name) for r in cfg.regions}


def dr_region(cfg: Config) -> str:
    """The region whose pool serves the flows that must outlive the primary: the failover target."""
    return cfg.failover_target().name


def pool_region(cfg: Config, flow_name: str, parameters: dict[str, Any] | None = None) -> str:
    """The region whose pool runs a deployment of ``flow_name`` with these default ``parameters``."""
    parameters = parameters or {}
    names = {r.name for r in cfg.regions}
    if flow_name in PRIMARY_FLOWS:
        return cfg.primary.name
    if flow_name == "failover" and parameters.get("to") in names:
        return parameters["to"]
    if flow_name == "restore-bundle" and parameters.get("region") in names:
        return parameters["region"]
    return dr_region(cfg)


def pool_queue(flow_name: str) -> str:
    """The work queue, inside its pool, of a deployment of ``flow_name``."""
    return FAILOVER_QUEUE if flow_name in FAILOVER_FLOWS else DEFAULT_QUEUE


def deploy_env(cfg: Config) -> dict[str, str]:
    """The variables prefect.yaml's pool names are filled from at `prefect deploy`."""
    return {"LLMDR_PRIMARY_POOL": region_pool(cfg.primary.name), "LLMDR_DR_POOL": region_pool(dr_region(cfg))}


def stale_pools(cfg: Config, existing: list[str]) -> list[str]:
    """Pools named like llmdr's (``llmdr-...``) that are no configured region's: left behind by a region renamed or
    removed in llmdr.yaml, or by the single-pool layout (``llmdr-process``, ``llmdr-failover``)."""
    wanted = set(region_pools(cfg).values())
    return sorted(p for p in existing if p.startswith(POOL_PREFIX) and p not in wanted)
