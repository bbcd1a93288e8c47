"""Lineage: the MLflow model registry tied to snapshots, training-run records, and the chain query.

- **Model versions** (:func:`register_snapshot`): registered model ``cfg.model_name``; one version per distinct
  *content* of the bundle. A snapshot id is the SHA-256 of its manifest, which also records times and hosts, so a
  scheduled protect-bundle makes a new id every run even when no file changed; the version is keyed by the
  ``llmdr.content_digest`` tag (paths and content digests of every file) instead. A newer snapshot of the same
  content moves the version's snapshot tags forward and is appended to ``llmdr.snapshots`` (every id of that content,
  ``,id1,id2,``), so lookups by an older id still find the version. Aliases: ``production`` follows the protected
  version, ``drill-verified`` the version of the last passing drill (:func:`mark_drill_verified`).
- **Training runs** (:func:`record_training_run`): one MLflow run per protected checkpoint snapshot in experiment
  ``training-runs``: params from ``trainer_state.json`` / ``config.json`` (flattened), the loss curve from
  ``log_history``, dataset md5s, hardware.
- **Lineage** (:func:`lineage`, :func:`render_lineage`): model version → snapshot → regions (asked now, read-only)
  → datasets → training run → drills.

Every tag is a name, id, digest or number: no secrets reach the tracking store. ``mlflow`` is imported lazily
(through :mod:`llmdr.tracking`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llmdr.config import Config, Region
from llmdr.errors import LlmdrError, SnapshotNotFound, UsageError
from llmdr.lineage.tracking import (
    TrackingError,
    TrackingTarget,
    _safe_uri,
    _short,
    drill_runs,
    ensure_experiment,
    open_client,
)
from llmdr.lineage.tracking import target_for as _target_for
from llmdr.repo.ids import is_hex_digest
from llmdr.repo.manifest import Manifest, component_digest, parse_utc

log = logging.getLogger(__name__)

TRAINING_EXPERIMENT = "training-runs"
PRODUCTION_ALIAS = "production"
DRILL_ALIAS = "drill-verified"

T_KIND = "llmdr.kind"
T_BUNDLE = "llmdr.bundle"
T_SNAPSHOT = "llmdr.snapshot_id"
T_MANIFEST = "llmdr.manifest_digest"
T_CREATED = "llmdr.snapshot_created"
T_CONTENT = "llmdr.content_digest"
T_SNAPSHOTS = "llmdr.snapshots"  # ",id1,id2," every snapshot id of this content, oldest first
T_REGION = "llmdr.snapshot."  # + region name -> id present there
T_COMPONENT = "llmdr.component."  # + kind -> component digest
T_DATASET = "llmdr.dataset."  # + name + ".md5" / ".remote.<region>"
T_TRAINING = "llmdr.training_run_id"
T_CHECKPOINT = "llmdr.checkpoint"
T_STEP = "llmdr.step"
T_LAST_DRILL = "llmdr.last_drill_id"
T_LAST_RESULT = "llmdr.last_drill_result"
T_LAST_DRILL_RUN = "llmdr.last_drill_mlflow_run_id"
T_HARDWARE = "llmdr.hardware"
T_HARDWARE_SOURCE = "llmdr.hardware_source"

_MAX_SNAPSHOT_IDS = 500  # ids kept in llmdr.snapshots (66 characters each; the registry allows 100 000)
_HARDWARE_PARAM = "hardware."
_KEY_OK = re.compile(r"[^\w.\- /]")  # characters MLflow accepts in param, metric and tag keys
_REGION_TIMEOUT_S = 3.0


# --- targets --------------------------------------------------------------------------------------------------------
def _uri(cfg: Config, tracking_uri: str | None) -> str | None:
    """The store to use: the explicit URI, else ``tracking.uri`` from llmdr.yaml; ``target_for`` then falls back to
    ``MLFLOW_TRACKING_URI`` and the sqlite file under the state folder."""
    return tracking_uri or cfg.tracking.uri


def _registry_target(cfg: Config, tracking_uri: str | None) -> TrackingTarget:
    """A target for registry and read-only work: no artifacts are written, so no region keys are needed."""
    return _target_for(cfg, tracking_uri=_uri(cfg, tracking_uri), local_artifacts=True)


def _store_exists(target: TrackingTarget) -> bool:
    uri = target.tracking_uri
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).exists()


def _mlflow_call(what: str, target: TrackingTarget, fn, *args, **kwargs):
    """Call the MLflow client; its exceptions become a :class:`TrackingError` that says what and where."""
    try:
        return fn(*args, **kwargs)
    except LlmdrError:
        raise
    except Exception as exc:
        raise TrackingError(f"MLflow {_safe_uri(target.tracking_uri)}: cannot {what}: {_short(exc)}") from exc


def _not_found(exc: BaseException) -> bool:
    return getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


# --- snapshots ------------------------------------------------------------------------------------------------------
def content_digest(manifest: Manifest) -> str:
    """Digest of a snapshot's content: every file's path and content digest (not times, modes or hosts)."""
    return component_digest(list(manifest.files))


def _open_region_repo(cfg: Config, region: Region, *, attempts: int = 4):
    from llmdr.repo.repository import Repository
    from llmdr.storage.factory import open_region

    return Repository(open_region(cfg, region, read_only=True, attempts=attempts), cache_dir=cfg.state_path / "cache")


def _load_manifest(cfg: Config, snapshot_id: str, regions: list[str]) -> Manifest:
    """The manifest of ``snapshot_id`` from the first of ``regions`` (primary first) that has it."""
    order = sorted(regions, key=lambda r: (r != cfg.primary.name, regions.index(r)))
    errors = []
    for name in order:
        try:
            return _open_region_repo(cfg, cfg.region(name)).load_manifest(snapshot_id)
        except LlmdrError as exc:
            errors.append(f"{name}: {exc}")
    raise SnapshotNotFound(f"snapshot {snapshot_id[:12]} could not be read from any of the regions named "
                           f"({'; '.join(errors)}); register a snapshot after its copies are verified")


def _manifest_url(cfg: Config, region: str, snapshot_id: str) -> str:
    from llmdr.repo.repository import manifest_key

    reg = cfg.region(region)
    prefix = reg.prefix.strip("/") + "/" if reg.prefix.strip("/") else ""
    return f"s3://{reg.bucket}/{prefix}{manifest_key(snapshot_id)}"


# --- model registry -------------------------------------------------------------------------------------------------
def _quote(value: str) -> str:
    if "'" in value or "\\" in value:
        raise UsageError(f"{value!r} cannot be searched for in MLflow: it contains a quote or backslash")
    return value


def _versions(client, name: str, extra: str = "") -> list:
    """Every version of ``name`` matching ``extra`` (an MLflow filter clause), oldest first."""
    filt = f"name = '{_quote(name)}'" + (f" and {extra}" if extra else "")
    out, token = [], None
    while True:
        page = client.search_model_versions(filt, max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return sorted(out, key=lambda v: int(v.version))


def _version_for_snapshot(client, name: str, snapshot_id: str):
    """The version holding ``snapshot_id`` (its current id, or an earlier id of the same content), or None."""
    sid = _quote(snapshot_id)
    found = _versions(client, name, f"tags.`{T_SNAPSHOT}` = '{sid}'")
    if not found:
        found = _versions(client, name, f"tags.`{T_SNAPSHOTS}` LIKE '%,{sid},%'")
    return found[0] if found else None


def _ensure_model(client, cfg: Config, name: str) -> None:
    try:
        client.get_registered_model(name)
        return
    except Exception as exc:
        if not _not_found(exc):
            raise
    try:
        client.create_registered_model(
            name, tags={T_BUNDLE: cfg.bundle.name},
            description=f"LLM bundle '{cfg.bundle.name}' protected by llmdr: one version per distinct snapshot content. "
                        "Tags name the snapshot in every region, its component digests, datasets and training run.")
    except Exception:  # created meanwhile by another process
        client.get_registered_model(name)


def _dataset_tags(datasets: list[dict] | None) -> dict[str, str]:
    tags: dict[str, str] = {}
    for ds in datasets or []:
        name = str(ds.get("name") or "")
        if not name:
            raise UsageError(f"dataset record {ds!r} has no name: pass {{name, md5, remotes: {{region: url}}}}")
        if ds.get("md5"):
            tags[f"{T_DATASET}{_key(name)}.md5"] = str(ds["md5"])
        for region, url in sorted((ds.get("remotes") or {}).items()):
            tags[f"{T_DATASET}{_key(name)}.remote.{_key(region)}"] = str(url)
    return tags


def _datasets_from_tags(tags: dict[str, str]) -> list[dict]:
    out: dict[str, dict] = {}
    for k, v in tags.items():
        if not k.startswith(T_DATASET):
            continue
        rest = k[len(T_DATASET):]
        if rest.endswith(".md5"):
            out.setdefault(rest[:-4], {"remotes": {}})["md5"] = v
        elif ".remote." in rest:
            name, _, region = rest.partition(".remote.")
            out.setdefault(name, {"remotes": {}})["remotes"][region] = v
    return [{"name": n, "md5": d.get("md5"), "remotes": dict(sorted(d["remotes"].items()))}
            for n, d in sorted(out.items())]


def _datasets_from_manifest(manifest: Manifest) -> list[dict]:
    """``dataset.<name>.md5`` tags of a snapshot (protect-bundle writes them); remotes are not in the manifest."""
    return [{"name": k[len("dataset."):-len(".md5")], "md5": v, "remotes": {}}
            for k, v in sorted(manifest.tags.items()) if k.startswith("dataset.") and k.endswith(".md5")]


def _set_tags(client, name: str, version: str, tags: dict[str, str]) -> None:
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)


def _aliases(client, name: str, version: str) -> list[str]:
    return sorted(client.get_model_version(name, version).aliases)


def register_snapshot(cfg: Config, snapshot_id: str, *, regions: dict[str, str], datasets: list[dict] | None = None,
                      training_run_id: str | None = None, alias: str | None = PRODUCTION_ALIAS,
                      tracking_uri: str | None = None) -> dict:
    """Register (or update) the model version of a protected snapshot in MLflow's registry; returns
    ``{"name", "version", "created", "updated", "snapshot_id", "aliases"}``.

    ``regions`` maps each region holding the snapshot (copies verified) to its id there. Idempotent: the same
    snapshot id returns its version (refreshing region, dataset and training-run tags); a new snapshot of unchanged
    content updates the existing version rather than adding one; changed content makes a new version. ``alias``
    (default ``production``; None for none) moves to the version. Reads the manifest from one of ``regions``.
    ``datasets`` None: the md5s in the snapshot's ``dataset.<name>.md5`` tags (no remotes); ``[]``: none."""
    if not is_hex_digest(snapshot_id):
        raise UsageError(f"{snapshot_id!r} is not a full snapshot id (64 hex characters)")
    if not regions:
        raise UsageError("register_snapshot needs the regions holding the snapshot ({region: snapshot id})")
    for r in regions:
        cfg.region(r)  # raises UsageError naming the known regions
    if alias is not None and (alias.lower() == "latest" or re.fullmatch(r"v\d+", alias)):
        raise UsageError(f"alias {alias!r} is reserved by MLflow (latest, v<number>): pick another name")
    manifest = _load_manifest(cfg, snapshot_id, list(regions))
    digest = content_digest(manifest)
    if datasets is None:  # protect-bundle records each dataset's md5 in the snapshot's tags
        datasets = _datasets_from_manifest(manifest)
    name = cfg.model_name
    target = _registry_target(cfg, tracking_uri)
    client = open_client(target)

    snap_tags = {T_SNAPSHOT: snapshot_id, T_MANIFEST: snapshot_id, T_CREATED: manifest.created}
    region_tags = {f"{T_REGION}{r}": sid for r, sid in sorted(regions.items())}
    extra = _dataset_tags(datasets)
    if training_run_id:
        extra[T_TRAINING] = training_run_id

    def work() -> dict:
        _ensure_model(client, cfg, name)
        mv = _version_for_snapshot(client, name, snapshot_id)
        created = updated = False
        if mv is None:
            same = _versions(client, name, f"tags.`{T_CONTENT}` = '{digest}'")
            mv = same[0] if same else None
        if mv is None:
            tags = {T_KIND: "bundle-snapshot", T_BUNDLE: manifest.bundle, T_CONTENT: digest,
                    T_SNAPSHOTS: f",{snapshot_id},", "llmdr.snapshot_bytes": str(manifest.total_size),
                    **snap_tags, **region_tags,
                    **{f"{T_COMPONENT}{k}": str(c.get("digest")) for k, c in sorted(manifest.components.items())},
                    **extra}
            primary = cfg.primary.name if cfg.primary.name in regions else next(iter(regions))
            mv = client.create_model_version(
                name, source=_manifest_url(cfg, primary, snapshot_id), run_id=training_run_id, tags=tags,
                description=f"First registered from snapshot {snapshot_id} of bundle '{manifest.bundle}' "
                            f"({manifest.created}); tag {T_SNAPSHOT} names the newest snapshot of this content.")
            created = True
            # two registrations of the same content at once: the lower version wins, the other is removed
            same = _versions(client, name, f"tags.`{T_CONTENT}` = '{digest}'")
            if same and int(same[0].version) < int(mv.version):
                client.delete_model_version(name, str(mv.version))
                mv, created = same[0], False
        version = str(mv.version)
        if not created:
            tags = dict(mv.tags)
            ids = [i for i in (tags.get(T_SNAPSHOTS) or "").split(",") if i]
            if snapshot_id not in ids:
                ids = (ids + [snapshot_id])[-_MAX_SNAPSHOT_IDS:]
            newer = tags.get(T_SNAPSHOT) != snapshot_id and _is_newer(manifest.created, tags.get(T_CREATED))
            upd = {T_SNAPSHOTS: "," + ",".join(ids) + ","}
            if tags.get(T_SNAPSHOT) == snapshot_id or newer:  # an older id of this content changes nothing else
                upd |= region_tags | extra
            if newer:  # the newest snapshot of this content: the version now points at it
                upd |= snap_tags
                for k in tags:
                    if k.startswith(T_REGION) and k not in region_tags:
                        client.delete_model_version_tag(name, version, k)
            upd = {k: v for k, v in upd.items() if tags.get(k) != v}
            _set_tags(client, name, version, upd)
            updated = bool(upd)
        if alias:
            client.set_registered_model_alias(name, alias, version)
        return {"name": name, "version": version, "created": created, "updated": updated,
                "snapshot_id": snapshot_id, "content_digest": digest, "aliases": _aliases(client, name, version)}

    out = _mlflow_call(f"register snapshot {snapshot_id[:12]} as a version of model {name!r}", target, work)
    log.info("snapshot %s: model %s version %s (%s)", snapshot_id[:12], name, out["version"],
             "new" if out["created"] else "existing")
    return out


def _is_newer(created: str, than: str | None) -> bool:
    if not than:
        return True
    try:
        return parse_utc(created) > parse_utc(than)
    except ValueError:
        return created > than


def mark_drill_verified(cfg: Config, snapshot_id: str, *, drill_id: str, passed: bool, mlflow_run_id: str | None,
                        tracking_uri: str | None = None) -> dict | None:
    """Record a drill's result on the model version of the snapshot it restored: tags ``llmdr.last_drill_id``,
    ``llmdr.last_drill_result`` (PASS/FAIL) and ``llmdr.last_drill_mlflow_run_id``; a passing drill also moves the
    ``drill-verified`` alias there (a failing one leaves the alias where the last pass put it). Returns
    ``{"name", "version", "alias_moved", "aliases"}``, or None when that snapshot is not registered."""
    target = _registry_target(cfg, tracking_uri)
    if not _store_exists(target):
        log.warning("drill %s: no MLflow store at %s, so no model version to mark", drill_id,
                    _safe_uri(target.tracking_uri))
        return None
    client = open_client(target)
    name = cfg.model_name

    def work() -> dict | None:
        try:
            client.get_registered_model(name)
        except Exception as exc:
            if _not_found(exc):
                return None
            raise
        mv = _version_for_snapshot(client, name, snapshot_id)
        if mv is None:
            return None
        version = str(mv.version)
        tags = {T_LAST_DRILL: drill_id, T_LAST_RESULT: "PASS" if passed else "FAIL"}
        if mlflow_run_id:
            tags[T_LAST_DRILL_RUN] = mlflow_run_id
        _set_tags(client, name, version, tags)
        if passed:
            client.set_registered_model_alias(name, DRILL_ALIAS, version)
        return {"name": name, "version": version, "alias_moved": passed, "aliases": _aliases(client, name, version)}

    out = _mlflow_call(f"record drill {drill_id} on model {name!r}", target, work)
    if out is None:
        log.warning("drill %s: snapshot %s is not registered as a version of model %s; nothing marked", drill_id,
                    snapshot_id[:12], name)
    return out


# --- training runs --------------------------------------------------------------------------------------------------
def hardware() -> dict:
    """This machine: CPU model and logical cores, memory, GPUs (``nvidia-smi``; [] when there is none), Python,
    platform, host name."""
    return _host_hardware()


def _host_hardware() -> dict:
    cpu = _cpu_model()
    mem = _meminfo_bytes()
    gpus = _gpus()
    return {"cpu_model": cpu, "cpu_count": os.cpu_count(), "memory_bytes": mem,
            "memory_gib": round(mem / 2**30, 1) if mem else None, "gpus": gpus, "gpu_count": len(gpus),
            "python": platform.python_version(), "platform": platform.platform(), "host": socket.gethostname()}


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for key in ("model name", "Model", "Hardware", "cpu model", "Processor"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m and m.group(1).strip():
            return m.group(1).strip()
    return platform.processor() or platform.machine() or "unknown"


def _meminfo_bytes() -> int | None:
    try:
        m = re.search(r"^MemTotal:\s*(\d+)\s*kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


def _gpus() -> list[dict]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=15, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed (%s): GPUs not recorded", exc)
        return []
    gpus = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[0]:
            gpus.append({"name": parts[0], "memory_total": parts[1], "driver_version": parts[2]})
    return gpus


def _hardware_summary(hw: dict) -> str:
    gpus = hw.get("gpus") or []
    names = sorted({g.get("name", "?") for g in gpus})
    gpu = f"{len(gpus)} x {', '.join(names)}" if gpus else "no GPU"
    return f"{hw.get('cpu_model')} ({hw.get('cpu_count')} cores), {hw.get('memory_gib')} GiB, {gpu}"


def _hardware_params(hw: dict) -> dict[str, str]:
    gpus = hw.get("gpus") or []
    flat = {k: v for k, v in hw.items() if k != "gpus"}
    if gpus:
        flat["gpus"] = "; ".join(f"{g.get('name')} ({g.get('memory_total')})" for g in gpus)
        flat["gpu_driver"] = ", ".join(sorted({str(g.get("driver_version")) for g in gpus}))
    return {f"{_HARDWARE_PARAM}{k}": _value(v) for k, v in flat.items() if v is not None}


def _key(name: str) -> str:
    """A key MLflow accepts (param, metric, tag): other characters become ``_``; at most 250 characters."""
    key = _KEY_OK.sub("_", str(name))
    if len(key) > 250:
        key = key[:240] + "-" + hashlib.sha256(key.encode()).hexdigest()[:9]
    return key


def _value(v: Any, limit: int = 6000) -> str:
    """A param value: scalars as ``str``, lists and dicts as compact JSON, cut to MLflow's 6000 characters."""
    if isinstance(v, (list, tuple, dict)):
        text = json.dumps(v, sort_keys=True, separators=(",", ":"), default=str)
    else:
        text = str(v)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def flatten_params(obj: dict, prefix: str = "") -> dict[str, str]:
    """Nested dicts as dotted keys (``config.rope_scaling.factor``); lists stay one JSON value."""
    out: dict[str, str] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten_params(v, key + "."))
        else:
            out[_key(key)] = _value(v)
    return out


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read it as JSON ({exc}); fix or remove it") from exc
    return data if isinstance(data, dict) else None


# Settings a checkpoint folder may hold, by the prefix their params get. training_args.bin (a pickle) is never read.
_CHECKPOINT_FILES = {"trainer_state.json": "trainer_state.", "config.json": "config.",
                     "training_args.json": "training_args.", "adapter_config.json": "adapter_config.",
                     "generation_config.json": "generation_config."}


def checkpoint_params(folder: Path) -> tuple[dict[str, str], list[tuple[str, float, int]], int | None]:
    """From a checkpoint folder: params (``trainer_state.*``, ``config.*``, ...; ``log_history`` left out), metrics
    ``(key, value, step)`` from ``trainer_state.json``'s ``log_history`` and its ``global_step``."""
    params: dict[str, str] = {}
    metrics: list[tuple[str, float, int]] = []
    step = None
    for fname, prefix in _CHECKPOINT_FILES.items():
        data = _read_json(folder / fname)
        if data is None:
            continue
        if fname == "trainer_state.json":
            step = data.get("global_step") if isinstance(data.get("global_step"), int) else None
            for entry in data.get("log_history") or []:
                if not isinstance(entry, dict) or not isinstance(entry.get("step"), int):
                    continue
                for k, v in entry.items():
                    if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                        metrics.append((_key(k), float(v), entry["step"]))
            data = {k: v for k, v in data.items() if k != "log_history"}
        params.update(flatten_params(data, prefix))
    return params, metrics, step


def _find_training_run(client, exp_id: str, snapshot_id: str):
    runs = client.search_runs([exp_id], filter_string=f"tags.`{T_SNAPSHOT}` = '{_quote(snapshot_id)}' and "
                                                      f"tags.`{T_KIND}` = 'training-run'", max_results=10)
    return runs[0] if runs else None


def find_training_run(cfg: Config, snapshot_id: str, *, tracking_uri: str | None = None) -> str | None:
    """The run id recorded for checkpoint snapshot ``snapshot_id`` (to pass to :func:`register_snapshot` when a
    bundle is exported from that checkpoint), or None."""
    target = _registry_target(cfg, tracking_uri)
    if not _store_exists(target):
        return None
    client = open_client(target)
    exp = client.get_experiment_by_name(TRAINING_EXPERIMENT)
    if exp is None:
        return None
    run = _mlflow_call("search training runs", target, _find_training_run, client, exp.experiment_id, snapshot_id)
    return run.info.run_id if run else None


def record_training_run(cfg: Config, *, checkpoint: str, snapshot_id: str, step: int | None, params: dict,
                        datasets: list[dict], hardware: dict | None = None, tracking_uri: str | None = None) -> str:
    """Record the training run behind a protected checkpoint as an MLflow run in ``training-runs``; returns its id.

    ``checkpoint`` is the checkpoint folder (its name is the ``llmdr.checkpoint`` tag; when it exists here its
    ``trainer_state.json``, ``config.json``... give params and the ``log_history`` metrics, e.g. ``loss`` per step).
    ``params`` are added as given (they win over the files). ``hardware`` describes the training machine; None
    records this machine's (:func:`hardware`) and says so in ``llmdr.hardware_source``. ``datasets``:
    ``[{name, md5, remotes: {region: url}}]`` as tags and MLflow dataset inputs. Idempotent per snapshot id: a
    finished run for it is returned as is; an unfinished one (an earlier attempt that failed) is replaced."""
    _quote(snapshot_id)
    folder = Path(checkpoint)
    file_params, metrics, file_step = checkpoint_params(folder) if folder.is_dir() else ({}, [], None)
    if step is None:
        step = file_step
    if step is None:
        nums = re.findall(r"\d+", folder.name)
        step = int(nums[-1]) if nums else None
    hw_given = hardware is not None
    hw = hardware if hw_given else _host_hardware()
    all_params = {**file_params, **flatten_params(params or {}), **_hardware_params(hw)}
    if step is not None:
        all_params["step"] = str(step)
    tags = {T_KIND: "training-run", T_BUNDLE: cfg.bundle.name, T_CHECKPOINT: folder.name, T_SNAPSHOT: snapshot_id,
            T_HARDWARE: _hardware_summary(hw),
            T_HARDWARE_SOURCE: "given" if hw_given else f"recorded on {hw.get('host')} by llmdr, not the trainer's"}
    if step is not None:
        tags[T_STEP] = str(step)
    tags |= _dataset_tags(datasets)
    names = ", ".join(f"{d.get('name')} (md5 {d.get('md5')})" for d in datasets or []) or "none recorded"
    tags["mlflow.note.content"] = (f"Checkpoint {folder.name} of bundle '{cfg.bundle.name}'"
                                   f"{f' at step {step}' if step is not None else ''}; snapshot {snapshot_id}. "
                                   f"Datasets: {names}.")

    target = _target_for(cfg, region=cfg.primary.name, tracking_uri=_uri(cfg, tracking_uri))
    client = open_client(target)

    def work() -> str:
        from mlflow.entities import Metric, Param, RunTag  # mlflow is imported by open_client already

        exp_id = ensure_experiment(target, TRAINING_EXPERIMENT)
        old = _find_training_run(client, exp_id, snapshot_id)
        if old is not None and old.info.status == "FINISHED":
            return old.info.run_id
        if old is not None:  # a half-written attempt: params may be missing, metrics would double
            client.delete_run(old.info.run_id)
        run = client.create_run(exp_id, run_name=f"{cfg.bundle.name} {folder.name}",
                                tags={T_KIND: "training-run", T_SNAPSHOT: snapshot_id})
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        items = sorted(all_params.items())
        for i in range(0, len(items), 100):  # MLflow: at most 100 params or tags per batch
            client.log_batch(run_id, params=[Param(k, v) for k, v in items[i:i + 100]])
        tag_items = sorted(tags.items())
        for i in range(0, len(tag_items), 100):
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tag_items[i:i + 100]])
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=[Metric(k, v, now, s) for k, v, s in metrics[i:i + 1000]])
        _log_dataset_inputs(client, run_id, datasets)
        client.set_terminated(run_id, status="FINISHED")
        return run_id

    run_id = _mlflow_call(f"record the training run of checkpoint {folder.name}", target, work)
    log.info("checkpoint %s (snapshot %s): training run %s", folder.name, snapshot_id[:12], run_id)
    return run_id


def _log_dataset_inputs(client, run_id: str, datasets: list[dict] | None) -> None:
    """Datasets as MLflow run inputs (shown in the UI's "Datasets used"); digests over 36 characters stay tags only."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = []
    for ds in datasets or []:
        md5 = str(ds.get("md5") or "")
        if not md5 or len(md5) > 36:
            continue
        source = json.dumps(ds.get("remotes") or {}, sort_keys=True)
        inputs.append(DatasetInput(Dataset(name=str(ds["name"]), digest=md5, source_type="dvc", source=source),
                                   tags=[InputTag("mlflow.data.context", "training")]))
    if inputs:
        client.log_inputs(run_id, datasets=inputs)


# --- lineage --------------------------------------------------------------------------------------------------------
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
        repo = _open_region_repo(cfg, region, attempts=1)
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
        if not _not_found(exc):
            raise
        exists = False
    if not exists:
        if sel is None and re.fullmatch(r"[0-9a-fA-F]{4,64}", name):
            return None
        models = sorted(m.name for m in client.search_registered_models())
        known = f"registered models: {', '.join(models)}" if models else "no model is registered yet"
        raise UsageError(f"no registered model {name!r} in MLflow {_safe_uri(target.tracking_uri)} ({known}); give "
                         "MODEL, MODEL@alias, MODEL@version or a snapshot id prefix")
    versions = _versions(client, name)
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
        if not _not_found(exc):
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
        if _not_found(exc):
            return {"run_id": run_id, "error": f"run not found in MLflow {_safe_uri(target.tracking_uri)}"}
        raise
    params = dict(run.data.params)
    hw = {k[len(_HARDWARE_PARAM):]: v for k, v in params.items() if k.startswith(_HARDWARE_PARAM)}
    tags = run.data.tags
    return {"run_id": run_id, "run_name": run.info.run_name, "status": run.info.status,
            "started": _iso_ms(run.info.start_time), "checkpoint": tags.get(T_CHECKPOINT),
            "snapshot_id": tags.get(T_SNAPSHOT), "step": tags.get(T_STEP),
            "params": {k: v for k, v in sorted(params.items()) if not k.startswith(_HARDWARE_PARAM)},
            "metrics": dict(sorted(run.data.metrics.items())), "hardware": hw,
            "hardware_summary": tags.get(T_HARDWARE), "hardware_source": tags.get(T_HARDWARE_SOURCE),
            "datasets": _datasets_from_tags(tags)}


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
    target = _registry_target(cfg, tracking_uri)
    have_store = _store_exists(target)
    client = open_client(target) if have_store else None
    mv = None
    if client is not None:
        mv = _mlflow_call(f"look up {ref!r}", target, _resolve_version, client, cfg, ref, target)
    elif "@" in ref or not re.fullmatch(r"[0-9a-fA-F]{4,64}", ref.strip()):
        raise UsageError(f"no MLflow store at {_safe_uri(target.tracking_uri)}: nothing is registered yet "
                         "(protect-bundle registers each snapshot); a snapshot id prefix still works")

    snapshot_id: str | None = None
    manifest: Manifest | None = None
    if mv is None:  # a snapshot id or prefix
        prefix = ref.strip().lower()
        if client is not None:
            hits = _mlflow_call("search model versions", target, _versions_by_prefix, client, cfg.model_name, prefix)
            if len(hits) > 1:
                raise UsageError(f"snapshot prefix {prefix!r} matches versions "
                                 f"{', '.join(str(v.version) for v, _ in hits)} of {cfg.model_name}: give more of it")
            if hits:
                mv, snapshot_id = hits[0]
        if mv is None:  # not registered under its id: maybe under another snapshot of the same content
            snapshot_id, manifest = _find_snapshot(cfg, prefix)
            if client is not None:
                mv = _mlflow_call("search model versions", target, _version_by_content, client, cfg.model_name,
                                  content_digest(manifest))

    tags = dict(mv.tags) if mv is not None else {}
    if snapshot_id is None:
        snapshot_id = tags.get(T_SNAPSHOT)
    ids = [i for i in (tags.get(T_SNAPSHOTS) or "").split(",") if i]
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
        training = _mlflow_call("read the training run", target, _training_run, client, run_id, target)
        bundle = tags.get(T_BUNDLE) or (manifest.bundle if manifest else cfg.bundle.name)
        drills = _mlflow_call("read drill runs", target, _drills, target, bundle, set(ids) | {snapshot_id})

    datasets = _datasets_from_tags(tags)
    if not datasets and training:
        datasets = training.get("datasets") or []
    if not datasets and manifest is not None:
        datasets = _datasets_from_manifest(manifest)
    model = None
    if mv is not None:
        model = {"name": mv.name, "version": str(mv.version), "aliases": sorted(mv.aliases), "source": mv.source,
                 "created": _iso_ms(mv.creation_timestamp), "last_drill_id": tags.get(T_LAST_DRILL),
                 "last_drill_result": tags.get(T_LAST_RESULT)}
    return {"ref": ref, "tracking_uri": _safe_uri(target.tracking_uri), "model": model, "snapshot": snapshot,
            "regions": regions, "datasets": datasets, "training_run": training, "drills": drills}


def _model_exists(client, name: str) -> bool:
    try:
        client.get_registered_model(name)
        return True
    except Exception as exc:
        if _not_found(exc):
            return False
        raise


def _versions_by_prefix(client, name: str, prefix: str) -> list[tuple[Any, str]]:
    """Versions of ``name`` holding a snapshot id starting with ``prefix``, each with that full id."""
    if not re.fullmatch(r"[0-9a-f]{4,64}", prefix) or not _model_exists(client, name):
        return []
    hits: dict[str, tuple[Any, str]] = {}
    for v in _versions(client, name, f"tags.`{T_SNAPSHOTS}` LIKE '%,{prefix}%'"):
        ids = [i for i in (v.tags.get(T_SNAPSHOTS) or "").split(",") if i.startswith(prefix)]
        current = v.tags.get(T_SNAPSHOT)
        hits[str(v.version)] = (v, current if current in ids else ids[-1])
    return list(hits.values())


def _version_by_content(client, name: str, digest: str):
    if not _model_exists(client, name):
        return None
    same = _versions(client, name, f"tags.`{T_CONTENT}` = '{digest}'")
    return same[0] if same else None


def _manifest_from(cfg: Config, snapshot_id: str, regions: dict[str, dict]) -> Manifest | None:
    """The manifest of ``snapshot_id`` from a region that has it now (its cached copy, already checked)."""
    for name, st in regions.items():
        if st.get("snapshot_id") == snapshot_id:
            try:
                return _open_region_repo(cfg, cfg.region(name), attempts=1).load_manifest(snapshot_id)
            except LlmdrError:
                continue
    return None


def _find_snapshot(cfg: Config, prefix: str) -> tuple[str, Manifest]:
    """Resolve a snapshot id prefix in the regions (primary first); the first region that knows it answers."""
    errors = []
    for region in [cfg.primary, *[r for r in cfg.regions if r is not cfg.primary]]:
        try:
            repo = _open_region_repo(cfg, region, attempts=1)
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


# --- rendering ------------------------------------------------------------------------------------------------------
def _tree(node: tuple[str, list], prefix: str = "", last: bool = True, top: bool = True) -> list[str]:
    label, children = node
    lines = [label] if top else [f"{prefix}{'└─ ' if last else '├─ '}{label}"]
    inner = "" if top else prefix + ("   " if last else "│  ")
    for i, child in enumerate(children):
        lines += _tree(child, inner, i == len(children) - 1, False)
    return lines


def _secs(v: Any) -> str:
    return "—" if v is None else f"{float(v):.1f} s"


def render_lineage(data: dict) -> str:
    """The chain as an indented tree: model version → snapshot → regions → datasets → training run → drills."""
    snap = data.get("snapshot") or {}
    model = data.get("model")
    if model:
        aliases = ", ".join(model.get("aliases") or []) or "no alias"
        head = f"model {model['name']} version {model['version']} ({aliases}; registered {model.get('created')})"
    else:
        head = (f"{snap.get('kind') or 'bundle'} snapshot {snap.get('id')} (created {snap.get('created')}; not "
                "registered as a model version)")

    regions = []
    for name, st in (data.get("regions") or {}).items():
        if st.get("present") is None:
            text = f"{name}: NOT CHECKED - {st.get('error')}"
        elif st.get("present"):
            whole = "complete" if st.get("complete") else \
                f"INCOMPLETE (missing {', '.join(st.get('missing_components') or [])})"
            text = f"{name}: present, {whole}, snapshot {str(st.get('snapshot_id'))[:12]}"
        else:
            text = f"{name}: ABSENT"
        if st.get("recorded") and st.get("recorded") != st.get("snapshot_id"):
            text += f" (registered with {st['recorded'][:12]})"
        regions.append((text, []))

    datasets = []
    for ds in data.get("datasets") or []:
        remotes = [(f"{r}: {u}", []) for r, u in sorted((ds.get("remotes") or {}).items())]
        datasets.append((f"{ds.get('name')}: md5 {ds.get('md5')}", remotes))

    tr = data.get("training_run")
    if tr is None:
        training = ("training run: none recorded", [])
    elif tr.get("error"):
        training = (f"training run {tr['run_id']}: {tr['error']}", [])
    else:
        kids = []
        step = f", step {tr['step']}" if tr.get("step") else ""
        params = tr.get("params") or {}
        shown = [k for k in params if "." not in k and k != "step"] + \
            [k for k in params if k.startswith("trainer_state.")]
        for k in shown[:12]:
            kids.append((f"{k} = {params[k]}", []))
        if len(params) > len(shown[:12]):
            kids.append((f"... {len(params) - len(shown[:12])} more params (--json)", []))
        metrics = tr.get("metrics") or {}
        if "loss" in metrics:
            kids.append((f"final loss {metrics['loss']:.4g}", []))
        if tr.get("hardware_summary"):
            kids.append((f"hardware: {tr['hardware_summary']}", []))
        training = (f"training run {tr['run_id']} ({tr.get('checkpoint')}{step})", kids)

    drills = []
    for d in data.get("drills") or []:
        verdict = {True: "PASS", False: "FAIL", None: "?"}[d.get("passed")]
        drills.append((f"{d.get('started')} drill {d.get('drill_id')}: {verdict}, RTO {_secs(d.get('rto_s'))}, "
                       f"RPO {_secs(d.get('rpo_s'))} (MLflow run {d.get('mlflow_run_id')})", []))

    comps = [(f"{k}: {v}", []) for k, v in (snap.get("components") or {}).items()]
    snap_node = (f"snapshot {snap.get('id')} (created {snap.get('created')})", [
        ("components", comps or [("none recorded", [])]),
        ("regions (now)", regions),
        ("datasets", datasets or [("none recorded", [])]),
        training,
        ("drills", drills or [("none recorded", [])]),
    ])
    if model:
        return "\n".join(_tree((head, [snap_node]))) + "\n"
    return "\n".join(_tree((head, snap_node[1]))) + "\n"
