"""The hardware side of the monitor: poll each region's source every ``hardware.interval`` (in a background thread,
so a slow ``nvidia-smi`` never delays an endpoint probe), keep the readings, judge every GPU and say which GPUs
changed status. What to do about a change (an event, a notice) is the caller's: :mod:`llmdr.failover.watch`.

A GPU's last status, when it was last announced and how bad it was then live in ``monitor/hardware-status.json``
next to the samples, so a new monitor run neither re-announces nor forgets a GPU that is still degraded. A
:class:`Transition` carries ``notify``: True on the way into degraded/critical and on an escalation to critical,
at most once per ``notify_cooldown`` per GPU otherwise.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from llmdr.common.files import atomic_write
from llmdr.config import Config
from llmdr.config.hardware import Hardware
from llmdr.hardware.detect import ORDER, GpuAssessment, RegionAssessment, assess_region
from llmdr.hardware.sources import Poll, Source, open_source
from llmdr.hardware.store import HardwareStore

log = logging.getLogger(__name__)
BAD = ("degraded", "critical")


def store_path(cfg: Config) -> Path:
    return cfg.bundle_state_path / "monitor" / "hardware.sqlite"


def _state_path(cfg: Config) -> Path:
    return cfg.bundle_state_path / "monitor" / "hardware-status.json"


def configured(cfg: Config) -> dict[str, Hardware]:
    """Regions with a hardware source, by name."""
    return {r.name: r.hardware for r in cfg.regions if r.hardware is not None and r.hardware.source != "none"}


def assess_stored(store: HardwareStore, region: str, s: Hardware, *, now: float,
                  extra: Poll | None = None) -> RegionAssessment:
    """REGION's GPUs judged on what STORE holds (enough readings for the baseline, the recent window and the trend),
    plus ``extra`` (a poll not stored). Reads only: the metrics exporter calls it on the monitor's store."""
    per_gpu = s.baseline_window + s.recent_window + int(s.trend_window.total_seconds() /
                                                         s.interval.total_seconds()) + 10
    series = {u: store.readings(region, u, limit=per_gpu) for u in store.gpus(region)}
    last_poll = store.last_poll(region)
    xids = store.xids(region, since=now - s.trend_window.total_seconds())
    if extra is not None:
        for r in extra.readings:
            series.setdefault(r.uuid, []).append(r)
        xids = xids + [x for x in extra.xids if x not in xids]
        last_poll = (extra.ts, extra.error)
    return assess_region(region, s, series, now=now, xids=xids, last_poll=last_poll)


@dataclass
class Transition:
    """A GPU whose status changed: ``event`` is ``degraded`` (into degraded or critical, or degraded -> critical)
    or ``recovered`` (back to healthy)."""

    event: str
    previous: str | None
    gpu: GpuAssessment
    notify: bool


class HardwareMonitor:
    def __init__(self, cfg: Config, *, store: HardwareStore | None = None) -> None:
        self.cfg = cfg
        self.settings = configured(cfg)
        self.sources: dict[str, Source] = {name: open_source(name, hw) for name, hw in self.settings.items()}
        self.store = store or HardwareStore(store_path(cfg))
        try:
            self.state: dict[str, dict] = json.loads(_state_path(cfg).read_text())
        except (FileNotFoundError, ValueError):
            self.state = {}
        self._next: dict[str, float] = dict.fromkeys(self.sources, 0.0)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[str, Future] = {}

    # -- reading and judging ----------------------------------------------------------------------------------

    def assess(self, region: str, *, now: float | None = None, extra: Poll | None = None) -> RegionAssessment:
        """The region's GPUs judged on what the store holds, plus ``extra`` (a poll not stored)."""
        return assess_stored(self.store, region, self.settings.get(region) or Hardware(),
                             now=time.time() if now is None else now, extra=extra)

    def record(self, poll: Poll, *, now: float | None = None) -> tuple[RegionAssessment, list[Transition]]:
        """Store a poll, judge the region and return the GPUs whose status changed."""
        self.store.add(poll)
        if poll.error:
            log.info("hardware source of %s: %s", poll.region, poll.error)
        ra = self.assess(poll.region, now=now)
        return ra, self._transitions(ra, time.time() if now is None else now)

    def _transitions(self, ra: RegionAssessment, now: float) -> list[Transition]:
        out = []
        cooldown = (self.settings.get(ra.region) or Hardware()).notify_cooldown.total_seconds()
        for g in ra.gpus:
            key = f"{ra.region}/{g.uuid}"
            prev = self.state.get(key, {})
            before = prev.get("status")
            entry = {"status": g.status, "since": prev.get("since", now) if before == g.status else now,
                     "notified_at": prev.get("notified_at"), "notified_status": prev.get("notified_status")}
            t = None
            if g.status in BAD and (before not in BAD or ORDER[g.status] > ORDER[before]):
                worse = ORDER[g.status] > ORDER.get(entry["notified_status"] or "healthy", 0)
                quiet = entry["notified_at"] is None or now - entry["notified_at"] >= cooldown
                t = Transition("degraded", before, g, notify=worse or quiet)
                if t.notify:
                    entry["notified_at"], entry["notified_status"] = now, g.status
            elif g.status == "healthy" and before in BAD:
                t = Transition("recovered", before, g, notify=False)  # a flapping GPU is announced once per cooldown
            if t is not None:
                out.append(t)
            self.state[key] = entry
        atomic_write(_state_path(self.cfg), json.dumps(self.state, sort_keys=True))
        return out

    # -- polling ------------------------------------------------------------------------------------------------

    def poll_now(self, region: str) -> Poll:
        return self.sources[region].poll()

    def step(self, *, wait: bool = False, finish: bool = False,
             now: float | None = None) -> list[tuple[RegionAssessment, list[Transition]]]:
        """Start the polls that are due (in the background) and record the ones that finished. ``wait``: poll
        every region now and wait for the answers; ``finish``: start no poll, wait for the running ones (the
        monitor's last round)."""
        clock = time.time() if now is None else now
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.sources)), thread_name_prefix="llmdr-hw")
        for region, src in self.sources.items():
            if not finish and region not in self._pending and (wait or clock >= self._next[region]):
                self._next[region] = time.time() + self.settings[region].interval.total_seconds()
                self._pending[region] = self._pool.submit(src.poll)
        out = []
        for region, fut in list(self._pending.items()):
            if wait or finish:
                fut.result()
            if fut.done():
                del self._pending[region]
                out.append(self.record(fut.result(), now=now))
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self.store.close()
