"""`llmdr lineage` (the chain behind a model version) and `llmdr datasets status|remotes|validate|pull` (the
DVC-versioned datasets in every region)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from llmdr.cli.root import JsonOpt, RegionOpt, app, emit, human_size, load_cfg
from llmdr.errors import LlmdrError, UsageError

log = logging.getLogger("llmdr.cli")  # the name the warnings have always shown
datasets_app = typer.Typer(help="DVC-versioned datasets: status per region, validate, pull from a region.",
                           no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")


@app.command()
def lineage(
    ref: Annotated[str, typer.Argument(help="MODEL, MODEL@alias (production, drill-verified), MODEL@VERSION, or a "
                                       "snapshot id / prefix.")],
    as_json: JsonOpt = False,
) -> None:
    """The chain behind a model version: snapshot (components) → regions holding it now → datasets (DVC md5,
    remotes) → training run → drill results."""
    from llmdr.lineage.query import lineage as query
    from llmdr.lineage.render import render_lineage

    cfg = load_cfg()
    data = query(cfg, ref, tracking_uri=cfg.tracking.uri)
    emit(as_json, data, render_lineage(data))


def _ds(cfg, name: str):
    for d in cfg.datasets:
        if d.name == name:
            return d
    raise UsageError(f"no dataset named {name!r} in {cfg.source_file}; known: "
                     f"{', '.join(d.name for d in cfg.datasets) or 'none (add a datasets: section)'}")


@datasets_app.command("status")
def datasets_status(as_json: JsonOpt = False) -> None:
    """Each dataset's recorded version (DVC md5) and whether every region's remote holds it."""
    from llmdr.lineage.datasets import present, version

    cfg = load_cfg()
    rows = []
    for d in cfg.datasets:
        v = version(cfg, d, check_workspace=False)
        where = {}
        for r in cfg.regions:
            try:
                where[r.name] = present(cfg, d, r.name, ver=v)
            except LlmdrError as exc:
                where[r.name] = None
                log.warning("%s", exc)
        rows.append(v.to_json() | {"regions": where})
    lines = [f"{'dataset':<20} {'md5':<34} {'size':>10}  regions"]
    for r in rows:
        regs = ", ".join(f"{k}: {'yes' if v else ('?' if v is None else 'MISSING')}" for k, v in r["regions"].items())
        lines.append(f"{r['name']:<20} {r['md5']:<34} {human_size(r['size']):>10}  {regs}")
    emit(as_json, rows, "\n".join(lines) if rows else "no datasets: section in the config")


@datasets_app.command("remotes")
def datasets_remotes(as_json: JsonOpt = False) -> None:
    """Write one DVC remote per region (llmdr-<region>) into each dataset's repository: URL and endpoint in
    .dvc/config (commit it), keys in .dvc/config.local (git-ignored), so `dvc pull -r llmdr-secondary` works by hand
    too. llmdr's own pushes and pulls do not need this."""
    from llmdr.lineage.datasets import configure_remotes, locate

    cfg = load_cfg()
    done: dict[str, list[str]] = {}
    for d in cfg.datasets:
        _, root, _ = locate(cfg, d)
        if str(root) not in done:
            done[str(root)] = configure_remotes(cfg, root)
    emit(as_json, done, "\n".join(f"{root}: remotes {', '.join(names)} (commit .dvc/config; keys are in "
                                   ".dvc/config.local)" for root, names in done.items()) or "no datasets configured")


@datasets_app.command("validate")
def datasets_validate(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    path: Annotated[Optional[Path], typer.Option(help="Validate this copy (e.g. a restored one) instead.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate a dataset against its expectation suite (created from a profile of the data if missing). Exit 4
    if it fails."""
    from llmdr.lineage.expectations import ensure_suite, validate

    cfg = load_cfg()
    ds = _ds(cfg, name)
    suite, created = ensure_suite(cfg, ds)
    rep = validate(cfg, ds, path=path)
    emit(as_json, rep.to_json(), (f"suite profiled into {suite}\n" if created else "") + rep.summary())
    if not rep.success:
        raise typer.Exit(4)


@datasets_app.command("pull")
def datasets_pull(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    region: RegionOpt = None,
    to: Annotated[Optional[Path], typer.Option(help="Write it here instead of the dataset's own path.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace local data that is not this version.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Bring the recorded version back from a region's DVC remote (e.g. the DR region), re-hashed against the
    recorded md5 before it lands, then validated against its expectation suite (exit 4 if it fails)."""
    from llmdr.lineage.datasets import pull

    cfg = load_cfg()
    ds = _ds(cfg, name)
    reg = cfg.region(region)
    from llmdr.lineage.expectations import validate

    v = pull(cfg, ds, reg.name, target=to, force=force)
    landed = to or cfg.dataset_path(ds)
    rep = validate(cfg, ds, path=landed) if cfg.suite_path(ds).exists() else None
    emit(as_json, v.to_json() | {"region": reg.name, "validation": rep.to_json() if rep else None},
         f"{name}: md5 {v.md5} pulled from {reg.name} into {landed}, md5 checked"
         + (f"\n{rep.summary()}" if rep else " (no expectation suite yet)"))
    if rep is not None and not rep.success:
        raise typer.Exit(4)
