"""Tasks of the dr-drill flow: each loads the config, calls one core step and returns its JSON. The decisions about
the results are in ``llmdr.drill.procedure``, called by the flow."""

from __future__ import annotations

from prefect import get_run_logger, runtime, task
from prefect.cache_policies import NO_CACHE

from llmdr.config import load_config
from llmdr.drill import evidence, procedure, publish
from llmdr.drill import record as core
from llmdr.integrations.prefect import flow_run_record, retry_api
from tasks.retry import retry_if_transient


def who_started(started_by: str) -> dict:
    """Who or what started this flow run (:func:`llmdr.drill.procedure.started_by`), from the ``started_by``
    parameter and the flow run as the Prefect server recorded it (read for every deployment run: a scheduled run is
    "schedule" whatever its parameters claim, so a default ``started_by`` set on the deployment cannot skip the
    approval)."""
    run = flow_run_record() if not started_by or runtime.deployment.id else None
    return procedure.started_by(started_by, flow_run_id=str(runtime.flow_run.id or "") or None,
                                deployment=runtime.deployment.name if runtime.deployment.id else None, run=run)


def _automation_state(name: str) -> dict:
    """The failover automation NAME (the bundle's: ``llmdr.drill.runbook.automation_name``) as this Prefect server
    has it: enabled, disabled, or not found (enabled None)."""
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            for a in retry_api(client.read_automations):
                if a.name == name:
                    return {"name": name, "enabled": bool(a.enabled), "id": str(a.id)}
    except Exception as exc:  # noqa: BLE001
        return {"name": name, "enabled": None, "error": str(exc)}
    return {"name": name, "enabled": None}


# No retries on the prechecks: a precheck that fails is a finding of the drill, not a fault to hide.
@task(name="drill-prechecks", cache_policy=NO_CACHE, retries=0)
def prechecks(config_path: str) -> dict:
    """Before anything is cut: traffic on the primary, both replicas answering, the copy in each DR region, the
    monitor watching, the failover automation enabled."""
    from llmdr.drill.runbook import automation_name

    cfg = load_config(config_path)
    out = evidence.prechecks(cfg, _automation_state(automation_name(cfg)))
    for w in out["warnings"]:
        get_run_logger().warning("precheck: %s", w)
    return out


# Never retried: a second attempt would move the outage's start after the RPO was measured.
@task(name="simulate-outage", cache_policy=NO_CACHE, retries=0)
def simulate_outage(config_path: str, region: str) -> dict:
    """Cut the region off (never deletes data)."""
    return core.simulate_outage(load_config(config_path), region)


@task(name="watch-for-failover", cache_policy=NO_CACHE, retries=0)
def watch_for_failover(config_path: str, since_ts: float, timeout_s: float) -> dict | None:
    """Wait for the automation's failover (the drill does not start one); None if it does not come in time."""
    rec = core.wait_for_failover(load_config(config_path), since_ts, timeout_s)
    return rec.to_json() if rec else None


@task(name="golden-through-router", cache_policy=NO_CACHE, retries=0)
def golden_through_router(config_path: str) -> dict:
    """The golden set through the router after the failover (a wrong answer is the finding; not retried)."""
    return evidence.golden_through_router(load_config(config_path))


@task(name="restore-test-dr", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=[5],
      retry_condition_fn=retry_if_transient)
def restore_test_dr(config_path: str, region: str) -> dict:
    """Restore the newest snapshot from the DR store into scratch, check completeness, serve, golden set."""
    return evidence.restore_test(load_config(config_path), region)


# Not retried: restore_newest returns every failure as its finding (a retry would only hide a flaky region).
@task(name="training-restore-dr", cache_policy=NO_CACHE, retries=0)
def training_restore_dr(config_path: str, region: str) -> dict:
    """Restore the newest training checkpoint from the DR store into scratch, verify it byte for byte and check it
    is complete, timed (``drill.training_restore``)."""
    from llmdr.drill.training import restore_newest

    return restore_newest(load_config(config_path), region)


@task(name="end-outage", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 15])
def end_outage(config_path: str, region: str) -> dict:
    """Bring the region back (its S3 server and replica, or the configured restore command)."""
    return core.end_outage(load_config(config_path), region)


@task(name="read-traffic", cache_policy=NO_CACHE, retries=0)
def read_traffic(config_path: str) -> dict:
    """Where the router sends traffic now (``{"active", "error"}``)."""
    return evidence.traffic(load_config(config_path))


@task(name="publish-drill-report", cache_policy=NO_CACHE, retries=0)
def publish_report(config_path: str, record: dict) -> dict:
    """Write the report folder (the runbook in force, evidence JSON, HTML, PDF, charts), sign it, log it as an
    MLflow run."""
    return publish.publish_report(load_config(config_path), record, logger=get_run_logger())


@task(name="datasets-from-dr", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=[5],
      retry_condition_fn=retry_if_transient)
def datasets_from_dr(config_path: str, region: str) -> list[dict]:
    """Every configured dataset pulled from the DR region's DVC remote into scratch (re-hashed against the recorded
    md5) and validated against its expectation suite."""
    return evidence.datasets_from(load_config(config_path), region)


@task(name="mark-model-version", cache_policy=NO_CACHE, retries=0)
def mark_model_version(config_path: str, snapshot_id: str | None, drill_id: str, passed: bool) -> dict | None:
    """The registered model version of the DR snapshot; a passing drill moves its `drill-verified` alias."""
    return publish.mark_model_version(load_config(config_path), snapshot_id, drill_id, passed,
                                      logger=get_run_logger())
