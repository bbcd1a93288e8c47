"""failover and failback: move traffic to a verified replica in another region, measure RTO, and come back.

failover (run by the automation on ``llmdr.endpoint.down`` for the active region, by ``llmdr failover``, or from
the UI): confirm the outage → a healthy replica in the target region (warm, or cold-started from that region's
store) → golden set against it → [switch the router → golden set through the router] as one transaction, rolled
back if the second check fails → record, artifact, event, notification.

failback: the primary's store answers → copy back any snapshot taken while failed over → (re)start the primary's
replica on the newest snapshot → golden set → [switch → verify through the router] → record, artifact, notice.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from prefect import flow, runtime
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.transactions import transaction

from llmdr.artifacts import artifact_key, failover_markdown, failover_table
from llmdr.config import load_config
from llmdr.failover import events
from llmdr.failover import steps as core
from tasks.failover import (
    confirm_outage,
    copy_back_snapshots,
    ensure_replica,
    golden_check,
    read_active_region,
    send_notice,
    switch_router,
    verify_through_router,
)


def _publish(config_path: str, rec: core.FailoverRecord) -> None:
    """History, artifacts, event and notice for a finished (or failed) run; never raises past this point."""
    from llmdr.notify import failback_notice, failover_notice, verification_failed_notice

    cfg = load_config(config_path)
    core.append_history(cfg, rec)
    key = artifact_key(rec.kind, cfg.bundle.name)
    create_markdown_artifact(key=key, markdown=failover_markdown(rec.to_json()),
                             description=f"Newest {rec.kind} of {cfg.bundle.name}")
    create_table_artifact(key=f"{key}-table", table=failover_table([r.to_json() for r in core.history(cfg)
                                                                     if r.kind == rec.kind]),
                          description=f"Every {rec.kind} of {cfg.bundle.name}, RTO per run")
    if rec.noop:
        return
    outcome = "completed" if rec.ok else "failed"
    events.emit(f"llmdr.{rec.kind}.{outcome}", events.bundle_resource(cfg.bundle.name), rec.to_json())
    details = {"flow_run_id": rec.flow_run_id, "steps": [s.name + (" ok" if s.ok else " FAILED") for s in rec.steps],
               "error": rec.error}
    if rec.kind == "failover":
        notice = failover_notice(cfg.bundle.name, rec.from_region, rec.to_region, rto_s=rec.rto_s, reason=rec.reason,
                                 ok=rec.ok, details=details)
    else:
        notice = failback_notice(cfg.bundle.name, rec.from_region, rec.to_region, rto_s=rec.rto_s, reason=rec.reason,
                                 ok=rec.ok, details=details)
    notices = [notice]
    if any(s.name.startswith("golden") and not s.ok for s in rec.steps):
        notices.append(verification_failed_notice(cfg.bundle.name, rec.to_region, what="golden check before "
                                                  "switching traffic", details=details))
    for n in notices:
        send_notice(config_path, _notice_args(n))


def _scheduled_ts() -> float | None:
    when = runtime.flow_run.scheduled_start_time
    return when.timestamp() if when is not None and runtime.flow_run.id else None


def _parse_time(value: str) -> float | None:
    """The event's ``occurred`` time (ISO 8601, from the automation) as unix time; None if absent."""
    from datetime import datetime

    if not value or value == "None":
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _notice_args(n) -> dict:
    return {"kind": n.kind, "title": n.title, "body": n.body, "severity": n.severity, "data": n.data}


def _switch_and_verify(config_path: str, rec: core.FailoverRecord, previous: str | None) -> None:
    """Switch, then verify through the router, as one transaction: a failed verification switches back."""
    cfg = load_config(config_path)
    try:
        with transaction():
            switch_router(config_path, rec.to_region, rec.reason, previous)
            rec.switched_ts = time.time()
            rec.step("switch-router", True, f"{previous} -> {rec.to_region}")
            verified = verify_through_router(config_path, rec.to_region)
    except Exception as exc:
        if rec.switched_ts is not None:
            from llmdr.failover.router import open_router

            rec.rolled_back = open_router(cfg).active() == previous
            rec.step("verify-through-router", False, f"{exc}; switch rolled back to {previous}: {rec.rolled_back}")
        raise
    rec.golden_router = verified["golden"]
    rec.step("verify-through-router", True, f"golden set correct through the router from {rec.to_region}")
    rec.finish(verified["verified_ts"])


@contextmanager
def _recorded(config_path: str, rec: core.FailoverRecord):
    """Whatever happens inside, the run is recorded, published and announced; a failure marks it not ok."""
    try:
        yield
    except Exception as exc:
        rec.error = rec.error or str(exc)
        rec.ok = False
        raise
    finally:
        _publish(config_path, rec)


def _noop_if_active(rec: core.FailoverRecord, active: str | None) -> bool:
    if active != rec.to_region:
        return False
    rec.noop = True
    rec.ok = True
    rec.step("already-active", True, f"the router already sends traffic to {rec.to_region}")
    return True


def _verify_and_switch(config_path: str, rec: core.FailoverRecord, previous: str | None) -> None:
    """The golden set against the target's replica directly, then the switch + check through the router."""
    try:
        rec.golden_direct = golden_check(config_path, rec.to_region)
        rec.step("golden-check", True, f"{rec.golden_direct['passed']}/{rec.golden_direct['total']} cases")
    except Exception as exc:
        rec.step("golden-check", False, str(exc))
        raise
    _switch_and_verify(config_path, rec, previous)


@flow(name="failover")
def failover(to: str = "", reason: str = "manual failover", trigger: str = "manual",
             first_failure_ts: float | str | None = None, detected_at: str = "", config_path: str = "") -> dict:
    """``to``: target region (default: failover.target or the first secondary). ``trigger``: "automation" and
    "drill" runs require the outage to be confirmed by direct probes; a "manual" run is a planned switchover and
    moves traffic even if the active region answers. ``first_failure_ts``: unix time of the first failed probe
    (from the monitor's event; the automation passes it as text), the start of the RTO clock."""
    cfg = load_config(config_path)
    first_failure_ts = float(first_failure_ts) if first_failure_ts not in (None, "", "None") else None
    detected_ts = _parse_time(detected_at)
    active = read_active_region(config_path)
    target = core.pick_target(cfg, to or None, active)
    rec = core.FailoverRecord(kind="failover", bundle=cfg.bundle.name, from_region=active, to_region=target.name,
                              trigger=trigger, reason=reason, started_ts=time.time(),
                              first_failure_ts=first_failure_ts, detected_ts=detected_ts,
                              scheduled_ts=_scheduled_ts(), flow_run_id=str(runtime.flow_run.id or "") or None)
    with _recorded(config_path, rec):
        if _noop_if_active(rec, active):
            return rec.to_json()
        if trigger != "manual" and active is not None:
            conf = confirm_outage(config_path, active)
            rec.confirmed = conf["confirmed"]
            rec.step("confirm-outage", conf["confirmed"], f"{len(conf['samples'])} direct probe(s) of {active}")
            if not conf["confirmed"]:
                rec.noop = True
                rec.ok = True  # the right outcome: a blip does not move traffic
                rec.error = f"{active} answered a direct probe: not an outage, traffic stays"
                return rec.to_json()
        rec.replica = ensure_replica(config_path, target.name)
        rec.step("ensure-replica", True, f"{'cold start' if rec.replica.get('cold') else 'warm standby'} on "
                                          f"{(rec.replica.get('snapshot') or '?')[:12]}")
        _verify_and_switch(config_path, rec, active)
        return rec.to_json()


@flow(name="failback")
def failback(reason: str = "primary healthy again", trigger: str = "manual", config_path: str = "") -> dict:
    """Return traffic to the primary once its store answers and holds every snapshot; its replica is (re)started
    on the newest snapshot and verified before the switch."""
    cfg = load_config(config_path)
    active = read_active_region(config_path)
    primary = cfg.primary
    rec = core.FailoverRecord(kind="failback", bundle=cfg.bundle.name, from_region=active, to_region=primary.name,
                              trigger=trigger, reason=reason, started_ts=time.time(),
                              flow_run_id=str(runtime.flow_run.id or "") or None)
    with _recorded(config_path, rec):
        if _noop_if_active(rec, active):
            return rec.to_json()
        data = copy_back_snapshots(config_path, active or cfg.failover_target().name)
        rec.step("primary-data-current", True, f"{len(data['copied'])} snapshot(s) copied back; newest "
                                                f"{(data['source_newest'] or '?')[:12]}")
        rec.replica = ensure_replica(config_path, primary.name, "latest", True)
        rec.step("ensure-replica", True, f"primary replica on {(rec.replica.get('snapshot') or '?')[:12]}")
        _verify_and_switch(config_path, rec, active)
        return rec.to_json()
