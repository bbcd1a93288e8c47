"""Tasks of the dr-drill flow: each builds what it needs from the config and calls one core step."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from llmdr.config import load_config
from llmdr.drill import record as core

from .retry import retry_if_transient


@task(name="drill-prechecks", cache_policy=NO_CACHE)
def prechecks(config_path: str) -> dict:
    """Before anything is cut: traffic on the primary, both replicas answering, the copy in each DR region, the
    monitor watching, the failover automation enabled."""
    from llmdr.failover.router import open_router
    from llmdr.failover.watch import read_status
    from llmdr.serving.replica import replica_status

    cfg = load_config(config_path)
    out: dict = {"problems": [], "warnings": []}
    try:
        out["active"] = open_router(cfg).active()
    except Exception as exc:  # noqa: BLE001 - reported as a precheck problem
        out["active"] = None
        out["problems"].append(f"the router does not answer: {exc}")
    if out["active"] not in (None, cfg.primary.name):
        out["problems"].append(f"traffic is already on {out['active']}, not the primary: fail back first "
                               "(`llmdr failback`)")
    out["replicas"] = {r.name: replica_status(cfg, r).to_json() for r in cfg.regions if r.serving}
    for name, st in out["replicas"].items():
        if not st["healthy"]:
            (out["problems"] if name == cfg.primary.name else out["warnings"]).append(
                f"the replica in {name} does not answer ({st['detail']})")
    out["copies"] = {r.name: core.region_copy(cfg, r.name) for r in cfg.regions}
    import time

    mon = read_status(cfg)
    out["monitor"] = mon
    if not mon:
        out["warnings"].append("the monitor has never run: nothing will detect the outage")
    out["automation"] = _automation_state()
    if out["automation"].get("enabled") is False:
        out["warnings"].append(f"the failover automation '{out['automation']['name']}' is disabled: the drill will "
                               "show that nothing fails over")
    elif out["automation"].get("enabled") is None:
        out["warnings"].append("the failover automation was not found on this Prefect server")
    out["checked_at"] = time.time()
    for w in out["warnings"]:
        get_run_logger().warning("precheck: %s", w)
    return out


def _automation_state() -> dict:
    from prefect.client.orchestration import get_client

    name = "llmdr-failover-when-active-region-down"
    try:
        with get_client(sync_client=True) as client:
            for a in client.read_automations():
                if a.name == name:
                    return {"name": name, "enabled": bool(a.enabled), "id": str(a.id)}
    except Exception as exc:  # noqa: BLE001
        return {"name": name, "enabled": None, "error": str(exc)}
    return {"name": name, "enabled": None}


@task(name="simulate-outage", cache_policy=NO_CACHE)
def simulate_outage(config_path: str, region: str) -> dict:
    """Cut the region off (never deletes data)."""
    return core.simulate_outage(load_config(config_path), region)


@task(name="watch-for-failover", cache_policy=NO_CACHE)
def watch_for_failover(config_path: str, since_ts: float, timeout_s: float) -> dict | None:
    """Wait for the automation's failover (the drill does not start one); None if it does not come in time."""
    rec = core.wait_for_failover(load_config(config_path), since_ts, timeout_s)
    return rec.to_json() if rec else None


@task(name="golden-through-router", cache_policy=NO_CACHE)
def golden_through_router(config_path: str) -> dict:
    from llmdr.failover import steps as fo
    from llmdr.failover.router import open_router

    cfg = load_config(config_path)
    url = open_router(cfg).url
    rep = fo.golden_check(cfg, url)
    return rep.to_json() | {"region": fo.answering_region(url)}


@task(name="restore-test-dr", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=[5],
      retry_condition_fn=retry_if_transient)
def restore_test_dr(config_path: str, region: str) -> dict:
    """Restore the newest snapshot from the DR store into scratch, check completeness, serve, golden set."""
    from llmdr.serving import restoretest

    cfg = load_config(config_path)
    res = restoretest.run_restore_test(cfg, "latest", region=region, golden_path=cfg.golden_path)
    out = res.to_json()
    g = out.get("golden") or {}
    out["summary"] = (f"{res.snapshot_id[:12]} from {region}: {g.get('passed', 0)}/{g.get('total', 0)} golden, "
                      + ("no problems" if not res.problems else "; ".join(res.problems)))
    return out


@task(name="end-outage", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 15])
def end_outage(config_path: str, region: str) -> dict:
    return core.end_outage(load_config(config_path), region)


@task(name="publish-drill-report", cache_policy=NO_CACHE)
def publish_report(config_path: str, record: dict) -> dict:
    """Write the report folder (the runbook in force, evidence JSON, HTML, PDF, charts), sign it, log it as an
    MLflow run."""
    from pathlib import Path

    from llmdr.drill.report import RUNBOOK_FILE, write_report
    from llmdr.drill.runbook import write_runbook
    from llmdr.drill.signing import sign_folder

    cfg = load_config(config_path)
    log = get_run_logger()
    folder = core.drills_dir(cfg) / record["id"]
    history = [r.to_json() for r in core.history(cfg) if r.id != record["id"]] + [record]
    from llmdr.lineage.drills import begin_drill, log_drill
    from llmdr.lineage.tracking import ArtifactUploadError, target_for

    target = None
    try:
        # the run exists before the report, so the signed evidence can name it
        target = target_for(cfg)
        record["evidence"]["mlflow_run_id"] = begin_drill(target, record)
    except Exception as exc:  # noqa: BLE001 - the evidence must be written and signed regardless
        log.warning("MLflow run not created: %s", exc)
        record["evidence"]["mlflow_run_id"] = None
        record["evidence"]["mlflow_error"] = str(exc)
    # the playbook in force during the drill goes into the folder first, so the signature covers it
    try:
        write_runbook(cfg, folder / RUNBOOK_FILE)
        record["evidence"]["runbook"] = RUNBOOK_FILE
    except Exception as exc:  # noqa: BLE001 - the drill's evidence must be written and signed regardless
        log.warning("runbook not written into the drill report: %s", exc)
        (folder / RUNBOOK_FILE).unlink(missing_ok=True)
        record["evidence"]["runbook"] = None
        record["evidence"]["runbook_error"] = f"{type(exc).__name__}: {exc}"
    files = write_report(record, folder, history=history)
    signature = sign_folder(folder, cfg.drill.signing, cfg.state_path)
    if target is not None and record["evidence"].get("mlflow_run_id"):
        try:
            log_drill(target, record, folder)
        except ArtifactUploadError as exc:
            log.warning("report artifacts not uploaded to %s (%s); keeping them in the local MLflow store",
                        target.region, exc)
            try:
                log_drill(target_for(cfg, local_artifacts=True), record, folder)
            except Exception as exc2:  # noqa: BLE001
                log.warning("MLflow run %s not completed: %s", record["evidence"]["mlflow_run_id"], exc2)
        except Exception as exc:  # noqa: BLE001
            log.warning("MLflow run %s not completed: %s", record["evidence"]["mlflow_run_id"], exc)
    return {"folder": str(folder), "files": {k: str(Path(v)) for k, v in files.items()},
            "signature": {k: v for k, v in signature.items() if k != "files"} if isinstance(signature, dict)
            else signature, "mlflow_run_id": record["evidence"].get("mlflow_run_id")}


@task(name="datasets-from-dr", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=[5],
      retry_condition_fn=retry_if_transient)
def datasets_from_dr(config_path: str, region: str) -> list[dict]:
    """Every configured dataset pulled from the DR region's DVC remote into scratch (re-hashed against the recorded
    md5) and validated against its expectation suite."""
    import shutil

    from llmdr.lineage.datasets import pull, remote_url
    from llmdr.lineage.expectations import validate

    cfg = load_config(config_path)
    out = []
    for ds in cfg.datasets:
        scratch = cfg.state_path / "scratch" / "datasets" / ds.name
        shutil.rmtree(scratch, ignore_errors=True)
        entry: dict = {"name": ds.name, "region": region, "remote": remote_url(cfg.region(region))}
        try:
            target = scratch / cfg.dataset_path(ds).name
            v = pull(cfg, ds, region, target=target, force=True)
            entry.update(md5=v.md5, pulled=True)
            rep = validate(cfg, ds, path=target)
            entry.update(valid=rep.success, validation=rep.summary(), failures=rep.failures)
        except Exception as exc:  # noqa: BLE001 - recorded as a failed control
            entry.update(pulled=entry.get("pulled", False), valid=False, error=str(exc))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        out.append(entry)
    return out


@task(name="mark-model-version", cache_policy=NO_CACHE)
def mark_model_version(config_path: str, snapshot_id: str | None, drill_id: str, passed: bool) -> dict | None:
    """The registered model version of the DR snapshot; a passing drill moves its `drill-verified` alias."""
    from llmdr.lineage.registry import mark_drill_verified

    cfg = load_config(config_path)
    if not snapshot_id or not cfg.tracking.register_models:
        return None
    try:
        return mark_drill_verified(cfg, snapshot_id, drill_id=drill_id, passed=passed, mlflow_run_id=None,
                                   tracking_uri=cfg.tracking.uri)
    except Exception as exc:  # noqa: BLE001 - the report still records the drill
        get_run_logger().warning("model version not marked: %s", exc)
        return {"error": str(exc)}
