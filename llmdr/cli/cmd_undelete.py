"""`llmdr undelete`: remove delete markers that hide versions Object Lock still protects (design §6)."""

from __future__ import annotations

from typing import Annotated

import typer

from llmdr.cli.root import JsonOpt, RegionOpt, app, as_of, emit, load_cfg


@app.command()
def undelete(
    region: RegionOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list the hidden keys; remove nothing.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Bring back objects a plain DELETE hid under a delete marker while Object Lock still protects them: removes
    those markers only (never data). Markers over versions whose lock has ended are left alone."""
    from llmdr.repo.undelete import describe
    from llmdr.repo.undelete import undelete as do_undelete
    from llmdr.storage.factory import open_region

    as_of("undelete")
    cfg = load_cfg()
    reg = cfg.region(region)
    res = do_undelete(open_region(cfg, reg, read_only=dry_run), dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    lines = [f"{reg.name}: {len(res.found)} key(s) hidden by a delete marker over a locked version; {verb} "
             f"{len(res.found) if dry_run else len(res.restored)} marker(s)"]
    lines += [f"  - {describe(h)}" for h in res.found]
    if dry_run and res.found:
        lines.append(f"    run `llmdr undelete --region {reg.name}` to remove them")
    emit(as_json, res.to_json() | {"region": reg.name}, "\n".join(lines))
