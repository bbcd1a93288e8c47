"""`llmdr control restore | sync | status`: llmdr's own records (failovers, switches, drill reports, golden set,
runbook) in every region's store."""

from __future__ import annotations

from typing import Annotated

import typer

from llmdr.cli.root import JsonOpt, app, emit, load_cfg

control_app = typer.Typer(help="llmdr's own records in the regions' stores: restore a host's view, push pending "
                               "records.", no_args_is_help=True)
app.add_typer(control_app, name="control")


@control_app.command("restore")
def restore(
    force: Annotated[bool, typer.Option("--force", help="Replace a local golden set / runbook that differs from the "
                                                        "stored one in force.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild this host's view from the regions' stores: failover history, the router's switch log, drill report
    folders (verified by their signature), the golden set and the runbook in force. Only adds; run it on a fresh
    control host with llmdr.yaml and the keys."""
    from llmdr.drill.rebuild import rebuild

    cfg = load_cfg()
    out = rebuild(cfg, force=force)
    lines = [f"failover records added: {out['failovers_added']}", f"switch log entries added: {out['switches_added']}",
             f"drill reports restored: {len(out['drills_restored'])}"
             + (f" ({', '.join(out['drills_restored'])})" if out["drills_restored"] else ""),
             f"golden set ({cfg.golden_path}): {out['golden']}", f"runbook ({cfg.runbook_path}): {out['runbook']}"]
    emit(as_json, out, "\n".join(lines))


@control_app.command("sync")
def sync(as_json: JsonOpt = False) -> None:
    """Push the records kept pending for regions that did not answer when they were written. Exit 1 if some are
    still pending."""
    from llmdr.control import pending
    from llmdr.control import sync as push

    cfg = load_cfg()
    out = push(cfg)
    left = pending(cfg)
    lines = [f"{r}: pushed {v['pushed']}, left {v['left']}" + (f" ({v['error']})" if v["error"] else "")
             for r, v in out.items()] or ["nothing pending"]
    emit(as_json, {"regions": out, "pending": left}, "\n".join(lines))
    if left:
        raise typer.Exit(1)


@control_app.command("status")
def status(as_json: JsonOpt = False) -> None:
    """How many of llmdr's records each region holds (or that it could not be read), and which are pending for
    which region."""
    from llmdr.control import layout, pending, region_keys

    cfg = load_cfg()
    held = {r: None if keys is None else len(keys) for r, keys in region_keys(cfg, layout.ROOT).items()}
    left = pending(cfg)
    out = {"held": held, "pending": left}
    lines = [f"{r}: {'not reachable (see the warning above)' if n is None else f'{n} objects'} under control/, "
             f"{len(left.get(r, []))} pending" for r, n in held.items()]
    emit(as_json, out, "\n".join(lines))
