"""Approval of scheduled drills: who must approve, the form a person fills in, what the answer means, and what the
signed evidence keeps of it. Plain functions (no Prefect): the dr-drill flow pauses its run through
``llmdr.integrations.prefect.pause_for_input`` and hands the answer here.

A drill started by the Prefect schedule cuts a production region off while nobody may be watching, so with
``drill.approval: required`` (the default) it waits, before anything is cut, until a person resumes its paused flow
run with an :class:`ApprovalForm` (Prefect UI: the run's Resume button; API: ``POST /api/flow_runs/<id>/resume``
with ``{"run_input": {...}}``). A run started from the UI or API, or by `llmdr drill`, was started by a person and
is not paused; the evidence says that no approval was asked and who started it.

What the evidence can prove about the approver is limited; see docs/design/security.md ("Identity in the evidence"):
the approver's name is self-declared; the login the authenticating front (``llmdr.devstack.uiproxy``) saw on the
resume request is recorded next to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import BaseModel, Field

from llmdr.config import Config, format_duration
from llmdr.drill.record import DrillRecord
from llmdr.failover.steps import utc

PAUSE_KEY = "drill-approval"  # the pause's key: one approval per drill run
POLL_S = 5  # how often the paused run asks the server whether it was resumed


class ApprovalForm(BaseModel):
    """The form of a paused scheduled drill (Prefect shows it when the run is resumed)."""

    approver: str = Field(min_length=1, max_length=200,
                          description="Your name. Self-declared: the evidence keeps it as you typed it, next to the "
                                      "login that sent this form (when the Prefect UI is behind llmdr's front).")
    reason: str = Field(min_length=1, max_length=2000,
                        description="Why the drill may cut the primary region off now (or why it must not).")
    approve: bool = Field(True, description="Untick to reject: the drill then ends without cutting anything.")
    not_before: datetime | None = Field(None, description="Optional: the drill waits until this time (UTC) "
                                                          "before it starts.")
    not_after: datetime | None = Field(None, description="Optional: the drill must start before this time (UTC); "
                                                         "later, it ends without cutting anything.")


@dataclass
class Decision:
    """What the answer to the approval means for the drill."""

    go: bool  # True: the drill runs (after ``wait_s``)
    outcome: str  # approved | rejected | timed-out | invalid | not-required | not-asked
    detail: str
    wait_s: float = 0.0  # an approval whose window opens later: seconds to wait before anything is cut


def requirement(cfg: Config, started_by: dict[str, Any]) -> Decision | None:
    """None when this drill must wait for an approval; else the decision that it runs without one, and why. A run of
    a deployment whose flow run could not be read (kind "api" with a deployment) may be a scheduled one: it waits."""
    kind = started_by.get("kind")
    if kind == "cli":
        return Decision(True, "not-asked", "not asked: started by a person at the control host with `llmdr drill` "
                                           f"(OS user {started_by.get('os_user') or 'unknown'})")
    unknown = kind == "api" and started_by.get("deployment")  # a deployment's run whose creator could not be read
    if kind != "schedule" and not unknown:
        return Decision(True, "not-asked", f"not asked: started by {started_by.get('who') or kind} (only drills "
                                           "started by the Prefect schedule wait for an approval)")
    if cfg.drill.approval == "none":
        return Decision(True, "not-required", "not required by config (drill.approval: none)")
    return None


def _aware(dt: datetime | None) -> datetime | None:
    """A window bound; one without a time zone is read as UTC (the form says UTC)."""
    if dt is None:
        return None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt


def decide(form: dict[str, Any] | None, *, now: float, timeout: timedelta, error: str | None = None) -> Decision:
    """The decision for the answer ``form`` (the :class:`ApprovalForm` values), given at ``now``. ``form`` None: no
    answer within ``timeout`` (or ``error``: the run was resumed without a usable form)."""
    if form is None:
        if error:
            return Decision(False, "invalid", f"the approval form could not be read: {error}")
        return Decision(False, "timed-out", f"no approval within drill.approval_timeout "
                                            f"({format_duration(timeout)})")
    try:
        f = ApprovalForm.model_validate(form)
    except ValueError as exc:  # pydantic's ValidationError: a form sent to the API without the UI's checks
        return Decision(False, "invalid", f"the approval form is not valid: {str(exc).splitlines()[0]}")
    who, why = f.approver.strip(), " ".join(f.reason.split())
    if not who or not why:
        return Decision(False, "invalid", "the approval form must name the approver and a reason")
    if not f.approve:
        return Decision(False, "rejected", f"rejected by {who}: {why}")
    start, end = _aware(f.not_before), _aware(f.not_after)
    if start and end and end <= start:
        return Decision(False, "invalid", f"the window is empty: not_after {_iso(end)} is not after not_before "
                                          f"{_iso(start)}")
    at = datetime.fromtimestamp(now, timezone.utc)
    if end and end <= at:
        return Decision(False, "invalid", f"approved by {who} for a window that closed at {_iso(end)} "
                                          f"(answered {_iso(at)})")
    wait = max(0.0, (start - at).total_seconds()) if start else 0.0
    if wait > timeout.total_seconds():
        return Decision(False, "invalid", f"the window opens at {_iso(start)}, more than drill.approval_timeout "
                                          f"({format_duration(timeout)}) after the answer; approve closer to it")
    return Decision(True, "approved", f"approved by {who}: {why}" + (f" (starts at {_iso(start)})" if wait else ""),
                    wait_s=wait)


def _iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def record(rec: DrillRecord, d: Decision, *, required: bool, form: dict[str, Any] | None = None,
           asked_ts: float | None = None, answered_ts: float | None = None, login: dict[str, Any] | None = None,
           timeout: timedelta | None = None) -> None:
    """Keep the approval in the evidence (signed with the report) and on the timeline; a drill that may not run
    fails, saying why. ``login``: what the authenticating front saw on the resume request
    (``{"login", "detail", ...}``, :func:`llmdr.devstack.uiproxy.resume_login`)."""
    try:
        f = ApprovalForm.model_validate(form) if form else None
    except ValueError:
        f = None  # the decision already says why the form was refused
    ev: dict[str, Any] = {"required": required, "outcome": d.outcome, "detail": d.detail,
                          "flow_run_id": rec.started_by.get("flow_run_id")}
    if required:
        ev |= {"asked_utc": utc(asked_ts) if asked_ts else None,
               "answered_utc": utc(answered_ts) if answered_ts and form is not None else None,
               "timeout": format_duration(timeout) if timeout else None}
    if f is not None:
        ev |= {"approver": f.approver.strip(), "approver_basis": "self-declared on the approval form",
               "reason": f.reason, "approve": f.approve, "not_before": _iso(_aware(f.not_before)),
               "not_after": _iso(_aware(f.not_after))}
    if required:
        ev |= {"login": (login or {}).get("login"),
               "login_detail": (login or {}).get("detail") or "not looked up"}
        for k in ("remote_ip", "request_utc"):
            if (login or {}).get(k):
                ev[f"login_{k}"] = login[k]  # type: ignore[index]
    rec.evidence["approval"] = ev
    if d.outcome == "approved" and f is not None:
        by = f.approver.strip()
        rec.started_by["approver"] = by + (f" (login {ev['login']})" if ev.get("login") else " (no login recorded)")
    if required:
        rec.mark("check", "approval", ok=d.go, detail=d.detail[:300], ts=answered_ts)
    if not d.go:
        rec.fail(f"not run: {d.detail}; nothing was cut")


def outcome(record_json: dict[str, Any]) -> str | None:
    """The approval outcome of a drill's JSON (None for drills recorded before approvals existed)."""
    return ((record_json.get("evidence") or {}).get("approval") or {}).get("outcome")


def blocked(record_json: dict[str, Any]) -> bool:
    """True when the drill did not run because its approval was refused, timed out or unusable."""
    return outcome(record_json) in ("rejected", "timed-out", "invalid")
