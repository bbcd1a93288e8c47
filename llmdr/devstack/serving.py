"""The local serving side of the dev stack: the replicas llmdr runs (the primary's, and every warm secondary's), each
restored from its own region's newest snapshot, and the local Caddy router in front of them. ``llmdr stack up``
starts them after the S3 regions (``devstack.regions``); ``llmdr stack down`` stops them.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmdr.config import CaddyRouter, Config, Region
from llmdr.errors import LlmdrError, ObjectNotFound


@dataclass
class ServingNote:
    region: str
    started: bool
    detail: str


def start_serving(cfg: Config, regions: list[Region] | None = None) -> list[ServingNote]:
    """Start the replicas llmdr runs (the primary, and every secondary with serving.warm), each from its own
    region's newest snapshot; a region with no snapshot yet is skipped with a note. (``start_router`` starts the
    router.)"""
    from llmdr.repo.ops import open_repo
    from llmdr.serving.replica import can_start, start_replica

    notes = []
    for r in regions if regions is not None else cfg.regions:
        if r.serving is None or not can_start(r):
            continue
        if r.role == "secondary" and not r.serving.warm:
            notes.append(ServingNote(r.name, False, "warm standby off (serving.warm: false): cold start on failover"))
            continue
        try:
            if not open_repo(cfg, r, read_only=True).snapshots(bundle=cfg.bundle.name):
                how = "`llmdr protect` (or `llmdr snapshot`" + ("" if r.role == "primary" else
                                                                   f" + `llmdr replicate latest --to {r.name}`")
                notes.append(ServingNote(r.name, False, f"no snapshot of {cfg.bundle.name} in {r.name}'s store yet; "
                                                        f"{how}), then `llmdr stack up` starts its replica"))
                continue
            st = start_replica(cfg, r)
        except (LlmdrError, ObjectNotFound) as exc:
            notes.append(ServingNote(r.name, False, f"replica not started: {exc}"))
            continue
        how = f"restored in {st.restore_s:.2f}s, " if st.cold else ""
        notes.append(ServingNote(r.name, True, f"replica on {(st.snapshot or '')[:12]} at {st.url} ({how}pid {st.pid})"))
    return notes


def start_router(cfg: Config) -> ServingNote | None:
    """Start the local Caddy router (if configured) sending traffic where the router record says, else primary."""
    from llmdr.failover.router import open_router, router_log

    if not isinstance(cfg.router, CaddyRouter):
        return None
    cur = router_log(cfg).current()
    active = (cur or {}).get("active") or cfg.primary.name
    router = open_router(cfg)
    pid = router.start(active)
    from llmdr.failover.steps import rearm_fallback

    fb = rearm_fallback(cfg)  # the standby becomes the fallback for failed dials only once verified
    fallback = f"fallback {fb['fallback']}" if fb["fallback"] else f"no fallback: {fb['why']}"
    return ServingNote("router", True, f"caddy on {cfg.router.listen} -> {router.active()} (pid {pid}; {fallback})")


def stop_serving(cfg: Config, regions: list[Region] | None = None, *, router: bool = False) -> None:
    from llmdr.serving.replica import stop_replica

    for r in regions if regions is not None else cfg.regions:
        stop_replica(cfg, r)
    if router and isinstance(cfg.router, CaddyRouter):
        from llmdr.failover.router import open_router

        open_router(cfg).stop()
