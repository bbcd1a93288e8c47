"""The one way llmdr shows sizes and rates to people: decimal SI units (1 MB = 10^6 bytes, 1 GB = 10^9 bytes), as
S3 consoles, ``s5cmd`` and network links count, and as the benchmarks and reports write throughput (MB/s).

Only output: parsing a size (``140GB``, ``512MiB``) stays in ``llmdr.drill.plan`` / the config, which accept both
decimal and binary units."""

from __future__ import annotations

UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def human_size(n: float) -> str:
    """``n`` bytes in the largest decimal unit that keeps the number at least 1: ``512 B``, ``1.5 MB``,
    ``24.1 GB``, ``512 MB`` (no decimals from 100 up, one below)."""
    if abs(n) < 999.5:
        return f"{n:.0f} B"
    value = float(n)
    for unit in UNITS[1:]:
        value /= 1000
        shown = f"{value:.0f}" if abs(value) >= 99.95 else f"{value:.1f}"
        if abs(float(shown)) < 1000 or unit == UNITS[-1]:  # rounding 999.96 up to 1000 moves on to the next unit
            return f"{shown} {unit}"
    raise AssertionError("unreachable")

def human_rate(bytes_per_s: float) -> str:
    """A byte rate: ``210 MB/s``, ``1.2 GB/s``."""
    return f"{human_size(bytes_per_s)}/s"
