"""The warm standby: after protect-bundle, does the replica in a DR region move onto the newest snapshot?

A standby is refreshed only when that is safe and useful: llmdr runs it (``serving.warm`` and a way to start it),
it is running, it does not receive the traffic now (a restart would drop requests; when the router cannot say
where traffic goes, the standby is left alone too), and the newest snapshot in its own region holds other files than
the one it serves. A new snapshot of an unchanged bundle (new id, same content) leaves it running.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from llmdr.config import Config, Region
from llmdr.repo.manifest import Manifest
from llmdr.repo.repository import Repository

log = logging.getLogger(__name__)

NOT_WARM = "no warm standby llmdr runs here"
NOT_RUNNING = "standby not running"
SERVES_TRAFFIC = "it serves the traffic now"
SAME_CONTENT = "already serves this content"


def content_key(manifest: Manifest) -> tuple:
    """What a replica serves, independent of when the snapshot was taken: every file's path, mode and content."""
    return tuple(sorted((f.path, f.mode, f.digest) for f in manifest.files))


def same_content(repo: Repository, a: str | None, b: str) -> bool:
    """Do snapshots ``a`` and ``b`` of ``repo`` hold the same files? (None, the snapshot of no replica: no.)"""
    if a is None:
        return False
    if a == b:
        return True
    return content_key(repo.load_manifest(a)) == content_key(repo.load_manifest(b))


def standby_regions(cfg: Config) -> list[str]:
    """The secondaries protect-bundle asks to refresh: every one with a serving endpoint (``refresh_standby`` then
    says, for each, why it stays as it is)."""
    return [r.name for r in cfg.secondaries if r.serving is not None]


def runs_warm_standby(region: Region) -> bool:
    """llmdr keeps a warm replica in ``region``: it has ``serving.warm`` and llmdr can start the replica."""
    from llmdr.serving.replica import can_start

    return region.serving is not None and region.serving.warm and can_start(region)


def why_not_refresh(region: str, *, warm: bool, running: bool, active: str | None) -> str | None:
    """Why the standby in ``region`` must be left as it is, whatever snapshot is newest; None if it may move.
    ``active``: the region the router sends traffic to (pass ``region`` itself when that is unknown)."""
    if not warm:
        return NOT_WARM
    if not running:
        return NOT_RUNNING
    if active == region:
        return SERVES_TRAFFIC
    return None


@dataclass
class StandbyRefresh:
    region: str
    refreshed: bool
    why: str | None = None
    snapshot: str | None = None
    previous: str | None = None

    def to_json(self) -> dict:
        out: dict = {"region": self.region, "refreshed": self.refreshed}
        if self.refreshed:
            return out | {"snapshot": self.snapshot, "previous": self.previous}
        out["why"] = self.why
        if self.why == SAME_CONTENT:
            out["snapshot"] = self.snapshot
        return out


def traffic_region(cfg: Config, unknown: str) -> str | None:
    """Where the router sends traffic now; ``unknown`` when the router cannot be asked (leave things alone)."""
    if not cfg.router:
        return None
    from llmdr.failover.router import open_router

    try:
        return open_router(cfg).active()
    except Exception:  # noqa: BLE001 - any failure to ask means "unknown"
        return unknown


def refresh_standby(cfg: Config, region: str) -> StandbyRefresh:
    """Move a running warm standby onto the newest snapshot in its own region (restored from that region's store),
    so a failover serves the model just protected. Never touches the replica that receives traffic, nor one llmdr
    did not start."""
    from llmdr.repo.ops import open_repo
    from llmdr.serving.replica import replica_status, start_replica

    reg = cfg.region(region)
    warm = runs_warm_standby(reg)
    st = replica_status(cfg, reg) if warm else None
    running = st is not None and st.pid is not None
    active = traffic_region(cfg, unknown=region) if running else None
    why = why_not_refresh(region, warm=warm, running=running, active=active)
    if why is not None:
        return StandbyRefresh(region, False, why)
    repo = open_repo(cfg, reg, read_only=True)
    newest = repo.resolve("latest", bundle=cfg.bundle.name)
    if same_content(repo, st.snapshot, newest):
        return StandbyRefresh(region, False, SAME_CONTENT, snapshot=st.snapshot)
    new = start_replica(cfg, reg, ref=newest)
    log.info("standby in %s moved %s -> %s", region, (st.snapshot or "?")[:12], (new.snapshot or "?")[:12])
    return StandbyRefresh(region, True, snapshot=new.snapshot, previous=st.snapshot)
