"""`llmdr hardware status`: read each region's GPU source once and judge every GPU against what the monitor has
learnt of it (docs/guide/serving-and-failover.md, GPU hardware early warning)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmdr.cli.root import JsonOpt, app, emit, load_cfg

hardware_app = typer.Typer(help="GPU health: the hardware early warning (regions[].hardware).", no_args_is_help=True)
app.add_typer(hardware_app, name="hardware")

NOT_CONFIGURED = "no hardware source configured (regions[].hardware)"


def _gpu_lines(g: dict) -> list[str]:
    label = f"GPU {g['index']}" if g.get("index") is not None else "GPU"
    name = f" {g['name']}" if g.get("name") else ""
    out = [f"  {label}{name} ({g['uuid']}): {g['status'].upper()}"]
    out += [f"      - {why}" for why in g.get("reasons") or []]
    if g.get("summary"):
        out.append(f"      trend: {g['summary']}")
    return out


def _text(rows: list[dict]) -> str:
    lines = []
    for row in rows:
        head = f"{row['region']}: {row['status'].upper()} (source: {row['source']})"
        if row["reasons"]:
            head += f" - {'; '.join(row['reasons'])}"
        lines.append(head)
        lines += [f"  note: {n}" for n in row.get("notes", [])]
        for g in row["gpus"]:
            lines += _gpu_lines(g)
    return "\n".join(lines)


@hardware_app.command("status")
def status(
    region: Annotated[Optional[str], typer.Option("--region", "-r", help="Only this region (default: all).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Read every region's GPU health source once (nvidia-smi, dcgm-exporter or a command) and print each GPU's
    status: healthy, degraded, critical or unknown, with the reasons, the trend and the forecast, judged against the
    baseline the monitor has learnt (this read is not stored). A region whose source cannot be read (no GPU here,
    exporter down) is unknown, with the reason. Exits 0 whatever the GPUs' status; 2 for an unknown region."""
    from llmdr.hardware.detect import RegionAssessment
    from llmdr.hardware.monitor import HardwareMonitor, configured

    cfg = load_cfg()
    names = [cfg.region(region).name] if region else [r.name for r in cfg.regions]
    monitor = HardwareMonitor(cfg) if any(n in configured(cfg) for n in names) else None
    rows = []
    try:
        for name in names:
            if monitor is None or name not in monitor.sources:
                ra = RegionAssessment(name, "none", "unknown", [NOT_CONFIGURED])
                rows.append(ra.to_json() | {"notes": []})
                continue
            poll = monitor.poll_now(name)
            ra = monitor.assess(name, extra=poll)
            rows.append(ra.to_json() | {"notes": list(poll.notes)})
    finally:
        if monitor is not None:
            monitor.close()
    emit(as_json, {"regions": rows}, _text(rows))
