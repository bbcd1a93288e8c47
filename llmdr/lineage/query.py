"""The lineage query: the chain behind a model version or snapshot, asked now.

:func:`lineage` resolves ``MODEL``, ``MODEL@alias``, ``MODEL@<version>`` or a snapshot id / prefix and returns model
version → snapshot → regions (each asked now, read-only) → datasets → training run → drills, as one JSON-ready dict;
:mod:`llmdr.lineage.render` turns it into text.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from llmdr.config import Config, Region
from llmdr.errors import LlmdrError, SnapshotNotFound, UsageError
from llmdr.lineage.drills import drill_runs
from llmdr.lineage.registry import (
    content_digest,
    model_versions,
    open_region_repo,
    version_by_content,
    versions_by_prefix,
)
from llmdr.lineage.tags import (
    HARDWARE_PARAM,
    T_BUNDLE,
    T_CHECKPOINT,
    T_COMPONENT,
    T_CONTENT,
    T_CREATED,
    T_HARDWARE,
    T_HARDWARE_SOURCE,
    T_LAST_DRILL,
    T_LAST_RESULT,
    T_REGION,
    T_SNAPSHOT,
    T_STEP,
    T_TRAINING,
    datasets_from_manifest,
    datasets_from_tags,
    snapshot_ids,
)
from llmdr.lineage.tracking import (
    TrackingTarget,
    is_not_found,
    mlflow_call,
    open_client,
    registry_target,
    safe_uri,
    store_exists,
)
from llmdr.lineage.training import find_training_run
from llmdr.repo.manifest import Manifest

_REGION_TIMEOUT_S = 3.0


def _iso_ms(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _region_state(cfg: Config, region: Region, candidates: list[str], recorded: str | None) -> dict:
    """Ask ``region`` now (one listing, then the manifest): is one of ``candidates`` there, and is it whole?"""
    out: dict[str, Any] = {"present": None, "snapshot_id": None, "complete": None, "recorded": recorded}
    from llmdr.common.net import unreachable

    try:
        # a stopped server: fail in seconds, not after botocore's connect timeout
        if region.endpoint and (exc := unreachable(region.endpoint, _REGION_TIMEOUT_S)) is not None:
            out["error"] = f"unreachable at {region.endpoint} ({exc.strerror or exc})"
            return out
        repo = open_region_repo(cfg, region, attempts=1)
        present = set(repo.snapshot_ids())
        found = next((i for i in candidates if i in present), None)
        out["present"] = found is not None
        out["snapshot_id"] = found
        if found is None:
            out["complete"] = False
            return out
        m = repo.load_manifest(found)  # SHA-256 checked against the id
        missing = sorted(k for k, c in m.components.items() if c.get("required", True) and not c.get("files"))
        out["complete"] = not missing
        if missing:
            out["missing_components"] = missing
    except LlmdrError as exc:
        out["error"] = str(exc)
    return out


def _regions_now(cfg: Config, candidates: list[str], recorded: dict[str, str]) -> dict[str, dict]:
    with ThreadPoolExecutor(max_workers=len(cfg.regions)) as pool:
        futs = {r.name: pool.submit(_region_state, cfg, r, candidates, recorded.get(r.name)) for r in cfg.regions}
        return {name: f.result() for name, f in futs.items()}


def _parse_ref(ref: str) -> tuple[str, str | None]:
    """``MODEL``, ``MODEL@alias``, ``MODEL@3`` / ``MODEL@v3`` → (model, selector); a bare ref → (ref, None)."""
    ref = ref.strip()
    if "@" in ref:
        name, _, sel = ref.rpartition("@")
        return name, sel
    return ref, None


def _resolve_version(client, cfg: Config, ref: str, target: TrackingTarget):
    """The model version ``ref`` names, or None when ``ref`` is not a model reference (a snapshot prefix)."""
    name, sel = _parse_ref(ref)
    if sel is not None and not name:
        name = cfg.model_name
    exists = True
    try:
        client.get_registered_model(name)
    except Exception as exc:
        if not is_not_found(exc):
            raise
        exists = False
    if not exists:
        if sel is None and re.fullmatch(r"[0-9a-fA-F]{4,64}", name):
            return None
        models = sorted(m.name for m in client.search_registered_models())
        known = f"registered models: {', '.join(models)}" if models else "no model is registered yet"
        raise UsageError(f"no registered model {name!r} in MLflow {safe_uri(target.tracking_uri)} ({known}); give "
                         "MODEL, MODEL@alias, MODEL@version or a snapshot id prefix")
    versions = model_versions(client, name)
    if not versions:
        raise UsageError(f"model {name!r} has no versions yet: protect-bundle registers one per snapshot content")
    if sel is None:
        return versions[-1]
    if re.fullmatch(r"v?\d+", sel):
        num = sel.lstrip("v")
        for v in versions:
            if str(v.version) == num:
                return v
        raise UsageError(f"model {name!r} has no version {num}; versions: "
                         f"{', '.join(str(v.version) for v in versions)}")
    try:
        return client.get_model_version_by_alias(name, sel)
    except Exception as exc:
        if not is_not_found(exc):
            raise
        aliases = client.get_registered_model(name).aliases
        known = ", ".join(f"{a} → version {v}" for a, v in sorted(aliases.items())) or "none set"
        raise UsageError(f"model {name!r} has no alias {sel!r}; aliases: {known}") from None


def _training_run(client, run_id: str | None, target: TrackingTarget) -> dict | None:
    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        if is_not_found(exc):
            return {"run_id": run_id, "error": f"run not found in MLflow {safe_uri(target.tracking_uri)}"}
        raise
    params = dict(run.data.params)
    hw = {k[len(HARDWARE_PARAM):]: v for k, v in params.items() if k.startswith(HARDWARE_PARAM)}
    tags = run.data.tags
    return {"run_id": run_id, "run_name": run.info.run_name, "status": run.info.status,
            "started": _iso_ms(run.info.start_time), "checkpoint": tags.get(T_CHECKPOINT),
            "snapshot_id": tags.get(T_SNAPSHOT), "step": tags.get(T_STEP),
            "params": {k: v for k, v in sorted(params.items()) if not k.startswith(HARDWARE_PARAM)},
            "metrics": dict(sorted(run.data.metrics.items())), "hardware": hw,
            "hardware_summary": tags.get(T_HARDWARE), "hardware_source": tags.get(T_HARDWARE_SOURCE),
            "datasets": datasets_from_tags(tags)}


def _drills(target: TrackingTarget, bundle: str, ids: set[str]) -> list[dict]:
    out = []
    for r in drill_runs(target, bundle=bundle):
        tags = r["tags"]
        matched = sorted(k[len(T_REGION):] for k, v in tags.items() if k.startswith(T_REGION) and v in ids)
        if not matched:
            continue
        m = r["metrics"]
        passed = tags.get("llmdr.result")
        out.append({"drill_id": tags.get("llmdr.drill_id"), "passed": None if passed is None else passed == "PASS",
                    "rto_s": m.get("rto_seconds"), "rpo_s": m.get("rpo_seconds"), "mlflow_run_id": r["id"],
                    "started": r["start"], "status": r["status"], "regions": matched})
    return out


def lineage(cfg: Config, ref: str, *, tracking_uri: str | None = None) -> dict:
    """The chain behind ``ref`` (``MODEL``, ``MODEL@alias``, ``MODEL@<version>``, or a snapshot id / prefix):
    ``model`` (None for a snapshot never registered, e.g. a checkpoint), ``snapshot``, ``regions`` (asked now,
    read-only: present / snapshot_id / complete, or ``present: None`` and ``error`` when a region does not answer),
    ``datasets``, ``training_run`` and ``drills`` (drill runs whose evidence names one of the snapshot's ids)."""
    target = registry_target(cfg, tracking_uri)
    have_store = store_exists(target)
    client = open_client(target) if have_store else None
    mv = None
    if client is not None:
        mv = mlflow_call(f"look up {ref!r}", target, _resolve_version, client, cfg, ref, target)
    elif "@" in ref or not re.fullmatch(r"[0-9a-fA-F]{4,64}", ref.strip()):
        raise UsageError(f"no MLflow store at {safe_uri(target.tracking_uri)}: nothing is registered yet "
                         "(protect-bundle registers each snapshot); a snapshot id prefix still works")

    snapshot_id: str | None = None
    manifest: Manifest | None = None
    if mv is None:  # a snapshot id or prefix
        prefix = ref.strip().lower()
        if client is not None:
            hits = mlflow_call("search model versions", target, versions_by_prefix, client, cfg.model_name, prefix)
            if len(hits) > 1:
                raise UsageError(f"snapshot prefix {prefix!r} matches versions "
                                 f"{', '.join(str(v.version) for v, _ in hits)} of {cfg.model_name}: give more of it")
            if hits:
                mv, snapshot_id = hits[0]
        if mv is None:  # not registered under its id: maybe under another snapshot of the same content
            snapshot_id, manifest = _find_snapshot(cfg, prefix)
            if client is not None:
                mv = mlflow_call("search model versions", target, version_by_content, client, cfg.model_name,
                                 content_digest(manifest))

    tags = dict(mv.tags) if mv is not None else {}
    if snapshot_id is None:
        snapshot_id = tags.get(T_SNAPSHOT)
    ids = snapshot_ids(tags)
    candidates = [snapshot_id]
    if mv is not None and snapshot_id == tags.get(T_SNAPSHOT):  # any copy of this content counts, newest first
        candidates += [i for i in reversed(ids) if i != snapshot_id]
    recorded = {k[len(T_REGION):]: v for k, v in tags.items() if k.startswith(T_REGION)}
    regions = _regions_now(cfg, candidates, recorded)
    if manifest is None:
        manifest = _manifest_from(cfg, snapshot_id, regions)

    if manifest is not None:
        components = {k: c.get("digest") for k, c in sorted(manifest.components.items())}
    else:  # no region has it now: what was recorded at registration
        components = {k[len(T_COMPONENT):]: v for k, v in sorted(tags.items()) if k.startswith(T_COMPONENT)}
    snapshot = {"id": snapshot_id, "bundle": manifest.bundle if manifest else tags.get(T_BUNDLE),
                "kind": manifest.kind if manifest else "bundle",
                "created": manifest.created if manifest else tags.get(T_CREATED),
                "components": components,
                "content_digest": content_digest(manifest) if manifest else tags.get(T_CONTENT),
                "same_content_ids": ids or [snapshot_id]}
    if manifest is not None and manifest.tags:
        snapshot["tags"] = dict(manifest.tags)

    training = None
    drills: list[dict] = []
    if client is not None:
        run_id = tags.get(T_TRAINING)
        if run_id is None and mv is None:  # a checkpoint snapshot: its own training-run record
            run_id = find_training_run(cfg, snapshot_id, tracking_uri=tracking_uri)
        training = mlflow_call("read the training run", target, _training_run, client, run_id, target)
        bundle = tags.get(T_BUNDLE) or (manifest.bundle if manifest else cfg.bundle.name)
        drills = mlflow_call("read drill runs", target, _drills, target, bundle, set(ids) | {snapshot_id})

    datasets = datasets_from_tags(tags)
    if not datasets and training:
        datasets = training.get("datasets") or []
    if not datasets and manifest is not None:
        datasets = datasets_from_manifest(manifest)
    model = None
    if mv is not None:
        model = {"name": mv.name, "version": str(mv.version), "aliases": sorted(mv.aliases), "source": mv.source,
                 "created": _iso_ms(mv.creation_timestamp), "last_drill_id": tags.get(T_LAST_DRILL),
                 "last_drill_result": tags.get(T_LAST_RESULT)}
    return {"ref": ref, "tracking_uri": safe_uri(target.tracking_uri), "model": model, "snapshot": snapshot,
            "regions": regions, "datasets": datasets, "training_run": training, "drills": drills}



def _manifest_from(cfg: Config, snapshot_id: str, regions: dict[str, dict]) -> Manifest | None:
    """The manifest of ``snapshot_id`` from a region that has it now (its cached copy, already checked)."""
    for name, st in regions.items():
        if st.get("snapshot_id") == snapshot_id:
            try:
                return open_region_repo(cfg, cfg.region(name), attempts=1).load_manifest(snapshot_id)
            except LlmdrError:
                continue
    return None


def _find_snapshot(cfg: Config, prefix: str) -> tuple[str, Manifest]:
    """Resolve a snapshot id prefix in the regions (primary first); the first region that knows it answers."""
    errors = []
    for region in [cfg.primary, *[r for r in cfg.regions if r is not cfg.primary]]:
        try:
            repo = open_region_repo(cfg, region, attempts=1)
            sid = repo.resolve(prefix)
            return sid, repo.load_manifest(sid)
        except SnapshotNotFound:
            errors.append(f"{region.name}: no such snapshot")
        except UsageError:  # ambiguous prefix, or not hex at all
            raise
        except LlmdrError as exc:
            errors.append(f"{region.name}: {exc}")
    raise SnapshotNotFound(f"{prefix!r} is neither a registered model nor a snapshot in any region "
                           f"({'; '.join(errors)}); `llmdr snapshots` lists snapshots")
