"""The monitoring loop: probe every region's endpoint and the router, keep the samples, assess each target against
its learned baseline, and emit Prefect events when a target's status changes.

``llmdr monitor`` and the ``monitor-endpoints`` flow both run :func:`watch`. An endpoint that stays down while it
is the active region is re-announced every ``REANNOUNCE_S`` seconds, so a failover that could not complete is tried
again by the automation.

Regions with a ``hardware:`` source also have their GPUs read every ``hardware.interval``, in the background
(:class:`llmdr.hardware.monitor.HardwareMonitor`): a GPU that turns degraded or critical becomes
``llmdr.hardware.degraded`` (resource: the region and the GPU's uuid; payload: reasons, trend, forecast) and a
``hardware_degraded`` notice (at most one per GPU per ``notify_cooldown``, sooner when it gets worse); back to
healthy, ``llmdr.hardware.recovered``. A source that fails is a reason in the assessment, never an exception.

An endpoint (or the router) that is degraded or down is also announced to people (``notifications:``) with the
evidence, by ``endpoint_notice``: at most once per target per ``monitor.notify_cooldown`` unless it gets worse
(degraded -> down: at once), and once when it is healthy again (:func:`notice_due` decides; what was last
announced lives in ``status.json`` beside the status, so a new monitor run does not repeat it).

With ``monitor.drift``, each round also judges the sampled real responses of every endpoint
(:mod:`llmdr.failover.drift`): one that starts to drift becomes ``llmdr.endpoint.drift`` (payload: reasons,
length z, refusal rates, vocabulary distance) and an ``endpoint_drift`` notice, rate-limited like the others.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from llmdr.common.files import atomic_write
from llmdr.config import Config
from llmdr.failover import events
from llmdr.failover.drift import drift_path
from llmdr.notify import Delivery, Notice

log = logging.getLogger(__name__)
REANNOUNCE_S = 15.0
ROUTER = "router"
BAD = ("degraded", "down")
RANK = {"degraded": 1, "down": 2}


def notice_due(entry: dict, status: str, now: float, cooldown: float) -> str | None:
    """Whether this round's ``status`` of a target is news for people: ``"problem"`` (tell them it is degraded or
    down), ``"recovered"`` (it is healthy again after a problem notice) or None. ``entry``: what was last announced
    (``notified_status``: degraded, down, or healthy for a recovery; ``notified_at``; ``notified_problem``: the
    last problem announced). Judged every round, not only on a change, so a problem kept quiet by the cooldown is
    announced when the cooldown ends if it persists; an unknown status (too few or stale samples) says nothing."""
    told, at = entry.get("notified_status"), entry.get("notified_at")
    if status in BAD:
        if told in BAD:  # an open problem: only worse is news
            return "problem" if RANK[status] > RANK[told] else None
        quiet = at is None or now - at >= cooldown
        worse = RANK[status] > RANK.get(entry.get("notified_problem") or "", 0)
        return "problem" if quiet or worse else None
    if status == "healthy" and told in BAD:
        return "recovered"
    return None


@dataclass
class Target:
    name: str  # region name or "router"
    url: str
    model: str | None = None


@dataclass
class RoundResult:
    ts: float
    active: str | None
    samples: list = field(default_factory=list)  # monitor.Sample
    assessments: dict = field(default_factory=dict)  # target -> monitor.Assessment
    emitted: list[dict] = field(default_factory=list)
    hardware: dict = field(default_factory=dict)  # region -> hardware.detect.RegionAssessment, when polled this round
    drift: dict = field(default_factory=dict)  # target -> drift.DriftAssessment, with monitor.drift

    def to_json(self) -> dict:
        return {"ts": self.ts, "active": self.active, "samples": [s.to_json() for s in self.samples],
                "assessments": {k: a.to_json() for k, a in self.assessments.items()}, "emitted": self.emitted,
                "hardware": {k: a.to_json() for k, a in self.hardware.items()},
                "drift": {k: a.to_json() for k, a in self.drift.items()}}


def targets(cfg: Config) -> list[Target]:
    out = [Target(r.name, r.serving.url, r.serving.model) for r in cfg.regions if r.serving is not None]
    if cfg.router is not None:
        model = next((r.serving.model for r in cfg.regions if r.serving and r.serving.model), None)
        out.append(Target(ROUTER, cfg.router.url, model))
    return out


def store_path(cfg: Config) -> Path:
    return cfg.bundle_state_path / "monitor" / "samples.sqlite"


def _status_path(cfg: Config) -> Path:
    return cfg.bundle_state_path / "monitor" / "status.json"


def read_status(cfg: Config) -> dict:
    try:
        return json.loads(_status_path(cfg).read_text())
    except (FileNotFoundError, ValueError):
        return {}


class Watcher:
    """One monitor: remembers each target's last status (also on disk, so a new run does not re-announce)."""

    def __init__(self, cfg: Config, *, emit: Callable[[str, dict, dict], bool] = events.emit,
                 notify: Callable[[Notice], list[Delivery]] | None = None) -> None:
        from llmdr.failover.monitor import SampleStore
        from llmdr.hardware.monitor import HardwareMonitor, configured

        self.cfg = cfg
        self.targets = targets(cfg)
        self.store = SampleStore(store_path(cfg))
        self.emit = emit
        self.status = read_status(cfg)
        self.round_no = 0
        self._golden_sets: dict[str, tuple[float, list]] = {}  # target -> (when resolved, its snapshot's cases)
        self._active_cache: tuple[float, str | None] = (0.0, None)
        self.notify = notify or self._notify
        self.notices: list[dict] = []  # notices sent by this watcher: {gpu or target, title, deliveries}
        self.hardware = HardwareMonitor(cfg) if configured(cfg) else None
        self.drift = None
        if cfg.monitor.drift is not None:
            from llmdr.failover.drift import DriftStore

            self.drift = DriftStore(drift_path(cfg))

    def _notify(self, notice: Notice) -> list[Delivery]:
        from llmdr.notify import notify

        return notify(self.cfg.notifications, notice)

    GOLDEN_TTL = 60.0  # seconds a target's set is reused (a standby refreshed onto a new snapshot is seen after it)

    def _golden_cases(self, target: Target) -> list:
        """The cases of the set that judges ``target``: that of the snapshot its replica serves (the router: the
        answering region's), else the project's (``snapgolden.for_url``); none (no spot-check) when that snapshot
        has no set of its own or it cannot be told. Resolved at most every ``GOLDEN_TTL`` seconds."""
        from llmdr.serving.snapgolden import for_url

        now = time.monotonic()
        hit = self._golden_sets.get(target.name)
        if hit is not None and now - hit[0] < self.GOLDEN_TTL:
            return hit[1]
        try:
            cases = for_url(self.cfg, target.url, timeout=self.cfg.monitor.timeout.total_seconds()).golden.cases
        except Exception as exc:  # noqa: BLE001 - no set for this target: no spot-check of it (readiness says why)
            log.warning("golden spot-checks of %s off for now: %s", target.name, str(exc).splitlines()[0])
            cases = []
        self._golden_sets[target.name] = (now, cases)
        return cases

    def _golden_case(self, target: Target, n: int):
        cases = self._golden_cases(target)
        return cases[n % len(cases)] if cases else None

    def active(self) -> str | None:
        """The region the router sends traffic to (asked at most every 2 s; the last record if it cannot answer)."""
        from llmdr.failover.router import open_router, router_log

        if self.cfg.router is None:
            return self.cfg.primary.name
        now = time.monotonic()
        if now - self._active_cache[0] < 2.0:
            return self._active_cache[1]
        try:
            active = open_router(self.cfg).active()
        except Exception:  # noqa: BLE001 - the router being down is itself probed as a target
            cur = router_log(self.cfg).current()
            active = cur.get("active") if cur else self.cfg.primary.name
        self._active_cache = (now, active)
        return active

    def run_round(self) -> RoundResult:
        from llmdr.failover.monitor import assess_all, probe

        cfg = self.cfg
        self.round_no += 1
        every = cfg.monitor.golden_every
        golden_round = bool(every) and self.round_no % every == 1 % every
        n = self.round_no // every if every else 0
        timeout = cfg.monitor.timeout.total_seconds()
        with ThreadPoolExecutor(max_workers=max(1, len(self.targets))) as pool:
            samples = list(pool.map(lambda t: probe(t.name, t.url, timeout=timeout, model=t.model,
                                                   golden=self._golden_case(t, n) if golden_round else None,
                                                   gate=cfg.golden_gate),
                                    self.targets))
        self.store.add(samples)
        active = self.active()
        res = RoundResult(ts=time.time(), active=active, samples=samples)
        assessed = assess_all(self.store, cfg.monitor)
        for t in self.targets:
            a = assessed[t.name]
            res.assessments[t.name] = a
            self._transition(t, a, active, res)
        if self.drift is not None:
            self.drift_round(res)
        atomic_write(_status_path(cfg), json.dumps(self.status, sort_keys=True))
        if self.hardware is not None:
            self.hardware_round(res, wait=False)
        return res

    def drift_round(self, res: RoundResult) -> None:
        """Judge every endpoint's sampled real responses; a start of drift is an event and a notice."""
        from llmdr.failover.drift import assess_drift

        settings = self.cfg.monitor.drift
        now = time.time()
        for target in self.drift.targets():
            d = assess_drift(target, self.drift.newest(target, settings.recent + settings.baseline), settings)
            res.drift[target] = d
            key = f"drift:{target}"
            prev = self.status.get(key, {})
            entry = {"status": d.status, "since": prev.get("since", now) if prev.get("status") == d.status else now,
                     **{k: prev[k] for k in ("notified_status", "notified_at", "notified_problem") if k in prev}}
            is_active = None if target == ROUTER else target == res.active
            if d.status == "drift" and prev.get("status") != "drift":
                url = next((t.url for t in self.targets if t.name == target), "")
                payload = d.to_json() | {"active": is_active, "active_region": res.active,
                                         "reason": "; ".join(d.reasons)}
                sent = self.emit(events.ENDPOINT_DRIFT, events.endpoint_resource(
                    self.cfg.bundle.name, target, active=is_active, url=url), payload)
                res.emitted.append({"event": events.ENDPOINT_DRIFT, "target": target, "sent": sent,
                                    "reason": payload["reason"]})
                log.warning("%s: %s (%s)", target, events.ENDPOINT_DRIFT, payload["reason"])
            as_status = {"drift": "degraded", "normal": "healthy"}.get(d.status, "unknown")
            if notice_due(entry, as_status, now, self.cfg.monitor.notify_cooldown.total_seconds()):
                from llmdr.notify import drift_notice

                notice = drift_notice(self.cfg.bundle.name, target, d.to_json(), active=is_active)
                deliveries = self.notify(notice)
                entry["notified_status"], entry["notified_at"] = as_status, now
                if as_status in BAD:
                    entry["notified_problem"] = as_status
                self.notices.append({"target": target, "title": notice.title, "kind": notice.kind,
                                     "deliveries": [x.__dict__ for x in deliveries]})
            self.status[key] = entry

    def hardware_round(self, res: RoundResult | None = None, *, wait: bool = True, finish: bool = False,
                       now: float | None = None) -> RoundResult:
        """Start the hardware polls that are due and handle those that finished (``wait``: poll every region now
        and wait for the answers; ``finish``: start none, wait for those running). Adds the assessments and the
        events to ``res`` (a new result when None). ``now``: the clock the GPUs are judged by (default: the time;
        tests replaying a recording pass its own)."""
        res = res or RoundResult(ts=time.time(), active=self.active())
        if self.hardware is None:
            return res
        for ra, transitions in self.hardware.step(wait=wait, finish=finish, now=now):
            res.hardware[ra.region] = ra
            for t in transitions:
                self._hardware_event(ra.region, t, res)
        return res

    def _hardware_event(self, region: str, t, res: RoundResult) -> None:
        from llmdr.config.pools import dr_region
        from llmdr.notify import hardware_notice

        g = t.gpu
        active = res.active
        is_active = region == active if active is not None else None
        event = events.HARDWARE_DEGRADED if t.event == "degraded" else events.HARDWARE_RECOVERED
        payload = {"region": region, "gpu": g.uuid, "index": g.index, "name": g.name, "status": g.status,
                   "previous": t.previous, "reasons": list(g.reasons), "trend": g.summary, "forecast": g.forecast,
                   "evidence": g.trend, "active": is_active, "active_region": active,
                   "reason": "; ".join(g.reasons) or g.status}
        sent = self.emit(event, events.hardware_resource(self.cfg.bundle.name, region, g.uuid, name=g.name,
                                                         index=g.index, active=is_active), payload)
        res.emitted.append({"event": event, "target": f"{region}/{g.uuid}", "sent": sent,
                            "reason": payload["reason"]})
        log.warning("%s %s: %s (%s)", region, g.uuid, event, payload["reason"])
        if t.notify:
            try:
                dr: str | None = dr_region(self.cfg)
            except Exception:  # noqa: BLE001 - a config without a failover target still gets the notice
                dr = None
            notice = hardware_notice(self.cfg.bundle.name, region, g.to_json(), previous=t.previous,
                                     active=is_active, standby=dr if dr != region else None)
            deliveries = self.notify(notice)
            self.notices.append({"gpu": g.uuid, "title": notice.title,
                                 "deliveries": [d.__dict__ for d in deliveries]})

    def _transition(self, t: Target, a, active: str | None, res: RoundResult) -> None:
        prev = self.status.get(t.name, {})
        before = prev.get("status")
        now = time.time()
        is_active = None if t.name == ROUTER else t.name == active
        event = None
        if a.status == "down" and (before != "down" or (is_active and now - prev.get("emitted", 0) >= REANNOUNCE_S)):
            event = events.ENDPOINT_DOWN
        elif a.status == "degraded" and before not in ("degraded", "down"):
            event = events.ENDPOINT_DEGRADED
        elif a.status == "healthy" and before in ("degraded", "down"):
            event = events.ENDPOINT_RECOVERED
        entry = {"status": a.status, "since": prev.get("since", now) if before == a.status else now,
                 "emitted": prev.get("emitted", 0), "active": is_active,
                 **{k: prev[k] for k in ("notified_status", "notified_at", "notified_problem") if k in prev}}
        if event:
            payload = a.to_json() | {"url": t.url, "active": is_active, "active_region": active,
                                     "reason": "; ".join(a.reasons) or a.status}
            sent = self.emit(event, events.endpoint_resource(self.cfg.bundle.name, t.name, active=is_active,
                                                             url=t.url), payload)
            entry["emitted"] = now
            res.emitted.append({"event": event, "target": t.name, "sent": sent, "reason": payload["reason"]})
            log.warning("%s: %s (%s)", t.name, event, payload["reason"])
        due = notice_due(entry, a.status, now, self.cfg.monitor.notify_cooldown.total_seconds())
        if due is not None:
            self._endpoint_notice(t, a, before, is_active, entry, now)
        self.status[t.name] = entry

    def _endpoint_notice(self, t: Target, a, before: str | None, is_active: bool | None, entry: dict,
                         now: float) -> None:
        from llmdr.config.pools import dr_region
        from llmdr.notify import endpoint_notice

        try:
            dr: str | None = dr_region(self.cfg)
        except Exception:  # noqa: BLE001 - a config without a failover target still gets the notice
            dr = None
        notice = endpoint_notice(self.cfg.bundle.name, t.name, a.to_json(), previous=before, active=is_active,
                                 standby=dr if dr != t.name else None,
                                 prewarm=self.cfg.failover.prewarm_on_degraded)
        deliveries = self.notify(notice)
        entry["notified_status"], entry["notified_at"] = a.status, now
        if a.status in BAD:
            entry["notified_problem"] = a.status
        self.notices.append({"target": t.name, "title": notice.title, "kind": notice.kind,
                             "deliveries": [d.__dict__ for d in deliveries]})


@dataclass
class WatchSummary:
    rounds: int
    emitted: list[dict]
    last: RoundResult

    def to_json(self) -> dict:
        return {"rounds": self.rounds, "emitted": self.emitted, "last": self.last.to_json()}


def watch(cfg: Config, *, duration: float | None = None, rounds: int | None = None,
          on_round: Callable[[RoundResult], None] | None = None, watcher: Watcher | None = None) -> WatchSummary:
    """Probe every ``monitor.interval`` until ``duration`` seconds or ``rounds`` rounds have passed (both None:
    until interrupted). Samples older than ``monitor.keep`` are pruned once per run."""
    w = watcher or Watcher(cfg)
    w.store.prune(time.time() - cfg.monitor.keep.total_seconds())
    if w.drift is not None:
        w.drift.prune(time.time() - cfg.monitor.keep.total_seconds())
    if w.hardware is not None:
        w.hardware.store.prune(time.time() - cfg.monitor.keep.total_seconds())
    interval = cfg.monitor.interval.total_seconds()
    t_end = None if duration is None else time.monotonic() + duration
    emitted: list[dict] = []
    n = 0
    while True:
        t0 = time.monotonic()
        res = w.run_round()
        n += 1
        last = (rounds is not None and n >= rounds) or (t_end is not None and time.monotonic() + interval > t_end)
        if last and w.hardware is not None:  # the GPU polls still running are waited for, not dropped
            w.hardware_round(res, wait=False, finish=True)
        emitted += res.emitted
        if on_round:
            on_round(res)
        if last:
            if w.hardware is not None:
                w.hardware.close()
            return WatchSummary(rounds=n, emitted=emitted, last=res)
        time.sleep(max(0.0, interval - (time.monotonic() - t0)))
