"""The report's charts (matplotlib, imported lazily; Agg, no pyplot state): the drill's timeline and the RTO/RPO
trend across drills. The PNGs are byte-stable (no timestamp in their metadata)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmdr.common.files import atomic_write
from llmdr.drill.report.model import (
    DASH,
    KIND_COLORS,
    as_dict,
    as_number,
    as_text,
    dig,
    human_duration,
    seconds_since_start,
    verdict_of,
)


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
    atomic_write(Path(path), buf.getvalue(), mode=0o644)
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
        t, kind = as_number(e.get("t_s")), str(e.get("kind"))
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
    record = as_dict(record)
    tl = [e for e in record.get("timeline") or [] if isinstance(e, dict)]
    numbered = list(enumerate(tl, 1))
    times = [t for t in (as_number(e.get("t_s")) for e in tl) if t is not None]
    out_start = seconds_since_start(record, dig(record, "outage", "started_utc"))
    if out_start is None:
        out_start = next((as_number(e.get("t_s")) for e in tl if e.get("kind") == "outage"), None)
    out_end = seconds_since_start(record, dig(record, "outage", "restored_utc"))
    rto = as_number(dig(record, "measurements", "rto_s"))
    rto_obj = as_number(dig(record, "scope", "objectives", "rto_s"))
    end = as_number(record.get("duration_s"))
    x_max = max(times + [end or 0, (out_start or 0) + (rto or 0), out_end or 0, 1.0])
    lanes_list = _kinds_in(tl) or ["info"]
    lanes = {k: len(lanes_list) - 1 - i for i, k in enumerate(lanes_list)}

    zoom = None
    if out_start is not None:
        z_end = out_start + rto if rto is not None else None
        if z_end is None:
            after = [t for t, e in zip(times, tl, strict=True)
                     if t >= out_start and e.get("kind") in ("detection", "switch", "recovery")]
            z_end = max(after) if after else None
        if z_end is not None and (z_end - out_start) < 0.25 * x_max:
            pad = max(0.15 * (z_end - out_start), 0.5)
            zoom = (max(out_start - pad, 0.0), z_end + pad)

    h_lane = 0.34
    panel = 0.75 + h_lane * len(lanes_list)  # axes height in inches: lanes plus the RTO arrow row
    fig = _figure(9.5, 0.95 + panel + (0.75 + panel if zoom else 0))
    axes = (fig.subplots(2, 1, gridspec_kw={"hspace": 0.75 / panel}) if zoom else [fig.subplots()])
    title = f"Drill {record.get('id') or DASH}: {record.get('bundle') or DASH}: {verdict_of(record)}"
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
            label = f"RTO {rto:.1f} s" + (f" (objective {human_duration(rto_obj)})" if rto_obj else "")
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
    recs = [as_dict(r) for r in history or []]
    fig = _figure(9.5, 4.6)
    ax_rto, ax_rpo = fig.subplots(2, 1, sharex=True, gridspec_kw={"hspace": 0.25})
    if not recs:
        ax_rto.text(0.5, 0.5, "no drills on record yet", ha="center", va="center", transform=ax_rto.transAxes)
    xs = list(range(len(recs)))
    for ax, key, obj_key, name in ((ax_rto, "rto_s", "rto_s", "RTO"), (ax_rpo, "rpo_s", "rpo_s", "RPO")):
        vals = [as_number(dig(r, "measurements", key)) for r in recs]
        objs = [as_number(dig(r, "scope", "objectives", obj_key)) for r in recs]
        known = [v for v in vals + objs if v is not None]
        ymax = max(known) * 1.15 if known else 1.0
        pts = [(x, v) for x, v in zip(xs, vals, strict=True) if v is not None]
        if len(pts) > 1:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color="#999999", lw=1, zorder=2)
        if any(o is not None for o in objs):
            ax.step(xs, [o if o is not None else float("nan") for o in objs], where="mid", color="#d62728", lw=1.6,
                    ls="--", label=f"{name} objective", zorder=1)
        for x, v, r in zip(xs, vals, recs, strict=True):
            ok = verdict_of(r) == "PASS"
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
        labels = [(as_text(recs[i].get("started_utc"))[:16].replace("T", "\n")) for i in ticks]
        ax_rpo.set_xticks(ticks, labels, fontsize=7)
        ax_rpo.set_xlim(-0.5, len(recs) - 0.5)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.9, bottom=0.14)
    return _save(fig, path)
