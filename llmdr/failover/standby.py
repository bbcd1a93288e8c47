"""The warm standby: after protect-bundle, does the replica in a DR region move onto the newest snapshot?

A standby is refreshed only when that is safe and useful: llmdr runs it (``serving.warm`` and a way to start it),
it is running, it does not receive the traffic now (a restart would drop requests; when the router cannot say
where traffic goes, the standby is left alone too), and the newest snapshot in its own region holds other files than
the one it serves. A new snapshot of an unchanged bundle (new id, same content) leaves it running. Nor does it move
onto a snapshot that has no golden set to be judged by (a new model version whose set was not recorded, or a set
that is refused): a failover's check would refuse it, while the standby where it is still passes its own snapshot's
set (``why_unjudged``; readiness fails until ``llmdr golden record --snapshot`` fills the set in). After a move, the
standby is asked its new snapshot's set (``standby_golden``) and the result says whether it passes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from llmdr.config import Config, Region
from llmdr.errors import UsageError
from llmdr.repo.manifest import Manifest
from llmdr.repo.repository import Repository

log = logging.getLogger(__name__)

NOT_WARM = "no warm standby llmdr runs here"
NOT_RUNNING = "standby not running"
SERVES_TRAFFIC = "it serves the traffic now"
SAME_CONTENT = "already serves this content"
NO_GOLDEN_SET = "the newest snapshot cannot be judged by a golden set, so the standby stays where it is"


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
    golden: dict | None = None  # the refreshed standby against its snapshot's golden set (``standby_golden``)

    def to_json(self) -> dict:
        out: dict = {"region": self.region, "refreshed": self.refreshed}
        if self.refreshed:
            out |= {"snapshot": self.snapshot, "previous": self.previous}
            return out if self.golden is None else out | {"golden": self.golden}
        out["why"] = self.why
        if self.why == SAME_CONTENT or (self.why or "").startswith(NO_GOLDEN_SET):
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
    unjudged = why_unjudged(cfg, repo, newest)
    if unjudged is not None:  # a standby that can be judged beats one that a failover's check must refuse
        log.warning("standby in %s stays on %s: %s", region, (st.snapshot or "?")[:12], unjudged)
        return StandbyRefresh(region, False, unjudged, snapshot=st.snapshot)
    if cfg.router is not None:
        # the router stops retrying on it while it restarts; the refresh-standby task arms it again once verified
        # on the new snapshot (``steps.rearm_fallback``)
        _drop_fallback(cfg, f"the standby in {region} moves to {newest[:12]}")
    new = start_replica(cfg, reg, ref=newest)
    log.info("standby in %s moved %s -> %s", region, (st.snapshot or "?")[:12], (new.snapshot or "?")[:12])
    golden = standby_golden(cfg, region)
    if not golden["ok"]:
        log.warning("standby in %s on %s would not pass a failover's golden check: %s", region,
                    (new.snapshot or "?")[:12], golden.get("error") or f"{golden['passed']}/{golden['total']} pass")
    return StandbyRefresh(region, True, snapshot=new.snapshot, previous=st.snapshot, golden=golden)


def why_unjudged(cfg: Config, repo: Repository, sid: str) -> str | None:
    """Why a standby on snapshot ``sid`` could not be judged by a failover's golden check (no set of its own for a
    new model version, or a refused one); None when it could."""
    from llmdr.repo.goldens import GoldenRefused
    from llmdr.serving.snapgolden import NoGoldenSet, for_snapshot

    try:
        for_snapshot(cfg, repo, sid)
    except (NoGoldenSet, GoldenRefused) as exc:
        return f"{NO_GOLDEN_SET}: {exc}"
    except UsageError:  # an older snapshot and no project file either: judged as before (by nothing) - it moves
        return None
    return None


def standby_golden(cfg: Config, region: str) -> dict:
    """The replica of ``region`` asked the golden set of the snapshot it serves (the set a failover's check would
    use), judged by the bundle's gate: the report, with ``golden_set`` saying which set; ``{ok: False, error}``
    when it cannot be judged (no set for a new model version, a refused set, no answer)."""
    from llmdr.errors import LlmdrError
    from llmdr.serving.endpoint import check_set
    from llmdr.serving.snapgolden import for_region

    reg = cfg.region(region)
    if reg.serving is None:
        return {"ok": False, "error": f"region '{region}' has no serving: section"}
    try:
        resolved = for_region(cfg, reg)
        rep = check_set(resolved.golden, reg.serving.url, model=reg.serving.model, gate=cfg.golden_gate,
                        timeout=30.0)
    except LlmdrError as exc:
        return {"ok": False, "error": str(exc)}
    rep.basis = resolved.to_json()
    return rep.to_json()


def _drop_fallback(cfg: Config, reason: str) -> None:
    from llmdr.errors import LlmdrError
    from llmdr.failover.router import open_router

    try:
        open_router(cfg).set_fallback(None, reason=reason)
    except LlmdrError:
        pass  # no router running: nothing retries on the standby


# -- pre-warm on degraded ------------------------------------------------------------------------------------------

PREWARM_OFF = "failover.prewarm_on_degraded is false"
ALREADY_WARM = "already warm: it answers"
CANNOT_START = "llmdr cannot start a replica in"


def why_not_prewarm(degraded: str, target: str, *, active: str | None, enabled: bool, answers: bool,
                    startable: bool) -> str | None:
    """Why the failover target ``target`` is not started because ``degraded`` turned degraded; None: start it.

    ``active``: the region serving traffic (None when that cannot be told: the event said ``degraded`` serves it,
    and starting a standby that receives no traffic is harmless). ``answers``: the target's replica answers now;
    ``startable``: llmdr can start a replica there (``serving.command``)."""
    if not enabled:
        return PREWARM_OFF
    if active is not None and degraded != active:
        return f"{degraded} does not serve the traffic now ({active} does): a failover would not leave it"
    if target == degraded:
        return f"the failover target {target} is the degraded region itself: there is no other standby to warm"
    if answers:
        return ALREADY_WARM
    if not startable:
        return (f"{CANNOT_START} {target} (no serving.command): start its server by hand before a failover needs "
                "it")
    return None


@dataclass
class Prewarm:
    """What pre-warming the standby did: ``started`` a replica, or not (``why``); ``answers``: a completion probe of
    the standby succeeded afterwards (None when not probed); ``seconds``: the start, restore included."""

    degraded: str
    region: str
    started: bool
    why: str | None = None
    answers: bool | None = None
    snapshot: str | None = None
    seconds: float | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        """Nothing went wrong: skipped for a reason, or started (or found warm) and answering."""
        return self.answers is not False

    def to_json(self) -> dict:
        return {"degraded": self.degraded, "region": self.region, "started": self.started, "why": self.why,
                "answers": self.answers, "snapshot": self.snapshot, "seconds": self.seconds, "detail": self.detail,
                "ok": self.ok}


def prewarm_standby(cfg: Config, degraded: str) -> Prewarm:
    """``degraded`` (the active region) turned degraded: make sure the failover target answers, so the failover
    that may follow is warm. A replica llmdr can start is started from the target region's own store (newest
    snapshot), then asked a short completion; one that answers already is left as it is (a no-op)."""
    import time

    from llmdr.errors import LlmdrError
    from llmdr.failover.monitor import probe
    from llmdr.serving.replica import can_start, replica_status, start_replica

    cfg.region(degraded)  # an unknown name is a clear ConfigError, before anything is started
    reg = cfg.failover_target()
    if reg.serving is None:
        return Prewarm(degraded, reg.name, False, f"{reg.name} has no serving: section (nothing to warm)")
    timeout = cfg.monitor.timeout.total_seconds()
    st = replica_status(cfg, reg)
    primary = cfg.primary.name
    active = traffic_region(cfg, unknown="") if cfg.router else primary
    why = why_not_prewarm(degraded, reg.name, active=active or None, enabled=cfg.failover.prewarm_on_degraded,
                          answers=st.healthy, startable=can_start(reg))
    if why is not None and why != ALREADY_WARM:
        if why.startswith(CANNOT_START):  # a cold standby nobody can start: a failure to report, not a skip
            return Prewarm(degraded, reg.name, False, why, answers=False, detail=why)
        return Prewarm(degraded, reg.name, False, why)
    out = Prewarm(degraded, reg.name, False, why, snapshot=st.snapshot)
    if why is None:
        t0 = time.monotonic()
        try:
            new = start_replica(cfg, reg, ref="latest")
        except LlmdrError as exc:
            return Prewarm(degraded, reg.name, False, None, answers=False, seconds=round(time.monotonic() - t0, 3),
                           detail=f"the replica did not start: {exc}")
        out = Prewarm(degraded, reg.name, True, None, snapshot=new.snapshot, seconds=round(time.monotonic() - t0, 3))
        log.warning("%s degraded: pre-warmed the standby in %s on %s in %.1f s", degraded, reg.name,
                    (new.snapshot or "?")[:12], out.seconds)
    sample = probe(reg.name, reg.serving.url, timeout=timeout, model=reg.serving.model)
    out.answers = sample.ok
    out.detail = (f"answered a completion in {sample.latency_s:.3f} s" if sample.ok else
                  f"does not answer a completion: {sample.error}")
    return out


def prewarm_markdown(bundle: str, out: dict, reason: str, trigger: str) -> str:
    """The prewarm-standby run's artifact: what happened to the standby and why (``out``: ``Prewarm.to_json()``)."""
    state = ("started and answering" if out["started"] and out["answers"] else
             "already warm and answering" if out["answers"] else
             "NOT ANSWERING" if out["answers"] is False else f"left as it is: {out['why']}")
    lines = [f"# prewarm-standby: {bundle}", "", f"**{out['region']}**: {state}", "",
             f"- degraded region: {out['degraded']}", f"- reason: {reason or '(none given)'}",
             f"- triggered by: {trigger}"]
    for key in ("snapshot", "seconds", "detail"):
        if out.get(key):
            lines.append(f"- {key}: {out[key]}")
    return "\n".join(lines) + "\n"
