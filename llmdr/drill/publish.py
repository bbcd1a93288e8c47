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
from llmdr.errors import LlmdrError

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
    target, mlflow_locked = None, None
    try:
        target = target_for(cfg)
        record["evidence"]["mlflow_run_id"] = begin_drill(target, record)
    except Exception as exc:  # noqa: BLE001 - the evidence must be written and signed regardless
        logger.warning("MLflow run not created: %s", exc)
        record["evidence"]["mlflow_run_id"] = None
        record["evidence"]["mlflow_error"] = str(exc)
    _link_model_version(cfg, record, logger)
    write_runbook_into(cfg, folder, record, logger=logger)
    try:
        record["signer"] = signer_info(cfg.drill.signing, cfg.state_path)
    except LlmdrError as exc:  # e.g. no HMAC key: the report is written, then signing says so
        logger.warning("signing key not readable: %s", exc)
        record["signer"] = None
    files = write_report(record, folder, history=past)
    signature = sign_folder(folder, cfg.drill.signing, cfg.state_path, portable=True)
    if target is not None and record["evidence"].get("mlflow_run_id"):
        try:
            log_drill(target, record, folder)
            mlflow_locked = lock_mlflow_artifacts(cfg, target.region, record["evidence"]["mlflow_run_id"], logger)
        except ArtifactUploadError as exc:
            logger.warning("report artifacts not uploaded to %s (%s); keeping them in the local MLflow store",
                        target.region, exc)
            try:
                log_drill(target_for(cfg, local_artifacts=True), record, folder)
            except Exception as exc2:  # noqa: BLE001
                logger.warning("MLflow run %s not completed: %s", record["evidence"]["mlflow_run_id"], exc2)
        except Exception as exc:  # noqa: BLE001
            logger.warning("MLflow run %s not completed: %s", record["evidence"]["mlflow_run_id"], exc)
    stored = store_everywhere(cfg, folder, logger) | {"mlflow_artifacts_locked": mlflow_locked}
    return {"folder": str(folder), "files": {k: str(Path(v)) for k, v in files.items()}, "stored": stored,
            "signature": {k: v for k, v in signature.items() if k != "files"} if isinstance(signature, dict)
            else signature, "mlflow_run_id": record["evidence"].get("mlflow_run_id")}


def store_everywhere(cfg: Config, folder: Path, logger: Logger = log) -> dict[str, Any]:
    """The signed folder, the golden set and the runbook in force, to every region's store (``llmdr.control``): a
    region that is down gets them by `llmdr control sync`; nothing here fails the drill's publication."""
    from llmdr.config.residency import require_all
    from llmdr.drill.stored import store_in_force, store_report

    try:
        require_all(cfg, f"store drill report {folder.name} in every region")
        place = store_report(cfg, folder)
        out = {"held": place.held, "pending": place.pending, "in_force": store_in_force(cfg)}
    except (LlmdrError, OSError, ValueError) as exc:
        logger.warning("drill report not written to the regions' stores: %s", exc)
        return {"error": f"{type(exc).__name__}: {exc}"}
    if place.pending:
        logger.warning("drill report %s pending for region(s) %s: run `llmdr control sync` when they answer",
                       folder.name, ", ".join(place.pending))
    return out


def lock_mlflow_artifacts(cfg: Config, region: str | None, run_id: str, logger: Logger = log) -> int | None:
    """Object-Lock the drill's MLflow artifacts in the DR bucket like everything llmdr writes there (MLflow's own
    upload sets no retention): the number of objects locked; None when the region has no ``object_lock:`` or the
    lock failed (warned: the signed report in ``control/drills/`` is locked regardless)."""
    from llmdr.drill.stored import lock_run_artifacts

    if region is None or cfg.region(region).object_lock is None:
        return None
    try:
        return lock_run_artifacts(cfg, cfg.region(region), run_id)
    except (LlmdrError, OSError) as exc:
        logger.warning("MLflow artifacts of run %s not Object-Locked in %s: %s", run_id, region, exc)
        return None


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


def _link_model_version(cfg: Config, record: dict[str, Any], logger: Logger) -> None:
    """Tag the verified model version with the drill's MLflow run (which exists only now)."""
    mv, run_id = record["evidence"].get("model_version"), record["evidence"].get("mlflow_run_id")
    if not (isinstance(mv, dict) and mv.get("name") and mv.get("version") and run_id):
        return
    from llmdr.lineage.registry import link_drill_run

    try:
        link_drill_run(cfg, mv["name"], mv["version"], run_id, tracking_uri=cfg.tracking.uri)
    except Exception as exc:  # noqa: BLE001 - the report still records the drill
        logger.warning("model version %s/%s not linked to MLflow run %s: %s", mv["name"], mv["version"], run_id, exc)


def signer_info(settings: Any, state_dir: Path) -> dict[str, Any]:
    """What the report says about its signer (public facts only): algorithm, key id, fingerprint and the public
    key's file name in the folder; for HMAC the key id and the variable holding the key. Makes the Ed25519 pair on
    first use, as signing would."""
    from llmdr.drill import portable, signing

    if settings.method == "hmac":
        key = signing.hmac_key_from_env(settings)
        return {"algorithm": signing.HMAC_SHA256, "key_id": signing.hmac_key_id(key), "key_env": settings.hmac_key_env}
    priv, _ = signing.ensure_keypair(settings, state_dir)
    raw = portable.raw_public(priv.public_key())
    return {"algorithm": signing.ED25519, "key_id": signing.ed25519_key_id(raw), "fingerprint": portable.fingerprint(raw),
            "public_key": portable.PUBLIC_KEY_FILE}
