"""Find and remove delete markers that hide protected versions (design §6).

In a versioned bucket a DELETE without a version id (an old client, another tool, a mistaken script) removes
nothing: it puts a delete marker on top, and a plain read then finds no object although Object Lock still keeps its
bytes. ``hidden_objects`` lists such keys; ``undelete`` removes exactly those markers (the marker version only, never
data), which brings the locked versions back as they were. Markers over versions whose retention has ended are left
alone: that data was deleted on purpose or may be pruned.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from llmdr.storage.base import BlobStore
from llmdr.storage.versioned import by_key, utc_text

log = logging.getLogger(__name__)


def hidden_objects(store: BlobStore, prefix: str = "") -> list[dict[str, Any]]:
    """Every key under ``prefix`` whose current version is a delete marker hiding a version still under Object Lock
    retention or legal hold: ``{key, marker_version, locked_version, mode, until}`` (``until`` seconds since the
    epoch, infinite for a legal hold), in key order. A store that keeps no versions has none."""
    if store.bucket_protection().get("versioning") not in ("Enabled", "Suspended"):
        return []
    grouped = by_key(store.list_versions(prefix))
    now = store.server_time()
    out = []
    for key, vs in grouped.items():
        top = vs[0]
        if not (top.is_delete_marker and top.is_latest):
            continue
        below = next((v for v in vs[1:] if not v.is_delete_marker), None)
        if below is None:
            continue
        lock = store.retention(key, version_id=below.version_id)
        if lock is None or not (lock.legal_hold or lock.until > now):
            continue
        out.append({"key": key, "marker_version": top.version_id, "locked_version": below.version_id,
                    "mode": lock.mode, "until": lock.until})
    return out


def describe(h: dict[str, Any]) -> str:
    """One hidden key for people: ``snaps/… hidden by a delete marker, locked until 2026-…Z (COMPLIANCE)``."""
    return f"{h['key']} hidden by a delete marker, locked until {utc_text(h['until'])} ({h['mode']})"


@dataclass
class UndeleteResult:
    location: str
    dry_run: bool
    found: list[dict[str, Any]] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)  # keys whose marker was removed

    def to_json(self) -> dict[str, Any]:
        return {"location": self.location, "dry_run": self.dry_run,
                "found": [h | {"until_utc": utc_text(h["until"])} for h in self.found], "restored": self.restored}


def undelete(store: BlobStore, *, dry_run: bool = False, prefix: str = "") -> UndeleteResult:
    """Remove every delete marker ``hidden_objects`` finds (``delete_version`` of the marker only), so the locked
    versions are current again. ``dry_run`` only reports what it would remove."""
    res = UndeleteResult(store.location, dry_run, hidden_objects(store, prefix))
    for h in res.found:
        if dry_run:
            continue
        store.delete_version(h["key"], h["marker_version"])
        res.restored.append(h["key"])
        log.info("%s: removed the delete marker %s over %s", store.location, h["marker_version"], h["key"])
    return res
