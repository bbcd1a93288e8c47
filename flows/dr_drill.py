"""dr-drill: a full simulation of losing the primary region, timed end to end, with a signed report.

prechecks → RPO (outage start − newest snapshot complete in the DR region) → cut the primary off (S3 server and
replica, locally; a configured command in the cloud; never deletes data) → watch the monitor → automation →
failover chain fire on its own (the drill never starts a failover; nothing within the RTO objective is a FAIL) →
golden set through the router → restore test from the DR store → bring the primary back → failback → confirm →
controls → report (HTML, PDF, evidence JSON, charts), signed; MLflow run; Prefect artifacts; notice.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from llmdr import __version__
from llmdr.artifacts import artifact_key
from llmdr.config import load_config
from llmdr.drill import record as core
from tasks.drill import (
    datasets_from_dr,
    end_outage,
    golden_through_router,
    mark_model_version,
    prechecks,
    publish_report,
    restore_test_dr,
    simulate_outage,
    watch_for_failover,
)
from tasks.failover import send_notice


def _started_by(started_by: str) -> dict:
    """Who or what started this run: the CLI passes "cli:<user>"; a scheduled run is auto-scheduled; anything
    else came from the UI or the API."""
    info: dict = {"flow_run_id": str(runtime.flow_run.id or "") or None,
                  "deployment": runtime.deployment.name if runtime.deployment.id else None}
    if started_by:
        kind, _, who = started_by.partition(":")
        return info | {"kind": kind, "who": who or None}
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            fr = client.read_flow_run(runtime.flow_run.id)
        if fr.auto_scheduled:
            return info | {"kind": "schedule", "who": "prefect scheduler"}
        creator = getattr(fr, "created_by", None)
        return info | {"kind": "ui", "who": getattr(creator, "display_value", None) or "Prefect UI / API"}
    except Exception:  # noqa: BLE001 - in-process runs without a deployment
        return info | {"kind": "api", "who": None}


@flow(name="dr-drill")
def dr_drill(config_path: str = "", started_by: str = "") -> dict:
    """Returns the drill record (its report folder in ``report``); raises if the drill did not pass, so the run
    shows Failed in the UI. ``started_by``: "cli:<user>" from `llmdr drill`; empty for schedule/UI runs."""
    cfg = load_config(config_path)
    log = get_run_logger()
    primary, dr = cfg.primary, cfg.failover_target()
    rec = core.DrillRecord(bundle=cfg.bundle.name, started_ts=time.time(), started_by=_started_by(started_by),
                           tool_version=__version__, scope=core.scope_of(cfg))
    rec.evidence["prefect_flow_run_id"] = rec.started_by.get("flow_run_id")
    rec.evidence["model_version"] = None  # MLflow model registry: issue #7
    rec.evidence["dataset_versions"] = []  # DVC datasets: issue #7
    rec.mark("info", "drill started", detail=f"by {rec.started_by.get('kind')}")
    outage_started = False
    try:
        pre = prechecks(config_path)
        rec.evidence["prechecks"] = pre
        copy = pre["copies"].get(dr.name, {})
        rec.evidence["snapshots"] = {k: {"id": v.get("id"), "created": v.get("created")} for k, v in pre["copies"].items()}
        rec.evidence["manifest_digests"] = {k: v.get("id") for k, v in pre["copies"].items()}
        rec.evidence["components"] = copy.get("components", {})
        rec.evidence["bundle_complete_dr"] = {"complete": copy.get("complete", False), "detail": copy.get("detail")}
        rec.mark("check", "prechecks", ok=not pre["problems"], detail="; ".join(pre["problems"] + pre["warnings"])
                 or "traffic on the primary, replicas answering, DR copy present, monitor running")
        if pre["problems"]:
            for p in pre["problems"]:
                rec.fail(f"precheck: {p}")
            return _finish(config_path, cfg, rec)

        # --- the outage ---
        t_out = time.time()
        if copy.get("created_ts") is not None:
            rec.measurements["rpo_s"] = round(t_out - copy["created_ts"], 1)
            rec.measurements["rpo_detail"] = (f"outage {core.utc(t_out)} − newest snapshot complete in {dr.name} "
                                              f"{copy['created']} ({(copy.get('id') or '')[:12]})")
        action = simulate_outage(config_path, primary.name)
        outage_started = True
        rec.outage = {"region": primary.name, "action": action["action"], "started_utc": core.utc(t_out)}
        rec.mark("outage", f"{primary.name} region down", ok=None, detail=action["action"], ts=t_out)

        # --- the chain must fire on its own ---
        limit = cfg.objectives.rto.total_seconds()
        fo = watch_for_failover(config_path, t_out - 1.0, limit)
        if fo is None:
            rec.fail(f"no failover within the RTO objective ({limit:.0f} s): the monitor → automation → failover "
                     "chain did not fire" + (" — the failover automation is disabled"
                                             if pre["automation"].get("enabled") is False else ""))
            rec.mark("detection", "no failover", ok=False, detail=f"waited {limit:.0f} s")
        else:
            rec.evidence["failover"] = fo
            _failover_timeline(rec, fo)
            if fo["ok"] and fo.get("verified_ts"):
                rec.measurements["rto_s"] = round(fo["verified_ts"] - t_out, 1)
                rec.measurements["rto_detail"] = (f"outage {core.utc(t_out)} → first golden-correct answer through "
                                                  f"the router {fo['verified_utc']}")
                for k, v in (fo.get("rto_breakdown") or {}).items():
                    rec.measurements[k] = v
                rec.measurements["undetected_s"] = round((fo.get("first_failure_ts") or t_out) - t_out, 3)
            else:
                rec.fail(f"the failover ran but failed: {fo.get('error')}")
            g = golden_through_router(config_path)
            rec.evidence["golden_after_failover"] = g
            rec.mark("check", "golden set through the router", ok=g["ok"],
                     detail=f"{g['passed']}/{g['total']} from {g.get('region')}")
        rt = restore_test_dr(config_path, dr.name)
        rec.evidence["restore_test"] = rt
        rec.mark("check", f"restore test from the {dr.name} store", ok=rt["ok"], detail=rt["summary"])
        if cfg.datasets:
            dss = datasets_from_dr(config_path, dr.name)
            rec.evidence["datasets"] = dss
            rec.evidence["dataset_versions"] = [{"name": d["name"], "md5": d.get("md5"), "remote": d["remote"]}
                                                for d in dss]
            ok = all(d.get("valid") for d in dss)
            rec.mark("check", f"datasets from the {dr.name} DVC remote", ok=ok,
                     detail="; ".join(d.get("validation") or d.get("error", "") for d in dss))
    except Exception as exc:  # noqa: BLE001 - the drill reports every failure; it never dies half-way silently
        log.error("drill step failed: %s", exc)
        rec.fail(f"drill step failed: {exc}")
        rec.mark("info", "drill step failed", ok=False, detail=str(exc)[:300])
    finally:
        if outage_started:
            _restore_and_fail_back(config_path, cfg, rec)
    return _finish(config_path, cfg, rec)


def _failover_timeline(rec: core.DrillRecord, fo: dict) -> None:
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


def _restore_and_fail_back(config_path: str, cfg, rec: core.DrillRecord) -> None:
    """Bring the primary back and return traffic to it; a drill that cannot must say so."""
    from flows.failover import failback
    from llmdr.failover.router import open_router

    try:
        back = end_outage(config_path, cfg.primary.name)
        rec.outage["restored_utc"] = core.utc()
        rec.mark("failback", f"{cfg.primary.name} region back", ok=True, detail=back["action"])
        active = open_router(cfg).active()
        if active != cfg.primary.name:
            out = failback(reason="dr drill: primary restored", trigger="drill", config_path=config_path)
            rec.evidence["failback"] = out
            rec.mark("failback", "failback", ok=out["ok"], detail=f"RTO {out.get('rto_s')} s" if out["ok"] else
                     str(out.get("error")))
        else:
            rec.evidence["failback"] = {"ok": True, "noop": True, "detail": "traffic never left the primary"}
    except Exception as exc:  # noqa: BLE001
        rec.evidence["failback"] = {"ok": False, "error": str(exc)}
        rec.mark("failback", "failback failed", ok=False, detail=str(exc)[:300])
    try:
        active = open_router(cfg).active()
    except Exception:  # noqa: BLE001
        active = None
    rec.failed_over_at_end = active != cfg.primary.name
    if rec.failed_over_at_end:
        rec.fail(f"THE SYSTEM IS LEFT FAILED OVER: traffic is on {active or 'an unknown region'}, not "
                 f"{cfg.primary.name}. Fail back by hand: `llmdr failback`")
    rec.mark("failback", "traffic confirmed on " + str(active), ok=not rec.failed_over_at_end)


def _finish(config_path: str, cfg, rec: core.DrillRecord) -> dict:
    from llmdr.drill.report import render_markdown, table_rows

    rec.ended_ts = time.time()
    rec.mark("info", "drill ended", ok=None)
    core.evaluate(rec, cfg, previous_pass_ts=core.last_pass_ts(cfg, before=rec.started_ts))
    dr_sid = (rec.evidence.get("snapshots") or {}).get(cfg.failover_target().name, {}).get("id")
    rec.evidence["model_version"] = mark_model_version(config_path, dr_sid, rec.id, rec.passed)
    record = rec.to_json()
    pub = publish_report(config_path, record)
    record["report"] = pub
    key = artifact_key("dr-drill", cfg.bundle.name)
    create_markdown_artifact(key=key, markdown=render_markdown(record) + f"\n\nReport: `{pub['folder']}` (verify: "
                             f"`llmdr report verify {pub['folder']}`)\n", description="Newest DR drill report")
    history = [r.to_json() for r in core.history(cfg)]
    create_table_artifact(key=f"{key}-table", table=table_rows(history), description="Every DR drill: RTO, RPO, result")
    verdict = "PASS" if rec.passed else "FAIL"
    rto = rec.measurements.get("rto_s")
    send_notice(config_path, {"kind": "drill", "severity": "info" if rec.passed else "critical",
                              "title": f"llmdr: DR drill of {cfg.bundle.name} {verdict}"
                                       + (f" (RTO {rto:.1f} s)" if rto is not None else ""),
                              "body": "\n".join(rec.failure_reasons) or "every control passed",
                              "data": {"bundle": cfg.bundle.name, "drill_id": rec.id, "report": pub["folder"]}})
    if not rec.passed:
        raise core.DrillFailed(rec.id, rec.failure_reasons, pub["folder"], record)
    return record
