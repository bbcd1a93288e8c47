"""Writes the synthetic nvidia-smi recordings next to this file (seeded: the same bytes every run). See README.md.

    python tests/data/gpu/generate.py
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
START = datetime(2026, 11, 30, 1, 0, 0)
QUERY = ("timestamp,index,uuid,name,pci.bus_id,temperature.gpu,power.draw,power.limit,utilization.gpu,memory.used,"
         "memory.total,clocks_event_reasons.active,ecc.errors.corrected.volatile.total,"
         "ecc.errors.uncorrected.volatile.total,retired_pages.single_bit_ecc.count,retired_pages.double_bit.count,"
         "retired_pages.pending")


def ts(t: datetime) -> str:
    return t.strftime("%Y/%m/%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}"


def hexmask(v: int) -> str:
    return f"0x{v:016X}"


def healthy_a100(rng: random.Random) -> str:
    """2 x A100-SXM4-80GB serving, every 5 min for 6 h; --format=csv,noheader,nounits (the default field list)."""
    gpus = [(0, "GPU-5f2c1a3e-8b7d-4c1e-9a0f-3d6b2e8c7a14", "00000000:07:00.0", 61.0),
            (1, "GPU-a8e4d2c6-1f3b-4e5a-8c7d-9b0e1f2a3c45", "00000000:0B:00.0", 64.0)]
    lines, sbe = [], [0, 0]
    for i in range(73):
        t = START + timedelta(minutes=5 * i, milliseconds=rng.randint(0, 999))
        for k, (idx, uuid, bus, temp) in enumerate(gpus):
            util = rng.choice([88, 92, 95, 97, 100, 100, 100, 91])
            power = 300 + (util - 90) * 3 + rng.gauss(0, 9)
            if rng.random() < 0.03:
                sbe[k] += 1  # the odd corrected single-bit error is normal background
            thr = 0x4 if power > 320 and rng.random() < 0.3 else 0x0
            lines.append(f"{ts(t)}, {idx}, {uuid}, NVIDIA A100-SXM4-80GB, {bus}, {temp + rng.gauss(0, 1.0):.0f}, "
                         f"{power:.2f}, 400.00, {util}, {rng.randint(70100, 70400)}, 81920, {hexmask(thr)}, "
                         f"{sbe[k]}, 0, [N/A], [N/A], [N/A]")
    return "\n".join(lines) + "\n"


def h100_creep(rng: random.Random) -> str:
    """H100 80GB HBM3 (one of a node's 8, a failing fan): 2 h flat, then +6.5 °C/h for 2 h; with header."""
    head = QUERY.replace("power.draw", "power.draw [W]").replace("power.limit", "power.limit [W]").replace(
        "utilization.gpu", "utilization.gpu [%]").replace("memory.used", "memory.used [MiB]").replace(
        "memory.total", "memory.total [MiB]")
    lines = [head.replace(",", ", ")]
    for i in range(121):  # every 2 minutes for 4 h
        t = START + timedelta(minutes=2 * i, milliseconds=rng.randint(0, 999))
        base = 70.5 if i < 60 else 70.5 + 6.5 * (i - 60) * 2 / 60
        util = rng.choice([93, 96, 98, 100, 100])
        lines.append(f"{ts(t)}, 3, GPU-0c9d7e6f-2a4b-4d3c-b1e0-7f8a9b6c5d21, NVIDIA H100 80GB HBM3, "
                     f"00000000:9D:00.0, {base + rng.gauss(0, 0.6):.0f}, {560 + rng.gauss(0, 18):.2f}, 700.00, "
                     f"{util}, {rng.randint(76000, 76400)}, 81559, {hexmask(0x0)}, 0, 0, [N/A], [N/A], [N/A]")
    return "\n".join(lines) + "\n"


def v100_dbe(rng: random.Random) -> str:
    """V100 (Volta retires pages; Ampere and later remap rows): a double-bit error and a page pending retirement
    appear at 02:30; with header."""
    lines = [QUERY.replace(",", ", ")]
    for i in range(37):  # every 5 minutes for 3 h
        t = START + timedelta(minutes=5 * i, milliseconds=rng.randint(0, 999))
        bad = i >= 18
        lines.append(f"{ts(t)}, 0, GPU-3b1e9f2d-6c7a-4b8e-a5d4-c2f1e0b9a876, Tesla V100-SXM2-32GB, 00000000:1A:00.0, "
                     f"{55 + rng.gauss(0, 1):.0f}, {210 + rng.gauss(0, 12):.2f}, 300.00, {rng.randint(80, 100)}, "
                     f"{rng.randint(28000, 29000)}, 32768, {hexmask(0x0)}, {3 + (40 if bad else 0)}, "
                     f"{1 if bad else 0}, 0, {1 if bad else 0}, {'Yes' if bad else 'No'}")
    return "\n".join(lines) + "\n"


def l40s_throttle(rng: random.Random) -> str:
    """L40S in a hot rack: software power cap (normal) for 100 minutes, then SW + HW thermal slowdown; with header."""
    lines = [QUERY.replace(",", ", ")]
    for i in range(25):
        t = START + timedelta(minutes=5 * i, milliseconds=rng.randint(0, 999))
        hot = i >= 20
        thr = (0x20 | 0x40 | 0x4) if hot else 0x4
        temp = 86 if hot else 79
        lines.append(f"{ts(t)}, 0, GPU-7e6d5c4b-3a29-4180-9f7e-6d5c4b3a2918, NVIDIA L40S, 00000000:41:00.0, "
                     f"{temp + rng.gauss(0, 0.7):.0f}, {(300 if hot else 345) + rng.gauss(0, 5):.2f}, 350.00, 100, "
                     f"{rng.randint(40000, 41000)}, 46068, {hexmask(thr)}, 0, 0, [N/A], [N/A], [N/A]")
    return "\n".join(lines) + "\n"


def consumer(rng: random.Random) -> str:
    """GeForce RTX 3060 (no ECC, no page retirement, no power limit readout on this laptop part); with header."""
    lines = [QUERY.replace(",", ", ")]
    for i in range(13):
        t = START + timedelta(minutes=5 * i, milliseconds=rng.randint(0, 999))
        lines.append(f"{ts(t)}, 0, GPU-1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5d, NVIDIA GeForce RTX 3060 Laptop GPU, "
                     f"00000000:01:00.0, {48 + rng.gauss(0, 1):.0f}, {rng.uniform(14, 60):.2f}, [Not Supported], "
                     f"{rng.randint(0, 60)}, {rng.randint(900, 3000)}, 6144, {hexmask(rng.choice([0x0, 0x1]))}, "
                     "[N/A], [N/A], [N/A], [N/A], [N/A]")
    return "\n".join(lines) + "\n"


def older_driver(rng: random.Random) -> str:
    """Driver 470 (Tesla T4): clocks_throttle_reasons.active, the short retired_pages.sbe/.dbe names, and
    --format=csv with units (no nounits)."""
    head = ("timestamp, index, uuid, name, pci.bus_id, temperature.gpu, power.draw [W], power.limit [W], "
            "utilization.gpu [%], memory.used [MiB], memory.total [MiB], clocks_throttle_reasons.active, "
            "ecc.errors.corrected.volatile.total, ecc.errors.uncorrected.volatile.total, retired_pages.sbe, "
            "retired_pages.dbe, retired_pages.pending")
    lines = [head]
    for i in range(13):
        t = START + timedelta(minutes=5 * i, milliseconds=rng.randint(0, 999))
        lines.append(f"{ts(t)}, 0, GPU-9a8b7c6d-5e4f-4321-8a9b-0c1d2e3f4a5b, Tesla T4, 00000000:00:1E.0, "
                     f"{58 + rng.gauss(0, 1):.0f}, {62 + rng.gauss(0, 3):.2f} W, 70.00 W, {rng.randint(70, 100)} %, "
                     f"{rng.randint(12000, 12500)} MiB, 15109 MiB, {hexmask(0x4)}, 0, 0, 0, 0, No")
    return "\n".join(lines) + "\n"


def main() -> None:
    rng = random.Random(19)
    for name, make in (("a100-healthy.csv", healthy_a100), ("h100-temperature-creep.csv", h100_creep),
                       ("v100-dbe-retired-page.csv", v100_dbe), ("l40s-thermal-throttle.csv", l40s_throttle),
                       ("rtx3060-consumer-na.csv", consumer), ("t4-driver470-old-names.csv", older_driver)):
        (HERE / name).write_text(make(rng))


if __name__ == "__main__":
    main()
