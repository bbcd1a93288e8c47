"""DR drills as MLflow runs: one run ``drill <id>`` per drill in experiment ``dr-drills``, begun when the drill starts
(so its signed report can name the run) and completed with its metrics, tags and report folder as artifacts.

Params are the drill's scope, metrics its measurements (RTO, RPO, detection...), tags its verdict and the snapshot ids
it restored; the lineage query (:mod:`llmdr.lineage.query`) finds a model version's drills by those ids.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llmdr.common.definitions import RPO_DEFINITION, RTO_DEFINITION
from llmdr.lineage.tracking import (
    TAG_KIND,
    ArtifactUploadError,
    TrackingError,
    TrackingTarget,
    ensure_experiment,
    import_mlflow,
    open_client,
    run_artifact_uri,
    safe_uri,
    short_error,
    upload_artifacts,
)

log = logging.getLogger(__name__)

DRILL_EXPERIMENT = "dr-drills"
# MLflow 3's UI opens an experiment by its kind: this one is a table of runs (RTO/RPO columns), not GenAI traces
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def _ms(ts: float | None) -> int | None:
    """Milliseconds, truncated the way the record's UTC strings are (whole microseconds, then milliseconds)."""
    return None if ts is None else round(ts * 1_000_000) // 1000


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def drill_params(record: dict) -> dict[str, str]:
    scope = record.get("scope") or {}
    obj = scope.get("objectives") or {}
    regions = scope.get("regions") or []
    params = {
        "bundle": record.get("bundle"),
        "drill_id": record.get("id"),
        "regions": ", ".join(f"{r.get('name')} ({r.get('role')})" for r in regions) or None,
        "rto_objective_seconds": obj.get("rto_s"),
        "rpo_objective_seconds": obj.get("rpo_s"),
        "drill_interval_seconds": obj.get("drill_interval_s"),
        "outage_region": (record.get("outage") or {}).get("region"),
        "outage_action": scope.get("outage_action"),
        "started_by": (record.get("started_by") or {}).get("kind"),
        "tool_version": record.get("tool_version"),
        "rto_definition": RTO_DEFINITION,
        "rpo_definition": RPO_DEFINITION,
    }
    return {k: str(v) for k, v in params.items() if v is not None and v != ""}


def drill_metrics(record: dict) -> dict[str, float]:
    """``rto_seconds``, ``rpo_seconds``, every other numeric ``<name>_s`` measurement as ``<name>_seconds``
    (detection, dispatch, recovery...), ``passed`` and ``failed_over_at_end`` as 1/0. None values are left out."""
    out: dict[str, float] = {}
    for k, v in sorted((record.get("measurements") or {}).items()):
        n = _num(v)
        if n is not None and k.endswith("_s"):
            out[k[:-2] + "_seconds"] = n
    out["passed"] = 1.0 if record.get("passed") else 0.0
    out["failed_over_at_end"] = 1.0 if record.get("failed_over_at_end") else 0.0
    if (d := _num(record.get("duration_s"))) is not None:
        out["drill_duration_seconds"] = d
    return out


def drill_tags(record: dict) -> dict[str, str]:
    ev = record.get("evidence") or {}
    tags = {
        TAG_KIND: "dr-drill",
        "llmdr.bundle": record.get("bundle"),
        "llmdr.drill_id": record.get("id"),
        "llmdr.result": "PASS" if record.get("passed") else "FAIL",
        "llmdr.failed_over_at_end": "true" if record.get("failed_over_at_end") else "false",
        "llmdr.prefect_flow_run_id": ev.get("prefect_flow_run_id") or (record.get("started_by") or {}).get(
            "flow_run_id"),
        "llmdr.started_by": (record.get("started_by") or {}).get("kind"),
    }
    appr = ev.get("approval") or {}
    tags |= {"llmdr.approval": appr.get("outcome"), "llmdr.approver": appr.get("approver"),
             "llmdr.approval_login": appr.get("login"), "llmdr.approval_reason": appr.get("reason")}
    for region, snap in sorted((ev.get("snapshots") or {}).items()):
        sid = snap.get("id") if isinstance(snap, dict) else snap
        if sid:
            tags[f"llmdr.snapshot.{region}"] = sid
    mv = ev.get("model_version")
    link = ""
    if isinstance(mv, (str, int)):
        tags["llmdr.model_version"] = mv
    elif isinstance(mv, dict) and mv.get("name") and mv.get("version"):
        name, version = str(mv["name"]), str(mv["version"])
        tags |= {"llmdr.model_name": name, "llmdr.model_version": version,
                 "llmdr.model_uri": f"models:/{name}/{version}"}
        link = (f"\n\nVerified model version: [{name} version {version}](#/models/{name}/versions/{version}) "
                "(a registry entry pointing at the snapshot, not a loadable MLflow model).")
    reasons = record.get("failure_reasons") or []
    verdict = "PASS" if record.get("passed") else "FAIL"
    m = record.get("measurements") or {}
    figures = "".join(f"; {n} {m[k]:.1f} s" for n, k in (("RTO", "rto_s"), ("RPO", "rpo_s")) if _num(m.get(k)) is not None)
    tags["mlflow.note.content"] = (f"DR drill {record.get('id')} of {record.get('bundle')}: {verdict}{figures}" + (
        "\n\n" + "\n".join(f"- {r}" for r in reasons) if reasons else "") + link
        + f"\n\n{RTO_DEFINITION}. {RPO_DEFINITION}.")
    return {k: str(v) for k, v in tags.items() if v is not None and v != ""}


def _find_drill_run(client, experiment_id: str, drill_id: str):
    runs = client.search_runs([experiment_id], filter_string=f"tags.`llmdr.drill_id` = '{_quote(drill_id)}'",
                              max_results=1)
    return runs[0] if runs else None


_START_TAGS = (TAG_KIND, "llmdr.bundle", "llmdr.drill_id", "llmdr.prefect_flow_run_id", "llmdr.started_by")


def _drill_run(target: TrackingTarget, record: dict, experiment: str, *, final: bool):
    """Find (by ``llmdr.drill_id``) or create the drill's run and log what the record holds; returns the run."""
    import_mlflow()
    from mlflow.entities import Metric, Param, RunTag

    drill_id = str(record.get("id") or "")
    if not drill_id:
        raise TrackingError("the drill record has no id: log the record the dr-drill flow produced (to_json())")
    client = open_client(target)
    exp_id = ensure_experiment(target, experiment)
    try:
        if client.get_experiment(exp_id).tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        run = _find_drill_run(client, exp_id, drill_id)
        if run is None:
            run = client.create_run(exp_id, start_time=_ms(record.get("started_ts")), run_name=f"drill {drill_id}")
        run_id = run.info.run_id
        tags = drill_tags(record)
        if not final:
            tags = {k: v for k, v in tags.items() if k in _START_TAGS}
        stamp = _ms(record.get("ended_ts")) or _ms(record.get("started_ts")) or 0
        metrics = [Metric(k, v, stamp, 0) for k, v in drill_metrics(record).items()] if final else []
        client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in drill_params(record).items()],
                         tags=[RunTag(k, v) for k, v in tags.items()])
        return client.get_run(run_id)
    except Exception as exc:
        raise TrackingError(f"MLflow: cannot record drill {drill_id} in experiment {experiment!r} of "
                            f"{safe_uri(target.tracking_uri)}: {short_error(exc)}") from exc


def begin_drill(target: TrackingTarget, record: dict, *, experiment: str = DRILL_EXPERIMENT) -> str:
    """Create (or find) the drill's run at the start, with its scope params, and return its id, so the signed report
    can name its MLflow run; :func:`log_drill` later completes the same run. Touches no artifact store."""
    return _drill_run(target, record, experiment, final=False).info.run_id


def log_drill(target: TrackingTarget, record: dict, report_folder: Path, *, experiment: str = DRILL_EXPERIMENT) -> str:
    """Record one drill as the MLflow run ``drill <id>`` in ``experiment``; returns its run id.

    Params (scope), metrics (:func:`drill_metrics`), tags (:func:`drill_tags`) and every file of ``report_folder``
    as artifacts. Idempotent per drill id: logging the same drill again completes the same run (the one
    :func:`begin_drill` made, or the one an :class:`ArtifactUploadError` left FAILED, e.g. now with local
    artifacts) instead of adding a second one."""
    import_mlflow()
    from mlflow.entities import RunStatus

    report_folder = Path(report_folder)
    if not report_folder.is_dir():
        raise TrackingError(f"drill report folder {report_folder} does not exist: nothing to log as artifacts")
    run = _drill_run(target, record, experiment, final=True)
    run_id, ended = run.info.run_id, _ms(record.get("ended_ts"))
    client = open_client(target)
    try:
        uri = upload_artifacts(target, run, report_folder, experiment)
    except ArtifactUploadError:
        client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FAILED), end_time=ended)
        raise
    client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FINISHED), end_time=ended)
    log.info("drill %s recorded as MLflow run %s (artifacts %s)", record.get("id"), run_id, uri)
    return run_id


def drill_runs(target: TrackingTarget, *, experiment: str = DRILL_EXPERIMENT, bundle: str | None = None) -> list[dict]:
    """Every drill run in ``experiment`` (of ``bundle`` if given), oldest first: id, name, status, start/end (UTC),
    params, metrics, tags, artifact_uri. An absent sqlite file or experiment means no runs (nothing is created)."""
    uri = target.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return []
    client = open_client(target)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    filt = f"tags.`{TAG_KIND}` = 'dr-drill'"
    if bundle is not None:
        filt += f" and tags.`llmdr.bundle` = '{_quote(bundle)}'"
    out: list[dict] = []
    token = None
    while True:
        page = client.search_runs([exp.experiment_id], filter_string=filt, max_results=1000,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        for r in page:
            out.append({"id": r.info.run_id, "name": r.info.run_name, "status": r.info.status,
                        "start": _iso(r.info.start_time), "end": _iso(r.info.end_time),
                        "params": dict(r.data.params), "metrics": dict(r.data.metrics), "tags": dict(r.data.tags),
                        "artifact_uri": run_artifact_uri(r)})
        token = page.token
        if not token:
            return out


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _quote(value: str) -> str:
    """A value for an MLflow filter string: single quotes are not allowed inside one."""
    if "'" in value:
        raise TrackingError(f"cannot search MLflow for {value!r}: it contains a single quote")
    return value
