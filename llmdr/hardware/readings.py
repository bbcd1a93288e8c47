"""One GPU's numbers at one time, and the parsers of what NVIDIA's tools print.

Field names are NVIDIA's own (``nvidia-smi --help-query-gpu``, ``--help-query-remapped-rows``; DCGM's field ids as
dcgm-exporter names them). What the parsers accept:

- ``nvidia-smi --query-gpu=<QUERY_FIELDS> --format=csv,noheader,nounits`` (the field list is then the one asked
  for), or ``--format=csv[,nounits]`` with its header line (the header names the fields, so any order and any
  subset works, older drivers' names included). ``-l N`` loops print one block per poll; with a ``timestamp``
  field the blocks become a series. Values: numbers (units such as ``W``, ``%`` or ``MiB`` after them are
  dropped), ``Yes``/``No``, hex bitmasks (``0x0000000000000004``), and ``[N/A]``, ``[Not Supported]`` and other
  bracketed words, which are "not reported" (``[GPU is lost]`` and ``[GPU requires reset]`` are kept as
  problems: they are the news).
- ``nvidia-smi --query-remapped-rows=gpu_uuid,remapped_rows.correctable,remapped_rows.uncorrectable,
  remapped_rows.pending,remapped_rows.failure --format=csv,noheader,nounits`` (row remapping is not a
  ``--query-gpu`` field), merged by GPU uuid.
- dcgm-exporter's ``/metrics`` (Prometheus text): ``DCGM_FI_DEV_*{gpu=..., UUID=..., pci_bus_id=...} value``.
- Kernel-log Xid lines (``dmesg``, ``dmesg -T``, ``journalctl -k -o short-iso``): ``NVRM: Xid (PCI:0000:3b:00):
  79, pid=..., GPU has fallen off the bus.``; Xid events are not a ``--query-gpu`` field.

Timestamps in recordings are read as UTC (record with ``TZ=UTC``); live polls are stamped with the poll time.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

from llmdr.errors import LlmdrError

THROTTLE_FIELD_NEW = "clocks_event_reasons.active"  # drivers r535 and later
THROTTLE_FIELD_OLD = "clocks_throttle_reasons.active"  # older drivers (still accepted by newer ones, deprecated)
# What the nvidia-smi source asks for, in this order (with --format=csv,noheader,nounits).
QUERY_FIELDS = ("timestamp", "index", "uuid", "name", "pci.bus_id", "temperature.gpu", "power.draw", "power.limit",
                "utilization.gpu", "memory.used", "memory.total", THROTTLE_FIELD_NEW,
                "ecc.errors.corrected.volatile.total", "ecc.errors.uncorrected.volatile.total",
                "retired_pages.single_bit_ecc.count", "retired_pages.double_bit.count", "retired_pages.pending")
REMAP_FIELDS = ("gpu_uuid", "remapped_rows.correctable", "remapped_rows.uncorrectable", "remapped_rows.pending",
                "remapped_rows.failure")

# NVML's clocks event (formerly "throttle") reasons, the bits of clocks_event_reasons.active.
THROTTLE_BITS = {0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
                 0x10: "sync_boost", 0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown",
                 0x80: "hw_power_brake_slowdown", 0x100: "display_clock_setting"}
# The reasons that mean the hardware is protecting itself (heat, power brake); idle, application clocks, sync boost
# and the software power cap are normal on a loaded GPU.
HARMFUL_THROTTLE = 0x8 | 0x20 | 0x40 | 0x80

# NVIDIA's Xid catalogue (https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html): the codes that mean
# failing hardware (drain, reset, RMA on recurrence) and those that are an early sign worth acting on. The rest
# (13, 31, 43, 45...) are mostly application faults: recorded, not a hardware verdict.
CRITICAL_XIDS = {48: "double-bit ECC error", 64: "row remapping failed", 74: "NVLink error",
                 79: "GPU has fallen off the bus", 95: "uncontained ECC error", 119: "GSP RPC timeout",
                 120: "GSP error", 140: "unrecovered ECC error"}
WARNING_XIDS = {63: "row remapping recorded (reset the GPU to apply it)", 92: "high single-bit ECC error rate",
                94: "contained ECC error"}

_NOT_REPORTED = {"n/a", "not supported", "unknown error", "insufficient permissions", "not available",
                 "requested functionality has been deprecated", ""}
_PROBLEM_WORDS = ("gpu is lost", "gpu requires reset")


class HardwareParseError(LlmdrError, ValueError):
    """Output that is not what the tool prints (wrong number of values, a header missing uuid...)."""

    exit_code = 2


@dataclass
class GpuReading:
    """One GPU at one time. ``None``: not reported (the field is not supported by this GPU or driver)."""

    ts: float
    uuid: str
    index: int | None = None
    name: str | None = None
    bus_id: str | None = None  # normalised "0000:3b:00", the form kernel-log Xid lines use
    temperature_c: float | None = None
    memory_temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    utilization_pct: float | None = None
    memory_used_mib: float | None = None
    memory_total_mib: float | None = None
    throttle: int | None = None  # clocks event reasons bitmask
    ecc_corrected: int | None = None  # volatile: since the driver loaded
    ecc_uncorrected: int | None = None
    retired_sbe: int | None = None
    retired_dbe: int | None = None
    retired_pending: bool | None = None
    remap_correctable: int | None = None
    remap_uncorrectable: int | None = None
    remap_pending: bool | None = None
    remap_failure: bool | None = None
    xid_last: int | None = None  # DCGM_FI_DEV_XID_ERRORS: the last Xid code seen (0: none)
    problems: list[str] = field(default_factory=list)  # "[GPU is lost]" and the like, with their field

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "GpuReading":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class XidEvent:
    """One ``NVRM: Xid`` kernel-log line. ``ts`` is None for plain ``dmesg`` (seconds since boot only)."""

    ts: float | None
    bus_id: str
    code: int
    detail: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def kind(self) -> str:
        return "critical" if self.code in CRITICAL_XIDS else "warning" if self.code in WARNING_XIDS else "info"

    @property
    def meaning(self) -> str:
        return CRITICAL_XIDS.get(self.code) or WARNING_XIDS.get(self.code) or "see NVIDIA's Xid catalogue"


def throttle_names(mask: int | None, *, harmful_only: bool = False) -> list[str]:
    if not mask:
        return []
    keep = HARMFUL_THROTTLE if harmful_only else ~0
    return [name for bit, name in THROTTLE_BITS.items() if mask & bit & keep]


def norm_bus(text: str | None) -> str | None:
    """``00000000:3B:00.0`` (nvidia-smi, DCGM) and ``PCI:0000:3b:00`` (Xid lines) as ``0000:3b:00``."""
    if not text:
        return None
    parts = text.strip().removeprefix("PCI:").split(":")
    if len(parts) < 3:
        return None
    return f"{parts[-3][-4:]}:{parts[-2]}:{parts[-1].split('.')[0]}".lower()


# -- values ----------------------------------------------------------------------------------------------------


def _bracketed(raw: str) -> str | None:
    s = raw.strip()
    if s.startswith("[") and s.endswith("]"):
        return s[1:-1].strip().lower()
    if s.lower() in _NOT_REPORTED:
        return s.lower()
    return None


def _number(raw: str, name: str) -> float:
    token = raw.strip().split(" ")[0]  # "250.00 W", "45 %", "1024 MiB" without nounits
    try:
        value = float(token)
    except ValueError:
        raise HardwareParseError(f"{name}: {raw.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise HardwareParseError(f"{name}: {raw.strip()!r} is not a finite number")
    return value


def _int(raw: str, name: str) -> int:
    s = raw.strip()
    if s.lower().startswith("0x"):
        try:
            return int(s, 16)
        except ValueError:
            raise HardwareParseError(f"{name}: {s!r} is not a hex bitmask") from None
    value = _number(s, name)
    if value != int(value) or value < 0:
        raise HardwareParseError(f"{name}: {s!r} is not a count")
    return int(value)


def _bool(raw: str, name: str) -> bool:
    s = raw.strip().lower()
    if s in ("yes", "1", "true", "active", "enabled"):
        return True
    if s in ("no", "0", "false", "not active", "disabled"):
        return False
    raise HardwareParseError(f"{name}: {raw.strip()!r} is not Yes/No")


def _timestamp(raw: str) -> float:
    s = raw.strip()
    for fmt in ("%Y/%m/%d %H:%M:%S.%f", "%Y/%m/%d %H:%M:%S"):
        try:
            return datetime.strptime(s, fmt).replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            pass
    raise HardwareParseError(f"timestamp: {s!r} is not nvidia-smi's YYYY/MM/DD HH:MM:SS.fff")


# query field -> (attribute, converter); several names map to one attribute (aliases, older drivers)
_FIELDS: dict[str, tuple[str, Any]] = {
    "index": ("index", _int), "uuid": ("uuid", str), "gpu_uuid": ("uuid", str), "name": ("name", str),
    "gpu_name": ("name", str), "pci.bus_id": ("bus_id", norm_bus), "gpu_bus_id": ("bus_id", norm_bus),
    "temperature.gpu": ("temperature_c", _number), "temperature.memory": ("memory_temperature_c", _number),
    "power.draw": ("power_w", _number), "power.draw.instant": ("power_w", _number),
    "power.draw.average": ("power_w", _number), "power.limit": ("power_limit_w", _number),
    "enforced.power.limit": ("power_limit_w", _number), "utilization.gpu": ("utilization_pct", _number),
    "memory.used": ("memory_used_mib", _number), "memory.total": ("memory_total_mib", _number),
    THROTTLE_FIELD_NEW: ("throttle", _int), THROTTLE_FIELD_OLD: ("throttle", _int),
    "ecc.errors.corrected.volatile.total": ("ecc_corrected", _int),
    "ecc.errors.uncorrected.volatile.total": ("ecc_uncorrected", _int),
    "retired_pages.single_bit_ecc.count": ("retired_sbe", _int), "retired_pages.sbe": ("retired_sbe", _int),
    "retired_pages.double_bit.count": ("retired_dbe", _int), "retired_pages.dbe": ("retired_dbe", _int),
    "retired_pages.pending": ("retired_pending", _bool),
    "remapped_rows.correctable": ("remap_correctable", _int),
    "remapped_rows.uncorrectable": ("remap_uncorrectable", _int),
    "remapped_rows.pending": ("remap_pending", _bool), "remapped_rows.failure": ("remap_failure", _bool),
}
_HEADER_NAME = re.compile(r"^[a-z_][a-z0-9_.]*$")


def _field_name(cell: str) -> str:
    return re.sub(r"\s*\[[^\]]*\]$", "", cell.strip())  # "power.draw [W]" -> "power.draw"


def _is_header(cells: list[str]) -> bool:
    names = [_field_name(c) for c in cells]
    return all(_HEADER_NAME.match(n) for n in names) and bool({"uuid", "gpu_uuid", "index"} & set(names))


def _rows(text: str, fields_: tuple[str, ...] | list[str] | None, what: str) -> list[tuple[int, dict[str, str]]]:
    """(line number, {field: raw value}) for each data line; a header line (re)names the fields."""
    names = list(fields_) if fields_ is not None else None
    out = []
    for n, cells in enumerate(csv.reader(io.StringIO(text), skipinitialspace=True), 1):
        if not cells or all(not c.strip() for c in cells):
            continue
        if _is_header(cells):
            names = [_field_name(c) for c in cells]
            continue
        if names is None:
            raise HardwareParseError(f"{what} line {n}: no header line and no field list: print it with "
                                     "--format=csv (with the header) or ask for the default fields")
        if len(cells) != len(names):
            raise HardwareParseError(f"{what} line {n}: {len(cells)} values for {len(names)} fields "
                                     f"({', '.join(names[:4])}...): not the output of this query")
        out.append((n, dict(zip(names, cells, strict=True))))
    return out


def _apply(values: dict[str, str], line: int, what: str) -> dict[str, Any]:
    attrs: dict[str, Any] = {"problems": []}
    for name, raw in values.items():
        spec = _FIELDS.get(name)
        word = _bracketed(raw)
        if word is not None:
            if any(p in word for p in _PROBLEM_WORDS):
                attrs["problems"].append(f"{name}: [{word}]")
            continue
        if spec is None:
            continue
        attr, conv = spec
        try:
            attrs[attr] = raw.strip() if conv is str else conv(raw.strip()) if conv is norm_bus else conv(raw, name)
        except HardwareParseError as exc:
            raise HardwareParseError(f"{what} line {line}: {exc}") from None
    return attrs


def parse_query_gpu(text: str, *, fields: tuple[str, ...] | list[str] | None = QUERY_FIELDS,
                    now: float | None = None) -> list[GpuReading]:
    """Readings from ``nvidia-smi --query-gpu`` CSV. ``fields``: the query's field list, used until a header line
    names them (None: a header is required). A row's ``timestamp`` is its time (as UTC); without one, ``now``."""
    readings = []
    for line, values in _rows(text, fields, "nvidia-smi"):
        attrs = _apply(values, line, "nvidia-smi")
        ts = values.get("timestamp")
        when = _timestamp(ts) if ts and _bracketed(ts) is None else now
        if when is None:
            raise HardwareParseError(f"nvidia-smi line {line}: no timestamp field and no poll time")
        if not attrs.get("uuid"):
            if attrs.get("index") is None:
                raise HardwareParseError(f"nvidia-smi line {line}: neither uuid nor index: add uuid to the query")
            attrs["uuid"] = f"index-{attrs['index']}"
        readings.append(GpuReading(ts=when, **attrs))
    return readings


def parse_remapped_rows(text: str, *, fields: tuple[str, ...] | list[str] | None = REMAP_FIELDS) -> dict[str, dict]:
    """``nvidia-smi --query-remapped-rows`` CSV as {gpu uuid: {remap_* attribute: value}}."""
    out: dict[str, dict] = {}
    for line, values in _rows(text, fields, "remapped rows"):
        attrs = _apply(values, line, "remapped rows")
        uuid = attrs.pop("uuid", None)
        if uuid:
            out[uuid] = {k: v for k, v in attrs.items() if k.startswith("remap_")}
    return out


def merge_remapped(readings: list[GpuReading], remapped: dict[str, dict]) -> None:
    for r in readings:
        for k, v in remapped.get(r.uuid, {}).items():
            setattr(r, k, v)


# -- dcgm-exporter ---------------------------------------------------------------------------------------------

_DCGM: dict[str, tuple[str, Any]] = {
    "DCGM_FI_DEV_GPU_TEMP": ("temperature_c", float), "DCGM_FI_DEV_MEMORY_TEMP": ("memory_temperature_c", float),
    "DCGM_FI_DEV_POWER_USAGE": ("power_w", float), "DCGM_FI_DEV_POWER_MGMT_LIMIT": ("power_limit_w", float),
    "DCGM_FI_DEV_GPU_UTIL": ("utilization_pct", float), "DCGM_FI_DEV_FB_USED": ("memory_used_mib", float),
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": ("throttle", int), "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS": ("throttle", int),
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": ("ecc_corrected", int), "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": ("ecc_uncorrected", int),
    "DCGM_FI_DEV_RETIRED_SBE": ("retired_sbe", int), "DCGM_FI_DEV_RETIRED_DBE": ("retired_dbe", int),
    "DCGM_FI_DEV_RETIRED_PENDING": ("retired_pending", bool),
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": ("remap_correctable", int),
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": ("remap_uncorrectable", int),
    "DCGM_FI_DEV_ROW_REMAP_PENDING": ("remap_pending", bool), "DCGM_FI_DEV_ROW_REMAP_FAILURE": ("remap_failure", bool),
    "DCGM_FI_DEV_XID_ERRORS": ("xid_last", int),
}
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?\s*$")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


# One dcgm-exporter serves one node (8 or 16 GPUs). Each GPU becomes a labelled series in llmdr's exporter and rows in
# the hardware store: an answer from something else (an aggregator, a broken or hostile endpoint) must not create
# thousands of them.
MAX_DCGM_GPUS = 64
MAX_GPU_ID = 128  # characters of a UUID label (NVIDIA's: 40)


def parse_dcgm(text: str, *, now: float) -> list[GpuReading]:
    """Readings from dcgm-exporter's Prometheus text, one per GPU (by its ``UUID`` label, else ``gpu``); at most
    ``MAX_DCGM_GPUS`` GPUs with ids of at most ``MAX_GPU_ID`` characters, HardwareParseError otherwise."""
    gpus: dict[str, dict[str, Any]] = {}
    fb_free: dict[str, float] = {}
    seen_any = False
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            raise HardwareParseError(f"dcgm-exporter line {n}: not a Prometheus sample: {line[:80]!r}")
        name, labels_text, raw = m.group(1), m.group(3) or "", m.group(4)
        if not name.startswith("DCGM_"):
            continue
        seen_any = True
        labels = dict(_LABEL.findall(labels_text))
        if "GPU_I_ID" in labels and labels.get("GPU_I_ID"):  # MIG instances repeat the device's fields
            continue
        key = labels.get("UUID") or labels.get("uuid") or (f"index-{labels['gpu']}" if "gpu" in labels else None)
        if key is None:
            continue
        if len(key) > MAX_GPU_ID:
            raise HardwareParseError(f"dcgm-exporter line {n}: a GPU id of {len(key)} characters ({key[:40]!r}...); "
                                     f"llmdr takes at most {MAX_GPU_ID}: is this a dcgm-exporter /metrics?")
        if key not in gpus and len(gpus) == MAX_DCGM_GPUS:
            raise HardwareParseError(f"dcgm-exporter: more than {MAX_DCGM_GPUS} GPUs in one answer; point "
                                     "hardware.url at one node's dcgm-exporter, not an aggregate of many")
        try:
            value = float(raw)
        except ValueError:
            raise HardwareParseError(f"dcgm-exporter line {n}: {raw!r} is not a number") from None
        g = gpus.setdefault(key, {"uuid": key, "problems": []})
        if "gpu" in labels and labels["gpu"].isdigit():
            g["index"] = int(labels["gpu"])
        if labels.get("modelName"):
            g["name"] = labels["modelName"]
        if labels.get("pci_bus_id"):
            g["bus_id"] = norm_bus(labels["pci_bus_id"])
        if name == "DCGM_FI_DEV_FB_FREE":
            fb_free[key] = value
            continue
        spec = _DCGM.get(name)
        if spec is None or not math.isfinite(value):
            continue
        attr, conv = spec
        g[attr] = bool(value) if conv is bool else conv(value)
    if not seen_any:
        raise HardwareParseError("dcgm-exporter: no DCGM_* metric in the answer: is this a dcgm-exporter /metrics?")
    out = []
    for key, g in gpus.items():
        if key in fb_free and g.get("memory_used_mib") is not None:
            g["memory_total_mib"] = g["memory_used_mib"] + fb_free[key]
        out.append(GpuReading(ts=now, **g))
    return out


# -- kernel log -------------------------------------------------------------------------------------------------

_XID = re.compile(r"NVRM: Xid \((?:PCI:)?([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2})(?:\.\d)?\): (\d+)(?:, ?(.*))?")
_ISO = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[+-]\d{2}:?\d{2}|Z)?)\s")
_UPTIME = re.compile(r"^\[\s*(\d+\.\d+)\]")
_DMESG_T = re.compile(r"^\[(\w{3} \w{3}\s+\d{1,2} \d{2}:\d{2}:\d{2} \d{4})\]")


def _line_time(line: str) -> float | None:
    m = _ISO.match(line)
    if m:
        text = m.group(1).replace("Z", "+00:00")
        if re.search(r"[+-]\d{4}$", text):
            text = text[:-2] + ":" + text[-2:]
        dt = datetime.fromisoformat(text)
        return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()
    m = _DMESG_T.match(line)
    if m:
        return datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y").replace(
            tzinfo=timezone.utc).timestamp()
    return None


def parse_xid_log(text: str) -> list[XidEvent]:
    """Every ``NVRM: Xid`` line of a kernel log; other lines are skipped."""
    out = []
    for line in text.splitlines():
        m = _XID.search(line)
        if m:
            ts, detail = _line_time(line), (m.group(3) or "").strip()[:200]
            up = _UPTIME.match(line)
            if ts is None and up:  # plain dmesg: the uptime tells two identical lines apart
                detail = f"{detail} [uptime {up.group(1)} s]"
            out.append(XidEvent(ts, norm_bus(m.group(1)) or m.group(1), int(m.group(2)), detail))
    return out
