"""The drill report's document, built from the finished drill record's JSON (pure code, no Prefect).

:func:`sections` turns the record into one ordered list of :class:`Section` blocks (:class:`Table`, paragraph
text, ``("image", name)``, ``("list", [...])``, ``("link", label, target)``); the HTML and the PDF renderers both read
that one list, so they always show the same facts. Failed drills have holes (no RTO, no snapshot, no golden check):
every missing value is shown as "—" or "not recorded", never a crash. The small formatting helpers here are shared
by every renderer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

DASH = "—"
NOT_RECORDED = "not recorded"
VERIFY_HINT = "llmdr report verify <folder>"
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
    x = as_number(v)
    if x is None:
        return NOT_RECORDED
    out = f"{x:.{digits}f} s"
    return f"{out} ({human_duration(x)})" if x >= 60 else out


def verdict_of(record: dict) -> str:
    return "PASS" if record.get("passed") and not record.get("failed_over_at_end") else "FAIL"


def status_text(v: Any) -> str:
    return DASH if v is None else ("PASS" if v else "FAIL")


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


# --- the document model shared by HTML and PDF ---------------------------------------------------------------------
@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    widths: list[float]  # relative column widths (PDF)
    caption: str = ""
    status_col: int | None = None  # PASS/FAIL column, coloured
    mono_cols: tuple[int, ...] = ()  # ids and digests
    headings: bool = True  # False: a key/value list (first column bold)


@dataclass
class Section:
    title: str
    anchor: str
    blocks: list[Any] = field(default_factory=list)  # Table | str (paragraph) | ("image", name) | ("list", [...])


def _kv(pairs: list[tuple[str, Any]], caption: str = "", mono: bool = False) -> Table:
    return Table(["", ""], [[k, as_text(v)] for k, v in pairs], [1, 3], caption, mono_cols=(1,) if mono else (),
                 headings=False)


def _summary(v: Any) -> str:
    """One line for a nested evidence value: golden-style results as "ok, 5/5 cases", else compact JSON."""
    if isinstance(v, dict) and "ok" in v and ("passed" in v or "total" in v):
        return f"{'ok' if v.get('ok') else 'FAILED'}, {v.get('passed', DASH)}/{v.get('total', DASH)} cases"
    if isinstance(v, list) and v and all(isinstance(x, (str, int, float)) for x in v):
        return "\n".join(str(x) for x in v)  # problems, names: one per line
    return as_text(v)


def _scalars(d: dict, skip: set[str] = frozenset()) -> list[tuple[str, Any]]:
    """A dict as key/value rows; ``*_ts`` floats are left out when the ``*_utc`` twin is there."""
    rows = []
    for k in sorted(d):
        if k in skip or (k.endswith("_ts") and f"{k[:-3]}_utc" in d):
            continue
        v = d[k]
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            continue  # shown as a table by the caller
        rows.append((k, _summary(v) if isinstance(v, (dict, list)) else v))
    return rows


def _dict_table(v: Any, key_header: str, value_header: str, caption: str) -> Table:
    """``{key: digest}`` (or ``{key: {digest: ...}}`` or a list) as a two-column table with mono values."""
    rows: list[list[str]] = []
    if isinstance(v, dict):
        for k in sorted(v):
            x = v[k]
            if isinstance(x, dict):
                x = x.get("digest") or x.get("id") or compact(x)
            rows.append([str(k), as_text(x)])
    elif isinstance(v, list):
        for i, x in enumerate(v, 1):
            rows.append([str(i), as_text(x)])
    if not rows:
        rows = [[NOT_RECORDED, DASH]]
    return Table([key_header, value_header], rows, [1, 3.2], caption, mono_cols=(1,))


def _record_blocks(name: str, d: Any) -> list[Any]:
    """A step record (failover, failback, restore test ...): its scalars, then any list of dicts as a table."""
    if not isinstance(d, dict) or not d:
        return [_kv([(name, NOT_RECORDED)])]
    blocks: list[Any] = [_kv(_scalars(d), caption=name)]
    for k in sorted(d):
        v = d[k]
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            cols = [c for c in ("name", "at", "ok", "detail") if any(c in x for x in v)] or sorted(v[0])[:5]
            rows = [[status_text(x.get(c)) if c == "ok" else as_text(x.get(c)) for c in cols] for x in v]
            widths = [{"name": 2, "detail": 2.4, "at": 1.7}.get(c, 0.8) for c in cols]
            blocks.append(Table(cols, rows, widths, f"{name}: {k}",
                                status_col=cols.index("ok") if "ok" in cols else None))
    return blocks


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
    out.append(Section("Failure reasons", "failures", [("list", reasons or ["none: every control passed"])]))

    scope = record.get("scope") or {}
    obj = scope.get("objectives") or {}
    router = scope.get("router") or {}
    regions = scope.get("regions") or []
    blocks: list[Any] = [
        _kv([("Bundle", scope.get("bundle") or record.get("bundle")),
             ("RTO objective", seconds_text(obj.get("rto_s"), 0)), ("RPO objective", seconds_text(obj.get("rpo_s"), 0)),
             ("Drill interval", seconds_text(obj.get("drill_interval_s"), 0)),
             ("Router", f"{router.get('kind', DASH)} {router.get('url') or ''}".strip() if router else None),
             ("Outage action", scope.get("outage_action"))]),
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

    sb = record.get("started_by") or {}
    pairs = [("Started by", sb.get("kind")), ("Who", sb.get("who")), ("Deployment", sb.get("deployment")),
             ("Flow run", sb.get("flow_run_id"))]
    pairs += [(k.replace("_", " ").capitalize(), v) for k, v in sorted(sb.items())
              if k not in ("kind", "who", "deployment", "flow_run_id")]
    pairs += [("Tool version", f"llmdr {record['tool_version']}" if record.get("tool_version") else None),
              ("Drill id", record.get("id")), ("Record schema", record.get("schema")),
              ("Started (UTC)", record.get("started_utc")), ("Ended (UTC)", record.get("ended_utc")),
              ("Duration", seconds_text(record.get("duration_s"), 1))]
    out.append(Section("Who and what ran it", "started", [_kv(pairs)]))

    controls = record.get("controls") or []
    rows = [[as_text(c.get("name") or c.get("id")), status_text(c.get("passed")), as_text(c.get("value")),
             as_text(c.get("objective")), as_text(c.get("detail"), "")] for c in controls if isinstance(c, dict)]
    out.append(Section("Controls", "controls", [
        Table(["control", "result", "measured", "objective", "detail"], rows or [[NOT_RECORDED, DASH, DASH, DASH, ""]],
              [2.4, 0.8, 1.4, 1.2, 2.4], status_col=1)]))

    m = record.get("measurements") or {}
    shown = {"rto_s", "rpo_s", "detection_s", "dispatch_s", "recovery_s", "rto_detail", "rpo_detail"}
    pairs = [("RTO (outage start → first golden-correct answer)", seconds_text(m.get("rto_s"))),
             ("RTO basis", m.get("rto_detail")),
             ("RPO (outage start − newest DR snapshot)", seconds_text(m.get("rpo_s"))),
             ("RPO basis", m.get("rpo_detail")),
             ("Detection", seconds_text(m.get("detection_s"))), ("Dispatch", seconds_text(m.get("dispatch_s"))),
             ("Recovery", seconds_text(m.get("recovery_s")))]
    pairs += [(k, seconds_text(v) if k.endswith("_s") and as_number(v) is not None else _summary(v))
              for k, v in sorted(m.items()) if k not in shown]
    outage = record.get("outage") or {}
    restored = outage.get("restored_utc") or ("NOT restored" if outage.get("started_utc") else None)
    blocks = [_kv(pairs),
              _kv([("Region", outage.get("region")), ("Action", outage.get("action")),
                   ("Started (UTC)", outage.get("started_utc")), ("Restored (UTC)", restored)]
                  + _scalars(outage, {"region", "action", "started_utc", "restored_utc"}), caption="Outage")]
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
              status_col=5)]))

    out.append(Section("Evidence", "evidence", _evidence_blocks(record.get("evidence") or {})))

    if has_trend:
        out.append(Section("History", "history", [
            "RTO and RPO of every drill on record with their objectives; a cross marks a failed drill.",
            ("image", FILES["trend"])]))

    out.append(Section("Signature", "signature", [
        f"evidence.json, the charts, {'the runbook, ' if runbook else ''}this HTML and the PDF are listed with their "
        "SHA-256 in SIGNATURE.json and "
        "signed (Ed25519, or HMAC-SHA256 with a key from the environment). Editing any byte of any file makes "
        f"verification fail. Verify offline with `{VERIFY_HINT}`."]))
    return out


def _ratio(v: Any) -> str:
    x = as_number(v)
    return DASH if x is None else f"{x:.2f}"


def _clock(at: Any, day: str) -> str:
    """``10:00:07.430`` for a time on the drill's start date, else the full UTC timestamp."""
    if not isinstance(at, str) or not at:
        return DASH
    return at[11:].rstrip("Z") if day and at.startswith(day + "T") else at


def seconds_cell(v: Any) -> str:
    x = as_number(v)
    return DASH if x is None else f"{x:.2f}"


def _evidence_blocks(ev: dict) -> list[Any]:
    ev = ev if isinstance(ev, dict) else {}
    blocks: list[Any] = []
    snaps = ev.get("snapshots") or {}
    rows = []
    if isinstance(snaps, dict):
        for region in sorted(snaps):
            s = snaps[region] if isinstance(snaps[region], dict) else {"id": snaps[region]}
            rows.append([str(region), as_text(s.get("id")), as_text(s.get("created"))])
    blocks.append(Table(["region", "snapshot id", "created (UTC)"], rows or [[NOT_RECORDED, DASH, DASH]],
                        [0.7, 3.7, 1.6], "Snapshots", mono_cols=(1,)))
    blocks.append(_dict_table(ev.get("manifest_digests"), "manifest", "SHA-256 digest", "Manifest digests"))
    blocks.append(_dict_table(ev.get("components"), "component", "digest", "Per-component digests"))

    g = ev.get("golden_after_failover")
    if isinstance(g, dict) and g:
        cases = [c for c in g.get("cases") or [] if isinstance(c, dict)]
        rows = [[as_text(c.get("id")), status_text(c.get("ok")), _ratio(c.get("similarity")),
                 as_text(c.get("expected")), as_text(c.get("error") and f"error: {c['error']}" or c.get("actual"))]
                for c in cases]
        blocks.append(Table(["case", "result", "similarity", "expected", "actual through the router"],
                            rows or [[DASH, status_text(g.get("ok")), DASH, DASH, DASH]], [0.9, 0.7, 0.8, 2.4, 2.4],
                            f"Golden outputs after failover: {_summary(g)}", status_col=1))
    else:
        blocks.append(_kv([("Golden outputs after failover", NOT_RECORDED)]))

    for key, name in (("restore_test", "Restore test from the DR store"),
                      ("bundle_complete_dr", "Bundle complete in the DR region"),
                      ("failover", "Failover (run by the automation)"), ("failback", "Failback")):
        blocks += _record_blocks(name, ev.get(key))

    dv = ev.get("dataset_versions")
    if isinstance(dv, dict):
        dv = "\n".join(f"{k}: {as_text(v)}" for k, v in sorted(dv.items())) or None
    prov = [("Model version", ev.get("model_version")), ("Dataset versions", dv),
            ("Prefect flow run", ev.get("prefect_flow_run_id")), ("MLflow run", ev.get("mlflow_run_id")),
            ("Runbook", ev.get("runbook"))]
    blocks.append(_kv(prov, caption="Provenance", mono=True))
    known = {"snapshots", "manifest_digests", "components", "golden_after_failover", "restore_test",
             "bundle_complete_dr", "failover", "failback", "model_version", "dataset_versions",
             "prefect_flow_run_id", "mlflow_run_id", "runbook", "runbook_error"}
    other = [(k, ev[k]) for k in sorted(ev) if k not in known]
    if other:
        blocks.append(_kv([(k, compact(v, 600) if isinstance(v, (dict, list)) else v) for k, v in other],
                          caption="Other evidence"))
    return blocks


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
        ("Controls", f"{sum(bool(c.get('passed')) for c in controls)}/{len(controls)} passed"),
        ("Drill", as_text(record.get("id"))), ("Started (UTC)", as_text(record.get("started_utc"))),
        ("Outage of", as_text(dig(record, "outage", "region")))]
