"""The MLflow model registry tied to snapshots: one model version per distinct bundle content, its aliases, and the
drill results recorded on it.

- **Model versions** (:func:`register_snapshot`): registered model ``cfg.model_name``; one version per distinct
  *content* of the bundle. A snapshot id is the SHA-256 of its manifest, which also records times and hosts, so a
  scheduled protect-bundle makes a new id every run even when no file changed; the version is keyed by the
  ``llmdr.content_digest`` tag (paths and content digests of every file) instead. A newer snapshot of the same
  content moves the version's snapshot tags forward and is appended to ``llmdr.snapshots`` (every id of that content,
  ``,id1,id2,``), so lookups by an older id still find the version. Aliases: ``production`` follows the protected
  version, ``drill-verified`` the version of the last passing drill (:func:`mark_drill_verified`).
- **Lookups** (:func:`model_versions`, :func:`versions_by_prefix`, :func:`version_by_content`) for the lineage query.

Tag names are in :mod:`llmdr.lineage.tags`. ``mlflow`` is imported lazily (through :mod:`llmdr.lineage.tracking`).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from llmdr.config import Config, Region
from llmdr.errors import LlmdrError, SnapshotNotFound, UsageError
from llmdr.lineage.tags import (
    T_BUNDLE,
    T_COMPONENT,
    T_CONTENT,
    T_CREATED,
    T_KIND,
    T_LAST_DRILL,
    T_LAST_DRILL_RUN,
    T_LAST_RESULT,
    T_MANIFEST,
    T_REGION,
    T_SNAPSHOT,
    T_SNAPSHOTS,
    T_TRAINING,
    dataset_tags,
    datasets_from_manifest,
    quote,
    snapshot_ids,
)
from llmdr.lineage.tracking import is_not_found, mlflow_call, open_client, registry_target, safe_uri, store_exists
from llmdr.repo.ids import is_hex_digest
from llmdr.repo.manifest import Manifest, component_digest, parse_utc

log = logging.getLogger(__name__)

PRODUCTION_ALIAS = "production"
DRILL_ALIAS = "drill-verified"

_MAX_SNAPSHOT_IDS = 500  # ids kept in llmdr.snapshots (66 characters each; the registry allows 100 000)


# --- snapshots ------------------------------------------------------------------------------------------------------
def content_digest(manifest: Manifest) -> str:
    """Digest of a snapshot's content: every file's path and content digest (not times, modes or hosts)."""
    return component_digest(list(manifest.files))


def open_region_repo(cfg: Config, region: Region, *, attempts: int = 4):
    """The read-only repository of ``region`` (``attempts`` per request: 1 to ask a region now, without waiting)."""
    from llmdr.repo.repository import Repository
    from llmdr.storage.factory import open_region

    return Repository(open_region(cfg, region, read_only=True, attempts=attempts),
                      cache_dir=cfg.bundle_state_path / "cache")


def _load_manifest(cfg: Config, snapshot_id: str, regions: list[str]) -> Manifest:
    """The manifest of ``snapshot_id`` from the first of ``regions`` (primary first) that has it."""
    order = sorted(regions, key=lambda r: (r != cfg.primary.name, regions.index(r)))
    errors = []
    for name in order:
        try:
            return open_region_repo(cfg, cfg.region(name)).load_manifest(snapshot_id)
        except LlmdrError as exc:
            errors.append(f"{name}: {exc}")
    raise SnapshotNotFound(f"snapshot {snapshot_id[:12]} could not be read from any of the regions named "
                           f"({'; '.join(errors)}); register a snapshot after its copies are verified")


def _manifest_url(cfg: Config, region: str, snapshot_id: str) -> str:
    from llmdr.repo.layout import record_key

    reg = cfg.region(region)
    prefix = reg.prefix.strip("/") + "/" if reg.prefix.strip("/") else ""
    return f"s3://{reg.bucket}/{prefix}{record_key(snapshot_id)}"


# --- model registry -------------------------------------------------------------------------------------------------
def model_versions(client, name: str, extra: str = "") -> list:
    """Every version of ``name`` matching ``extra`` (an MLflow filter clause), oldest first."""
    filt = f"name = '{quote(name)}'" + (f" and {extra}" if extra else "")
    out, token = [], None
    while True:
        page = client.search_model_versions(filt, max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return sorted(out, key=lambda v: int(v.version))


def version_for_snapshot(client, name: str, snapshot_id: str):
    """The version holding ``snapshot_id`` (its current id, or an earlier id of the same content), or None."""
    sid = quote(snapshot_id)
    found = model_versions(client, name, f"tags.`{T_SNAPSHOT}` = '{sid}'")
    if not found:
        found = model_versions(client, name, f"tags.`{T_SNAPSHOTS}` LIKE '%,{sid},%'")
    return found[0] if found else None


def _ensure_model(client, cfg: Config, name: str) -> None:
    try:
        client.get_registered_model(name)
        return
    except Exception as exc:
        if not is_not_found(exc):
            raise
    try:
        client.create_registered_model(
            name, tags={T_BUNDLE: cfg.bundle.name},
            description=f"LLM bundle '{cfg.bundle.name}' protected by llmdr: one version per distinct snapshot content. "
                        "Tags name the snapshot in every region, its component digests, datasets and training run.")
    except Exception:  # created meanwhile by another process
        client.get_registered_model(name)


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
        datasets = datasets_from_manifest(manifest)
    name = cfg.model_name
    target = registry_target(cfg, tracking_uri)
    client = open_client(target)

    snap_tags = {T_SNAPSHOT: snapshot_id, T_MANIFEST: snapshot_id, T_CREATED: manifest.created}
    region_tags = {f"{T_REGION}{r}": sid for r, sid in sorted(regions.items())}
    extra = dataset_tags(datasets)
    if training_run_id:
        extra[T_TRAINING] = training_run_id

    def work() -> dict:
        _ensure_model(client, cfg, name)
        mv = version_for_snapshot(client, name, snapshot_id)
        created = updated = False
        if mv is None:
            same = model_versions(client, name, f"tags.`{T_CONTENT}` = '{digest}'")
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
            same = model_versions(client, name, f"tags.`{T_CONTENT}` = '{digest}'")
            if same and int(same[0].version) < int(mv.version):
                client.delete_model_version(name, str(mv.version))
                mv, created = same[0], False
        version = str(mv.version)
        if not created:
            tags = dict(mv.tags)
            ids = snapshot_ids(tags)
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

    out = mlflow_call(f"register snapshot {snapshot_id[:12]} as a version of model {name!r}", target, work)
    log.info("snapshot %s: model %s version %s (%s)", snapshot_id[:12], name, out["version"],
             "new" if out["created"] else "existing")
    return out


def register_protected(cfg: Config, snapshot_id: str, regions: list[str], datasets: list[dict]) -> dict:
    """protect-bundle's registration: ``snapshot_id`` (the same id in every region it was copied to and verified in)
    with the pushed datasets' records (name, md5, remotes), in the configured tracking store."""
    return register_snapshot(cfg, snapshot_id, regions={r: snapshot_id for r in regions},
                             datasets=[{"name": d["name"], "md5": d["md5"], "remotes": d["remotes"]}
                                       for d in datasets], tracking_uri=cfg.tracking.uri)


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
    target = registry_target(cfg, tracking_uri)
    if not store_exists(target):
        log.warning("drill %s: no MLflow store at %s, so no model version to mark", drill_id,
                    safe_uri(target.tracking_uri))
        return None
    client = open_client(target)
    name = cfg.model_name

    def work() -> dict | None:
        try:
            client.get_registered_model(name)
        except Exception as exc:
            if is_not_found(exc):
                return None
            raise
        mv = version_for_snapshot(client, name, snapshot_id)
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

    out = mlflow_call(f"record drill {drill_id} on model {name!r}", target, work)
    if out is None:
        log.warning("drill %s: snapshot %s is not registered as a version of model %s; nothing marked", drill_id,
                    snapshot_id[:12], name)
    return out


def link_drill_run(cfg: Config, name: str, version: str, mlflow_run_id: str, *,
                   tracking_uri: str | None = None) -> None:
    """Name the drill's MLflow run on the model version it verified (``llmdr.last_drill_mlflow_run_id``); the run
    is created after :func:`mark_drill_verified`, so it is linked here once it exists."""
    target = registry_target(cfg, tracking_uri)
    client = open_client(target)
    mlflow_call(f"link drill run {mlflow_run_id} to {name} version {version}", target,
                lambda: _set_tags(client, name, str(version), {T_LAST_DRILL_RUN: mlflow_run_id}))


# --- lookups (the lineage query) ------------------------------------------------------------------------------------
def model_exists(client, name: str) -> bool:
    """Whether model ``name`` is registered."""
    try:
        client.get_registered_model(name)
        return True
    except Exception as exc:
        if is_not_found(exc):
            return False
        raise


def versions_by_prefix(client, name: str, prefix: str) -> list[tuple[Any, str]]:
    """Versions of ``name`` holding a snapshot id starting with ``prefix``, each with that full id."""
    if not re.fullmatch(r"[0-9a-f]{4,64}", prefix) or not model_exists(client, name):
        return []
    hits: dict[str, tuple[Any, str]] = {}
    for v in model_versions(client, name, f"tags.`{T_SNAPSHOTS}` LIKE '%,{prefix}%'"):
        ids = [i for i in (v.tags.get(T_SNAPSHOTS) or "").split(",") if i.startswith(prefix)]
        current = v.tags.get(T_SNAPSHOT)
        hits[str(v.version)] = (v, current if current in ids else ids[-1])
    return list(hits.values())


def version_by_content(client, name: str, digest: str):
    """The (oldest) version of ``name`` whose content digest is ``digest``, or None."""
    if not model_exists(client, name):
        return None
    same = model_versions(client, name, f"tags.`{T_CONTENT}` = '{digest}'")
    return same[0] if same else None

