"""Drill reports in the regions' stores: each signed report folder is written to every region when it is published
(``llmdr.control``: ``control/drills/<id>/...`` then ``control/drill-sets/<id>.json``, Object-Locked in a locked
region), and read back on a host that lost its reports folder.

A folder read from a store is trusted only when it is complete (every file of its set, with the set's SHA-256)
and its ``SIGNATURE.json`` verifies with this installation's key (``signing.verify_keys``), never with a key the
folder brings along. Verified folders are kept in ``<state>/control/drills/<id>/`` (a cache the reads use);
``restore_reports`` copies them into the reports folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from llmdr.config import Config, Region
from llmdr.control import layout, listing, publish, read_object
from llmdr.control.reads import CACHE_S
from llmdr.control.records import Placement
from llmdr.errors import LlmdrError

log = logging.getLogger(__name__)

_filled: dict[str, float] = {}  # state folder -> when the stores were last read (monotonic)
_fill_lock = threading.Lock()


def cache_dir(cfg: Config) -> Path:
    return cfg.bundle_state_path / "control" / "drills"


def _folder_files(folder: Path) -> list[tuple[str, bytes]]:
    out = []
    for dirpath, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            path = Path(dirpath) / name
            rel = str(path.relative_to(folder)).replace(os.sep, "/")
            if path.is_symlink() or not path.is_file():
                continue
            if not layout.is_report_path(rel):
                log.warning("%s: not stored with the drill report (a name llmdr's layout does not take)", path)
                continue
            out.append((rel, path.read_bytes()))
    return out


def store_report(cfg: Config, folder: Path) -> Placement:
    """Write the signed report ``folder`` (named by its drill id) to every region, its file list last."""
    folder = Path(folder)
    drill_id = folder.name
    files = _folder_files(folder)
    entries = [{"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)} for rel, data in files]
    items = [(layout.drill_file_key(drill_id, rel), data) for rel, data in files]
    items.append((layout.drill_set_key(drill_id),
                  (json.dumps({"drill_id": drill_id, "files": entries}, sort_keys=True, indent=1) + "\n").encode()))
    return publish(cfg, items)


def store_in_force(cfg: Config) -> dict[str, Any]:
    """The golden set and the runbook in force, to every region (content-addressed, with a pointer record)."""
    from llmdr.control import put_document

    out: dict[str, Any] = {}
    for kind, path in (("golden", cfg.golden_path), ("runbook", cfg.runbook_path)):
        if path.is_file():
            out[kind] = put_document(cfg, kind, path).to_json()
    return out


def _set_problem(drill_id: str, doc: Any) -> str | None:
    if not isinstance(doc, dict) or doc.get("drill_id") != drill_id or not isinstance(doc.get("files"), list):
        return "its file list is not a drill set of this drill"
    for e in doc["files"]:
        if not (isinstance(e, dict) and layout.is_report_path(e.get("path")) and layout.is_sha256(e.get("sha256"))):
            return f"its file list names {e!r}, which is not a report file"
    return None


def _verify(cfg: Config, folder: Path) -> str | None:
    from llmdr.drill.signing import verify_folder, verify_keys

    try:
        res = verify_folder(folder, **verify_keys(cfg.drill.signing, cfg.state_path))
    except LlmdrError as exc:
        return f"its signature cannot be checked here ({exc})"
    if not res.ok:
        return "its signature does not verify: " + "; ".join(res.problems)[:300]
    if res.drill_id not in (None, folder.name):
        return f"it is signed as drill {res.drill_id}"
    return None


def fetch_report(cfg: Config, drill_id: str, regions: list[str], dest: Path) -> Path | None:
    """Download drill ``drill_id``'s folder from the first of ``regions`` where it is complete and verified, into
    ``dest/<id>`` (replacing nothing: None if it is there already or no region has a good copy)."""
    target = dest / drill_id
    for region in regions:
        why = None
        raw = read_object(cfg, layout.drill_set_key(drill_id), [region])
        if raw is None:
            continue
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            doc, why = None, f"its file list is not JSON ({exc})"
        why = why or _set_problem(drill_id, doc)
        dest.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest))
        try:
            got = staging / drill_id
            for e in [] if why else doc["files"]:
                data = read_object(cfg, layout.drill_file_key(drill_id, e["path"]), [region])
                if data is None or hashlib.sha256(data).hexdigest() != e["sha256"]:
                    why = f"{e['path']} is missing or differs from its file list"
                    break
                (got / e["path"]).parent.mkdir(parents=True, exist_ok=True)
                (got / e["path"]).write_bytes(data)
            why = why or _verify(cfg, got)
            if why is None:
                if target.exists():
                    return None
                got.rename(target)
                return target
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.warning("skipping drill report %s in region '%s': %s", drill_id, region, why)
    return None


def stored_ids(cfg: Config) -> dict[str, list[str]]:
    """Drill id -> regions holding its complete set (by the set's name; the content is checked when fetched)."""
    out = {}
    for key, regions in listing(cfg, layout.DRILL_SETS).items():
        drill_id = layout.parse_drill_set(key)
        if drill_id is None:
            log.warning("skipping %s in the store of %s: not a name llmdr writes", key, "/".join(regions))
            continue
        out[drill_id] = regions
    return out


def cached_folders(cfg: Config, local_ids: set[str]) -> list[Path]:
    """Verified copies of the drills the stores hold and the reports folder lacks (fetched once per command)."""
    cache = cache_dir(cfg)
    with _fill_lock:
        ident = str(cfg.state_path)
        if time.monotonic() - _filled.get(ident, -1e9) >= CACHE_S:
            for drill_id, regions in sorted(stored_ids(cfg).items()):
                if drill_id not in local_ids and not (cache / drill_id / "evidence.json").is_file():
                    fetch_report(cfg, drill_id, regions, cache)
            _filled[ident] = time.monotonic()
    try:
        return sorted(p for p in cache.iterdir() if layout.is_drill_id(p.name) and p.name not in local_ids)
    except FileNotFoundError:
        return []


def forget() -> None:
    with _fill_lock:
        _filled.clear()


def restore_reports(cfg: Config, reports: Path) -> list[str]:
    """Copy every verified stored drill the reports folder lacks into it; the ids copied."""
    local = {p.name for p in reports.iterdir()} if reports.is_dir() else set()
    forget()
    copied = []
    for folder in cached_folders(cfg, local):
        reports.mkdir(parents=True, exist_ok=True)
        shutil.copytree(folder, reports / folder.name)
        copied.append(folder.name)
    return copied


def lock_run_artifacts(cfg: Config, region: Region, run_id: str) -> int:
    """Give every object of MLflow run ``run_id``'s artifacts (``mlflow/<experiment>/<run>/artifacts/...`` in the
    region's bucket) the region's Object Lock retention, from the store's clock; the number locked."""
    from llmdr.storage.factory import adapter

    if region.object_lock is None:
        return 0
    store = adapter(cfg, region)
    until = store.server_time() + region.object_lock.period.total_seconds()
    n = 0
    for blob in store.list("mlflow/"):
        if f"/{run_id}/artifacts/" in blob.key:
            store.extend_lock(blob.key, until)
            n += 1
    return n
