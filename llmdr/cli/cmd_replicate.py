"""`llmdr replicate`: copy a snapshot (or all of them) to another region."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmdr.cli.root import JsonOpt, app, emit, human_size, load_cfg, progress_for


@app.command()
def replicate(
    snapshot_ref: Annotated[str, typer.Argument(metavar="SNAPSHOT", help="Snapshot id, unique prefix, 'latest' or "
                                                "'all'.")],
    to: Annotated[str, typer.Option("--to", help="Destination region.")],
    source: Annotated[Optional[str], typer.Option("--from", help="Source region (default: the primary).")] = None,
    recheck: Annotated[bool, typer.Option(help="Compare chunks even when the snapshot is already there.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Copy a snapshot to another region: missing chunks only, verified, manifest last (atomic)."""
    from llmdr.repo.ops import replicate as do_replicate

    cfg = load_cfg()
    dst_name = cfg.region(to).name
    results = do_replicate(cfg, snapshot_ref, to=to, source=source, recheck=recheck, progress=progress_for(as_json))
    for res in results:
        if not as_json:
            sid = res.snapshot_id
            if res.already_present:
                typer.echo(f"{sid[:12]}: already complete in {dst_name}")
            else:
                typer.echo(f"{sid[:12]}: {res.chunks_copied}/{res.chunks_total} chunks copied to {dst_name} "
                           f"({human_size(res.bytes_copied)} in {res.duration_s:.2f}s)")
    if as_json:
        emit(True, [r.to_json() for r in results])
