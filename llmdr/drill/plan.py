"""Capacity planning: does a cold restore of a bundle from the DR region meet the RTO, and if not, what would?

Pure arithmetic, shown line by line so an operator can check it (``llmdr plan`` prints it). The model:

- **transfer** = size × 8 ÷ (bandwidth × efficiency). ``efficiency`` is the share of the nominal link rate a
  restore really gets: 0.8 by default for a *given* link (TCP/TLS framing, S3 request overhead, other traffic).
  A *measured* throughput already includes all of that, so the caller passes ``efficiency=1.0`` with it.
  The motivating fact: 200 GB over 1 Gbit/s is 1600 s (26.7 min) at line rate and 2000 s (33.3 min) at 0.8.
- **start** = the time from "bundle on disk" to "replica serving" (load weights, warm up). Default 60 s.
- **cold total** = transfer + start; it meets the RTO when cold total ≤ RTO.

The options a plan always evaluates:

1. **warm standby**: a replica already running in the DR region from its own copy of the bundle; recovery is
   detection + dispatch + switch, nothing is transferred. ``warm_rto_s`` defaults to a conservative 60 s (llmdr's
   bench measured 2.4 s locally; pass a measured figure when you have one). Costs a replica running all the time.
2. **more bandwidth**: the nominal bandwidth at which the cold restore just fits,
   size × 8 ÷ ((RTO − start) × efficiency). Not possible at any bandwidth when start ≥ RTO.
3. **pre-staged copy**: the bundle kept on local disk in the DR region (e.g. a synced volume), so a cold start
   only reads local disk: size ÷ disk read rate + start, with an assumed 500 MB/s disk.

It also reports the largest bundle that fits the RTO at the given bandwidth. Comparisons with the RTO tolerate
a microsecond of floating-point rounding, so feeding ``needed_bandwidth_bps`` back in meets the RTO exactly.
"""

from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any

from llmdr.config import parse_duration
from llmdr.errors import UsageError

DEFAULT_START_S = 60.0
DEFAULT_EFFICIENCY = 0.8
DEFAULT_WARM_RTO_S = 60.0  # conservative; llmdr's bench measured 2.4 s locally
DEFAULT_DISK_READ_BPS = 4e9  # 500 MB/s

MEETS = "meets"
DOES_NOT_MEET = "does not meet"

_TOLERANCE_S = 1e-6  # float rounding when a computed figure is fed back in
_WIDTH = 100

_NUMBER = r"([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
_SIZE = re.compile(rf"^{_NUMBER}\s*([A-Za-z]*)$")
_RATE = re.compile(rf"^{_NUMBER}\s*(\S*)$")
_SIZE_UNITS = {
    "": 1, "b": 1, "byte": 1, "bytes": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "pib": 2**50,
}
_PREFIXES = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12,
             "ki": 2.0**10, "mi": 2.0**20, "gi": 2.0**30, "ti": 2.0**40}
_RATE_UNIT = re.compile(r"^(?P<prefix>[kKmMgGtT]i?)?(?P<base>bps|bits?/s|b/s|bytes?/s|b/sec|bits?/sec|bytes?/sec)$",
                        re.IGNORECASE)
_SIZE_EXAMPLE = "write e.g. '140GB', '1.5TB', '500MB', '512MiB' or '2GiB'"
_RATE_EXAMPLE = "write e.g. '1Gbps', '1 Gbit/s', '100Mbps' (bits) or '250MB/s', '100MiB/s' (bytes)"


# --- parsing ---------------------------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """A bundle size in bytes: '140GB', '1.5TB', '512MiB', '123' (bytes). KB..PB are decimal, KiB..PiB binary."""
    s = str(text).strip()
    m = _SIZE.match(s)
    if not m:
        raise UsageError(f"size {text!r} is not a size; {_SIZE_EXAMPLE}")
    number, unit = m.groups()
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        if unit.lower() in ("k", "m", "g", "t", "p"):
            raise UsageError(f"size {text!r} is ambiguous: write {number}{unit.upper()}B (decimal) or "
                             f"{number}{unit.upper()}iB (binary)")
        raise UsageError(f"size {text!r}: unknown unit {unit!r}; {_SIZE_EXAMPLE}")
    value = float(number)
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"size {text!r} must be positive; {_SIZE_EXAMPLE}")
    size = round(value * factor)
    if size <= 0:
        raise UsageError(f"size {text!r} is less than one byte; {_SIZE_EXAMPLE}")
    return size


def parse_bandwidth(text: str) -> float:
    """A bandwidth in bits per second: '1Gbps', '1 Gbit/s', '500Kbps', or a byte rate '250MB/s', '100MiB/s' (× 8).

    A bare number is refused (bits or bytes?), and so is an all-lowercase 'mb/s' ('Mb/s' is bits, 'MB/s' bytes).
    """
    s = str(text).strip()
    m = _RATE.match(s)
    if not m:
        raise UsageError(f"bandwidth {text!r} is not a rate; {_RATE_EXAMPLE}")
    number, unit = m.groups()
    if not unit:
        raise UsageError(f"bandwidth {text!r} needs a unit (bits or bytes per second?); {_RATE_EXAMPLE}")
    u = _RATE_UNIT.match(unit)
    if not u:
        raise UsageError(f"bandwidth {text!r}: unknown unit {unit!r}; {_RATE_EXAMPLE}")
    prefix, base = u.group("prefix") or "", u.group("base")
    lower = base.lower()
    if lower.startswith("byte"):
        per_unit = 8
    elif lower.startswith("bit"):
        per_unit = 1
    elif lower == "bps":
        per_unit = 8 if base[0] == "B" else 1  # Gbps bits, GBps bytes
    elif base[0] == "B":  # B/s
        per_unit = 8
    elif prefix[:1].isupper():  # Mb/s: a deliberate lowercase b means bits
        per_unit = 1
    else:
        raise UsageError(f"bandwidth {text!r} is ambiguous: write {number}{prefix.upper()}B/s for bytes or "
                         f"{number}{prefix.upper()}bit/s for bits")
    value = float(number)
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"bandwidth {text!r} must be positive; {_RATE_EXAMPLE}")
    return value * _PREFIXES[prefix.lower()] * per_unit


def parse_seconds(text: str, *, what: str = "duration") -> float:
    """A duration such as '15m', '2m', '1h30m' or '90' (seconds) in seconds; ``what`` names the option in errors."""
    if isinstance(text, str) and re.fullmatch(r"\s*\d+(?:\.\d+)?\s*", text):
        return float(text)  # bare seconds, which parse_duration takes only as a number
    try:
        return parse_duration(text).total_seconds()
    except ValueError as exc:
        raise UsageError(f"{what}: {exc}") from None


# --- formatting ------------------------------------------------------------------------------------------------


def _scaled(value: float, units: list[str], step: float, decimals: int | None, mode: str = "nearest") -> str:
    """value in the largest unit that keeps it ≥ 1; decimals None = three significant digits."""
    i = 0
    while i < len(units) - 1 and abs(value) >= step ** (i + 1):
        i += 1
    while True:
        v = value / step**i
        d = decimals if decimals is not None else (2 if abs(v) < 10 else 1 if abs(v) < 100 else 0)
        q = 10**d
        if mode == "up":
            v = math.ceil(v * q - 1e-9) / q
        elif mode == "down":
            v = math.floor(v * q + 1e-9) / q
        if abs(round(v, d)) >= step and i < len(units) - 1:  # 999.97 rounds to 1000: use the next unit
            i += 1
            continue
        return f"{v:.{d}f} {units[i]}"


def human_bytes(n: float, *, mode: str = "nearest") -> str:
    """Decimal units: '140.0 GB', '1.65 TB' (two decimals below 10, so the arithmetic stays checkable); whole
    bytes below 1 kB ('123 B')."""
    if abs(n) < 1000:
        return f"{n:.0f} B"
    units = ["B", "kB", "MB", "GB", "TB", "PB"]
    first = _scaled(n, units, 1000, 1, mode)
    return _scaled(n, units, 1000, 2, mode) if float(first.split()[0]) < 10 else first


def human_rate(bps: float, *, mode: str = "nearest") -> str:
    """Bits and bytes per second: '1.00 Gbit/s (125 MB/s)'. ``mode='up'`` rounds up (for 'needs ≥ ...')."""
    return f"{_bit_rate(bps, mode)} ({_byte_rate(bps / 8, mode)})"


def _bit_rate(bps: float, mode: str = "nearest") -> str:
    return _scaled(bps, ["bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"], 1000, None, mode)


def _byte_rate(byte_ps: float, mode: str = "nearest") -> str:
    return _scaled(byte_ps, ["B/s", "kB/s", "MB/s", "GB/s", "TB/s"], 1000, None, mode)


def human_seconds(s: float) -> str:
    """'2.4 s', '45 s', '18 min 40 s', '15 min', '1 h 5 min', '2 d 3 h'."""
    if math.isnan(s):
        return "?"
    if math.isinf(s):
        return "∞" if s > 0 else "-∞"
    if s < 0:
        return "-" + human_seconds(-s)
    if s < 1:
        return f"{s:.2f} s"
    if s < 9.95:
        return f"{s:.1f} s"
    r = round(s)
    if r < 60:
        return f"{r} s"
    if r < 3600:
        mins, secs = divmod(r, 60)
        return f"{mins} min {secs} s" if secs else f"{mins} min"
    if r < 86400:
        hours, mins = divmod(round(r / 60), 60)
        return f"{hours} h {mins} min" if mins else f"{hours} h"
    days, hours = divmod(round(r / 3600), 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _secs(s: float) -> str:
    """Seconds as they enter the arithmetic: '1400 s', '2.4 s'."""
    return f"{s:.1f} s" if s < 9.95 else f"{s:.0f} s"


def _secs_h(s: float) -> str:
    """'1400 s (23 min 20 s)'; just '45 s' below a minute, where the two would say the same."""
    return _secs(s) if s < 59.5 else f"{_secs(s)} ({human_seconds(s)})"


def _bits(bits: float, bps: float) -> str:
    """A number of bits in the same prefix as the bandwidth it is divided by, so the division can be checked."""
    prefix, factor = "", 1.0
    for p, f in (("k", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12)):
        if bps >= f:
            prefix, factor = p, f
    v = bits / factor
    return f"{v:,.0f} {prefix}bit" if v >= 1e4 else f"{v:.1f} {prefix}bit"


# --- the plan --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One way to recover. ``verdict`` is ``"meets"`` or ``"does not meet"``; ``est_seconds`` is the recovery time
    it gives, None when no figure applies (more bandwidth cannot help when the start alone reaches the RTO).
    For "more bandwidth" verdict and estimate are at the *current* bandwidth; the detail names the one needed."""

    name: str
    verdict: str
    est_seconds: float | None
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "verdict": self.verdict, "est_seconds": _round_s(self.est_seconds),
                "detail": self.detail}


@dataclass(frozen=True)
class Plan:
    """A cold restore weighed against an RTO; every figure in seconds, bytes or bits per second."""

    size_bytes: int
    bandwidth_bps: float
    rto_s: float
    start_s: float
    efficiency: float
    source: str
    cold_restore_s: float  # transfer only
    cold_total_s: float  # transfer + start
    meets: bool
    margin_s: float  # rto − cold total: positive is spare, negative is short
    needed_bandwidth_bps: float | None  # None when the start alone reaches the RTO
    max_size_bytes: int  # 0 when the start alone reaches the RTO
    options: list[Option] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        needed = self.needed_bandwidth_bps
        return {
            "size_bytes": self.size_bytes,
            "size": human_bytes(self.size_bytes),
            "bandwidth_bps": round(self.bandwidth_bps),
            "bandwidth": human_rate(self.bandwidth_bps),
            "source": self.source,
            "efficiency": round(self.efficiency, 3),
            "rto_s": _round_s(self.rto_s),
            "start_s": _round_s(self.start_s),
            "cold_restore_s": _round_s(self.cold_restore_s),
            "cold_total_s": _round_s(self.cold_total_s),
            "meets": self.meets,
            "margin_s": _round_s(self.margin_s),
            "needed_bandwidth_bps": None if needed is None else math.ceil(needed - 1e-6),
            "max_size_bytes": self.max_size_bytes,
            "options": [o.to_json() for o in self.options],
            "steps": list(self.steps),
        }


def _round_s(s: float | None) -> float | None:
    return None if s is None else round(s, 1)


def _check(name: str, value: float, *, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a number, not {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise UsageError(f"{name} must be {'zero or more' if allow_zero else 'positive'} and finite, not {value!r}")
    return v


def make_plan(size_bytes: int, bandwidth_bps: float, rto_s: float, *, start_s: float = DEFAULT_START_S,
              efficiency: float = DEFAULT_EFFICIENCY, warm_rto_s: float = DEFAULT_WARM_RTO_S,
              disk_read_bps: float = DEFAULT_DISK_READ_BPS, source: str = "given") -> Plan:
    """Weigh a cold restore of ``size_bytes`` over ``bandwidth_bps`` against ``rto_s`` and evaluate the options.

    ``efficiency`` (0 < e ≤ 1) is the share of the nominal bandwidth a restore gets: 0.8 suits a *given* link
    rate. When ``source`` is "measured ..." (a throughput measured by a real transfer, which already includes
    protocol and request overhead) pass ``efficiency=1.0``. ``warm_rto_s`` is the failover time of a warm standby
    (60 s is conservative); ``disk_read_bps`` the local disk read rate assumed for a pre-staged copy (bits/s).
    """
    size = _check("the bundle size", size_bytes)
    bw = _check("the bandwidth", bandwidth_bps)
    rto = _check("the RTO", rto_s)
    start = _check("the start time", start_s, allow_zero=True)
    warm = _check("the warm standby failover time", warm_rto_s, allow_zero=True)
    disk = _check("the disk read rate", disk_read_bps)
    eff = _check("the efficiency", efficiency)
    if eff > 1:
        raise UsageError(f"the efficiency is the share of the bandwidth a restore gets: between 0 and 1, not {eff}")
    size_b = int(size)

    bits = size_b * 8
    cold = bits / (bw * eff)
    total = cold + start
    margin = rto - total
    meets = margin >= -_TOLERANCE_S
    window = rto - start  # the time the transfer may take
    possible = window > 0
    needed = bits / (window * eff) if possible else None
    max_size = math.floor(window * bw * eff / 8 + 1e-6) if possible else 0

    bits_s, rate_s = _bits(bits, bw), _bit_rate(bw)
    steps = [
        f"transfer: {human_bytes(size_b)} × 8 = {bits_s} ÷ ({rate_s} × {eff:.2f} efficiency) = {_secs_h(cold)}",
        f"start: + {_secs_h(start)} for the replica to start once the bundle is on disk",
        f"total: {_secs(cold)} + {_secs(start)} = {_secs_h(total)} {'≤' if meets else '>'} RTO {_secs_h(rto)}",
        "verdict: " + (f"MEETS the RTO with {_secs_h(max(margin, 0.0))} to spare" if meets
                       else f"DOES NOT MEET the RTO: short by {_secs_h(-margin)}"),
    ]
    window_s = f"({_secs(rto)} − {_secs(start)})"
    if needed is not None:
        steps.append(f"needed bandwidth: {bits_s} ÷ ({window_s} × {eff:.2f}) = {human_rate(needed, mode='up')}")
        steps.append(f"largest bundle: {window_s} × {rate_s} × {eff:.2f} ÷ 8 "
                     f"= {human_bytes(max_size, mode='down')}")
    else:
        steps.append(f"needed bandwidth: none suffices, the start ({_secs(start)}) alone reaches the RTO "
                     f"({_secs(rto)})")
        steps.append("largest bundle: none fits, the start alone reaches the RTO")

    options = [
        _warm_standby(warm, rto),
        _more_bandwidth(bw, eff, rto, start, bits_s, total, needed, meets),
        _pre_staged(size_b, disk, start, rto),
    ]
    return Plan(size_bytes=size_b, bandwidth_bps=bw, rto_s=rto, start_s=start, efficiency=eff, source=source,
                cold_restore_s=cold, cold_total_s=total, meets=meets, margin_s=margin,
                needed_bandwidth_bps=needed, max_size_bytes=max_size, options=options, steps=steps)


def _verdict(est_s: float, rto_s: float) -> str:
    return MEETS if est_s <= rto_s + _TOLERANCE_S else DOES_NOT_MEET


def _warm_standby(warm_s: float, rto_s: float) -> Option:
    return Option("warm standby", _verdict(warm_s, rto_s), warm_s,
                  f"a replica already running in the DR region from its own copy; failover = detection + "
                  f"dispatch + switch ≈ {_secs(warm_s)} ({'≤' if warm_s <= rto_s + _TOLERANCE_S else '>'} RTO "
                  f"{_secs(rto_s)}), no transfer on the critical path; costs a replica running all the time")


def _more_bandwidth(bw: float, eff: float, rto_s: float, start_s: float, bits_s: str, total_s: float,
                    needed: float | None, meets: bool) -> Option:
    if needed is None:
        return Option("more bandwidth", DOES_NOT_MEET, None,
                      f"not possible at any bandwidth: the start ({_secs(start_s)}) alone reaches the RTO "
                      f"({_secs(rto_s)})")
    arithmetic = f"{bits_s} ÷ (({_secs(rto_s)} − {_secs(start_s)}) × {eff:.2f})"
    if meets:
        return Option("more bandwidth", MEETS, total_s,
                      f"not needed: the current {human_rate(bw)} already suffices; the minimum is "
                      f"{human_rate(needed, mode='up')} = {arithmetic}")
    ratio = math.ceil(needed / bw * 100 - 1e-9) / 100
    return Option("more bandwidth", DOES_NOT_MEET, total_s,
                  f"needs ≥ {human_rate(needed, mode='up')} = {arithmetic}, {ratio:.2f}× the current "
                  f"{_bit_rate(bw)}, at which the cold restore takes {_secs(total_s)} > RTO")


def _pre_staged(size_b: int, disk_bps: float, start_s: float, rto_s: float) -> Option:
    read = size_b * 8 / disk_bps
    est = read + start_s
    return Option("pre-staged copy", _verdict(est, rto_s), est,
                  f"the bundle kept on local disk in the DR region (e.g. a synced volume): "
                  f"{human_bytes(size_b)} ÷ {_byte_rate(disk_bps / 8)} disk read (assumed) = {_secs(read)} "
                  f"+ {_secs(start_s)} start = {_secs(est)}")


# --- rendering -------------------------------------------------------------------------------------------------

# "1400 s", "1.00 Gbit/s", "23 min 20 s": a number and its unit, and the parts of one duration, stay together.
_UNIT_SPACE = re.compile(r"(?<=\d) (?=[A-Za-z])|(?<=\bmin) (?=\d)|(?<=\bh) (?=\d)|(?<=\bd) (?=\d)")


def _wrap(text: str, first: str, rest: str) -> list[str]:
    """Wrap at _WIDTH columns without separating a number from its unit."""
    glued = _UNIT_SPACE.sub("\u00a0", text)
    lines = textwrap.wrap(glued, width=_WIDTH, initial_indent=first, subsequent_indent=rest,
                          break_long_words=False, break_on_hyphens=False)
    return [line.replace("\u00a0", " ") for line in lines]


def render_plan(plan: Plan) -> str:
    """The plan as plain text for a terminal, at most 100 columns, every number that goes into the verdict shown."""
    out = [f"Cold restore of {human_bytes(plan.size_bytes)} over {human_rate(plan.bandwidth_bps)}, {plan.source}; "
           f"RTO {human_seconds(plan.rto_s)}"]
    label_w = max(len(s.split(": ", 1)[0]) for s in plan.steps)
    for step in plan.steps:
        label, text = step.split(": ", 1)
        out += _wrap(text, f"  {label:<{label_w}}  ", " " * (label_w + 4))
    out.append("Other options:" if plan.meets else "What would meet the RTO:")
    name_w = max(len(o.name) for o in plan.options)
    verdict_w = max(len(o.verdict) for o in plan.options)
    for o in plan.options:
        est = "—" if o.est_seconds is None else f"~{human_seconds(o.est_seconds)}"
        out.append(f"  {o.name:<{name_w}}  {o.verdict:<{verdict_w}}  {est}")
        out += _wrap(o.detail, "      ", "      ")
    return "\n".join(out)
