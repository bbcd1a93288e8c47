"""What the dr-drill flow decides, as plain functions over the drill record (no Prefect, no network).

The flow runs the steps (its tasks) in order and hands each step's JSON result to one function here, which records
it on the :class:`~llmdr.drill.record.DrillRecord` and decides what follows: which precheck findings block the drill
(and which are only warnings), the RPO (outage start − newest snapshot complete in the DR region) and RTO (outage
start → first golden-correct answer through the router) arithmetic, the timeline of the automation's failover,
whether to fail back, whether the drill left the system failed over, the notice, and the verdict:
:func:`raise_if_failed` raises :class:`~llmdr.drill.record.DrillFailed` once the report is written.
"""

from __future__ import annotations

import time
from typing import Any

from llmdr.config import Config
from llmdr.drill.record import DrillFailed, DrillRecord, evaluate, history, last_pass_ts, scope_of
from llmdr.errors import LlmdrError
from llmdr.failover.steps import utc

# how early a failover may have started and still count as the automation's answer to this drill's outage
FAILOVER_CLOCK_SLACK_S = 1.0


class RouterUnreachable(LlmdrError):
    """The router did not say where traffic goes, so the drill cannot decide whether to fail back."""


# --- who started it, the record ------------------------------------------------------------------------------------
def started_by(arg: str, *, flow_run_id: str | None, deployment: str | None,
               run: dict[str, Any] | None) -> dict[str, Any]:
    """Who or what started the drill. ``arg`` is the flow's ``started_by`` parameter: the CLI passes
    ``"cli:<user>"``; empty for scheduled and UI runs, which ``run`` tells apart (``{"auto_scheduled": bool,
    "creator": name or None}`` as read from the flow run; None when it could not be read: an in-process run)."""
    info: dict[str, Any] = {"flow_run_id": flow_run_id or None, "deployment": deployment}
    if arg and run is not None and run.get("auto_scheduled"):  # the server's word wins over a parameter's claim
        return info | {"kind": "schedule", "who": "prefect scheduler", "claimed": arg}
    if arg:
        kind, _, who = arg.partition(":")
        return info | {"kind": kind, "who": who or None}
    if run is None:
        return info | {"kind": "api", "who": None}
    if run.get("auto_scheduled"):
        return info | {"kind": "schedule", "who": "prefect scheduler"}
    return info | {"kind": "ui", "who": run.get("creator") or "Prefect UI / API"}


def start_record(cfg: Config, who: dict[str, Any], *, now: float | None = None) -> DrillRecord:
    """A new drill record: scope from the config, who started it (with the host and OS user running the drill, and
    the approver: None, no approval step), the provenance fields still empty."""
    from llmdr import __version__

    who = {"host": _host(), "os_user": _os_user(), "approver": None} | dict(who)
    rec = DrillRecord(bundle=cfg.bundle.name, started_ts=time.time() if now is None else now, started_by=who,
                      tool_version=__version__, scope=scope_of(cfg))
    rec.evidence["prefect_flow_run_id"] = rec.started_by.get("flow_run_id")
    rec.evidence["model_version"] = None  # filled from the model registry when the drill ends
    rec.evidence["dataset_versions"] = []  # filled when datasets are configured and pulled from the DR region
    rec.mark("info", "drill started", detail=f"by {rec.started_by.get('kind')}", ts=rec.started_ts)
    return rec


def _host() -> str | None:
    import socket

    return socket.gethostname() or None


def _os_user() -> str | None:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        return None


# --- before the outage -----------------------------------------------------------------------------------------------
def assess_prechecks(primary: str, *, active: str | None, router_error: str | None, replicas: dict[str, dict],
                     monitor: dict, automation: dict) -> tuple[list[str], list[str]]:
    """(problems, warnings) before anything is cut. A problem blocks the drill: the router does not answer, traffic
    is not on the primary, or the primary's replica does not answer. A warning does not: another region's replica
    down, a monitor that never ran, a disabled or missing failover automation (the drill then shows that nothing
    fails over)."""
    problems: list[str] = []
    warnings: list[str] = []
    if router_error is not None:
        problems.append(f"the router does not answer: {router_error}")
    if active not in (None, primary):
        problems.append(f"traffic is already on {active}, not the primary: fail back first (`llmdr failback`)")
    for name, st in replicas.items():
        if not st["healthy"]:
            (problems if name == primary else warnings).append(
                f"the replica in {name} does not answer ({st['detail']})")
    if not monitor:
        warnings.append("the monitor has never run: nothing will detect the outage")
    if automation.get("enabled") is False:
        warnings.append(f"the failover automation '{automation['name']}' is disabled: the drill will show that "
                        "nothing fails over")
    elif automation.get("enabled") is None:
        warnings.append("the failover automation was not found on this Prefect server")
    return problems, warnings


def _dr_copy(rec: DrillRecord, dr_region: str) -> dict[str, Any]:
    return ((rec.evidence.get("prechecks") or {}).get("copies") or {}).get(dr_region) or {}


def record_prechecks(rec: DrillRecord, pre: dict[str, Any], dr_region: str) -> bool:
    """Keep the prechecks and the DR copy as evidence; False (and the drill failed, saying why) when a problem
    blocks the drill."""
    rec.evidence["prechecks"] = pre
    copy = _dr_copy(rec, dr_region)
    copies = pre.get("copies") or {}
    rec.evidence["snapshots"] = {k: {"id": v.get("id"), "created": v.get("created")} for k, v in copies.items()}
    rec.evidence["manifest_digests"] = {k: v.get("id") for k, v in copies.items()}
    rec.evidence["components"] = copy.get("components", {})
    rec.evidence["bundle_complete_dr"] = {"complete": copy.get("complete", False), "detail": copy.get("detail")}
    rec.mark("check", "prechecks", ok=not pre["problems"], detail="; ".join(pre["problems"] + pre["warnings"])
             or "traffic on the primary, replicas answering, DR copy present, monitor running")
    for p in pre["problems"]:
        rec.fail(f"precheck: {p}")
    return not pre["problems"]


# --- the outage and the automation's failover --------------------------------------------------------------------
def record_rpo(rec: DrillRecord, dr_region: str, outage_ts: float) -> None:
    """RPO = outage start − creation of the newest snapshot complete in the DR region (none: not measured, and the
    RPO control fails)."""
    copy = _dr_copy(rec, dr_region)
    if copy.get("created_ts") is None:
        return
    rec.measurements["rpo_s"] = round(outage_ts - copy["created_ts"], 1)
    rec.measurements["rpo_detail"] = (f"outage {utc(outage_ts)} − newest snapshot complete in {dr_region} "
                                      f"{copy['created']} ({(copy.get('id') or '')[:12]})")


def record_outage(rec: DrillRecord, region: str, action: dict[str, Any], outage_ts: float) -> None:
    """The outage on the record, with its scope: ``region`` (store, workers, replica), ``replica`` (this bundle's
    replica only) or ``command``."""
    scope = action.get("scope") or "region"
    rec.outage = {"region": region, "scope": scope, "action": action["action"], "started_utc": utc(outage_ts)}
    what = f"{rec.bundle}'s replica in {region} down" if scope == "replica" else f"{region} region down"
    rec.mark("outage", what, ok=None, detail=action["action"], ts=outage_ts)


def failover_wait(cfg: Config, outage_ts: float) -> tuple[float, float]:
    """(since_ts, timeout_s) for watching the automation's failover: one that started from just before the outage,
    waited for as long as the RTO objective (a failover later than that is a FAIL anyway)."""
    return outage_ts - FAILOVER_CLOCK_SLACK_S, cfg.objectives.rto.total_seconds()


def failover_timeline(rec: DrillRecord, fo: dict[str, Any]) -> None:
    """The failover record's timestamps on the drill's timeline: detection, dispatch, switch, recovery."""
    marks = [("first_failure_ts", "detection", "first failed probe of the primary"),
             ("detected_ts", "detection", "monitor: primary down, event emitted"),
             ("scheduled_ts", "detection", "automation scheduled the failover run"),
             ("started_ts", "switch", "failover run started"),
             ("switched_ts", "switch", f"router switched to {fo['to_region']}"),
             ("verified_ts", "recovery", "first golden-correct answer through the router")]
    for key, kind, label in marks:
        if fo.get(key):
            rec.mark(kind, label, ok=True if kind != "detection" else None, ts=fo[key])
    if not fo["ok"]:
        rec.mark("switch", "failover failed", ok=False, detail=str(fo.get("error"))[:300])


def record_failover(rec: DrillRecord, cfg: Config, fo: dict[str, Any] | None, outage_ts: float) -> bool:
    """Record what the automation did. No failover within the RTO objective fails the drill (naming a disabled
    automation); a failover that ran but failed fails it too. RTO = outage start → first golden-correct answer
    through the router. True when a failover came (its result is then checked through the router)."""
    limit = cfg.objectives.rto.total_seconds()
    if fo is None:
        automation = (rec.evidence.get("prechecks") or {}).get("automation") or {}
        from llmdr.config.pools import dr_region, region_pool

        rec.fail(f"no failover within the RTO objective ({limit:.0f} s): the monitor → automation → failover "
                 "chain did not fire" + (" — the failover automation is disabled"
                                         if automation.get("enabled") is False else
                                         f" (a failover run needs a worker on the DR region's work pool "
                                         f"{region_pool(dr_region(cfg))}: see the Prefect UI's Work Pools, or "
                                         "`llmdr stack status` for the local stack)"))
        rec.mark("detection", "no failover", ok=False, detail=f"waited {limit:.0f} s")
        return False
    rec.evidence["failover"] = fo
    failover_timeline(rec, fo)
    if fo["ok"] and fo.get("verified_ts"):
        rec.measurements["rto_s"] = round(fo["verified_ts"] - outage_ts, 1)
        rec.measurements["rto_detail"] = (f"outage {utc(outage_ts)} → first golden-correct answer through "
                                          f"the router {fo['verified_utc']}")
        for k, v in (fo.get("rto_breakdown") or {}).items():
            rec.measurements[k] = v
        rec.measurements["undetected_s"] = round((fo.get("first_failure_ts") or outage_ts) - outage_ts, 3)
    else:
        rec.fail(f"the failover ran but failed: {fo.get('error')}")
    return True


# --- checks in the DR region -----------------------------------------------------------------------------------------
def record_golden(rec: DrillRecord, g: dict[str, Any]) -> None:
    rec.evidence["golden_after_failover"] = g
    detail = f"{g['passed']}/{g['total']} from {g.get('region')}"
    if g.get("gate"):
        detail += f", {g['gate'].get('mode', 'exact')} gate"
    if g.get("cases"):
        detail += "; scores " + ", ".join(f"{c.get('id')} {c.get('score')}" for c in g["cases"])
    rec.mark("check", "golden set through the router", ok=g["ok"], detail=detail)


def record_restore_test(rec: DrillRecord, rt: dict[str, Any], dr_region: str) -> None:
    rec.evidence["restore_test"] = rt
    rec.mark("check", f"restore test from the {dr_region} store", ok=rt["ok"], detail=rt["summary"])


def record_datasets(rec: DrillRecord, dss: list[dict[str, Any]], dr_region: str) -> None:
    rec.evidence["datasets"] = dss
    rec.evidence["dataset_versions"] = [{"name": d["name"], "md5": d.get("md5"), "remote": d["remote"]}
                                        for d in dss]
    rec.mark("check", f"datasets from the {dr_region} DVC remote", ok=all(d.get("valid") for d in dss),
             detail="; ".join(d.get("validation") or d.get("error", "") for d in dss))


def record_step_failure(rec: DrillRecord, exc: BaseException) -> None:
    """A step that raised: the drill fails, saying which error; it never dies half-way silently."""
    rec.fail(f"drill step failed: {exc}")
    rec.mark("info", "drill step failed", ok=False, detail=str(exc)[:300])


# --- back to normal --------------------------------------------------------------------------------------------------
def record_region_back(rec: DrillRecord, region: str, back: dict[str, Any]) -> None:
    rec.outage["restored_utc"] = utc()
    rec.mark("failback", f"{region} region back", ok=True, detail=back["action"])


def needs_failback(cfg: Config, traffic: dict[str, Any]) -> bool:
    """True when traffic is not on the primary once it is back; :class:`RouterUnreachable` when the router did not
    say where it is."""
    if traffic.get("error") is not None:
        raise RouterUnreachable(traffic["error"])
    return traffic.get("active") != cfg.primary.name


def record_failback(rec: DrillRecord, out: dict[str, Any]) -> None:
    rec.evidence["failback"] = out
    rec.mark("failback", "failback", ok=out["ok"],
             detail=f"RTO {out.get('rto_s')} s" if out["ok"] else str(out.get("error")))


def record_no_failback(rec: DrillRecord) -> None:
    rec.evidence["failback"] = {"ok": True, "noop": True, "detail": "traffic never left the primary"}


def record_failback_error(rec: DrillRecord, exc: BaseException) -> None:
    rec.evidence["failback"] = {"ok": False, "error": str(exc)}
    rec.mark("failback", "failback failed", ok=False, detail=str(exc)[:300])


def record_traffic_at_end(rec: DrillRecord, cfg: Config, traffic: dict[str, Any]) -> None:
    """Where traffic is when the drill ends: anywhere but the primary (or unknown) leaves the system failed over,
    and such a drill never passes."""
    active = traffic.get("active") if traffic.get("error") is None else None
    rec.failed_over_at_end = active != cfg.primary.name
    if rec.failed_over_at_end:
        rec.fail(f"THE SYSTEM IS LEFT FAILED OVER: traffic is on {active or 'an unknown region'}, not "
                 f"{cfg.primary.name}. Fail back by hand: `llmdr failback`")
    rec.mark("failback", "traffic confirmed on " + str(active), ok=not rec.failed_over_at_end)


# --- the end ---------------------------------------------------------------------------------------------------------
def finish(rec: DrillRecord, cfg: Config, *, now: float | None = None) -> None:
    """End the drill and decide its controls and verdict (the previous passing drill read from the history)."""
    rec.ended_ts = time.time() if now is None else now
    rec.mark("info", "drill ended", ok=None, ts=rec.ended_ts)
    evaluate(rec, cfg, previous_pass_ts=last_pass_ts(cfg, before=rec.started_ts))
    from llmdr.drill.training import add_control

    add_control(rec, cfg)  # drill.training_restore: the training-restore control (off: none)


def finish_not_run(rec: DrillRecord, *, now: float | None = None) -> None:
    """End a drill that never started (its approval was refused or never came): no controls are judged, since
    nothing was measured; it does not pass, and its failure reasons say why it did not run."""
    rec.ended_ts = time.time() if now is None else now
    rec.mark("info", "drill ended", ok=None, ts=rec.ended_ts)
    rec.controls, rec.passed = [], False


def dr_snapshot_id(rec: DrillRecord, cfg: Config) -> str | None:
    """The snapshot the drill found in the DR region (the one whose model version a passing drill marks)."""
    return (rec.evidence.get("snapshots") or {}).get(cfg.failover_target().name, {}).get("id")


def record_model_version(rec: DrillRecord, version: dict[str, Any] | None) -> None:
    """The registered model version of the DR snapshot (None without model registration)."""
    rec.evidence["model_version"] = version


def history_rows(cfg: Config) -> list[dict[str, Any]]:
    """Every drill on record as table-artifact rows."""
    from llmdr.drill.report import table_rows

    return table_rows([r.to_json() for r in history(cfg)])


def drill_notice(cfg: Config, rec: DrillRecord, folder: str) -> dict[str, Any]:
    """The notice every drill sends: critical when it failed, with its reasons and report folder."""
    verdict = "PASS" if rec.passed else "FAIL"
    appr = rec.evidence.get("approval") or {}
    if appr.get("outcome") in ("rejected", "timed-out", "invalid"):
        return {"kind": "drill", "severity": "warning",
                "title": f"llmdr: DR drill of {cfg.bundle.name} NOT RUN ({appr['outcome']}): nothing was cut",
                "body": "\n".join(rec.failure_reasons),
                "data": {"bundle": cfg.bundle.name, "drill_id": rec.id, "report": folder,
                         "approval": appr["outcome"]}}
    rto = rec.measurements.get("rto_s")
    return {"kind": "drill", "severity": "info" if rec.passed else "critical",
            "title": f"llmdr: DR drill of {cfg.bundle.name} {verdict}" + (f" (RTO {rto:.1f} s)" if rto is not None
                                                                           else ""),
            "body": "\n".join(rec.failure_reasons) or "every control passed",
            "data": {"bundle": cfg.bundle.name, "drill_id": rec.id, "report": folder}}


def raise_if_failed(rec: DrillRecord, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` (the published record, with its report) when the drill passed; :class:`DrillFailed` otherwise,
    so the run shows Failed and the CLI exits 8."""
    if not rec.passed:
        raise DrillFailed(rec.id, rec.failure_reasons, (record.get("report") or {}).get("folder", ""), record)
    return record
