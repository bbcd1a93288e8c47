"""The verdict on each GPU, from its readings (oldest first) and the region's Xid events; thresholds from
``regions[].hardware`` (``Hardware``). ``R`` = ``recent_window`` readings, ``B`` = ``baseline_window``; the trend
window is ``trend_window`` of time.

- **critical** (act now: drain the GPU): uncorrected ECC errors since the driver loaded (any, and how many more in
  the trend window); more pages retired for double-bit errors; a row-remapping failure; a critical Xid (48, 64, 74,
  79, 95, 119, 120, 140 in NVIDIA's catalogue) logged for the GPU's PCI address or reported by DCGM; a field the
  driver reports as ``[GPU is lost]`` / ``[GPU requires reset]``; a GPU that the last successful poll no longer
  lists although it was there within the last day (fallen off the bus). Xid events count for ``trend_window``.
- **degraded** (act early: pre-warm the standby, plan a drain), any of:

  - temperature at or above ``temperature_limit``; or a creep **at the same load**. Temperatures are compared
    load-adjusted (minus °C-per-utilisation-point x utilisation, learnt from the baseline when its load varied,
    else 0.3), on the *settled* readings only (the load steady within 10 points for 10 minutes: a GPU warms up
    for minutes after it gets busier). A creep: the least-squares slope over the trend window (or over its second
    half when that is steeper: a creep that has just started) is at least ``temperature_rise_per_hour`` and the
    recent median's robust z against the baseline (the ``B`` readings before the recent ``R``; MAD floored at
    0.5 °C and 1 % of the median, so a flat baseline does not make every jitter infinite) is at least
    ``z_threshold`` (without enough settled baseline, the slope alone, over at least an hour and a 3 °C rise); or
    the trend line reaches the limit within ``forecast_horizon`` while the slope (at least 6 readings over 30
    minutes, and a z of at least half the threshold) or the z is significant. A load that stayed within 10 points
    all along is not adjusted;
  - power: the recent median power's robust z against the baseline is at least ``z_threshold`` either way, while
    utilisation is within 5 points of the baseline's (more or less power for the same work; a load change is
    not a fault); MAD floored at 1 W and 5 %;
  - corrected (single-bit) ECC errors: the rate over the last hour (at least 3 errors over at least 15 minutes) is
    at least ``corrected_ecc_per_hour`` and 4 times the rate before it (a counter that went down means the driver
    reloaded: counted from there);
  - more pages retired for single-bit errors, pages pending retirement, a row remap pending (a reset applies it),
    more rows remapped for uncorrectable errors; a warning Xid (63, 92, 94);
  - clocks slowed by the hardware: HW slowdown, SW or HW thermal slowdown, or the HW power brake active in the
    newest reading (idle, application clocks, sync boost and the software power cap are normal).
- **unknown**: no readings; the newest reading older than ``max(120 s, 3 x interval + timeout)`` (the monitor or
  the source stopped); or the source's last poll failed (and nothing worse is known).
- **healthy** otherwise.

The **forecast** is where the temperature trend line, at the busiest load of the trend window, meets
``temperature_limit``: hours from now and the time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from llmdr.config.hardware import Hardware
from llmdr.hardware.readings import CRITICAL_XIDS, WARNING_XIDS, GpuReading, XidEvent, throttle_names

MAD_SCALE = 1.4826
MIN_BASELINE = 20
SAME_LOAD_PCT = 5.0  # power is compared with the baseline only at the same utilisation (± this many points)
THERMAL_TAU_S = 180.0  # how fast a GPU's temperature follows its load (time constant)
STEADY_PCT = 5.0  # a (smoothed) load within this many points all along needs no adjusting
SETTLE_S = 600.0  # a GPU's temperature follows a change of load within minutes
LOAD_C_PER_PCT = 0.3  # °C per utilisation point when the baseline cannot tell (idle ~35 °C, busy ~65 °C)
MISSING_FOR_S = 86400.0  # a GPU gone from the polls is reported (critical) this long, then forgotten
ORDER = {"healthy": 0, "unknown": 1, "degraded": 2, "critical": 3}


@dataclass
class GpuAssessment:
    region: str
    uuid: str
    status: str  # healthy | degraded | critical | unknown
    reasons: list[str] = field(default_factory=list)
    name: str | None = None
    index: int | None = None
    trend: dict[str, Any] = field(default_factory=dict)  # temperature / power / corrected_ecc: the numbers
    forecast: dict[str, Any] | None = None  # {metric, limit, hours, at}
    summary: str = ""  # one line: the trend in words
    last: dict[str, Any] | None = None  # the newest reading

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RegionAssessment:
    region: str
    source: str
    status: str
    reasons: list[str] = field(default_factory=list)  # about the source itself (it failed, no GPU...)
    gpus: list[GpuAssessment] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"region": self.region, "source": self.source, "status": self.status, "reasons": list(self.reasons),
                "gpus": [g.to_json() for g in self.gpus]}


def worst(statuses: list[str]) -> str:
    return max(statuses, key=ORDER.__getitem__) if statuses else "unknown"


def _num(x: float | None, digits: int = 3) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def _robust(baseline: np.ndarray, recent: np.ndarray, *, floor: float, rel: float) -> dict[str, Any]:
    if len(baseline) < MIN_BASELINE or len(recent) < 3:
        return {"skipped": f"need {MIN_BASELINE} baseline and 3 recent readings", "baseline_n": len(baseline)}
    med = float(np.median(baseline))
    mad = max(float(np.median(np.abs(baseline - med))), floor, rel * abs(med))
    rmed = float(np.median(recent))
    return {"baseline_median": _num(med), "mad_used": _num(mad), "recent_median": _num(rmed),
            "baseline_n": len(baseline), "z": _num((rmed - med) / (MAD_SCALE * mad), 2)}


def _slope_per_hour(ts: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    """(slope per hour, fitted value at the last time) of the least-squares line, or None with too few points."""
    if len(ts) < 3 or ts[-1] - ts[0] <= 0:
        return None
    hours = (ts - ts[-1]) / 3600.0
    slope, intercept = np.polyfit(hours, y, 1)
    return float(slope), float(intercept)


def _series(readings: list[GpuReading], attr: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r.ts, getattr(r, attr)) for r in readings if getattr(r, attr) is not None]
    return (np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float))


def _split(readings: list[GpuReading], s: Hardware) -> tuple[list[GpuReading], list[GpuReading]]:
    R, B = s.recent_window, s.baseline_window  # noqa: N806 - the docstring's names
    recent = readings[-R:]
    base = readings[:-R][-B:] if len(readings) > R else []
    return base, recent


def _smoothed_load(readings: list[GpuReading]) -> dict[int, float | None]:
    """Utilisation smoothed with the GPU's thermal lag (an exponential average, time constant ``THERMAL_TAU_S``),
    by ``id(reading)``: what the temperature follows, rather than each sample's jitter."""
    out: dict[int, float | None] = {}
    level, last_ts = None, None
    for r in readings:
        if r.utilization_pct is None:
            out[id(r)] = None
            continue
        if level is None or last_ts is None:
            level = r.utilization_pct
        else:
            level += (r.utilization_pct - level) * (1 - math.exp(-max(0.0, r.ts - last_ts) / THERMAL_TAU_S))
        last_ts = r.ts
        out[id(r)] = level
    return out


def _load_effect(base: list[GpuReading], load: dict[int, float | None]) -> float:
    """°C per utilisation point: learnt from the settled baseline when its load varied (least squares, 0..1), else
    ``LOAD_C_PER_PCT``."""
    pts = [(load[id(r)], r.temperature_c) for r in _settled(base, load)
           if load.get(id(r)) is not None and r.temperature_c is not None]
    if len(pts) >= MIN_BASELINE:
        u = np.array([p[0] for p in pts], dtype=float)
        if np.subtract(*np.percentile(u, [75, 25])) >= 20:
            return float(np.clip(np.polyfit(u, np.array([p[1] for p in pts], dtype=float), 1)[0], 0.0, 1.0))
    return LOAD_C_PER_PCT


def _settled(readings: list[GpuReading], load: dict[int, float | None]) -> list[GpuReading]:
    """The readings taken after the (smoothed) load had been steady within 10 points for ``SETTLE_S``: a GPU warms
    up for minutes after it gets busier, and that lag must not look like a creep. Readings without a utilisation
    count as settled (nothing to tell)."""
    out, start = [], 0
    for i, r in enumerate(readings):
        while readings[start].ts < r.ts - SETTLE_S:
            start += 1
        u = load.get(id(r))
        if u is None or ((start > 0 or readings[0].ts <= r.ts - SETTLE_S)
                         and all(load.get(id(x)) is not None and abs(load[id(x)] - u) <= 10
                                 for x in readings[max(0, start - 1):i + 1])):
            out.append(r)
    return out


def _adjusted(readings: list[GpuReading], per_pct: float,
              load: dict[int, float | None]) -> tuple[np.ndarray, np.ndarray]:
    """(times, temperature minus the load's share) of the settled readings: a GPU that is warmer because it is
    busier is not creeping."""
    pts = [(r.ts, r.temperature_c - per_pct * (load.get(id(r)) or 0.0)) for r in _settled(readings, load)
           if r.temperature_c is not None]
    return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)


def _temperature(readings, window, s: Hardware, now: float, reasons: list[str]) -> tuple[dict, dict | None]:
    base, recent = _split(readings, s)
    out: dict[str, Any] = {"limit_c": s.temperature_limit}
    temps = [r.temperature_c for r in recent if r.temperature_c is not None]
    if not temps:
        out["skipped"] = "no temperature reported"
        return out, None
    current = float(temps[-1])
    load = _smoothed_load(readings)
    loads = [u for r in window if (u := load.get(id(r))) is not None]
    steady = not loads or max(loads) - min(loads) <= STEADY_PCT
    every = [u for r in base + window if (u := load.get(id(r))) is not None]
    # a load that never changed needs no adjusting (and its jitter would only add noise)
    per_pct = 0.0 if not every or max(every) - min(every) <= STEADY_PCT else _load_effect(base, load)
    busiest = max(loads) if loads else 0.0  # the forecast is for the busiest load of the trend window
    _, vb = _adjusted(base, per_pct, load)
    _, vr = _adjusted(recent, per_pct, load)
    tw, vw = _adjusted(window, per_pct, load)
    out |= {"current_c": current, "load_c_per_pct": _num(per_pct, 3), "robust": _robust(vb, vr, floor=0.5,
                                                                                          rel=0.01)}
    fit = _slope_per_hour(tw, vw)
    half = tw >= tw[-1] - s.trend_window.total_seconds() / 2 if len(tw) else tw
    late = _slope_per_hour(tw[half], vw[half]) if len(tw) and half.sum() >= 6 else None
    if fit is not None and late is not None and late[0] > fit[0]:  # a creep that just started: the recent half
        fit, tw, vw = late, tw[half], vw[half]
    forecast = None
    if fit is not None:
        slope, fitted = fit
        fitted += per_pct * busiest  # back to degrees, at the busiest load
        span_h = (tw[-1] - tw[0]) / 3600
        first_c = next(r.temperature_c for r in window if r.temperature_c is not None and r.ts >= tw[0])
        out |= {"slope_c_per_h": _num(slope, 2), "span_h": _num(span_h, 2), "first_c": float(first_c),
                "n": len(vw)}
        if slope > 0 and fitted < s.temperature_limit:
            hours = (s.temperature_limit - fitted) / slope
            forecast = {"metric": "temperature", "limit": s.temperature_limit, "hours": _num(hours, 2),
                        "at": _num(now + hours * 3600, 0), "at_load_pct": round(busiest) if loads else None}
    z = out["robust"].get("z")
    slope = out.get("slope_c_per_h")
    enough_for_slope = fit is not None and len(vw) >= 6 and out["span_h"] >= 0.5
    steep = slope is not None and enough_for_slope and slope >= s.temperature_rise_per_hour
    z_ok = z is not None and z >= s.z_threshold
    # no baseline yet: the slope alone, over an hour and a rise of 3 °C at least (noise on integer degrees is not)
    alone = z is None and steep and out["span_h"] >= 1 and slope * out["span_h"] >= 3
    creeping = steep and (z_ok or alone)
    significant = z_ok or (steep and (alone or (z is not None and z >= s.z_threshold / 2)))
    due = forecast is not None and forecast["hours"] <= s.forecast_horizon.total_seconds() / 3600
    util_now = recent[-1].utilization_pct
    if slope is None:
        trend = f"{current:.0f} °C"
    elif steady:
        trend = f"{slope:+.1f} °C/h over {out['span_h']:.1f} h, {out['first_c']:.0f} → {current:.0f} °C"
    else:
        trend = (f"{slope:+.1f} °C/h at the same load over {out['span_h']:.1f} h, now {current:.0f} °C at "
                 f"{util_now or 0:.0f} % load")
    ahead = (f"; {s.temperature_limit:g} °C in about {forecast['hours']:.1f} h"
             + ("" if steady else f" at {busiest:.0f} % load")) if forecast else ""
    if current >= s.temperature_limit:
        reasons.append(f"temperature {current:.0f} °C is at or above the limit {s.temperature_limit:g} °C ({trend})")
    elif creeping or (due and significant):
        zt = f", {z:+.1f} robust z above its baseline" if z is not None else ""
        reasons.append(f"temperature creeping: {trend}{zt}{ahead}")
    out["text"] = f"temperature {trend}{ahead}"
    return out, forecast


def _power(readings, s: Hardware, reasons: list[str]) -> dict:
    base, recent = _split(readings, s)
    _, pb = _series(base, "power_w")
    _, pr = _series(recent, "power_w")
    out = _robust(pb, pr, floor=1.0, rel=0.05)
    _, ub = _series(base, "utilization_pct")
    _, ur = _series(recent, "utilization_pct")
    if len(ub) and len(ur):
        out["utilization_baseline"], out["utilization_recent"] = float(np.median(ub)), float(np.median(ur))
        out["same_load"] = abs(out["utilization_recent"] - out["utilization_baseline"]) <= SAME_LOAD_PCT
    z = out.get("z")
    if z is not None and abs(z) >= s.z_threshold and out.get("same_load", True):
        way = "above" if z > 0 else "below"
        reasons.append(f"power draw median {out['recent_median']:.0f} W is {abs(z):.1f} robust z {way} the baseline "
                       f"{out['baseline_median']:.0f} W at the same load")
    return out


def _counter_rate(readings: list[GpuReading], attr: str) -> tuple[float, float] | None:
    """(increase, hours) of a counter over ``readings``, counted from its last reset (a decrease)."""
    ts, v = _series(readings, attr)
    if len(v) < 2:
        return None
    start = 0
    for i in range(1, len(v)):
        if v[i] < v[i - 1]:
            start = i
    hours = (ts[-1] - ts[start]) / 3600
    return (float(v[-1] - v[start]), hours) if hours > 0 else None


def _ecc(readings, s: Hardware, reasons: list[str]) -> dict:
    """Corrected ECC errors per hour over the last hour, against the rate before it. At least 3 errors over at least
    15 minutes: one error in a short window is not a rate."""
    last = readings[-1].ts
    rec = _counter_rate([r for r in readings if r.ts >= last - 3600], "ecc_corrected")
    if rec is None:
        return {"skipped": "corrected ECC errors not reported"}
    bas = _counter_rate([r for r in readings if r.ts <= last - 3600], "ecc_corrected")
    rate = rec[0] / rec[1]
    brate = bas[0] / bas[1] if bas else 0.0
    out = {"recent_per_h": _num(rate, 2), "recent_errors": rec[0], "baseline_per_h": _num(brate, 2)}
    if rec[0] >= 3 and rec[1] >= 0.25 and rate >= s.corrected_ecc_per_hour and rate >= 4 * brate:
        reasons.append(f"corrected ECC errors at {rate:.0f}/h over the last {rec[1] * 60:.0f} min (before: "
                       f"{brate:.1f}/h; threshold {s.corrected_ecc_per_hour:g}/h): memory wearing out")
    return out


def _increase(window: list[GpuReading], attr: str) -> tuple[int, int] | None:
    """(first, last) of a counter over the window when it went up."""
    vals = [getattr(r, attr) for r in window if getattr(r, attr) is not None]
    return (vals[0], vals[-1]) if len(vals) >= 2 and vals[-1] > vals[0] else None


def assess_gpu(region: str, readings: list[GpuReading], s: Hardware, *, now: float,
               xids: list[XidEvent] = ()) -> GpuAssessment:
    """One GPU's verdict from its readings (oldest first) and the Xid events of its PCI address."""
    if not readings:
        return GpuAssessment(region, "", "unknown", ["no readings yet"])
    last = readings[-1]
    g = GpuAssessment(region, last.uuid, "healthy", name=last.name, index=last.index, last=last.to_json())
    window = [r for r in readings if r.ts >= last.ts - s.trend_window.total_seconds()]
    crit: list[str] = []
    warn: list[str] = []
    crit += [f"nvidia-smi reports {p}" for p in last.problems]
    if last.ecc_uncorrected:
        more = _increase(window, "ecc_uncorrected")
        crit.append(f"{last.ecc_uncorrected} uncorrected ECC error(s) since the driver loaded"
                    + (f" (+{more[1] - more[0]} in the last {s.trend_window.total_seconds() / 3600:g} h)"
                       if more else ""))
    if (more := _increase(window, "retired_dbe")) is not None:
        crit.append(f"pages retired for double-bit errors went from {more[0]} to {more[1]}")
    if last.remap_failure:
        crit.append("row remapping failed: the memory has no spare rows left for this fault")
    if (more := _increase(window, "retired_sbe")) is not None:
        warn.append(f"pages retired for single-bit errors went from {more[0]} to {more[1]}")
    if last.retired_pending:
        warn.append("pages are pending retirement (applied at the next GPU reset or reboot)")
    if last.remap_pending:
        warn.append("a row remap is pending (applied at the next GPU reset)")
    if (more := _increase(window, "remap_uncorrectable")) is not None:
        warn.append(f"rows remapped for uncorrectable errors went from {more[0]} to {more[1]}")
    codes = [(x.code, x.detail) for x in xids]
    xid_vals = [r.xid_last for r in window if r.xid_last is not None]
    if xid_vals and xid_vals[-1] and (len(xid_vals) == 1 or xid_vals[-1] != xid_vals[0]):
        codes.append((xid_vals[-1], "DCGM_FI_DEV_XID_ERRORS"))
    for code, detail in codes:
        if code in CRITICAL_XIDS:
            crit.append(f"Xid {code} ({CRITICAL_XIDS[code]}){': ' + detail if detail else ''}")
        elif code in WARNING_XIDS:
            warn.append(f"Xid {code} ({WARNING_XIDS[code]}){': ' + detail if detail else ''}")
    g.trend["xids"] = [{"code": c, "detail": d} for c, d in codes]
    if harmful := throttle_names(last.throttle, harmful_only=True):
        warn.append(f"clocks slowed by the hardware: {', '.join(harmful)}")
    g.trend["throttle"] = throttle_names(last.throttle)
    g.trend["temperature"], g.forecast = _temperature(readings, window, s, now, warn)
    g.trend["power"] = _power(readings, s, warn)
    g.trend["corrected_ecc"] = _ecc(readings, s, warn)
    parts = [g.trend["temperature"].get("text", "")]
    if g.trend["power"].get("recent_median") is not None:
        parts.append(f"power {g.trend['power']['recent_median']:.0f} W (baseline "
                     f"{g.trend['power']['baseline_median']:.0f} W)")
    if g.trend["corrected_ecc"].get("recent_per_h"):
        parts.append(f"corrected ECC {g.trend['corrected_ecc']['recent_per_h']:g}/h")
    g.summary = "; ".join(p for p in parts if p)
    g.reasons = crit + warn
    g.status = "critical" if crit else "degraded" if warn else "healthy"
    stale_after = max(120.0, 3 * s.interval.total_seconds() + s.timeout.total_seconds())
    if now - last.ts > stale_after and g.status == "healthy":
        g.status = "unknown"
        g.reasons = [f"the newest reading is {now - last.ts:.0f} s old (more than {stale_after:.0f} s): is the "
                     "monitor running?"]
    return g


def assess_region(region: str, s: Hardware, series: dict[str, list[GpuReading]], *, now: float,
                  xids: list[XidEvent] = (), last_poll: tuple[float, str | None] | None = None) -> RegionAssessment:
    """Every GPU of a region. ``series``: uuid -> readings (oldest first); ``last_poll``: (time, error) of the
    source's newest poll."""
    out = RegionAssessment(region, s.source, "unknown")
    if last_poll is None and not series:
        out.reasons = ["not read yet"] if s.source != "none" else ["no hardware source configured"]
        return out
    poll_ts, poll_error = last_poll if last_poll is not None else (max(r[-1].ts for r in series.values() if r), None)
    if poll_error:
        out.reasons = [poll_error]
    horizon = max(s.trend_window.total_seconds(), MISSING_FOR_S)
    series = {u: rs for u, rs in series.items() if rs}
    for _, readings in sorted(series.items(), key=lambda kv: (kv[1][-1].index is None, kv[1][-1].index or 0, kv[0])):
        if readings[-1].ts < poll_ts - horizon:
            continue
        bus = readings[-1].bus_id
        g = assess_gpu(region, readings, s, now=now, xids=[x for x in xids if bus and x.bus_id == bus])
        if poll_error is None and readings[-1].ts < poll_ts - max(1.0, s.interval.total_seconds() / 2):
            g.status = "critical"
            g.reasons.insert(0, "the last poll did not list this GPU any more (fallen off the bus? Xid 79)")
        elif poll_error and readings[-1].ts < poll_ts:
            g.reasons.append(f"the source failed since: {poll_error}")
            if g.status == "healthy":
                g.status = "unknown"
        out.gpus.append(g)
    if out.gpus:
        out.status = worst([g.status for g in out.gpus])
    return out
