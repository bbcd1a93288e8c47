"""What one failover or failback run decides, apart from doing it: the flows in ``flows/failover.py`` compose the
steps (``llmdr.failover.steps``) and ask this module what follows from each result.

- a new run's record: its target, the RTO clock's start (the monitor's first failed probe, the event's time);
- whether there is anything to do (the router already sends traffic to the target), whether the outage must be
  confirmed first (automation and drill runs; a manual run is a planned switchover) and what an unconfirmed one means
  (a blip: the run ends, successfully, and traffic stays);
- where a failback takes the snapshots from, what each step adds to the record;
- a person's override of the golden gate (``--accept-golden-mismatch --reason``): who may ask for it (a manual
  run, with a reason of its own), and what the record and the notices then say;
- once the run ends: the Prefect event it emits and the notices it sends.
"""

from __future__ import annotations

import time
from datetime import datetime

from llmdr.config import Config
from llmdr.errors import UsageError
from llmdr.failover.steps import FailoverRecord, pick_target
from llmdr.notify import Notice, failback_notice, failover_notice, verification_failed_notice


def parse_ts(value: float | str | None) -> float | None:
    """A unix time passed as a flow parameter (the automation renders it as text; "None" when absent)."""
    return float(value) if value not in (None, "", "None") else None


def parse_event_time(value: str | None) -> float | None:
    """The event's ``occurred`` time (ISO 8601, from the automation) as unix time; None if absent or unreadable."""
    if not value or value == "None":
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def new_failover(cfg: Config, *, active: str | None, to: str = "", reason: str, trigger: str,
                 first_failure_ts: float | str | None = None, detected_at: str | None = None,
                 scheduled_ts: float | None = None, flow_run_id: str | None = None,
                 now: float | None = None) -> FailoverRecord:
    """The record of a failover starting now, away from ``active`` to ``to`` (default: ``pick_target``)."""
    target = pick_target(cfg, to or None, active)
    return FailoverRecord(kind="failover", bundle=cfg.bundle.name, from_region=active, to_region=target.name,
                          trigger=trigger, reason=reason, started_ts=time.time() if now is None else now,
                          first_failure_ts=parse_ts(first_failure_ts), detected_ts=parse_event_time(detected_at),
                          scheduled_ts=scheduled_ts, flow_run_id=flow_run_id)


DEFAULT_REASON = "manual failover"  # the failover flow's and CLI's default reason: not a reason for an override


def operator() -> str:
    """Who runs this process, as ``user@host`` (the OS user; the uid when it has no name)."""
    import getpass
    import os
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def golden_override(trigger: str, accept: bool, reason: str, *, by: str | None = None,
                    run: dict | None = None) -> dict | None:
    """A person's acceptance of a golden mismatch, checked before anything runs: only a manual run may carry it
    (the automation and drills never do), and only with a reason of its own. None when not asked for. Who: ``by``,
    else for a deployment run (``run``: ``llmdr.integrations.prefect.run_origin``) the login that created it on the
    Prefect server and the worker that ran it, else this process's user@host (the CLI's person)."""
    if not accept:
        return None
    if trigger != "manual":
        raise UsageError(f"accept_golden_mismatch is a person's decision: a {trigger!r} run may not carry it. Run "
                         "`llmdr failover --to REGION --accept-golden-mismatch --reason TEXT` by hand")
    text = (reason or "").strip()
    if not text or text == DEFAULT_REASON:
        raise UsageError("--accept-golden-mismatch needs --reason TEXT saying why the replica's different answers "
                         "are acceptable (it is recorded, signed, and sent with the notice)")
    if by is None and run is not None:  # a UI / API run: the worker's OS user is not the person who asked
        who = run.get("creator") or "a Prefect UI / API user (the server recorded no login)"
        by = f"{who}, flow run {run.get('flow_run_id')}, run by the worker {operator()}"
    return {"by": by or operator(), "reason": text}


def new_failback(cfg: Config, *, active: str | None, reason: str, trigger: str, flow_run_id: str | None = None,
                 now: float | None = None) -> FailoverRecord:
    """The record of a failback starting now: traffic back to the primary."""
    return FailoverRecord(kind="failback", bundle=cfg.bundle.name, from_region=active, to_region=cfg.primary.name,
                          trigger=trigger, reason=reason, started_ts=time.time() if now is None else now,
                          flow_run_id=flow_run_id)


def already_active(rec: FailoverRecord, active: str | None) -> bool:
    """Nothing to do: the router already sends traffic to the target. The record says so (a successful no-op)."""
    if active != rec.to_region:
        return False
    rec.noop = True
    rec.ok = True
    rec.step("already-active", True, f"the router already sends traffic to {rec.to_region}")
    return True


def needs_confirmation(trigger: str, active: str | None) -> bool:
    """Automation and drill runs move traffic only after direct probes confirm the outage; a manual run is a planned
    switchover. With no active region there is nothing to probe."""
    return trigger != "manual" and active is not None


def outage_confirmed(rec: FailoverRecord, active: str, confirmation: dict) -> bool:
    """Record the direct probes of ``active``; False (the run ends, successfully, traffic stays) if one answered."""
    confirmed = bool(confirmation["confirmed"])
    rec.confirmed = confirmed
    rec.step("confirm-outage", confirmed, f"{len(confirmation['samples'])} direct probe(s) of {active}")
    if not confirmed:
        rec.noop = True
        rec.ok = True  # the right outcome: a blip does not move traffic
        rec.error = f"{active} answered a direct probe: not an outage, traffic stays"
    return confirmed


def failback_source(cfg: Config, active: str | None) -> str:
    """Where snapshots taken while failed over live: the region serving now, else the failover target."""
    return active or cfg.failover_target().name


def replica_ready(rec: FailoverRecord, replica: dict) -> None:
    rec.replica = replica
    sid = (replica.get("snapshot") or "?")[:12]
    if rec.kind == "failback":
        rec.step("ensure-replica", True, f"primary replica on {sid}")
    else:
        rec.step("ensure-replica", True, f"{'cold start' if replica.get('cold') else 'warm standby'} on {sid}")


def data_copied_back(rec: FailoverRecord, data: dict) -> None:
    rec.step("primary-data-current", True, f"{len(data['copied'])} snapshot(s) copied back; newest "
                                            f"{(data['source_newest'] or '?')[:12]}")


def gate_summary(report: dict) -> str:
    """``5/6 cases pass the similarity gate (threshold 0.9, 6 needed): chat-1 0.957, ...``"""
    gate = report.get("gate")
    if not gate:  # a report without gate modes (older records)
        return f"{report['passed']}/{report['total']} cases"
    thr = f"threshold {gate['threshold']}, " if gate.get("threshold") is not None else ""
    scores = ", ".join(f"{c['id']} {'error' if c.get('score') is None else c['score']}"
                       for c in report.get("cases", []))
    return (f"{report['passed']}/{report['total']} cases pass the {gate['mode']} gate ({thr}"
            f"{report.get('required', report['total'])} needed)" + (f": {scores}" if scores else ""))


def golden_direct(rec: FailoverRecord, report: dict | None, error: BaseException | None = None,
                  override: dict | None = None) -> None:
    """The golden set against the target's replica, before any switch: its report (mode and every score), or the
    error that stopped it. A mismatch a person accepted (``override``) is a failed check plus the override step."""
    if error is not None:
        rec.golden_direct = getattr(error, "report", None)  # the failed report, when the check got that far
        rec.step("golden-check", False, str(error))
        return
    rec.golden_direct = report
    if report.get("accepted_mismatch") and override is not None:
        rec.golden_override = {**override, "report": report}
        rec.step("golden-check", False, f"MISMATCH: {gate_summary(report)}")
        rec.step("golden-override", True, f"GOLDEN MISMATCH ACCEPTED by {override['by']}: {override['reason']}")
        return
    rec.step("golden-check", True, gate_summary(report))


def switched(rec: FailoverRecord, previous: str | None, now: float | None = None) -> None:
    rec.switched_ts = time.time() if now is None else now
    rec.step("switch-router", True, f"{previous} -> {rec.to_region}")


def router_check_failed(rec: FailoverRecord, error: BaseException, previous: str | None,
                        active_after: str | None) -> None:
    """The check through the router failed after the switch; the transaction switched back (did it work?)."""
    rec.rolled_back = active_after == previous
    rec.step("verify-through-router", False, f"{error}; switch rolled back to {previous}: {rec.rolled_back}")


def verified(rec: FailoverRecord, result: dict) -> None:
    """Golden-correct answers through the router from the target: the run is done, its RTO measured."""
    rec.golden_router = result["golden"]
    if result["golden"].get("accepted_mismatch"):
        if rec.golden_override is not None:
            rec.golden_override["router_report"] = result["golden"]
        rec.step("verify-through-router", True, f"answers from {rec.to_region} through the router; golden MISMATCH "
                                                 f"accepted: {gate_summary(result['golden'])}")
    else:
        rec.step("verify-through-router", True, f"golden set correct through the router from {rec.to_region}")
    rec.finish(result["verified_ts"])


def failed(rec: FailoverRecord, error: BaseException) -> None:
    rec.error = rec.error or str(error)
    rec.ok = False


def outcome_event(rec: FailoverRecord) -> str | None:
    """The Prefect event a finished run emits (``llmdr.failover.completed``...); None for a no-op."""
    if rec.noop:
        return None
    return f"llmdr.{rec.kind}.{'completed' if rec.ok else 'failed'}"


def notices(rec: FailoverRecord) -> list[Notice]:
    """What people are told when a run ends: the failover (or failback) notice, plus a verification-failed notice
    when the target's replica failed its golden check. Nothing for a no-op."""
    if rec.noop:
        return []
    details = {"flow_run_id": rec.flow_run_id, "steps": [s.name + (" ok" if s.ok else " FAILED") for s in rec.steps],
               "error": rec.error}
    reason = rec.reason
    what = "golden check before switching traffic"
    ov = rec.golden_override
    if ov is not None:  # said loudly: the title, the reason and the evidence of every notice carry it
        details["golden_override"] = {"by": ov["by"], "reason": ov["reason"],
                                      "gate": gate_summary(ov["report"])}
        reason = f"GOLDEN MISMATCH ACCEPTED by {ov['by']} ({ov['reason']})"
        what = f"golden check before switching traffic; the mismatch was ACCEPTED by {ov['by']}: {ov['reason']}"
    make = failover_notice if rec.kind == "failover" else failback_notice
    out = [make(rec.bundle, rec.from_region, rec.to_region, rto_s=rec.rto_s, reason=reason, ok=rec.ok,
                details=details)]
    if any(s.name.startswith("golden") and not s.ok for s in rec.steps):
        out.append(verification_failed_notice(rec.bundle, rec.to_region, what=what, details=details))
    return out
