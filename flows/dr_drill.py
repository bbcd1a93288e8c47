"""dr-drill: a full simulation of losing the primary region, timed end to end, with a signed report.

prechecks → RPO (outage start − newest snapshot complete in the DR region) → cut the primary off (S3 server and
replica, locally; a configured command in the cloud; never deletes data) → watch the monitor → automation →
failover chain fire on its own (the drill never starts a failover; nothing within the RTO objective is a FAIL) →
golden set through the router → restore test from the DR store (and, with drill.training_restore, the newest
training checkpoint) → bring the primary back → failback → confirm →
controls → report (HTML, PDF, evidence JSON, charts), signed; MLflow run; Prefect artifacts; notice.

Composition only: every decision (what blocks the drill, RPO/RTO, whether to fail back, the verdict) is a function
of ``llmdr.drill.procedure`` that records a step's result on the drill record.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic.json_schema import SkipJsonSchema

from flows.params import BUNDLE, CONFIG_PATH
from llmdr.artifacts import artifact_key
from llmdr.config import Config, bundle_ref, load_config
from llmdr.drill import procedure, training
from llmdr.drill.record import DrillRecord
from llmdr.drill.report.markdown import artifact_markdown
from tasks.drill import (
    datasets_from_dr,
    end_outage,
    golden_through_router,
    mark_model_version,
    prechecks,
    publish_report,
    read_traffic,
    restore_test_dr,
    simulate_outage,
    training_restore_dr,
    watch_for_failover,
    who_started,
)
from tasks.failover import send_notice


@flow(name="dr-drill")
def dr_drill(config_path: str = CONFIG_PATH, started_by: SkipJsonSchema[str] = "", bundle: str | None = BUNDLE) -> dict:
    """Returns the drill record (its report folder in ``report``); raises ``DrillFailed`` if the drill did not pass,
    so the run shows Failed in the UI. ``started_by``: "cli:<user>" from `llmdr drill`; empty for schedule/UI runs
    (then read from the flow run); not on the UI's form."""
    config_path = bundle_ref(config_path, bundle)  # tasks load this bundle's view
    cfg = load_config(config_path)
    log = get_run_logger()
    primary, dr = cfg.primary, cfg.failover_target()
    rec = procedure.start_record(cfg, who_started(started_by))
    if not _approved(cfg, rec):  # a scheduled drill waits for a person's approval before anything is cut
        return _finish_not_run(config_path, cfg, rec)
    outage_started = False
    try:
        log.info("phase prechecks: drill %s of %s (primary %s, DR region %s)", rec.id, cfg.bundle.name, primary.name,
                 dr.name)
        if procedure.record_prechecks(rec, prechecks(config_path), dr.name):  # False: a problem blocks the drill
            # --- the outage ---
            t_out = time.time()
            procedure.record_rpo(rec, dr.name, t_out)
            log.info("phase outage: cutting %s off (no data is deleted)", primary.name)
            action = simulate_outage(config_path, primary.name)
            outage_started = True
            procedure.record_outage(rec, primary.name, action, t_out)

            # --- the chain must fire on its own ---
            log.info("phase failover: waiting for monitor -> automation -> failover to move traffic to %s", dr.name)
            fo = watch_for_failover(config_path, *procedure.failover_wait(cfg, t_out))
            if procedure.record_failover(rec, cfg, fo, t_out):
                log.info("phase golden: the golden set through the router")
                procedure.record_golden(rec, golden_through_router(config_path))
            log.info("phase restore: restore test from the %s store", dr.name)
            procedure.record_restore_test(rec, restore_test_dr(config_path, dr.name), dr.name)
            if cfg.datasets:
                procedure.record_datasets(rec, datasets_from_dr(config_path, dr.name), dr.name)
            if cfg.drill.training_restore:
                log.info("phase training restore: the newest checkpoint from the %s store", dr.name)
                training.record_restore(rec, training_restore_dr(config_path, dr.name), dr.name)
        else:
            log.warning("phase prechecks: the drill is blocked: %s", "; ".join(rec.failure_reasons) or "see the report")
    except Exception as exc:  # noqa: BLE001 - the drill reports every failure; it never dies half-way silently
        log.error("drill step failed: %s", exc)
        procedure.record_step_failure(rec, exc)
    finally:
        if outage_started:
            log.info("phase failback: bringing %s back and returning traffic to it", primary.name)
            _restore_and_fail_back(config_path, cfg, rec)
    log.info("phase report: controls, verdict, signed report, artifacts, notice")
    return _finish(config_path, cfg, rec)


def _approved(cfg: Config, rec: DrillRecord) -> bool:
    """Whether the drill may go on: drills that need no approval go at once (the evidence says why); a scheduled one
    pauses this run for the approval form (:mod:`llmdr.drill.approval`) and waits for its window."""
    from llmdr.devstack.uiproxy import resume_login
    from llmdr.drill import approval
    from llmdr.integrations.prefect import pause_for_input

    log = get_run_logger()
    d = approval.requirement(cfg, rec.started_by)
    if d is not None:
        approval.record(rec, d, required=False)
        log.info("approval: %s", d.detail)
        return True
    timeout = cfg.drill.approval_timeout
    asked = time.time()
    log.warning("approval: this scheduled drill waits up to %s for a person to approve it (Prefect UI: this run's "
                "Resume button; nothing is cut before)", timeout)
    form, error = pause_for_input(approval.ApprovalForm, timeout_s=timeout.total_seconds(), key=approval.PAUSE_KEY,
                                  poll_s=approval.POLL_S)
    answered = time.time()
    values = form.model_dump(include=set(approval.ApprovalForm.model_fields)) if form is not None else None
    d = approval.decide(values, now=answered, timeout=timeout, error=error)
    login = resume_login(cfg, rec.started_by.get("flow_run_id"), since_ts=asked) if values is not None else None
    approval.record(rec, d, required=True, form=values, asked_ts=asked, answered_ts=answered, login=login,
                    timeout=timeout)
    (log.info if d.go else log.error)("approval: %s", d.detail)
    if d.go and d.wait_s:
        time.sleep(d.wait_s)
    return d.go


def _finish_not_run(config_path: str, cfg: Config, rec: DrillRecord) -> dict:
    """A drill whose approval was refused or never came: nothing was cut; its signed report, artifact and notice say
    why, and the run fails. The steps are called directly, not as task runs: after a pause that timed out, Prefect
    runs no more tasks in this flow run."""
    procedure.finish_not_run(rec)
    record = rec.to_json()
    record["report"] = publish_report.fn(config_path, record)
    key = artifact_key("dr-drill", cfg.bundle.name)
    create_markdown_artifact(key=key, markdown=artifact_markdown(record), description="Newest DR drill report")
    send_notice.fn(config_path, procedure.drill_notice(cfg, rec, record["report"]["folder"]))
    return procedure.raise_if_failed(rec, record)


def _restore_and_fail_back(config_path: str, cfg: Config, rec: DrillRecord) -> None:
    """Bring the primary back and return traffic to it; a drill that cannot must say so."""
    from flows.failover import failback

    try:
        procedure.record_region_back(rec, cfg.primary.name, end_outage(config_path, cfg.primary.name))
        if procedure.needs_failback(cfg, read_traffic(config_path)):
            out = failback(reason="dr drill: primary restored", trigger="drill", config_path=config_path)
            procedure.record_failback(rec, out)
        else:
            procedure.record_no_failback(rec)
    except Exception as exc:  # noqa: BLE001 - recorded: the failback control fails
        procedure.record_failback_error(rec, exc)
    procedure.record_traffic_at_end(rec, cfg, read_traffic(config_path))


def _finish(config_path: str, cfg: Config, rec: DrillRecord) -> dict:
    """Controls and verdict, model version, signed report, artifacts, notice; DrillFailed if it did not pass."""
    procedure.finish(rec, cfg)
    procedure.record_model_version(rec, mark_model_version(config_path, procedure.dr_snapshot_id(rec, cfg), rec.id,
                                                           rec.passed))
    record = rec.to_json()
    record["report"] = publish_report(config_path, record)
    key = artifact_key("dr-drill", cfg.bundle.name)
    create_markdown_artifact(key=key, markdown=artifact_markdown(record), description="Newest DR drill report")
    create_table_artifact(key=f"{key}-table", table=procedure.history_rows(cfg),
                          description="Every DR drill: RTO, RPO, result")
    send_notice(config_path, procedure.drill_notice(cfg, rec, record["report"]["folder"]))
    return procedure.raise_if_failed(rec, record)
