"""The exporter's collector: reads llmdr's state when Prometheus scrapes, with a short cache.

What it reads, at most once per ``metrics.cache`` (default 15 s), each source on its own so one failing source
never hides the others:

- each region's newest snapshot of the bundle: the head of its catalog (``Repository.newest_first``, one LIST and
  the entries not cached yet; never a manifest), read in parallel with a time limit per refresh;
- the monitor's verdict per endpoint (``assess_all`` on its sample store), the router's switch record;
- the run records (``llmdr.common.runs``: protect, verify, readiness), the drill reports, the failover history.

Ages are computed at every scrape from the cached times, so ``llmdr_rpo_age_seconds`` keeps growing between reads.
The probe counters and histograms (:class:`~llmdr.metrics.probes.ProbeFeed`) are live: every scrape first reads the
probes written since the last one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from llmdr.config import Config, Region
from llmdr.metrics.catalog import BY_NAME, COUNTER
from llmdr.metrics.probes import ProbeFeed

log = logging.getLogger(__name__)

STATUSES = ("healthy", "degraded", "down", "unknown")
GPU_STATUSES = ("healthy", "degraded", "critical", "unknown")
READINESS = ("PASS", "WARN", "FAIL")


@dataclass
class RegionHead:
    up: bool
    taken_at: float | None = None  # the newest snapshot's time (None: the region holds none)
    snapshot: str | None = None
    error: str = ""


@dataclass
class Reading:
    """What one refresh read; the families are built from it at every scrape."""

    at: float
    duration_s: float = 0.0
    regions: dict[str, RegionHead] = field(default_factory=dict)
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)  # target -> status, z's, error ratio, last ts
    active: str | None = None
    runs: list[Any] = field(default_factory=list)  # llmdr.common.runs.RunMark
    drills: list[Any] = field(default_factory=list)  # llmdr.drill.record.DrillRecord, oldest first
    failovers: list[Any] = field(default_factory=list)  # llmdr.failover.steps.FailoverRecord, oldest first
    gpus: list[Any] = field(default_factory=list)  # llmdr.hardware.detect.GpuAssessment of every configured region


class LlmdrCollector:
    """A ``prometheus_client`` custom collector for one project (``cfg``). ``clock`` is the wall clock;
    ``probes_from`` the probe store row the counters start after (default: the newest when made; 0: all kept)."""

    def __init__(self, cfg: Config, *, cache_s: float | None = None, region_timeout: float = 20.0,
                 clock=time.time, probes_from: int | None = None) -> None:
        from llmdr.failover.monitor import SampleStore
        from llmdr.failover.watch import store_path

        self.cfg = cfg
        self.bundle = cfg.bundle.name
        self.cache_s = cfg.metrics.cache.total_seconds() if cache_s is None else cache_s
        self.region_timeout = region_timeout
        self.clock = clock
        self.store = SampleStore(store_path(cfg))
        self.feed = ProbeFeed(self.store, self.bundle, from_row=probes_from)
        self._lock = threading.Lock()
        self._reading: Reading | None = None
        self._read_mono = 0.0
        self._repos: dict[str, Any] = {}
        self._pending: dict[str, Future] = {}
        self._errors: dict[str, str] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(cfg.regions)), thread_name_prefix="llmdr-metrics")

    # prometheus_client calls describe() on register (an empty list: no collect at registration) and collect()
    def describe(self) -> list:
        return []

    def collect(self) -> Iterator:
        with self._lock:
            try:
                self.feed.update()
            except Exception as exc:  # noqa: BLE001 - the store busy or damaged: the other metrics still count
                log.warning("metrics: could not read new probes from %s: %s", self.store.path, exc)
            reading = self.reading()
        yield from self.feed.collect()
        yield from self.families(reading, self.clock())

    def reading(self) -> Reading:
        """The cached reading, refreshed when older than the cache period."""
        if self._reading is None or time.monotonic() - self._read_mono >= self.cache_s:
            self._reading = self.refresh()
            self._read_mono = time.monotonic()
        return self._reading

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.store.close()

    # reading ----------------------------------------------------------------------------------------------------------
    def refresh(self) -> Reading:
        t0 = time.monotonic()
        r = Reading(at=self.clock())
        r.regions = self._read_regions()
        for name, fn in (("monitor", self._read_monitor), ("router", self._read_router), ("runs", self._read_runs),
                         ("drills", self._read_drills), ("failovers", self._read_failovers),
                         ("GPU health", self._read_hardware)):
            try:
                fn(r)
            except Exception as exc:  # noqa: BLE001 - one unreadable source must not hide the others
                log.warning("metrics: could not read %s: %s", name, exc)
        r.duration_s = time.monotonic() - t0
        return r

    def _head(self, region: Region) -> RegionHead:
        from llmdr.repo.repository import Repository
        from llmdr.storage.factory import open_region

        repo = self._repos.get(region.name)
        try:
            if repo is None:
                repo = Repository(open_region(self.cfg, region, read_only=True, attempts=1),
                                  cache_dir=self.cfg.bundle_state_path / "cache" / region.name)
            newest = next(repo.newest_first(bundle=self.bundle), None)
        except Exception as exc:  # noqa: BLE001 - an unreachable region is a value (catalog_up 0), not a crash
            self._repos.pop(region.name, None)
            return RegionHead(False, error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        self._repos[region.name] = repo
        if newest is None:
            return RegionHead(True)
        return RegionHead(True, newest.taken_at, newest.id)

    def _read_regions(self) -> dict[str, RegionHead]:
        futures = {}
        for region in self.cfg.regions:
            pending = self._pending.get(region.name)
            futures[region.name] = pending if pending is not None and not pending.done() else \
                self._pool.submit(self._head, region)
        wait(list(futures.values()), timeout=self.region_timeout)
        out = {}
        for name, fut in futures.items():
            if fut.done():
                self._pending.pop(name, None)
                out[name] = fut.result()
            else:  # still reading: reported down now, picked up by a later refresh
                self._pending[name] = fut
                out[name] = RegionHead(False, error=f"no answer within {self.region_timeout:g} s")
            if out[name].error != self._errors.get(name, ""):  # said once per change, not at every refresh
                if out[name].up:
                    log.warning("metrics: region %s can be read again", name)
                else:
                    log.warning("metrics: region %s cannot be read: %s", name, out[name].error)
                self._errors[name] = out[name].error
        return out

    def _read_monitor(self, r: Reading) -> None:
        from llmdr.failover.monitor import assess_all
        from llmdr.failover.watch import targets

        assessed = assess_all(self.store, self.cfg.monitor, now=r.at)
        for name in [t.name for t in targets(self.cfg)] + sorted(set(assessed) - {t.name for t in targets(self.cfg)}):
            a = assessed.get(name)
            if a is None:
                r.endpoints[name] = {"status": "unknown"}
                continue
            ev = a.evidence
            lat, tok = (ev.get("latency") or {}).get("z"), (ev.get("tokens") or {}).get("z")
            r.endpoints[name] = {"status": a.status, "latency_z": lat, "tokens_z": None if tok is None else abs(tok),
                                 "error_ratio": ev.get("error_rate"), "last_ts": ev.get("last_ts")}

    def _read_hardware(self, r: Reading) -> None:
        from llmdr.hardware.monitor import assess_stored, configured, store_path
        from llmdr.hardware.store import HardwareStore

        regions = configured(self.cfg)
        if not regions or not store_path(self.cfg).exists():
            return
        store = HardwareStore(store_path(self.cfg))
        try:
            r.gpus = [g for name, s in regions.items() for g in assess_stored(store, name, s, now=r.at).gpus]
        finally:
            store.close()

    def _read_router(self, r: Reading) -> None:
        if self.cfg.router is None:
            return
        from llmdr.failover.router import router_log

        cur = router_log(self.cfg).current()
        r.active = (cur or {}).get("active") or self.cfg.primary.name

    def _read_runs(self, r: Reading) -> None:
        from llmdr.common.runs import read_marks

        r.runs = read_marks(self.cfg.bundle_state_path)

    def _read_drills(self, r: Reading) -> None:
        from llmdr.drill.record import history

        r.drills = history(self.cfg)

    def _read_failovers(self, r: Reading) -> None:
        from llmdr.failover.steps import history

        r.failovers = history(self.cfg)

    # families ---------------------------------------------------------------------------------------------------------
    def families(self, r: Reading, now: float) -> Iterator:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        fams: dict[str, Any] = {}

        def add(name: str, value: Any, *labels: str, scale: float = 1.0) -> None:
            try:
                value = None if value is None else float(value) * scale
            except (TypeError, ValueError):  # a hand-edited history: that value is left out, not the scrape
                log.warning("metrics: %s%s: %r is not a number", name, list(labels), value)
                return
            if value is None:
                return
            if name not in fams:
                d = BY_NAME[name]
                cls = CounterMetricFamily if d.kind == COUNTER else GaugeMetricFamily
                fams[name] = cls(name, d.help, labels=list(d.labels))
            fams[name].add_metric([self.bundle, *labels], value)

        cfg = self.cfg
        add("llmdr_rpo_objective_seconds", cfg.objectives.rpo.total_seconds())
        add("llmdr_rto_objective_seconds", cfg.objectives.rto.total_seconds())
        add("llmdr_drill_interval_seconds", cfg.objectives.drill_interval.total_seconds())
        add("llmdr_endpoint_anomaly_threshold", cfg.monitor.z_threshold)
        for name, head in r.regions.items():
            add("llmdr_region_catalog_up", 1 if head.up else 0, name)
            if head.up:
                add("llmdr_region_has_snapshot", 1 if head.taken_at is not None else 0, name)
                if head.taken_at is not None:
                    add("llmdr_rpo_age_seconds", max(0.0, now - head.taken_at), name)
        for name, e in r.endpoints.items():
            for status in STATUSES:
                add("llmdr_endpoint_status", 1 if e["status"] == status else 0, name, status)
            add("llmdr_endpoint_anomaly_score", e.get("latency_z"), name, "latency")
            add("llmdr_endpoint_anomaly_score", e.get("tokens_z"), name, "tokens")
            add("llmdr_endpoint_error_ratio", e.get("error_ratio"), name)
            add("llmdr_endpoint_last_probe_timestamp_seconds", e.get("last_ts"), name)
        for g in r.gpus:
            last = g.last or {}
            for status in GPU_STATUSES:
                add("llmdr_gpu_status", 1 if g.status == status else 0, g.region, g.uuid, status)
            add("llmdr_gpu_temperature_celsius", last.get("temperature_c"), g.region, g.uuid)
            add("llmdr_gpu_power_watts", last.get("power_w"), g.region, g.uuid)
            add("llmdr_gpu_hours_to_limit", (g.forecast or {}).get("hours"), g.region, g.uuid)
            add("llmdr_gpu_last_reading_timestamp_seconds", last.get("ts"), g.region, g.uuid)
        if r.active is not None:
            for region in cfg.regions:
                add("llmdr_active_region", 1 if region.name == r.active else 0, region.name)
        for what, fn in (("run records", self._run_families), ("drill reports", self._drill_families),
                         ("failover history", self._failover_families)):
            try:
                fn(r, add)
            except Exception as exc:  # noqa: BLE001 - a malformed record costs its own metrics, not the scrape's
                log.warning("metrics: %s left out: %s: %s", what, type(exc).__name__, exc)
        add("llmdr_metrics_refresh_timestamp_seconds", r.at)
        add("llmdr_metrics_refresh_duration_seconds", r.duration_s)
        yield from fams.values()

    @staticmethod
    def _run_families(r: Reading, add) -> None:
        for mark in r.runs:
            if mark.operation == "protect":
                add("llmdr_protect_last_success_timestamp_seconds", mark.ts)
            elif mark.operation == "verify" and mark.region:
                add("llmdr_verify_last_success_timestamp_seconds", mark.ts, mark.region)
            elif mark.operation == "readiness":
                add("llmdr_readiness_score", mark.detail.get("score"), scale=0.01)  # recorded 0-100, exported 0-1
                add("llmdr_readiness_last_run_timestamp_seconds", mark.ts)
                checks = mark.detail.get("checks")
                for status in READINESS if isinstance(checks, dict) else ():
                    add("llmdr_readiness_checks", checks.get(status, 0), status)

    @staticmethod
    def _drill_families(r: Reading, add) -> None:
        if not r.drills:
            return
        passed = [d for d in r.drills if d.passed]
        add("llmdr_drills", len(passed), "passed")
        add("llmdr_drills", len(r.drills) - len(passed), "failed")
        add("llmdr_drill_last_run_timestamp_seconds", r.drills[-1].started_ts)
        if passed:
            add("llmdr_drill_last_success_timestamp_seconds", passed[-1].started_ts)
        rto = next((d.measurements["rto_s"] for d in reversed(r.drills) if d.measurements.get("rto_s") is not None),
                   None)
        add("llmdr_drill_last_rto_seconds", rto)
        add("llmdr_drill_last_rpo_seconds", r.drills[-1].measurements.get("rpo_s"))

    @staticmethod
    def _failover_families(r: Reading, add) -> None:
        counts: dict[tuple[str, str], int] = {}
        for rec in r.failovers:
            result = "noop" if rec.noop else ("ok" if rec.ok else "failed")
            counts[(rec.kind, result)] = counts.get((rec.kind, result), 0) + 1
        for (kind, result), n in sorted(counts.items()):
            add("llmdr_failovers", n, kind, result)
        for kind in ("failover", "failback"):
            last = next((rec for rec in reversed(r.failovers) if rec.kind == kind and not rec.noop), None)
            if last is not None:
                add("llmdr_failover_last_timestamp_seconds", last.started_ts, kind)
        good = next((rec for rec in reversed(r.failovers)
                     if rec.kind == "failover" and rec.ok and not rec.noop and rec.rto_s is not None), None)
        if good is not None:
            add("llmdr_failover_last_rto_seconds", good.rto_s)


class ProjectCollector:
    """Every bundle of a project in one exporter: one :class:`LlmdrCollector` per bundle view (``views``, default
    ``cfg.views()``; a one-bundle project: itself), their families merged by name (a metric family appears once in
    an exposition; each sample keeps its ``bundle`` label). Keyword arguments go to each bundle's collector."""

    def __init__(self, cfg: Config, views: list[Config] | None = None, **kwargs: Any) -> None:
        self.cfg = cfg
        self.collectors = [LlmdrCollector(v, **kwargs) for v in (views if views is not None else cfg.views())]
        self.bundles = [c.bundle for c in self.collectors]

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator:
        merged: dict[str, Any] = {}
        for c in self.collectors:
            for fam in c.collect():
                have = merged.get(fam.name)
                if have is None:
                    merged[fam.name] = fam
                else:
                    have.samples.extend(fam.samples)
        yield from merged.values()

    def close(self) -> None:
        for c in self.collectors:
            c.close()
