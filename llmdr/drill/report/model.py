"""The drill report's document, built from the finished drill record's JSON (pure code, no Prefect).

:func:`sections` turns the record into one ordered list of :class:`Section` blocks (:class:`Table`, paragraph
text, ``("image", name)``, ``("list", [...])``, ``("link", label, target)``); the HTML and the PDF renderers both read
that one list, so they always show the same facts. Failed drills have holes (no RTO, no snapshot, no golden check):
every missing value is shown as "—" or "not recorded", never a crash. The small formatting helpers here are shared
by every renderer.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from llmdr.drill.report.blocks import evidence_blocks, identity_pairs, measurement_blocks
from llmdr.drill.report.doc import Section, Table, kv
from llmdr.drill.report.labels import DASH, NOT_RECORDED, label, nobreak, seconds, value
from llmdr.drill.report.signature import VERIFY_HINT, signature_blocks  # noqa: F401 - re-exported

NA = "N/A"  # a control that does not apply (a first drill has no previous drill)
# one colour per timeline kind (llmdr.drill.record.KINDS), also used by the HTML legend
KIND_COLORS = {"info": "#7f7f7f", "outage": "#d62728", "detection": "#ff7f0e", "switch": "#9467bd",
               "recovery": "#2ca02c", "check": "#1f77b4", "failback": "#8c564b"}
PASS_RGB, FAIL_RGB, WARN_RGB = (22, 128, 60), (190, 30, 45), (120, 120, 120)

FILES = {"evidence": "evidence.json", "timeline": "timeline.png", "trend": "trend.png", "html": "report.html",
         "pdf": "report.pdf"}
# Written into the folder by the drill task (not by write_report), before the report, so the signature covers it.
RUNBOOK_FILE = "RUNBOOK.md"
RUNBOOK_LABEL = "Runbook in force during this drill"


# --- small formatting helpers --------------------------------------------------------------------------------------
def dig(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def as_text(v: Any, empty: str = DASH) -> str:
    if v is None or v == "" or v == [] or v == {}:
        return empty
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (dict, list)):
        return compact(v)
    return str(v)


def compact(v: Any, limit: int = 300) -> str:
    s = json.dumps(v, sort_keys=True, default=str, ensure_ascii=False)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def as_number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def human_duration(seconds: float) -> str:
    secs, parts = int(round(seconds)), []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if secs >= size:
            parts.append(f"{secs // size}{unit}")
            secs %= size
    return "".join(parts) or "0s"


def seconds_text(v: Any, digits: int = 2) -> str:
    return seconds(v, digits)


def verdict_of(record: dict) -> str:
    return "PASS" if record.get("passed") and not record.get("failed_over_at_end") else "FAIL"


def status_text(v: Any) -> str:
    return DASH if v is None else ("PASS" if v else "FAIL")


def control_result(c: dict) -> str:
    """PASS, FAIL, or N/A for a control that does not apply; records written before N/A existed said "none on
    record" (with FAIL) for a first drill's previous-drill control."""
    if c.get("passed") is None or (c.get("id") == "previous_drill" and c.get("value") == "none on record"):
        return NA
    return "PASS" if c.get("passed") else "FAIL"


def control_value(c: dict) -> str:
    return "no previous drill" if control_result(c) == NA and c.get("id") == "previous_drill" else as_text(
        c.get("value"))


def parse_utc(s: Any) -> datetime | None:
    if not isinstance(s, str) or not s:
        return None
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def seconds_since_start(record: dict, utc_str: Any) -> float | None:
    """Seconds from the drill's start to ``utc_str``."""
    start, at = parse_utc(record.get("started_utc")), parse_utc(utc_str)
    return (at - start).total_seconds() if start and at else None


def as_dict(record: Any) -> dict:
    return record.to_json() if hasattr(record, "to_json") else dict(record or {})


# --- the document model shared by HTML and PDF: Table, Section, kv (llmdr.drill.report.doc) ------------------------


def sections(record: dict, *, has_trend: bool = False, runbook: str | None = None) -> list[Section]:
    """The report's content, in order, as plain tables and text. ``runbook``: the runbook's file name in the report
    folder, when it is there (linked from the HTML)."""
    record = as_dict(record)
    out: list[Section] = []
    passed = verdict_of(record) == "PASS"

    reasons = [str(r) for r in record.get("failure_reasons") or []]
    if not passed and not reasons:
        reasons = ["the drill did not pass (no reason was recorded)"]
    if record.get("failed_over_at_end") and not any("failed over" in r.lower() for r in reasons):
        reasons.insert(0, "the system was left failed over: traffic is still in the DR region")
    controls = [c for c in record.get("controls") or [] if isinstance(c, dict)]
    na = [c for c in controls if control_result(c) == NA]
    items = reasons or ["none: every control that applies passed"]
    items += [f"{control_value(c)}: {NA}" if c.get("id") == "previous_drill" else f"{as_text(c.get('name'))}: {NA}"
              for c in na]
    out.append(Section("Failure reasons", "failures", [("list", items)]))

    scope = record.get("scope") or {}
    obj = scope.get("objectives") or {}
    router = scope.get("router") or {}
    regions = scope.get("regions") or []
    blocks: list[Any] = [
        kv([("Bundle", scope.get("bundle") or record.get("bundle")),
             ("RTO objective", seconds_text(obj.get("rto_s"), 0)), ("RPO objective", seconds_text(obj.get("rpo_s"), 0)),
             ("Drill interval", seconds_text(obj.get("drill_interval_s"), 0)),
             ("Router", f"{router.get('kind', DASH)} {router.get('url') or ''}".strip() if router else None),
             ("Outage action", scope.get("outage_action")), ("Outage scope", scope.get("outage_scope"))]),
        Table(["region", "role", "endpoint", "bucket"],
              [[as_text(r.get("name")), as_text(r.get("role")), as_text(r.get("endpoint")), as_text(r.get("bucket"))]
               for r in regions if isinstance(r, dict)] or [[NOT_RECORDED, DASH, DASH, DASH]],
              [1, 1, 2.4, 1.6], "Regions"),
    ]
    out.append(Section("Scope", "scope", blocks))

    rb_error = dig(record, "evidence", "runbook_error")
    if runbook:
        out.append(Section("Runbook", "runbook", [
            "Who is notified, how to fail over, restore and fail back by hand (command line and Prefect UI), where "
            "the credentials live (names only) and the emergency access steps, as rendered from llmdr.yaml when "
            "this report was written. It is part of the signed folder.",
            ("link", f"{RUNBOOK_LABEL}:", runbook)]))
    elif rb_error:
        out.append(Section("Runbook", "runbook", [f"The runbook could not be written into this report: {rb_error}"]))

    pairs = identity_pairs(record) + [("Tool version", f"llmdr {record['tool_version']}" if record.get("tool_version") else None),
              ("Drill id", record.get("id")), ("Record schema", record.get("schema")),
              ("Started (UTC)", record.get("started_utc")), ("Ended (UTC)", record.get("ended_utc")),
              ("Duration", seconds_text(record.get("duration_s"), 1))]
    out.append(Section("Who and what ran it", "started", [kv(pairs)]))

    rows = [[as_text(c.get("name") or c.get("id")), control_result(c), control_value(c),
             as_text(c.get("objective")), as_text(c.get("detail"), "")] for c in controls]
    out.append(Section("Controls", "controls", [
        Table(["control", "result", "measured", "objective", "detail"], rows or [[NOT_RECORDED, DASH, DASH, DASH, ""]],
              [2.4, 0.8, 1.4, 1.2, 2.4], status_col=1)]))

    outage = record.get("outage") or {}
    restored = outage.get("restored_utc") or ("NOT restored" if outage.get("started_utc") else None)
    blocks = measurement_blocks(record) + [
        kv([("Region", outage.get("region")), ("Action", outage.get("action")),
            ("Started (UTC)", outage.get("started_utc")), ("Restored (UTC)", restored)]
           + [(label(k), value(k, v)) for k, v in sorted(outage.items())
              if k not in {"region", "action", "started_utc", "restored_utc"}], caption="Outage")]
    out.append(Section("Measurements", "measurements", blocks))

    tl = [e for e in record.get("timeline") or [] if isinstance(e, dict)]
    day = (record.get("started_utc") or "")[:10]
    rows = [[str(i), seconds_cell(e.get("t_s")), _clock(e.get("at_utc"), day), as_text(e.get("kind")),
             as_text(e.get("event")), status_text(e.get("ok")), as_text(e.get("detail"), "")]
            for i, e in enumerate(tl, 1)]
    note = (f"t is seconds since the drill started; times are UTC on {day} unless a date is shown. The numbers "
            "match the chart's markers." if day else "t is seconds since the drill started.")
    out.append(Section("Timeline", "timeline", [
        ("image", FILES["timeline"]), note,
        Table(["#", "t (s)", "UTC", "kind", "event", "ok", "detail"],
              rows or [["", DASH, NOT_RECORDED, "", "", DASH, ""]], [0.35, 0.65, 1.15, 0.85, 2.9, 0.65, 2.3],
              status_col=5, num_cols=(0, 1, 2))]))

    out.append(Section("Evidence", "evidence", evidence_blocks(record)))

    if has_trend:
        out.append(Section("History", "history", [
            "RTO and RPO of every drill on record with their objectives; a cross marks a failed drill.",
            ("image", FILES["trend"])]))

    out.append(Section("Signature", "signature", signature_blocks(record, runbook=runbook)))
    return [_nobreak_section(sec) for sec in out]


def _nobreak_section(sec: Section) -> Section:
    """Every number glued to its unit (no line break inside "3.68 s") in the section's text and tables."""
    blocks: list[Any] = []
    for b in sec.blocks:
        if isinstance(b, str):
            b = nobreak(b)
        elif isinstance(b, Table):
            b.rows = [[nobreak(str(c)) for c in row] for row in b.rows]
        elif isinstance(b, tuple) and b[0] == "list":
            b = ("list", [nobreak(str(x)) for x in b[1]])
        blocks.append(b)
    return Section(sec.title, sec.anchor, blocks)


def _clock(at: Any, day: str) -> str:
    """``10:00:07.430`` for a time on the drill's start date, else the full UTC timestamp."""
    if not isinstance(at, str) or not at:
        return DASH
    return at[11:].rstrip("Z") if day and at.startswith(day + "T") else at


def seconds_cell(v: Any) -> str:
    x = as_number(v)
    return DASH if x is None else f"{x:.2f}"


def objective_figures(record: dict) -> list[tuple[str, str]]:
    """("RTO", "5.4 s (objective ≤ 30s)") and the same for RPO."""
    m = record.get("measurements") or {}
    obj = dig(record, "scope", "objectives") or {}
    out = []
    for name, key in (("RTO", "rto_s"), ("RPO", "rpo_s")):
        v, o = as_number(m.get(key)), as_number(obj.get(key))
        out.append((name, (f"{v:.1f} s" if v is not None else NOT_RECORDED)
                    + (f" (objective ≤ {human_duration(o)})" if o is not None else "")))
    return out


def headline_figures(record: dict) -> list[tuple[str, str]]:
    controls = [c for c in record.get("controls") or [] if isinstance(c, dict)]
    return objective_figures(record) + [
        ("Controls", _controls_count(controls)),
        ("Drill", as_text(record.get("id"))), ("Started (UTC)", as_text(record.get("started_utc"))),
        ("Outage of", as_text(dig(record, "outage", "region")))]


def _controls_count(controls: list[dict]) -> str:
    results = [control_result(c) for c in controls]
    applies = [r for r in results if r != NA]
    na = len(results) - len(applies)
    return f"{applies.count('PASS')}/{len(applies)} passed" + (f" ({na} {NA})" if na else "")
