"""Routers: the one URL clients use, sending traffic to one region at a time. ``base`` (the ``Router`` protocol and
``RouterState``), ``state`` (``RouterLog``: when and why the last switch happened), ``caddy`` (a local Caddy reverse
proxy switched by a selection file) and ``route53`` (a DNS record in AWS); ``open_router`` picks the one the config
names.

May import ``llmdr.config``, ``llmdr.common`` and ``llmdr.errors`` (and boto3, in ``route53`` only, lazily); never
the rest of ``llmdr.failover`` nor serving, devstack or anything above.
"""

from __future__ import annotations

from llmdr.config import CaddyRouter, Config, Route53Router
from llmdr.errors import UsageError
from llmdr.failover.router.base import Router, RouterState
from llmdr.failover.router.state import RouterLog

__all__ = ["Router", "RouterLog", "RouterState", "open_router", "router_log", "upstreams"]


def open_router(cfg: Config) -> Router:
    """The router the config describes. Nothing is started or contacted yet."""
    if isinstance(cfg.router, CaddyRouter):
        from llmdr.failover.router.caddy import Caddy

        return Caddy(cfg)
    if isinstance(cfg.router, Route53Router):
        from llmdr.failover.router.route53 import Route53

        return Route53(cfg)
    raise UsageError(
        f"{cfg.source_file or 'llmdr.yaml'} has no router: section, so llmdr cannot switch traffic between regions. "
        "Add one, e.g. `router: {kind: caddy, listen: http://127.0.0.1:18100, admin: http://127.0.0.1:18119}` for a "
        "local reverse proxy, or `router: {kind: route53, hosted_zone_id: ..., record_name: ..., values: {...}, "
        "url: ...}` for DNS failover."
    )


def upstreams(cfg: Config) -> dict[str, str]:
    """Region name -> serving URL, for the regions that have a serving endpoint (in config order)."""
    return {r.name: r.serving.url for r in cfg.regions if r.serving is not None}


def router_log(cfg: Config) -> RouterLog:
    """The switch record every router kind writes: ``<state>/router/state.json`` + ``history.jsonl``."""
    return RouterLog(cfg.bundle_state_path / "router" / "state.json", cfg)
