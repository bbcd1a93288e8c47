"""The DR drill report for auditors, rendered from the finished drill record's JSON (pure code, no Prefect).

One report folder per drill: ``evidence.json`` (the record itself), ``timeline.png`` (outage, detection, switch,
recovery, checks, failback on a time axis), ``trend.png`` (RTO/RPO across drills, when there is history),
``report.html`` (self-contained: images inlined) and ``report.pdf`` (A4, same content). The drill task writes
``RUNBOOK.md`` (``llmdr.runbook``: the playbook in force during the drill) into the folder first; the report links to
it when it is there. ``llmdr.signing`` signs the folder afterwards. The HTML and the PDF are built from one list of
sections (:func:`sections`), so they always show the same facts. Failed drills have holes (no RTO, no snapshot, no
golden check): every missing value is shown as "—" or "not recorded", never a crash.

:func:`render_markdown` and :func:`table_rows` feed the Prefect artifacts; :func:`trend_chart` serves
``llmdr drills --chart`` on its own.
"""

from __future__ import annotations

import base64
import json
import logging
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llmdr.common.files import atomic_write

log = logging.getLogger(__name__)

DASH = "—"
NOT_RECORDED = "not recorded"
VERIFY_HINT = "llmdr report verify <folder>"
# one colour per timeline kind (llmdr.drill.KINDS), also used by the HTML legend
KIND_COLORS = {"info": "#7f7f7f", "outage": "#d62728", "detection": "#ff7f0e", "switch": "#9467bd",
               "recovery": "#2ca02c", "check": "#1f77b4", "failback": "#8c564b"}
PASS_RGB, FAIL_RGB, WARN_RGB = (22, 128, 60), (190, 30, 45), (120, 120, 120)

FILES = {"evidence": "evidence.json", "timeline": "timeline.png", "trend": "trend.png", "html": "report.html",
         "pdf": "report.pdf"}
# Written into the folder by the drill task (not by write_report), before the report, so the signature covers it.
RUNBOOK_FILE = "RUNBOOK.md"
RUNBOOK_LABEL = "Runbook in force during this drill"


# --- small formatting helpers --------------------------------------------------------------------------------------
def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _text(v: Any, empty: str = DASH) -> str:
    if v is None or v == "" or v == [] or v == {}:
        return empty
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (dict, list)):
        return _compact(v)
    return str(v)


def _compact(v: Any, limit: int = 300) -> str:
    s = json.dumps(v, sort_keys=True, default=str, ensure_ascii=False)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _human(seconds: float) -> str:
    secs, parts = int(round(seconds)), []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if secs >= size:
            parts.append(f"{secs // size}{unit}")
            secs %= size
    return "".join(parts) or "0s"


def _secs(v: Any, digits: int = 2) -> str:
    x = _num(v)
    if x is None:
        return NOT_RECORDED
    out = f"{x:.{digits}f} s"
    return f"{out} ({_human(x)})" if x >= 60 else out


def _verdict(record: dict) -> str:
    return "PASS" if record.get("passed") and not record.get("failed_over_at_end") else "FAIL"


def _status(v: Any) -> str:
    return DASH if v is None else ("PASS" if v else "FAIL")


def _parse_utc(s: Any) -> datetime | None:
    if not isinstance(s, str) or not s:
        return None
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _rel_s(record: dict, utc_str: Any) -> float | None:
    """Seconds from the drill's start to ``utc_str``."""
    start, at = _parse_utc(record.get("started_utc")), _parse_utc(utc_str)
    return (at - start).total_seconds() if start and at else None


def _as_dict(record: Any) -> dict:
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
    return Table(["", ""], [[k, _text(v)] for k, v in pairs], [1, 3], caption, mono_cols=(1,) if mono else (),
                 headings=False)


def _summary(v: Any) -> str:
    """One line for a nested evidence value: golden-style results as "ok, 5/5 cases", else compact JSON."""
    if isinstance(v, dict) and "ok" in v and ("passed" in v or "total" in v):
        return f"{'ok' if v.get('ok') else 'FAILED'}, {v.get('passed', DASH)}/{v.get('total', DASH)} cases"
    if isinstance(v, list) and v and all(isinstance(x, (str, int, float)) for x in v):
        return "\n".join(str(x) for x in v)  # problems, names: one per line
    return _text(v)


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
                x = x.get("digest") or x.get("id") or _compact(x)
            rows.append([str(k), _text(x)])
    elif isinstance(v, list):
        for i, x in enumerate(v, 1):
            rows.append([str(i), _text(x)])
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
            rows = [[_status(x.get(c)) if c == "ok" else _text(x.get(c)) for c in cols] for x in v]
            blocks.append(Table(cols, rows, [{"name": 2, "detail": 2.4, "at": 1.7}.get(c, 0.8) for c in cols], f"{name}: {k}",
                                status_col=cols.index("ok") if "ok" in cols else None))
    return blocks


def sections(record: dict, *, has_trend: bool = False, runbook: str | None = None) -> list[Section]:
    """The report's content, in order, as plain tables and text. ``runbook``: the runbook's file name in the report
    folder, when it is there (linked from the HTML)."""
    record = _as_dict(record)
    out: list[Section] = []
    passed = _verdict(record) == "PASS"

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
             ("RTO objective", _secs(obj.get("rto_s"), 0)), ("RPO objective", _secs(obj.get("rpo_s"), 0)),
             ("Drill interval", _secs(obj.get("drill_interval_s"), 0)),
             ("Router", f"{router.get('kind', DASH)} {router.get('url') or ''}".strip() if router else None),
             ("Outage action", scope.get("outage_action"))]),
        Table(["region", "role", "endpoint", "bucket"],
              [[_text(r.get("name")), _text(r.get("role")), _text(r.get("endpoint")), _text(r.get("bucket"))]
               for r in regions if isinstance(r, dict)] or [[NOT_RECORDED, DASH, DASH, DASH]],
              [1, 1, 2.4, 1.6], "Regions"),
    ]
    out.append(Section("Scope", "scope", blocks))

    rb_error = _get(record, "evidence", "runbook_error")
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
              ("Duration", _secs(record.get("duration_s"), 1))]
    out.append(Section("Who and what ran it", "started", [_kv(pairs)]))

    controls = record.get("controls") or []
    rows = [[_text(c.get("name") or c.get("id")), _status(c.get("passed")), _text(c.get("value")),
             _text(c.get("objective")), _text(c.get("detail"), "")] for c in controls if isinstance(c, dict)]
    out.append(Section("Controls", "controls", [
        Table(["control", "result", "measured", "objective", "detail"], rows or [[NOT_RECORDED, DASH, DASH, DASH, ""]],
              [2.4, 0.8, 1.4, 1.2, 2.4], status_col=1)]))

    m = record.get("measurements") or {}
    shown = {"rto_s", "rpo_s", "detection_s", "dispatch_s", "recovery_s", "rto_detail", "rpo_detail"}
    pairs = [("RTO (outage start → first golden-correct answer)", _secs(m.get("rto_s"))),
             ("RTO basis", m.get("rto_detail")),
             ("RPO (outage start − newest DR snapshot)", _secs(m.get("rpo_s"))),
             ("RPO basis", m.get("rpo_detail")),
             ("Detection", _secs(m.get("detection_s"))), ("Dispatch", _secs(m.get("dispatch_s"))),
             ("Recovery", _secs(m.get("recovery_s")))]
    pairs += [(k, _secs(v) if k.endswith("_s") and _num(v) is not None else _summary(v))
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
    rows = [[str(i), _t(e.get("t_s")), _clock(e.get("at_utc"), day), _text(e.get("kind")), _text(e.get("event")),
             _status(e.get("ok")), _text(e.get("detail"), "")] for i, e in enumerate(tl, 1)]
    note = (f"t is seconds since the drill started; times are UTC on {day} unless a date is shown. The numbers "
            "match the chart's markers." if day else "t is seconds since the drill started.")
    out.append(Section("Timeline", "timeline", [
        ("image", FILES["timeline"]), note,
        Table(["#", "t (s)", "UTC", "kind", "event", "ok", "detail"], rows or [["", DASH, NOT_RECORDED, "", "", DASH, ""]],
              [0.35, 0.65, 1.15, 0.85, 2.9, 0.65, 2.3], status_col=5)]))

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
    x = _num(v)
    return DASH if x is None else f"{x:.2f}"


def _clock(at: Any, day: str) -> str:
    """``10:00:07.430`` for a time on the drill's start date, else the full UTC timestamp."""
    if not isinstance(at, str) or not at:
        return DASH
    return at[11:].rstrip("Z") if day and at.startswith(day + "T") else at


def _t(v: Any) -> str:
    x = _num(v)
    return DASH if x is None else f"{x:.2f}"


def _evidence_blocks(ev: dict) -> list[Any]:
    ev = ev if isinstance(ev, dict) else {}
    blocks: list[Any] = []
    snaps = ev.get("snapshots") or {}
    rows = []
    if isinstance(snaps, dict):
        for region in sorted(snaps):
            s = snaps[region] if isinstance(snaps[region], dict) else {"id": snaps[region]}
            rows.append([str(region), _text(s.get("id")), _text(s.get("created"))])
    blocks.append(Table(["region", "snapshot id", "created (UTC)"], rows or [[NOT_RECORDED, DASH, DASH]],
                        [0.7, 3.7, 1.6], "Snapshots", mono_cols=(1,)))
    blocks.append(_dict_table(ev.get("manifest_digests"), "manifest", "SHA-256 digest", "Manifest digests"))
    blocks.append(_dict_table(ev.get("components"), "component", "digest", "Per-component digests"))

    g = ev.get("golden_after_failover")
    if isinstance(g, dict) and g:
        cases = [c for c in g.get("cases") or [] if isinstance(c, dict)]
        rows = [[_text(c.get("id")), _status(c.get("ok")), _ratio(c.get("similarity")), _text(c.get("expected")),
                 _text(c.get("error") and f"error: {c['error']}" or c.get("actual"))] for c in cases]
        blocks.append(Table(["case", "result", "similarity", "expected", "actual through the router"],
                            rows or [[DASH, _status(g.get("ok")), DASH, DASH, DASH]], [0.9, 0.7, 0.8, 2.4, 2.4],
                            f"Golden outputs after failover: {_summary(g)}", status_col=1))
    else:
        blocks.append(_kv([("Golden outputs after failover", NOT_RECORDED)]))

    for key, name in (("restore_test", "Restore test from the DR store"),
                      ("bundle_complete_dr", "Bundle complete in the DR region"),
                      ("failover", "Failover (run by the automation)"), ("failback", "Failback")):
        blocks += _record_blocks(name, ev.get(key))

    dv = ev.get("dataset_versions")
    if isinstance(dv, dict):
        dv = "\n".join(f"{k}: {_text(v)}" for k, v in sorted(dv.items())) or None
    prov = [("Model version", ev.get("model_version")), ("Dataset versions", dv),
            ("Prefect flow run", ev.get("prefect_flow_run_id")), ("MLflow run", ev.get("mlflow_run_id")),
            ("Runbook", ev.get("runbook"))]
    blocks.append(_kv(prov, caption="Provenance", mono=True))
    known = {"snapshots", "manifest_digests", "components", "golden_after_failover", "restore_test",
             "bundle_complete_dr", "failover", "failback", "model_version", "dataset_versions",
             "prefect_flow_run_id", "mlflow_run_id", "runbook", "runbook_error"}
    other = [(k, ev[k]) for k in sorted(ev) if k not in known]
    if other:
        blocks.append(_kv([(k, _compact(v, 600) if isinstance(v, (dict, list)) else v) for k, v in other],
                          caption="Other evidence"))
    return blocks


# --- charts --------------------------------------------------------------------------------------------------------
def _figure(w: float, h: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)  # Agg, whatever backend pyplot would pick; no global pyplot state
    return fig


def _save(fig: Any, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, metadata={"Software": None})
    atomic_write(Path(path), buf.getvalue())
    return Path(path)


def _kinds_in(events: list[dict]) -> list[str]:
    from llmdr.drill.record import KINDS

    seen = {e.get("kind") for e in events}
    return [k for k in KINDS if k in seen] + sorted(str(k) for k in seen - set(KINDS))


def _draw_events(ax: Any, events: list[tuple[int, dict]], lanes: dict[str, int], x0: float, x1: float) -> None:
    """Markers per event on its kind's lane, numbered like the timeline table; numbers that would collide
    are moved above/below."""
    span = max(x1 - x0, 1e-6)
    last: dict[str, tuple[float, int]] = {}  # lane -> (x, level) of its previous label
    for idx, e in events:
        t, kind = _num(e.get("t_s")), str(e.get("kind"))
        if t is None or kind not in lanes or not x0 <= t <= x1:
            continue
        color = KIND_COLORS.get(kind, "#444444")
        ok = e.get("ok")
        marker, edge = ("X", "#b00020") if ok is False else (("o", "white") if ok else ("D", "white"))
        ax.scatter([t], [lanes[kind]], s=70 if ok is False else 50, marker=marker, color=color, edgecolors=edge,
                   linewidths=1.2, zorder=4)
        prev = last.get(kind)
        level = 1 - prev[1] if prev is not None and abs(t - prev[0]) / span < 0.03 else 0
        last[kind] = (t, level)
        dy = (6, 14)[level]  # both above the marker, below the next lane
        ax.annotate(str(idx), (t, lanes[kind]), xytext=(0, dy), textcoords="offset points", ha="center",
                    fontsize=7, color="#222222", zorder=5,
                    bbox={"boxstyle": "round,pad=0.08", "fc": "white", "ec": "none", "alpha": 0.85})


def timeline_chart(record: dict, path: Path) -> Path:
    """The drill on a time axis (seconds since start): one lane per kind of event, the outage window shaded and
    the RTO span annotated; a zoom panel on outage → recovery when that is a small part of the drill."""
    record = _as_dict(record)
    tl = [e for e in record.get("timeline") or [] if isinstance(e, dict)]
    numbered = list(enumerate(tl, 1))
    times = [t for t in (_num(e.get("t_s")) for e in tl) if t is not None]
    out_start = _rel_s(record, _get(record, "outage", "started_utc"))
    if out_start is None:
        out_start = next((_num(e.get("t_s")) for e in tl if e.get("kind") == "outage"), None)
    out_end = _rel_s(record, _get(record, "outage", "restored_utc"))
    rto = _num(_get(record, "measurements", "rto_s"))
    rto_obj = _num(_get(record, "scope", "objectives", "rto_s"))
    end = _num(record.get("duration_s"))
    x_max = max(times + [end or 0, (out_start or 0) + (rto or 0), out_end or 0, 1.0])
    lanes_list = _kinds_in(tl) or ["info"]
    lanes = {k: len(lanes_list) - 1 - i for i, k in enumerate(lanes_list)}

    zoom = None
    if out_start is not None:
        z_end = out_start + rto if rto is not None else None
        if z_end is None:
            after = [t for t, e in zip(times, tl, strict=True) if t >= out_start and e.get("kind") in ("detection", "switch",
                                                                                           "recovery")]
            z_end = max(after) if after else None
        if z_end is not None and (z_end - out_start) < 0.25 * x_max:
            pad = max(0.15 * (z_end - out_start), 0.5)
            zoom = (max(out_start - pad, 0.0), z_end + pad)

    h_lane = 0.34
    panel = 0.75 + h_lane * len(lanes_list)  # axes height in inches: lanes plus the RTO arrow row
    fig = _figure(9.5, 0.95 + panel + (0.75 + panel if zoom else 0))
    axes = (fig.subplots(2, 1, gridspec_kw={"hspace": 0.75 / panel}) if zoom else [fig.subplots()])
    title = f"Drill {record.get('id') or DASH}: {record.get('bundle') or DASH}: {_verdict(record)}"
    for n, ax in enumerate(axes):
        x0, x1 = (-0.015 * x_max, x_max * 1.03) if n == 0 else zoom
        if out_start is not None:
            shade_end = out_end if out_end is not None else x1
            ax.axvspan(out_start, shade_end, color="#d62728", alpha=0.09, lw=0,
                       label="outage window" if out_end is not None else "outage (not restored)")
        for y in lanes.values():
            ax.axhline(y, color="#dddddd", lw=0.8, zorder=1)
        _draw_events(ax, numbered, lanes, x0, x1)
        top = len(lanes_list) - 0.35
        if out_start is not None and rto is not None:
            ax.annotate("", xy=(out_start + rto, top + 0.25), xytext=(out_start, top + 0.25),
                        arrowprops={"arrowstyle": "<->", "color": "#111111", "lw": 1.2})
            label = f"RTO {rto:.1f} s" + (f" (objective {_human(rto_obj)})" if rto_obj else "")
            mid = out_start + rto / 2
            ax.text(mid if x0 <= mid <= x1 else out_start, top + 0.45, label, ha="center", va="bottom", fontsize=8,
                    fontweight="bold", clip_on=True)
            ax.axvline(out_start + rto, color="#2ca02c", lw=0.9, ls="--", zorder=2)
        if out_start is not None:
            ax.axvline(out_start, color="#d62728", lw=0.9, ls="--", zorder=2)
        ax.set_xlim(x0, x1)
        ax.set_ylim(-0.7, len(lanes_list) + 0.55)
        ax.set_yticks(list(lanes.values()), list(lanes.keys()), fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.set_xlabel("seconds since drill start" if n == len(axes) - 1 or not zoom else "", fontsize=8)
        ax.set_title(title if n == 0 else f"zoom: outage → recovery ({x0:.1f}–{x1:.1f} s)",
                     fontsize=10 if n == 0 else 9, loc="left", fontweight="bold" if n == 0 else "normal")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], marker="o", ls="", color=KIND_COLORS.get(k, "#444444"), label=k) for k in lanes_list]
    handles += [Line2D([], [], marker="X", ls="", color="#888888", markeredgecolor="#b00020", label="failed step"),
                Patch(color="#d62728", alpha=0.15, label="outage")]
    fig.legend(handles=handles, loc="upper right", ncol=min(len(handles), 9), fontsize=7, frameon=False,
               bbox_to_anchor=(0.99, 1.0))
    fig.subplots_adjust(left=0.09, right=0.98, top=1 - 0.5 / fig.get_figheight(),
                        bottom=0.45 / fig.get_figheight())
    return _save(fig, path)


def trend_chart(history: list[dict], path: Path) -> Path:
    """RTO and RPO per drill (oldest first) against their objectives; green dots passed, red crosses failed, a
    ring around drills that left the system failed over."""
    recs = [_as_dict(r) for r in history or []]
    fig = _figure(9.5, 4.6)
    ax_rto, ax_rpo = fig.subplots(2, 1, sharex=True, gridspec_kw={"hspace": 0.25})
    if not recs:
        ax_rto.text(0.5, 0.5, "no drills on record yet", ha="center", va="center", transform=ax_rto.transAxes)
    xs = list(range(len(recs)))
    for ax, key, obj_key, name in ((ax_rto, "rto_s", "rto_s", "RTO"), (ax_rpo, "rpo_s", "rpo_s", "RPO")):
        vals = [_num(_get(r, "measurements", key)) for r in recs]
        objs = [_num(_get(r, "scope", "objectives", obj_key)) for r in recs]
        known = [v for v in vals + objs if v is not None]
        ymax = max(known) * 1.15 if known else 1.0
        pts = [(x, v) for x, v in zip(xs, vals, strict=True) if v is not None]
        if len(pts) > 1:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color="#999999", lw=1, zorder=2)
        if any(o is not None for o in objs):
            ax.step(xs, [o if o is not None else float("nan") for o in objs], where="mid", color="#d62728", lw=1.6,
                    ls="--", label=f"{name} objective", zorder=1)
        for x, v, r in zip(xs, vals, recs, strict=True):
            ok = _verdict(r) == "PASS"
            y = v if v is not None else 0.0
            ax.scatter([x], [y], marker="o" if ok else "X", s=45 if ok else 70, color="#2ca02c" if ok else "#d62728",
                       zorder=4)
            if r.get("failed_over_at_end"):
                ax.scatter([x], [y], marker="o", s=180, facecolors="none", edgecolors="#d62728", lw=1.5, zorder=3)
            if v is None:
                ax.annotate("not measured", (x, 0), xytext=(0, 7), textcoords="offset points", ha="center",
                            fontsize=7, color="#d62728")
        ax.set_ylim(0, ymax)
        ax.set_ylabel(f"{name} (s)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(axis="y", color="#eeeeee")
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="", color="#2ca02c", label="passed"),
               Line2D([], [], marker="X", ls="", color="#d62728", label="failed"),
               Line2D([], [], marker="o", ls="", markerfacecolor="none", markeredgecolor="#d62728", markersize=10,
                      label="left failed over"),
               Line2D([], [], ls="--", color="#d62728", label="objective")]
    fig.legend(handles=handles, loc="upper right", ncol=4, fontsize=8, frameon=False)
    bundles = sorted({str(r.get("bundle")) for r in recs if r.get("bundle")})
    ax_rto.set_title(f"Drill history{': ' + ', '.join(bundles) if bundles else ''} ({len(recs)} drills)",
                     fontsize=10, loc="left", fontweight="bold")
    if recs:
        step = max(1, len(recs) // 12)
        ticks = xs[::step]
        labels = [(_text(recs[i].get("started_utc"))[:16].replace("T", "\n")) for i in ticks]
        ax_rpo.set_xticks(ticks, labels, fontsize=7)
        ax_rpo.set_xlim(-0.5, len(recs) - 0.5)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.14)
    return _save(fig, path)


# --- HTML ----------------------------------------------------------------------------------------------------------
def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def render_html(record: dict, images: dict[str, Path] | None = None, *, runbook: str | None = None) -> str:
    """The self-contained HTML report; ``images`` maps chart file names to PNGs to inline; ``runbook`` the
    runbook's file name in the report folder (a relative link), if it is there."""
    from importlib.resources import files

    import jinja2

    record = _as_dict(record)
    images = images or {}
    env = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.tests["table"] = lambda b: isinstance(b, Table)
    tpl = env.from_string((files("llmdr.drill") / "templates" / "drill_report.html.j2").read_text(encoding="utf-8"))
    secs = sections(record, has_trend=FILES["trend"] in images, runbook=runbook)
    return tpl.render(record=record, verdict=_verdict(record), sections=secs,
                      images={k: _data_uri(p) for k, p in images.items()}, kind_colors=KIND_COLORS,
                      bundle=record.get("bundle") or _get(record, "scope", "bundle") or DASH,
                      headline=_headline(record), dash=DASH, runbook=runbook, runbook_label=RUNBOOK_LABEL)


def _objective_figures(record: dict) -> list[tuple[str, str]]:
    """("RTO", "5.4 s (objective ≤ 30s)") and the same for RPO."""
    m = record.get("measurements") or {}
    obj = _get(record, "scope", "objectives") or {}
    out = []
    for name, key in (("RTO", "rto_s"), ("RPO", "rpo_s")):
        v, o = _num(m.get(key)), _num(obj.get(key))
        out.append((name, (f"{v:.1f} s" if v is not None else NOT_RECORDED)
                    + (f" (objective ≤ {_human(o)})" if o is not None else "")))
    return out


def _headline(record: dict) -> list[tuple[str, str]]:
    controls = [c for c in record.get("controls") or [] if isinstance(c, dict)]
    return _objective_figures(record) + [
        ("Controls", f"{sum(bool(c.get('passed')) for c in controls)}/{len(controls)} passed"),
        ("Drill", _text(record.get("id"))), ("Started (UTC)", _text(record.get("started_utc"))),
        ("Outage of", _text(_get(record, "outage", "region")))]


# --- PDF -----------------------------------------------------------------------------------------------------------
def _font_paths() -> dict[tuple[str, str], Path]:
    import matplotlib

    base = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return {("dv", ""): base / "DejaVuSans.ttf", ("dv", "B"): base / "DejaVuSans-Bold.ttf",
            ("dv", "I"): base / "DejaVuSans-Oblique.ttf", ("dvmono", ""): base / "DejaVuSansMono.ttf",
            ("dvmono", "B"): base / "DejaVuSansMono-Bold.ttf"}


# Fonts for scripts DejaVu lacks (CJK above all), used when present on the machine (Debian: fonts-noto-cjk,
# fonts-droid-fallback, fonts-wqy-zenhei). Without one, such characters print as "?" in the PDF (the HTML and
# evidence.json keep them).
FALLBACK_FONTS: tuple[str, ...] = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
)


def _clean(s: str, cmaps: list[Any] | None = None) -> str:
    """Printable text for the PDF: control characters out; glyphs no loaded font has shown as '?'."""
    out = []
    for ch in s.replace("\t", " "):
        if ch != "\n" and unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            continue
        if cmaps and ch != "\n" and not any(ord(ch) in c for c in cmaps):
            ch = "?"
        out.append(ch)
    return "".join(out)


def render_pdf(record: dict, path: Path, images: dict[str, Path] | None = None, *, runbook: str | None = None) -> Path:
    """The PDF report: A4, DejaVu fonts (→, ≤, — and most scripts render), page numbers, charts embedded,
    tables whose long digests wrap inside their cells. ``runbook``: named (as text) when it is in the folder."""
    from fpdf import FPDF
    from fpdf.enums import WrapMode, XPos, YPos
    from fpdf.fonts import FontFace

    record = _as_dict(record)
    images = images or {}
    verdict = _verdict(record)
    bundle = record.get("bundle") or _get(record, "scope", "bundle") or DASH
    title = f"DR drill report: {bundle}, drill {record.get('id') or DASH}"

    class _PDF(FPDF):
        def footer(self) -> None:
            self.set_y(-12)
            self.set_font("dv", "", 7.5)
            self.set_text_color(110, 110, 110)
            self.cell(0, 6, self.txt(f"{title}  ·  {verdict}  ·  page {self.page_no()} of {{nb}}"), align="C")

        def txt(self, s: Any) -> str:
            return _clean(str(s), cmaps)

    pdf = _PDF(format="A4")
    pdf.set_margins(14, 14, 14)
    pdf.set_auto_page_break(True, margin=16)
    pdf.set_title(title)
    pdf.set_author("llmdr")
    pdf.set_creator(f"llmdr {record.get('tool_version') or ''}".strip())
    for (family, style), p in _font_paths().items():
        pdf.add_font(family, style, str(p))
    fallbacks = []
    for i, p in enumerate(f for f in FALLBACK_FONTS if Path(f).is_file()):
        try:
            pdf.add_font(f"fallback{i}", "", p)
        except Exception as exc:  # a damaged or unsupported system font must not stop the report
            log.warning("skipping fallback font %s: %s", p, exc)
            continue
        fallbacks.append(f"fallback{i}")
    # mono cells (ids, digests) borrow from DejaVu Sans, then from the system fonts, for glyphs they lack
    pdf.set_fallback_fonts(["dv", *fallbacks], exact_match=False)
    cmaps = [pdf.fonts["dv"].cmap] + [pdf.fonts[f].cmap for f in fallbacks]
    pdf.add_page()
    t = pdf.txt

    # headline: verdict, the failed-over banner, key figures
    pdf.set_font("dv", "B", 16)
    pdf.set_text_color(20, 20, 20)
    pdf.multi_cell(0, 8, t(f"DR drill report: {bundle}"), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(2)
    color = PASS_RGB if verdict == "PASS" else FAIL_RGB
    pdf.set_fill_color(*color)
    pdf.set_text_color(255, 255, 255)
    pdf.set_font("dv", "B", 30)
    pdf.cell(0, 18, verdict, align="C", fill=True, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    if record.get("failed_over_at_end"):
        pdf.ln(2)
        pdf.set_fill_color(*FAIL_RGB)
        pdf.set_font("dv", "B", 15)
        pdf.cell(0, 11, "SYSTEM LEFT FAILED OVER", align="C", fill=True, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.set_font("dv", "", 9)
        pdf.multi_cell(0, 5.5, t("Traffic was still served from the DR region when the drill ended. Fail back "
                                 "(`llmdr failback`) once the primary is healthy; this drill cannot pass."),
                       fill=True, align="C", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(3)
    pdf.set_fill_color(255, 255, 255)
    pdf.set_text_color(20, 20, 20)
    _pdf_table(pdf, Table(["", ""], [[k, v] for k, v in _headline(record)], [1, 3], headings=False), FontFace,
               WrapMode)

    bottom = pdf.h - pdf.b_margin

    def image_size(name: str) -> tuple[float, float] | None:
        """(width, height) in mm at full text width, or None without that chart."""
        if name not in images:
            return None
        from PIL import Image

        with Image.open(images[name]) as im:
            return pdf.epw, pdf.epw * im.height / im.width

    for sec in sections(record, has_trend=FILES["trend"] in images, runbook=runbook):
        pdf.ln(3)
        first = sec.blocks[0] if sec.blocks else None
        size = image_size(first[1]) if isinstance(first, tuple) and first[0] == "image" else None
        # keep a title with its first lines (or its chart, shrunk to at most 80 % if that makes it fit)
        need = 14 + (0.8 * size[1] if size else 20)
        if pdf.get_y() + need > bottom:
            pdf.add_page()
        pdf.set_font("dv", "B", 13)
        pdf.set_text_color(20, 20, 20)
        pdf.cell(0, 8, t(sec.title), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.set_draw_color(180, 180, 180)
        pdf.line(pdf.l_margin, pdf.get_y(), pdf.w - pdf.r_margin, pdf.get_y())
        pdf.ln(1.5)
        for block in sec.blocks:
            if isinstance(block, Table):
                _pdf_table(pdf, block, FontFace, WrapMode)
            elif isinstance(block, tuple) and block[0] == "image":
                size = image_size(block[1])
                if size is None:
                    continue
                w, h = size
                room = bottom - pdf.get_y()
                if h > room:
                    if room >= 0.8 * h:
                        w, h = w * room / h, room
                    else:
                        pdf.add_page()
                pdf.image(str(images[block[1]]), x=pdf.l_margin + (pdf.epw - w) / 2, w=w, h=h)
                pdf.ln(2)
            elif isinstance(block, tuple) and block[0] == "link":
                pdf.set_font("dv", "B", 9.5)
                pdf.multi_cell(0, 5.2, t(f"{block[1]} {block[2]} (in this report folder)"), align="L",
                               new_x=XPos.LMARGIN, new_y=YPos.NEXT)
                pdf.ln(1)
            elif isinstance(block, tuple) and block[0] == "list":
                failing = sec.anchor == "failures" and verdict == "FAIL"
                pdf.set_font("dv", "B" if failing else "", 9.5)
                pdf.set_text_color(*(FAIL_RGB if failing else (20, 20, 20)))
                for item in block[1]:
                    pdf.cell(5, 5.2, "•")
                    pdf.multi_cell(pdf.epw - 5, 5.2, t(item), align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
                pdf.set_text_color(20, 20, 20)
            else:
                pdf.set_font("dv", "", 8.5)
                pdf.set_text_color(70, 70, 70)
                pdf.multi_cell(0, 4.6, t(str(block)), align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
                pdf.set_text_color(20, 20, 20)
                pdf.ln(1)
    pdf.output(str(path))
    return Path(path)


def _pdf_table(pdf: Any, table: Table, FontFace: Any, WrapMode: Any) -> None:
    from fpdf.enums import XPos, YPos

    t = pdf.txt
    if table.caption:
        if pdf.get_y() > pdf.h - 40:
            pdf.add_page()
        pdf.set_font("dv", "B", 9.5)
        pdf.set_text_color(60, 60, 60)
        pdf.multi_cell(0, 6, t(table.caption), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_text_color(20, 20, 20)
    size = 8 if len(table.headers) > 3 else 8.5
    pdf.set_font("dv", "", size)
    head = FontFace(family="dv", emphasis="BOLD", size_pt=size, fill_color=(232, 236, 241))
    with pdf.table(col_widths=tuple(table.widths), width=pdf.epw, text_align="LEFT", line_height=size * 0.5,
                   first_row_as_headings=table.headings, headings_style=head, wrapmode=WrapMode.WORD,
                   cell_fill_mode="ROWS" if table.headings else "NONE", cell_fill_color=(246, 247, 249),
                   padding=(0.8, 1.2), borders_layout="HORIZONTAL_LINES" if table.headings else "NONE",
                   v_align="TOP") as tb:
        if table.headings:
            row = tb.row()
            for h in table.headers:
                row.cell(t(h))
        for r in table.rows:
            row = tb.row()
            for i, cell in enumerate(r):
                style = None
                if i == table.status_col and cell in ("PASS", "FAIL"):
                    style = FontFace(family="dv", emphasis="BOLD", size_pt=size,
                                     color=PASS_RGB if cell == "PASS" else FAIL_RGB)
                elif i in table.mono_cols:
                    style = FontFace(family="dvmono", size_pt=size - 0.5)
                elif not table.headings and i == 0:
                    style = FontFace(family="dv", emphasis="BOLD", size_pt=size)
                row.cell(t(cell), style=style)
    pdf.ln(1.5)


# --- markdown and table artifact -----------------------------------------------------------------------------------
def _md(v: Any) -> str:
    return _text(v).replace("|", "\\|").replace("\n", " ")


def render_markdown(record: dict) -> str:
    """The Prefect markdown artifact: verdict, banner, RTO/RPO, controls, failure reasons, timeline."""
    record = _as_dict(record)
    verdict = _verdict(record)
    bundle = record.get("bundle") or _get(record, "scope", "bundle") or DASH
    lines = [f"# DR drill {bundle}: **{verdict}**", ""]
    if record.get("failed_over_at_end"):
        lines += ["> **SYSTEM LEFT FAILED OVER**: traffic was still served from the DR region when the drill ended. "
                  "Fail back (`llmdr failback`) once the primary is healthy.", ""]
    sb = record.get("started_by") or {}
    who = f" ({sb['who']})" if sb.get("who") else ""
    lines += [f"Drill `{_text(record.get('id'))}` started {_text(record.get('started_utc'))} by "
              f"{_text(sb.get('kind'))}{who}, took {_secs(record.get('duration_s'), 1)}; llmdr "
              f"{_text(record.get('tool_version'))}.", ""]
    for name, v in _objective_figures(record):
        lines.append(f"- **{name}**: {v}")
    runbook = _get(record, "report", "files", "runbook") or _get(record, "evidence", "runbook")
    if runbook:
        lines.append(f"- **{RUNBOOK_LABEL}**: `{runbook}`")
    elif _get(record, "evidence", "runbook_error"):
        lines.append(f"- **Runbook**: not in the report ({_md(_get(record, 'evidence', 'runbook_error'))})")
    lines += ["", "## Controls", "", "| control | result | measured | objective | detail |", "|---|---|---|---|---|"]
    for c in record.get("controls") or []:
        if isinstance(c, dict):
            res = "PASS" if c.get("passed") else "**FAIL**"
            lines.append(f"| {_md(c.get('name') or c.get('id'))} | {res} | {_md(c.get('value'))} | "
                         f"{_md(c.get('objective'))} | {_md(c.get('detail') or '')} |")
    reasons = record.get("failure_reasons") or []
    lines += ["", "## Failure reasons", ""]
    lines += [f"- {_md(r)}" for r in reasons] or ["none"]
    lines += ["", "## Timeline", "", "| # | t (s) | UTC | kind | event | ok |", "|---:|---:|---|---|---|---|"]
    for i, e in enumerate([e for e in record.get("timeline") or [] if isinstance(e, dict)], 1):
        ok = {True: "ok", False: "**FAILED**"}.get(e.get("ok"), "")
        lines.append(f"| {i} | {_t(e.get('t_s'))} | {_md(e.get('at_utc'))} | {_md(e.get('kind'))} | "
                     f"{_md(e.get('event'))} | {ok} |")
    return "\n".join(lines) + "\n"


def table_rows(history: list[dict]) -> list[dict]:
    """One row per drill for the table artifact (same columns every time; missing numbers are None)."""
    rows = []
    for r in (_as_dict(x) for x in history or []):
        start = _parse_utc(r.get("started_utc"))
        rto, rpo = _num(_get(r, "measurements", "rto_s")), _num(_get(r, "measurements", "rpo_s"))
        rows.append({"date": start.strftime("%Y-%m-%d %H:%M UTC") if start else DASH,
                     "drill": r.get("id") or DASH,
                     "rto_s": round(rto, 1) if rto is not None else None,
                     "rpo_s": round(rpo, 1) if rpo is not None else None,
                     "passed": _verdict(r) == "PASS",
                     "failed_over_at_end": bool(r.get("failed_over_at_end"))})
    return rows


# --- the whole folder ----------------------------------------------------------------------------------------------
def write_report(record: dict, folder: Path, *, history: list[dict] | None = None) -> dict[str, Path]:
    """Write evidence.json, timeline.png, trend.png (with history), report.html and report.pdf into ``folder``.

    ``history`` is the past drills (oldest first); the trend shows them plus this drill. A ``RUNBOOK.md`` already in
    the folder is linked from the HTML and named in the PDF. Returns ``{"evidence", "timeline", "trend"?,
    "runbook"?, "html", "pdf"}`` → path. Sign the folder afterwards."""
    record = _as_dict(record)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    paths["evidence"] = folder / FILES["evidence"]
    atomic_write(paths["evidence"], json.dumps(record, sort_keys=True, indent=2, default=str) + "\n")
    paths["timeline"] = timeline_chart(record, folder / FILES["timeline"])
    trend = folder / FILES["trend"]
    if history:
        past = [_as_dict(h) for h in history]
        if record.get("id") not in {h.get("id") for h in past}:
            past.append(record)
        paths["trend"] = trend_chart(past, trend)
    else:
        trend.unlink(missing_ok=True)  # a stale chart would otherwise be signed with this report
    images = {p.name: p for k, p in paths.items() if k in ("timeline", "trend")}
    runbook = None
    if (folder / RUNBOOK_FILE).is_file():
        runbook = RUNBOOK_FILE
        paths["runbook"] = folder / RUNBOOK_FILE
    paths["html"] = folder / FILES["html"]
    atomic_write(paths["html"], render_html(record, images, runbook=runbook))
    pdf_tmp = folder / f".{FILES['pdf']}.tmp"
    try:
        render_pdf(record, pdf_tmp, images, runbook=runbook)
        pdf_tmp.replace(folder / FILES["pdf"])
    finally:
        pdf_tmp.unlink(missing_ok=True)
    paths["pdf"] = folder / FILES["pdf"]
    log.info("drill report %s written to %s (%s)", record.get("id"), folder, _verdict(record))
    return paths
