"""`llmdr readiness` (is the DR plan ready today: every check PASS / WARN / FAIL) and `llmdr plan` (does a cold
restore meet the RTO, and what would)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmdr.cli.root import JsonOpt, app, emit, human_size, load_cfg
from llmdr.errors import LlmdrError, UsageError


@app.command()
def readiness(
    only: Annotated[Optional[str], typer.Option(help="Comma-separated check kinds: credentials, rpo, components, "
                                                "drill, separation, immutability, doors, bandwidth, "
                                                "golden, footprint, automation, training.")] = None,
    markdown: Annotated[Optional[Path], typer.Option(help="Also write the report as markdown here.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Is the DR plan ready today? Every check (credentials, RPO, components, drill, separation, immutability,
    unauthenticated doors into local regions, bandwidth vs RTO, footprint and cost) as PASS / WARN / FAIL with what
    to do. Exits 9 on any FAIL, so it can gate a pipeline."""
    from llmdr.common.files import atomic_write
    from llmdr.drill.readiness import EXIT_FAIL, render_markdown, render_text, run_checks

    cfg = load_cfg()
    kinds = {k.strip() for k in only.split(",") if k.strip()} if only else None
    rep = run_checks(cfg, only=kinds)
    if markdown is not None:
        atomic_write(markdown, render_markdown(rep), mode=0o644)
    emit(as_json, rep.to_json(), render_text(rep))
    if not rep.ok:
        raise typer.Exit(EXIT_FAIL)


@app.command()
def plan(
    size: Annotated[Optional[str], typer.Option(help="Bundle size, e.g. 140GB, 512GiB (default with --region: "
                                                "the newest snapshot there).")] = None,
    bandwidth: Annotated[Optional[str], typer.Option(help="Link from the DR store, e.g. 1Gbps, 250MB/s (default "
                                                     "with --region: measured).")] = None,
    rto: Annotated[Optional[str], typer.Option(help="Recovery time objective, e.g. 15m (default: the "
                                               "config's).")] = None,
    start: Annotated[Optional[str], typer.Option(help="Replica start time once the bundle is on disk (default: "
                                                 "readiness.start_estimate, or 60s).")] = None,
    region: Annotated[Optional[str], typer.Option("--region", "-r", help="Measure size and throughput in this "
                                                  "region's store.")] = None,
    efficiency: Annotated[float, typer.Option(help="Share of a given link's rate a restore reaches (a measured "
                                              "rate is used as is).")] = 0.8,
    as_json: JsonOpt = False,
) -> None:
    """Does a cold restore from the DR region meet the RTO, and what would (warm standby, more bandwidth, a
    pre-staged copy)? The arithmetic is shown. With --region, size and throughput are measured there."""
    from llmdr.drill.plan import make_plan, parse_bandwidth, parse_seconds, parse_size, render_plan

    cfg = None
    if region is not None or rto is None or start is None:
        try:
            cfg = load_cfg()
        except LlmdrError:
            if region is not None or rto is None:
                raise
    if rto is None and cfg is None:
        raise UsageError("give --rto (e.g. --rto 15m), or run where llmdr.yaml names objectives.rto")
    rto_s = parse_seconds(rto, what="--rto") if rto else cfg.objectives.rto.total_seconds()
    start_s = parse_seconds(start, what="--start") if start else (
        cfg.readiness.start_estimate.total_seconds() if cfg else 60.0)
    size_b = parse_size(size) if size else None
    bps = parse_bandwidth(bandwidth) if bandwidth else None
    source, eff, warm_rto = "given", efficiency, 60.0
    if region is not None:
        from llmdr.drill.readiness import measure_throughput
        from llmdr.failover.steps import history as failover_history
        from llmdr.repo.repository import Repository
        from llmdr.storage.factory import open_region

        reg = cfg.region(region)
        repo = Repository(open_region(cfg, reg, read_only=True))
        snaps = repo.snapshots(bundle=cfg.bundle.name)
        if not snaps:
            raise UsageError(f"no snapshot of '{cfg.bundle.name}' in region {region} to measure; protect first or "
                             "give --size and --bandwidth")
        manifest = snaps[-1].manifest
        if size_b is None:
            size_b = sum(manifest.chunk_set().values())
        if bps is None:
            m = measure_throughput(repo, manifest, probe_bytes=min(cfg.readiness.probe_mb << 20,
                                   sum(manifest.chunk_set().values())), workers=cfg.transfer.download_workers)
            bps, eff = m["bytes_per_s"] * 8, 1.0
            source = f"measured from {region} ({human_size(m['bytes'])} in {m['seconds']:.2f} s)"
        rtos = [r.rto_s for r in failover_history(cfg) if r.rto_s and r.ok and r.to_region == region]
        if rtos:
            warm_rto = sorted(rtos)[len(rtos) // 2]
    if size_b is None or bps is None:
        raise UsageError("give --size and --bandwidth (e.g. --size 140GB --bandwidth 1Gbps), or --region to "
                         "measure them")
    p = make_plan(size_b, bps, rto_s, start_s=start_s, efficiency=eff, warm_rto_s=warm_rto, source=source)
    emit(as_json, p.to_json(), render_plan(p))
