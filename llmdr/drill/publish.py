"""Publishing a finished drill: its signed report folder (the runbook in force, evidence JSON, HTML, PDF, charts,
``SIGNATURE.json``), its MLflow run, and the registered model version a passing drill marks.

The evidence is written and signed whatever else fails: an MLflow server that is down or a runbook that cannot be
rendered is recorded in the evidence (``mlflow_error``, ``runbook_error``) and logged, never raised.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from llmdr.config import Config
from llmdr.drill.record import drills_dir, history

log = logging.getLogger(__name__)


Logger = logging.Logger | logging.LoggerAdapter


def write_runbook_into(cfg: Config, folder: Path, record: dict[str, Any], *, logger: Logger = log) -> None:
    """The playbook in force during the drill, into the report folder before the report (so the signature covers
    it); a failure is recorded in ``record["evidence"]`` and leaves no stale runbook behind."""
    from llmdr.drill import runbook
    from llmdr.drill.report import RUNBOOK_FILE

    try:
        runbook.write_runbook(cfg, folder / RUNBOOK_FILE)
        record["evidence"]["runbook"] = RUNBOOK_FILE
    except Exception as exc:  # noqa: BLE001 - the drill's evidence must be written and signed regardless
        logger.warning("runbook not written into the drill report: %s", exc)
        (folder / RUNBOOK_FILE).unlink(missing_ok=True)
        record["evidence"]["runbook"] = None
        record["evidence"]["runbook_error"] = f"{type(exc).__name__}: {exc}"


def publish_report(cfg: Config, record: dict[str, Any], *, logger: Logger = log) -> dict[str, Any]:
    """Write the report folder of ``record`` (a finished drill's JSON), sign it, and log it as an MLflow run (the run
    is created first, so the signed evidence names it). Returns ``{"folder", "files", "signature",
    "mlflow_run_id"}``. ``logger``: where the warnings go (a Prefect task passes its run logger)."""
    from llmdr.drill.report import write_report
    from llmdr.drill.signing import sign_folder
    from llmdr.lineage.drills import begin_drill, log_drill
    from llmdr.lineage.tracking import ArtifactUploadError, target_for

    folder = drills_dir(cfg) / record["id"]
    past = [r.to_json() for r in history(cfg) if r.id != record["id"]] + [record]
    target = None
    try:
        target = target_for(cfg)
        record["evidence"]["mlflow_run_id"] = begin_drill(target, record)
    except Exception as exc:  # noqa: BLE001 - the evidence must be written and signed regardless
        logger.warning("MLflow run not created: %s", exc)
        record["evidence"]["mlflow_run_id"] = None
        record["evidence"]["mlflow_error"] = str(exc)
    write_runbook_into(cfg, folder, record, logger=logger)
    files = write_report(record, folder, history=past)
    signature = sign_folder(folder, cfg.drill.signing, cfg.state_path)
    if target is not None and record["evidence"].get("mlflow_run_id"):
        try:
            log_drill(target, record, folder)
        except ArtifactUploadError as exc:
            logger.warning("report artifacts not uploaded to %s (%s); keeping them in the local MLflow store",
                        target.region, exc)
            try:
                log_drill(target_for(cfg, local_artifacts=True), record, folder)
            except Exception as exc2:  # noqa: BLE001
                logger.warning("MLflow run %s not completed: %s", record["evidence"]["mlflow_run_id"], exc2)
        except Exception as exc:  # noqa: BLE001
            logger.warning("MLflow run %s not completed: %s", record["evidence"]["mlflow_run_id"], exc)
    return {"folder": str(folder), "files": {k: str(Path(v)) for k, v in files.items()},
            "signature": {k: v for k, v in signature.items() if k != "files"} if isinstance(signature, dict)
            else signature, "mlflow_run_id": record["evidence"].get("mlflow_run_id")}


def mark_model_version(cfg: Config, snapshot_id: str | None, drill_id: str, passed: bool, *,
                       logger: Logger = log) -> dict[str, Any] | None:
    """The registered model version of the DR snapshot; a passing drill moves its ``drill-verified`` alias. None
    without a snapshot or without model registration; ``{"error": ...}`` when the registry fails (the report still
    records the drill)."""
    from llmdr.lineage.registry import mark_drill_verified

    if not snapshot_id or not cfg.tracking.register_models:
        return None
    try:
        return mark_drill_verified(cfg, snapshot_id, drill_id=drill_id, passed=passed, mlflow_run_id=None,
                                   tracking_uri=cfg.tracking.uri)
    except Exception as exc:  # noqa: BLE001 - the report still records the drill
        logger.warning("model version not marked: %s", exc)
        return {"error": str(exc)}
