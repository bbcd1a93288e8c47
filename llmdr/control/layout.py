"""Where llmdr's own records live in a region's store (under the region's prefix):

    control/failovers/<stamp>-<id>.json          one failover or failback record (its ``id``)
    control/switches/<stamp>-<uid>.json          one router switch
    control/drills/<drill id>/<file>             one file of a drill's signed report folder
    control/drill-sets/<drill id>.json           the folder's file list (path, sha256, size): written last, so a
                                                 drill whose set exists is complete
    control/<golden|runbook>/docs/<sha256>       a golden set / runbook, content-addressed
    control/<golden|runbook>/current/<stamp>-<uid>.json   "this one is in force from now": {sha256, size, name}

``<stamp>`` is UTC to the millisecond (``20261203T220530.123Z``), so names sort by time; the id after it makes two
writers' names differ. Pure code: the key builders and the parsers that refuse every other name.
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import datetime, timezone

ROOT = "control/"
FAILOVERS = "control/failovers/"
SWITCHES = "control/switches/"
DRILLS = "control/drills/"
DRILL_SETS = "control/drill-sets/"
DOC_KINDS = ("golden", "runbook")

_RECORD = re.compile(r"(\d{8}T\d{6}\.\d{3}Z)-([0-9a-f]{6,32})\.json")
_DRILL_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{6}")
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_SHA = re.compile(r"[0-9a-f]{64}")


def stamp(ts: float | None = None) -> str:
    t = datetime.fromtimestamp(time.time() if ts is None else ts, timezone.utc)
    return t.strftime("%Y%m%dT%H%M%S") + f".{t.microsecond // 1000:03d}Z"


def record_name(ts: float | None = None, uid: str | None = None) -> str:
    return f"{stamp(ts)}-{uid or uuid.uuid4().hex[:16]}.json"


def failover_key(started_ts: float, rec_id: str) -> str:
    return FAILOVERS + record_name(started_ts, rec_id)


def switch_key(ts: float | None = None) -> str:
    return SWITCHES + record_name(ts)


def parse_record(prefix: str, key: str) -> tuple[str, str] | None:
    """(stamp, id) of a record key directly under ``prefix``; None for any other name."""
    if not key.startswith(prefix):
        return None
    m = _RECORD.fullmatch(key[len(prefix):])
    return (m.group(1), m.group(2)) if m else None


def is_drill_id(value: str) -> bool:
    return isinstance(value, str) and _DRILL_ID.fullmatch(value) is not None


def is_report_path(rel: str) -> bool:
    """A report file's path inside its folder: plain '/'-separated names, none hidden, no '..'."""
    return isinstance(rel, str) and 0 < len(rel) <= 512 and all(_SEGMENT.fullmatch(p) for p in rel.split("/"))


def drill_file_key(drill_id: str, rel: str) -> str:
    if not is_drill_id(drill_id) or not is_report_path(rel):
        raise ValueError(f"not a drill report file: {drill_id!r} / {rel!r}")
    return f"{DRILLS}{drill_id}/{rel}"


def drill_set_key(drill_id: str) -> str:
    if not is_drill_id(drill_id):
        raise ValueError(f"not a drill id: {drill_id!r}")
    return f"{DRILL_SETS}{drill_id}.json"


def parse_drill_set(key: str) -> str | None:
    """The drill id of a ``drill-sets`` key; None for any other name."""
    name = key[len(DRILL_SETS):] if key.startswith(DRILL_SETS) else ""
    return name[:-5] if name.endswith(".json") and is_drill_id(name[:-5]) else None


def doc_key(kind: str, sha256: str) -> str:
    if kind not in DOC_KINDS or not _SHA.fullmatch(sha256):
        raise ValueError(f"not a document: {kind!r} {sha256!r}")
    return f"{ROOT}{kind}/docs/{sha256}"


def doc_pointer_prefix(kind: str) -> str:
    if kind not in DOC_KINDS:
        raise ValueError(f"not a document kind: {kind!r}")
    return f"{ROOT}{kind}/current/"


def is_sha256(value: object) -> bool:
    return isinstance(value, str) and _SHA.fullmatch(value) is not None


def is_last(key: str) -> bool:
    """Keys that must reach a region after the objects they vouch for (a drill's file list, a document pointer)."""
    return key.startswith(DRILL_SETS) or "/current/" in key
