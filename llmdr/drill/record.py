"""The DR drill's record: scope, timeline, measurements, controls and evidence, and the verdict.

The ``dr-drill`` flow fills a :class:`DrillRecord` step by step (every step with a UTC time); :func:`evaluate`
turns the measurements into PASS/FAIL controls; the report renderer (``llmdr.drill.report``) and the signer
(``llmdr.drill.signing``) only read the finished record's JSON. A drill that leaves traffic in the DR region never passes.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llmdr.common.process import child_env
from llmdr.config import Config
from llmdr.errors import LlmdrError
from llmdr.failover.steps import utc

SCHEMA = 1
NO_PREVIOUS = "no previous drill"


class DrillFailed(LlmdrError):
    """The drill ran and at least one control failed (or the system was left failed over). The report exists."""

    exit_code = 8

    def __init__(self, drill_id: str, reasons: list[str], folder: str, record: dict | None = None) -> None:
        self.drill_id, self.reasons, self.folder, self.record = drill_id, reasons, folder, record
        super().__init__(f"DR drill {drill_id} FAILED:\n" + "\n".join(f"  - {r}" for r in reasons)
                         + f"\nreport: {folder}")

    def __reduce__(self):  # Prefect pickles exceptions into states
        return (DrillFailed, (self.drill_id, self.reasons, self.folder, self.record))


def new_drill_id(ts: float | None = None) -> str:
    stamp = datetime.fromtimestamp(time.time() if ts is None else ts, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


# timeline kinds, in the order a drill meets them (the chart colours by kind)
KINDS = ("info", "outage", "detection", "switch", "recovery", "check", "failback")


@dataclass
class TimelineEvent:
    at_utc: str
    t_s: float  # seconds since the drill started
    kind: str  # one of KINDS
    event: str  # short label, e.g. "primary region down (S3 + replica stopped)"
    ok: bool | None = None  # None: informational
    detail: str = ""


@dataclass
class Control:
    id: str  # rto, rpo, golden_after_failover, restore_test, bundle_complete_dr, failback, previous_drill
    name: str
    passed: bool | None  # None: not applicable (a first drill has no previous drill), shown as N/A
    value: str  # measured, human-readable ("2.41 s")
    objective: str  # "<= 15m"
    detail: str = ""


@dataclass
class DrillRecord:
    bundle: str
    started_ts: float
    started_by: dict[str, Any]  # {"kind": "schedule"|"ui"|"cli"|"api", "who": ..., "deployment": ..., ...}
    tool_version: str
    scope: dict[str, Any]  # bundle, regions [{name, role, endpoint, bucket}], objectives {rpo_s, rto_s, ...}, router
    id: str = ""
    schema: int = SCHEMA
    ended_ts: float | None = None
    outage: dict[str, Any] = field(default_factory=dict)  # {region, action, started_utc, restored_utc}
    measurements: dict[str, Any] = field(default_factory=dict)  # rto_s, rpo_s, detection_s, dispatch_s, ...
    controls: list[Control] = field(default_factory=list)
    timeline: list[TimelineEvent] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    passed: bool = False
    failed_over_at_end: bool = False
    failure_reasons: list[str] = field(default_factory=list)
    signer: dict[str, Any] | None = None  # the signing key's public facts, set when the report is published

    def __post_init__(self) -> None:
        if not self.id:
            self.id = new_drill_id(self.started_ts)

    def mark(self, kind: str, event: str, *, ok: bool | None = None, detail: str = "", ts: float | None = None) -> None:
        """Add a timeline entry (now, or at ``ts``), kept in time order."""
        ts = time.time() if ts is None else ts
        self.timeline.append(TimelineEvent(at_utc=utc(ts), t_s=round(ts - self.started_ts, 3), kind=kind,
                                           event=event, ok=ok, detail=detail))
        self.timeline.sort(key=lambda e: e.t_s)

    def fail(self, reason: str) -> None:
        if reason not in self.failure_reasons:
            self.failure_reasons.append(reason)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["started_utc"] = utc(self.started_ts)
        out["ended_utc"] = utc(self.ended_ts) if self.ended_ts is not None else None
        out["duration_s"] = round(self.ended_ts - self.started_ts, 3) if self.ended_ts is not None else None
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "DrillRecord":
        data = {k: v for k, v in data.items() if k not in ("started_utc", "ended_utc", "duration_s")}
        controls = [Control(**c) for c in data.pop("controls", [])]
        timeline = [TimelineEvent(**e) for e in data.pop("timeline", [])]
        return cls(**data, controls=controls, timeline=timeline)


def _dur(seconds: float) -> str:
    from datetime import timedelta

    from llmdr.config import format_duration

    return format_duration(timedelta(seconds=seconds))


def _gate_expected(g: dict[str, Any]) -> str:
    """What the golden control expects: the gate the check ran under ("all cases" before gate modes)."""
    gate = g.get("gate") if isinstance(g.get("gate"), dict) else None
    if not gate:
        return "all cases"
    need = "all cases" if g.get("required") in (None, g.get("total")) else f"{g['required']} of {g.get('total')} cases"
    thr = f" score >= {gate['threshold']}" if gate.get("threshold") is not None else ""
    return f"{need} pass the {gate.get('mode', 'exact')} gate{thr}"


def evaluate(rec: DrillRecord, cfg: Config, *, previous_pass_ts: float | None) -> None:
    """Fill ``rec.controls`` and ``rec.passed`` from the measurements and evidence gathered by the flow."""
    m, ev = rec.measurements, rec.evidence
    rto_obj = cfg.objectives.rto.total_seconds()
    rpo_obj = cfg.objectives.rpo.total_seconds()
    interval = cfg.objectives.drill_interval.total_seconds()
    controls = []
    rto = m.get("rto_s")
    controls.append(Control("rto", "RTO within objective", rto is not None and rto <= rto_obj,
                            "not recovered" if rto is None else f"{rto:.1f} s", f"<= {_dur(rto_obj)}",
                            m.get("rto_detail", "")))
    rpo = m.get("rpo_s")
    controls.append(Control("rpo", "RPO within objective", rpo is not None and rpo <= rpo_obj,
                            "no snapshot in the DR region" if rpo is None else f"{rpo:.1f} s", f"<= {_dur(rpo_obj)}",
                            m.get("rpo_detail", "")))
    g = ev.get("golden_after_failover") or {}
    controls.append(Control("golden_after_failover", "Golden outputs correct through the router after failover",
                            bool(g.get("ok")), f"{g.get('passed', 0)}/{g.get('total', 0)} cases", _gate_expected(g),
                            "" if g else "not checked"))
    rt = ev.get("restore_test") or {}
    controls.append(Control("restore_test", "Restore test from the DR store passed", bool(rt.get("ok")),
                            "passed" if rt.get("ok") else ("failed" if rt else "not run"), "passed",
                            rt.get("summary", "")))
    bc = ev.get("bundle_complete_dr") or {}
    controls.append(Control("bundle_complete_dr", "Bundle complete in the DR region", bool(bc.get("complete")),
                            "complete" if bc.get("complete") else ("incomplete" if bc else "not checked"),
                            "every required component", bc.get("detail", "")))
    fb = ev.get("failback") or {}
    controls.append(Control("failback", "Failback succeeded (traffic back on the primary)",
                            bool(fb.get("ok")) and not rec.failed_over_at_end,
                            "ok" if fb.get("ok") and not rec.failed_over_at_end else "NOT failed back",
                            "traffic on the primary at the end", fb.get("error") or ""))
    dss = ev.get("datasets")
    if dss:  # only when datasets are configured
        bad = [d["name"] for d in dss if not d.get("valid")]
        controls.append(Control("datasets", "Datasets restored from the DR remote and valid", not bad,
                                f"{len(dss) - len(bad)}/{len(dss)} valid", "md5 matches and expectation suite passes",
                                "; ".join(d.get("validation") or d.get("error", "") for d in dss)))
    if previous_pass_ts is None:
        controls.append(Control("previous_drill", "Previous passing drill within the drill interval", None,
                                NO_PREVIOUS, f"<= {_dur(interval)}", "N/A: this is the first drill on record"))
    else:
        age = rec.started_ts - previous_pass_ts
        controls.append(Control("previous_drill", "Previous passing drill within the drill interval",
                                age <= interval, f"{_dur(age)} ago ({utc(previous_pass_ts)})", f"<= {_dur(interval)}"))
    rec.controls = controls
    # the previous-drill control reports on the programme, not on this drill: a first drill can still pass
    blocking = [c for c in controls if c.id != "previous_drill"]
    for c in blocking:
        if not c.passed:
            rec.fail(f"{c.name}: {c.value} (objective {c.objective})")
    rec.passed = all(c.passed is True for c in blocking) and not rec.failed_over_at_end and not rec.failure_reasons


def drills_dir(cfg: Config) -> Path:
    return cfg.reports_path / "drills"


def history(cfg: Config, *, stores: bool = True) -> list[DrillRecord]:
    """Every drill with a report, oldest first: the reports folder, and (``stores``) the signed reports the regions'
    stores hold that it lacks (verified, fetched once per command: ``llmdr.drill.stored``)."""
    folders = sorted(drills_dir(cfg).glob("*/evidence.json"))
    if stores:
        from llmdr.drill.stored import cached_folders

        local = {p.parent.name for p in folders}
        folders += [f / "evidence.json" for f in cached_folders(cfg, local)]
    out = []
    for path in folders:
        try:
            out.append(DrillRecord.from_json(json.loads(path.read_text(encoding="utf-8"))))
        except (ValueError, TypeError, KeyError, OSError):
            continue
    return sorted(out, key=lambda r: r.started_ts)


def last_pass_ts(cfg: Config, before: float | None = None) -> float | None:
    passes = [r.started_ts for r in history(cfg) if r.passed and (before is None or r.started_ts < before)]
    return max(passes) if passes else None


# --- steps the dr-drill flow composes (no Prefect here) ------------------------------------------------------------
def scope_of(cfg: Config) -> dict[str, Any]:
    return {"bundle": cfg.bundle.name,
            "regions": [{"name": r.name, "role": r.role, "endpoint": r.endpoint or f"aws:{r.s3_region}",
                         "bucket": r.bucket, "serving": r.serving.url if r.serving else None} for r in cfg.regions],
            "objectives": {"rpo_s": cfg.objectives.rpo.total_seconds(), "rto_s": cfg.objectives.rto.total_seconds(),
                           "drill_interval_s": cfg.objectives.drill_interval.total_seconds()},
            "router": {"kind": cfg.router.kind, "url": cfg.router.url} if cfg.router else None,
            "outage_action": cfg.drill.outage, "outage_scope": outage_scope(cfg)}


def outage_scope(cfg: Config) -> str:
    """What the drill's outage cuts, in words for the report's scope."""
    if cfg.drill.outage == "command":
        return "what drill.outage_command cuts"
    if cfg.drill.outage == "replica":
        return (f"bundle {cfg.bundle.name}'s serving replica in the primary region only; the region's S3 store, its "
                "Prefect workers and other bundles keep running")
    shared = (" shared by every bundle of the project: the other bundles' protects fail until it is back"
              if cfg.view_of else "")
    return f"the whole primary region: its S3 store, its Prefect workers and its replica{shared}"


def simulate_outage(cfg: Config, region: str) -> dict[str, Any]:
    """Cut the region off without deleting anything: locally, stop its replica, S3 server and workers (by PID);
    with ``drill.outage: replica`` only this bundle's replica there (by PID); with ``drill.outage: command``, run
    ``drill.outage_command``. The result's ``scope`` says which (``region``, ``replica`` or ``command``)."""
    import subprocess

    reg = cfg.region(region)
    if cfg.drill.outage == "command":
        r = subprocess.run(cfg.drill.outage_command or [], capture_output=True, text=True, timeout=600,
                           env=child_env(pass_env=cfg.drill.pass_env), umask=0o077)
        return {"region": region, "action": "command: " + " ".join(cfg.drill.outage_command or []),
                "returncode": r.returncode, "output": (r.stdout + r.stderr)[-500:], "scope": "command"}
    if cfg.drill.outage == "replica":
        return _stop_bundle_replica(cfg, reg)
    from llmdr.devstack.regions import region_pid, stop_region
    from llmdr.serving.replica import replica_status, stop_replica

    if not reg.is_local:
        from llmdr.errors import UsageError

        raise UsageError(f"region '{region}' is not local, so `drill.outage: local` cannot stop it; set drill.outage: "
                         "command with an outage_command that blocks the region (never one that deletes data)")
    from llmdr.devstack import orchestration

    rep = replica_status(cfg, reg) if reg.serving else None
    s3_pid = region_pid(cfg, reg)
    stop_replica(cfg, reg)
    stop_region(cfg, reg)
    # the region's Prefect workers go with it (fast: a lost region does not shut down politely)
    workers = orchestration.stop_workers(cfg, region, timeout=3.0)
    stopped = [f"{name} (pid {pid})" for name, pid, done in workers if done]
    spared = [f"{name} (pid {pid}: it runs this drill)" for name, pid, done in workers if pid and not done]
    others = (f"; every bundle's store and workers in {region} went with it (drill.outage: replica would cut only "
              f"{cfg.bundle.name}'s replica)" if cfg.view_of else "")
    return {"region": region, "action": f"local: stopped the serving replica (pid {rep.pid if rep else '-'}), the "
                                        f"S3 server (pid {s3_pid or '-'}) and the Prefect workers "
                                        f"{', '.join(stopped) or '-'}" + (f"; left running {', '.join(spared)}"
                                                                         if spared else "") + "; data left on disk"
                                        + others,
            "workers_stopped": [name for name, _, done in workers if done], "scope": "region"}


def _stop_bundle_replica(cfg: Config, reg) -> dict[str, Any]:
    """``drill.outage: replica``: stop this bundle's replica in the region by its PID, nothing else."""
    from llmdr.errors import UsageError
    from llmdr.serving.replica import can_start, replica_status, stop_replica

    if reg.serving is None:
        raise UsageError(f"drill.outage: replica: bundle '{cfg.bundle.name}' has no serving replica in region "
                         f"'{reg.name}' to stop; give it one (serving: in the region, or the bundle's serving: "
                         f"{{{reg.name}: {{url: ...}}}}), or use drill.outage: local or command")
    rep = replica_status(cfg, reg)
    if rep.pid is None or not can_start(reg):
        raise UsageError(f"drill.outage: replica: the replica of '{cfg.bundle.name}' in '{reg.name}' "
                         f"({reg.serving.url}) was not started by llmdr (no PID to stop, or no way to start it "
                         "again); start it with `llmdr stack up` or `llmdr serve`, or use drill.outage: command")
    stop_replica(cfg, reg)
    return {"region": reg.name, "scope": "replica",
            "action": f"replica: stopped the serving replica of {cfg.bundle.name} in {reg.name} (pid {rep.pid}); "
                      f"the region's S3 store, its Prefect workers and other bundles' replicas left running"}


def end_outage(cfg: Config, region: str) -> dict[str, Any]:
    import subprocess

    reg = cfg.region(region)
    if cfg.drill.outage == "command":
        r = subprocess.run(cfg.drill.restore_command or [], capture_output=True, text=True, timeout=600,
                           env=child_env(pass_env=cfg.drill.pass_env), umask=0o077)
        return {"action": "command: " + " ".join(cfg.drill.restore_command or []), "returncode": r.returncode}
    from llmdr.devstack import orchestration
    from llmdr.devstack.regions import start_region
    from llmdr.serving.replica import can_start, replica_status, start_replica

    if cfg.drill.outage == "replica":
        rep = start_replica(cfg, reg)  # from the region's own store, as after a real outage
        return {"action": f"replica: {cfg.bundle.name}'s replica in {region} restarted from its own store "
                          f"(pid {rep.pid})", "healthy": replica_status(cfg, reg).healthy}
    st = start_region(cfg, reg)
    action = f"local: S3 server started again (pid {st.pid})"
    if orchestration.running(cfg):  # the local Prefect stack runs: the region's workers come back with it
        pids = orchestration.start_workers(cfg, [region])
        action += f", Prefect workers {', '.join(f'{n} (pid {p})' for n, p in pids.items())}"
    if reg.serving is not None and can_start(reg):
        rep = start_replica(cfg, reg)  # from the region's own store, as after a real outage
        action += f", replica restarted from its own store (pid {rep.pid})"
    return {"action": action, "healthy": st.healthy}


def wait_for_failover(cfg: Config, since_ts: float, timeout: float, *, poll: float = 0.2):
    """The first failover record that started after ``since_ts`` (the automation's run), waiting up to
    ``timeout`` seconds; None if none came. The drill never starts a failover itself."""
    from llmdr.failover import steps as fo

    deadline = time.monotonic() + timeout
    while True:
        for rec in fo.history(cfg, stores=False):
            if rec.kind == "failover" and rec.started_ts >= since_ts and not rec.noop:
                return rec
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll)
