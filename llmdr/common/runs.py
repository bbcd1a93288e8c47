"""When an operation last completed: one small JSON file per operation (and region) under ``<state>/runs/``.

A successful protect-bundle run, a ``verify`` that found the region sound (CLI and verify-replicas), and every
full readiness run (whatever its verdict: the score is the point) write here; the metrics
exporter (``llmdr.metrics``) reads it at scrape time without touching a store. Drills and failovers keep their own,
richer histories (the drill reports, ``failover/history.jsonl``) and are not recorded here.

``<state>/runs/<operation>.json`` or ``<state>/runs/<operation>@<region>.json``:
``{"operation": ..., "region": ... or null, "ts": <unix time>, "detail": {...}}``, replaced
atomically, so a reader sees the previous record or the new one, never half of one. Recording is best effort: a
state folder that cannot be written costs a warning, never the operation that succeeded.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmdr.common.files import atomic_write

log = logging.getLogger(__name__)

RUNS_DIR = "runs"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class RunMark:
    operation: str  # "protect", "verify", "readiness"
    region: str | None
    ts: float
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"operation": self.operation, "region": self.region, "ts": self.ts, "detail": self.detail}


def _path(state_path: Path, operation: str, region: str | None) -> Path:
    for what in (operation, region):
        if what is not None and not _NAME.fullmatch(what):
            raise ValueError(f"{what!r} cannot name a run record (letters, digits, '.', '_' and '-')")
    name = operation if region is None else f"{operation}@{region}"
    return Path(state_path) / RUNS_DIR / f"{name}.json"


def record_run(state_path: Path, operation: str, *, region: str | None = None, ts: float | None = None,
                   **detail: Any) -> RunMark | None:
    """Record that ``operation`` (in ``region``) completed at ``ts`` (default: now). Returns the mark, or None when
    it could not be written (logged)."""
    mark = RunMark(operation, region, time.time() if ts is None else ts, detail)
    try:
        path = _path(state_path, operation, region)
        atomic_write(path, json.dumps(mark.to_json(), sort_keys=True, default=str))
    except (OSError, ValueError) as exc:
        log.warning("could not record the %s run under %s: %s", operation, state_path, exc)
        return None
    return mark


def read_marks(state_path: Path) -> list[RunMark]:
    """Every recorded run, by operation and region; unreadable files are skipped (logged)."""
    out = []
    for p in sorted((Path(state_path) / RUNS_DIR).glob("*.json")):
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
            mark = RunMark(str(raw["operation"]), raw.get("region"), float(raw["ts"]), dict(raw.get("detail") or {}))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("skipping the run record %s: %s", p, exc)
            continue
        out.append(mark)
    return out
