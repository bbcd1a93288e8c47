"""This machine's hardware, for training-run records: CPU, memory, GPUs (``nvidia-smi``), Python and platform."""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
import socket
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)


def hardware() -> dict:
    """This machine: CPU model and logical cores, memory, GPUs (``nvidia-smi``; [] when there is none), Python,
    platform, host name."""
    cpu = _cpu_model()
    mem = _meminfo_bytes()
    gpus = _gpus()
    return {"cpu_model": cpu, "cpu_count": os.cpu_count(), "memory_bytes": mem,
            "memory_gib": round(mem / 2**30, 1) if mem else None, "gpus": gpus, "gpu_count": len(gpus),
            "python": platform.python_version(), "platform": platform.platform(), "host": socket.gethostname()}


def hardware_summary(hw: dict) -> str:
    """One line: ``<cpu> (<n> cores), <mem> GiB, <k> x <gpu>`` (or ``no GPU``)."""
    gpus = hw.get("gpus") or []
    names = sorted({g.get("name", "?") for g in gpus})
    gpu = f"{len(gpus)} x {', '.join(names)}" if gpus else "no GPU"
    return f"{hw.get('cpu_model')} ({hw.get('cpu_count')} cores), {hw.get('memory_gib')} GiB, {gpu}"


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for key in ("model name", "Model", "Hardware", "cpu model", "Processor"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m and m.group(1).strip():
            return m.group(1).strip()
    return platform.processor() or platform.machine() or "unknown"


def _meminfo_bytes() -> int | None:
    try:
        m = re.search(r"^MemTotal:\s*(\d+)\s*kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


def _gpus() -> list[dict]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=15, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed (%s): GPUs not recorded", exc)
        return []
    gpus = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[0]:
            gpus.append({"name": parts[0], "memory_total": parts[1], "driver_version": parts[2]})
    return gpus
