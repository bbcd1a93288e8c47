"""Words and units for the drill report: every evidence key gets a label a person reads ("Failover time (first
failed probe → first correct answer)", not ``rto_s``), every number its unit, and nested values become labelled
rows, never JSON. Numbers are glued to their units with a no-break space, so neither the HTML nor the PDF ever
splits "3.68 s" across two lines."""

from __future__ import annotations

import re
from typing import Any

NBSP = "\u00a0"
DASH = "—"
NOT_RECORDED = "not recorded"

# known keys, wherever they appear in the evidence (failover/failback records, restore test, prechecks...)
LABELS = {
    "id": "Record id", "kind": "Kind", "ok": "Result", "error": "Error", "detail": "Detail", "reason": "Reason",
    "bundle": "Bundle", "region": "Region", "location": "Location", "trigger": "Triggered by",
    "from_region": "From region", "to_region": "To region", "target": "Target region",
    "confirmed": "Outage confirmed", "noop": "Nothing to do", "rolled_back": "Switch rolled back",
    "flow_run_id": "Prefect flow run", "golden_direct": "Golden set, asked of the replica directly",
    "golden_router": "Golden set, asked through the router", "golden": "Golden set",
    "replica": "Replica", "steps": "Steps",
    "rto_s": "Failover time (first failed probe → first golden-correct answer)",
    "rto_basis": "Failover time basis", "rto_breakdown": "Failover time breakdown",
    "detection_s": "Detection (first failed probe → outage declared)",
    "dispatch_s": "Dispatch (outage declared → failover run started)",
    "recovery_s": "Recovery (failover run started → first golden-correct answer)",
    "automation_s": "Automation (outage declared → run scheduled)", "pickup_s": "Pick-up (run scheduled → started)",
    "undetected_s": "Undetected (outage start → first failed probe)",
    "started_utc": "Started (UTC)", "first_failure_utc": "First failed probe (UTC)",
    "detected_utc": "Outage declared (UTC)", "scheduled_utc": "Run scheduled (UTC)",
    "switched_utc": "Router switched (UTC)", "verified_utc": "First golden-correct answer (UTC)",
    "snapshot_id": "Snapshot id", "snapshot": "Snapshot id", "problems": "Problems", "warnings": "Warnings",
    "summary": "Summary", "duration_s": "Duration", "restore_s": "Restore time", "start_s": "Start time",
    "complete": "Complete", "healthy": "Healthy", "running": "Running", "cold": "Cold start", "pid": "Process id",
    "url": "URL", "model_dir": "Model folder", "started": "Started (UTC)", "created": "Created (UTC)",
    "files": "Files", "active": "Traffic on", "checked_at": "Checked at (UTC)", "monitor": "Monitor",
    "automation": "Failover automation", "enabled": "Enabled", "name": "Name", "md5": "MD5", "remote": "Remote",
    "valid": "Valid", "validation": "Validation", "pulled": "Pulled", "failures": "Failures",
    "passed": "Passed", "total": "Total", "at": "At (UTC)", "prechecks": "Checks before the outage",
    "copies": "Copies per region", "replicas": "Replicas per region", "mlflow_error": "MLflow error",
    "runbook_error": "Runbook error", "datasets": "Datasets", "returncode": "Exit code", "output": "Output",
    "action": "Action",
}
_WORDS = {"rto": "RTO", "rpo": "RPO", "id": "id", "url": "URL", "utc": "UTC", "md5": "MD5", "pid": "process id",
          "dr": "DR", "s3": "S3", "mlflow": "MLflow", "ts": "time"}
_UNIT = re.compile(r"(\d)[ \t]+(s|ms|KB|MB|MiB|GB|GiB|bytes|%|cases|files)(?![\w])")


_TIME_KEYS = {"since", "until", "at", "time", "ts", "checked_at", "last_probe", "updated"}


def utc_text(ts: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z") + " (UTC)"


def nobreak(text: str) -> str:
    """``3.68 s`` → ``3.68\\u00a0s``: a number and its unit never part at a line end."""
    return _UNIT.sub(lambda m: f"{m.group(1)}{NBSP}{m.group(2)}", text)


def label(key: str) -> str:
    """The label of an evidence key: the known one, else its words with units ("queue_wait_s" → "Queue wait (s)")."""
    if key in LABELS:
        return LABELS[key]
    unit = ""
    for suffix, u in (("_seconds", " (s)"), ("_s", " (s)"), ("_utc", " (UTC)"), ("_bytes", " (bytes)"),
                      ("_ms", " (ms)")):
        if key.endswith(suffix):
            key, unit = key[: -len(suffix)], u
            break
    words = [_WORDS.get(w, w) for w in re.split(r"[_\-\s]+", key) if w]
    text = " ".join(words) or "value"
    return text[:1].upper() + text[1:] + unit


def seconds(v: Any, digits: int = 2) -> str:
    x = number(v)
    if x is None:
        return NOT_RECORDED
    out = f"{x:.{digits}f}{NBSP}s"
    return f"{out} ({_human(x)})" if x >= 60 else out


def _human(secs_f: float) -> str:
    secs, parts = int(round(secs_f)), []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if secs >= size:
            parts.append(f"{secs // size}{unit}")
            secs %= size
    return "".join(parts) or "0s"


def number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def golden_summary(v: dict) -> str:
    """``ok, 6/6 cases, similarity gate ≥ 0.9`` (a report from before gate modes: no gate part)."""
    gate = v.get("gate") if isinstance(v.get("gate"), dict) else None
    how = ""
    if gate:
        thr = gate.get("threshold")
        how = f", {gate.get('mode', 'exact')} gate" + (f" ≥{NBSP}{thr}" if thr is not None else "")
        if v.get("required") is not None and v.get("required") != v.get("total"):
            how += f", {v['required']} needed"
    return f"{'ok' if v.get('ok') else 'FAILED'}, {v.get('passed', DASH)}/{v.get('total', DASH)}{NBSP}cases{how}"


def is_golden(v: Any) -> bool:
    return isinstance(v, dict) and "ok" in v and ("passed" in v or "total" in v)


def value(key: str, v: Any) -> str:
    """One value as text, with its unit: seconds for ``*_s``, yes/no, "—" for nothing; a golden result as "ok, 5/5
    cases"; a list of plain values one per line. Dicts are not flattened here (:func:`rows` does that)."""
    if v is None or v == "" or v == [] or v == {}:
        return DASH
    if isinstance(v, bool):
        return ("PASS" if v else "FAIL") if key == "ok" else ("yes" if v else "no")
    if (key.endswith("_s") or key.endswith("_seconds")) and number(v) is not None:
        return seconds(v)
    if (key in _TIME_KEYS or key.endswith("_ts") or key.endswith("_at")) and 1e9 <= (number(v) or 0) < 1e11:
        return utc_text(v)  # a Unix time
    if isinstance(v, float):
        return f"{v:g}"
    if is_golden(v):
        return golden_summary(v)
    if isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v):
        return "\n".join(nobreak(str(x)) for x in v)
    if isinstance(v, (dict, list)):
        return "; ".join(f"{k}: {t}" for k, t in rows_of(v))
    return nobreak(str(v))


def rows_of(v: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    """A nested value as (label, text) rows: ``{"replica": {"pid": 7}}`` → ("Replica: process id", "7")."""
    out: list[tuple[str, str]] = []
    if isinstance(v, dict):
        items = sorted(v.items())
    elif isinstance(v, list):
        items = [(str(i), x) for i, x in enumerate(v, 1)]
    else:
        return [(prefix or "Value", value("", v))]
    for k, x in items:
        if k.endswith("_ts") and isinstance(v, dict) and f"{k[:-3]}_utc" in v:
            continue  # the UTC twin says the same, readably
        name = f"{prefix}: {label(k)}" if prefix else label(k)
        if isinstance(x, (dict, list)) and x and not is_golden(x) and depth < 3 and not (
                isinstance(x, list) and all(not isinstance(y, (dict, list)) for y in x)):
            out += rows_of(x, name, depth + 1)
        else:
            out.append((name, value(k, x)))
    return out
