"""failover and failback: move traffic to a verified replica in another region, measure RTO, and come back.

failover (run by the automation on ``llmdr.endpoint.down`` for the active region, by ``llmdr failover``, or from
the UI): confirm the outage → a healthy replica in the target region (warm, or cold-started from that region's
store) → golden set against it → [switch the router → golden set through the router] as one transaction, rolled
back if the second check fails → record, artifact, event, notification. The golden set is judged by the bundle's
``golden_gate``; only a person's manual run may accept a mismatch (``accept_golden_mismatch`` with a reason of its
own): it skips nothing else (outage confirmation of an automation run, the replica's health, answers to every case).

failback: the primary's store answers → copy back any snapshot taken while failed over → (re)start the primary's
replica on the newest snapshot → golden set → [switch → verify through the router] → record, artifact, notice.

What follows from each step's result is decided in ``llmdr.failover.run``; the flows compose.
"""

from __future__ import annotations

from contextlib import contextmanager

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.transactions import transaction
from pydantic import Field
from pydantic.json_schema import SkipJsonSchema

from flows.params import BUNDLE, CONFIG_PATH, FAILBACK_REASON, FAILOVER_REASON, FAILOVER_TO
from llmdr.artifacts import artifact_key, failover_markdown, failover_table
from llmdr.config import bundle_ref, load_config
from llmdr.failover import events
from llmdr.failover import run as decide
from llmdr.failover import steps as core
from llmdr.integrations.prefect import run_origin
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
    """History, event, notices, the record in the stores, artifacts for a finished (or failed) run. People hear
    first: storing the record waits on every region, the one that is down included."""
    cfg = load_config(config_path)
    core.append_history(cfg, rec, store=False)
    event = decide.outcome_event(rec)
    if event is not None:
        events.emit(event, events.bundle_resource(cfg.bundle.name), rec.to_json())
    for notice in decide.notices(rec):
        send_notice(config_path, notice.to_args())
    placed = core.store_record(cfg, rec)
    if placed["pending"]:  # the region that is down gets it by `llmdr control sync` or the next record
        get_run_logger().warning("%s record %s stored in %s, pending for %s", rec.kind, rec.id,
                                 ", ".join(placed["held"]) or "no region", ", ".join(placed["pending"]))
    else:
        get_run_logger().info("%s record %s stored in %s", rec.kind, rec.id, ", ".join(placed["held"]))
    key = artifact_key(rec.kind, cfg.bundle.name)
    create_markdown_artifact(key=key, markdown=failover_markdown(rec.to_json()),
                             description=f"Newest {rec.kind} of {cfg.bundle.name}")
    create_table_artifact(key=f"{key}-table", table=failover_table([r.to_json() for r in core.history(cfg)
                                                                     if r.kind == rec.kind]),
                          description=f"Every {rec.kind} of {cfg.bundle.name}, RTO per run")


def _scheduled_ts() -> float | None:
    when = runtime.flow_run.scheduled_start_time
    return when.timestamp() if when is not None and runtime.flow_run.id else None


def _flow_run_id() -> str | None:
    return str(runtime.flow_run.id or "") or None


ACCEPT_GOLDEN_MISMATCH = Field(False, description="Move traffic even if the target's answers fail the golden gate "
                                                  "(they must still answer every case). A person's decision only: "
                                                  "write why in 'reason' (required); it is recorded, signed and "
                                                  "announced with the failover.")


def _switch_and_verify(config_path: str, rec: core.FailoverRecord, previous: str | None,
                       accept_mismatch: bool = False) -> None:
    """Switch, then verify through the router, as one transaction: a failed verification switches back."""
    get_run_logger().info("phase switch: router %s -> %s, then the golden set through the router", previous,
                          rec.to_region)
    try:
        with transaction():
            switch_router(config_path, rec.to_region, rec.reason, previous)
            decide.switched(rec, previous)
            result = verify_through_router(config_path, rec.to_region, accept_mismatch)
    except Exception as exc:
        if rec.switched_ts is not None:
            decide.router_check_failed(rec, exc, previous, core.active_region(load_config(config_path)))
        raise
    decide.verified(rec, result)


@contextmanager
def _recorded(config_path: str, rec: core.FailoverRecord):
    """Whatever happens inside, the run is recorded, published and announced; a failure marks it not ok."""
    try:
        yield
    except Exception as exc:
        decide.failed(rec, exc)
        raise
    finally:
        _publish(config_path, rec)


def _verify_and_switch(config_path: str, rec: core.FailoverRecord, previous: str | None,
                       override: dict | None = None) -> None:
    """The golden set against the target's replica directly, then the switch + check through the router.
    ``override``: a person accepted a golden mismatch ({by, reason})."""
    accept = override is not None
    try:
        report = golden_check(config_path, rec.to_region, accept)
    except Exception as exc:
        decide.golden_direct(rec, None, exc)
        raise
    decide.golden_direct(rec, report, override=override)
    if rec.golden_override is not None:
        get_run_logger().warning("golden MISMATCH ACCEPTED by %s: %s", override["by"], override["reason"])
    # the check through the router is as tolerant as the one the person saw: strict if the replica passed
    _switch_and_verify(config_path, rec, previous, rec.golden_override is not None)


@flow(name="failover")
def failover(to: str = FAILOVER_TO, reason: str = FAILOVER_REASON, trigger: SkipJsonSchema[str] = "manual",
             first_failure_ts: SkipJsonSchema[float | str | None] = None, detected_at: SkipJsonSchema[str] = "",
             config_path: str = CONFIG_PATH, bundle: str | None = BUNDLE,
             accept_golden_mismatch: bool = ACCEPT_GOLDEN_MISMATCH) -> dict:
    """``to``: target region (default: failover.target or the first secondary). ``trigger``: "automation" and
    "drill" runs require the outage to be confirmed by direct probes; a "manual" run (the UI's, the CLI's) is a
    planned switchover and moves traffic even if the active region answers. ``first_failure_ts``: unix time of the
    first failed probe (from the monitor's event; the automation passes it as text), the start of the RTO clock.
    ``trigger``, ``first_failure_ts`` and ``detected_at`` are the automation's: not on the UI's form.
    ``accept_golden_mismatch``: a person's override of the golden gate, manual runs only, with ``reason``."""
    override = decide.golden_override(trigger, accept_golden_mismatch, reason,  # refused before anything runs
                                      run=run_origin() if accept_golden_mismatch else None)
    config_path = bundle_ref(config_path, bundle)  # tasks load this bundle's view
    cfg = load_config(config_path)
    log = get_run_logger()
    active = read_active_region(config_path)
    rec = decide.new_failover(cfg, active=active, to=to, reason=reason, trigger=trigger,
                              first_failure_ts=first_failure_ts, detected_at=detected_at,
                              scheduled_ts=_scheduled_ts(), flow_run_id=_flow_run_id())
    log.info("phase detect: %s run, traffic on %s, target %s (%s)", trigger, active, rec.to_region, reason)
    with _recorded(config_path, rec):
        if decide.already_active(rec, active):
            log.info("phase detect: %s already takes the traffic; nothing to do", rec.to_region)
            return rec.to_json()
        if decide.needs_confirmation(trigger, active):
            if not decide.outage_confirmed(rec, active, confirm_outage(config_path, active)):
                log.warning("phase detect: the outage of %s is not confirmed; traffic stays", active)
                return rec.to_json()
        log.info("phase dispatch: a verified replica in %s (warm standby or cold start)", rec.to_region)
        decide.replica_ready(rec, ensure_replica(config_path, rec.to_region))
        _verify_and_switch(config_path, rec, active, override)
        log.info("phase recover: traffic on %s", rec.to_region)
        return rec.to_json()


@flow(name="failback")
def failback(reason: str = FAILBACK_REASON, trigger: SkipJsonSchema[str] = "manual", config_path: str = CONFIG_PATH,
             bundle: str | None = BUNDLE) -> dict:
    """Return traffic to the primary once its store answers and holds every snapshot; its replica is (re)started
    on the newest snapshot and verified before the switch. ``trigger`` ("drill" from a drill): not on the form."""
    config_path = bundle_ref(config_path, bundle)  # tasks load this bundle's view
    cfg = load_config(config_path)
    log = get_run_logger()
    active = read_active_region(config_path)
    rec = decide.new_failback(cfg, active=active, reason=reason, trigger=trigger, flow_run_id=_flow_run_id())
    log.info("phase detect: %s failback, traffic on %s, back to %s (%s)", trigger, active, rec.to_region, reason)
    with _recorded(config_path, rec):
        if decide.already_active(rec, active):
            log.info("phase detect: %s already takes the traffic; nothing to do", rec.to_region)
            return rec.to_json()
        log.info("phase recover: copy to %s the snapshots taken while failed over", rec.to_region)
        decide.data_copied_back(rec, copy_back_snapshots(config_path, decide.failback_source(cfg, active)))
        log.info("phase dispatch: (re)start the replica in %s on the newest snapshot", rec.to_region)
        decide.replica_ready(rec, ensure_replica(config_path, rec.to_region, "latest", True))
        _verify_and_switch(config_path, rec, active)
        log.info("phase recover: traffic back on %s", rec.to_region)
        return rec.to_json()
