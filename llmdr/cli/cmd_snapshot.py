"""`llmdr snapshot`, `protect`, `snapshots`, `show`: take snapshots of the bundle (directly, or through the
protect flows in this process) and list and read them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmdr.cli.root import (
    JsonOpt,
    RegionOpt,
    app,
    emit,
    human_size,
    load_cfg,
    progress_for,
    state,
    use_local_prefect,
    warn_hidden,
)
from llmdr.errors import UsageError


def _repo(cfg, region_name: str | None, *, read_only: bool = False, hidden: dict | None = None):
    """The region named REGION_NAME (default: the primary) and its repository, read as of the global --as-of
    (read-only commands); with HIDDEN (a dict) read through delete markers over locked versions, recorded there."""
    from llmdr.repo.ops import open_repo

    region = cfg.region(region_name)
    return region, open_repo(cfg, region, read_only=read_only, as_of=state.as_of if read_only else None,
                             hidden=hidden if hidden is not None else False)


@app.command()
def snapshot(
    region: RegionOpt = None,
    path: Annotated[Optional[Path], typer.Option(help="Snapshot this folder instead of bundle.path.")] = None,
    tag: Annotated[Optional[list[str]], typer.Option(help="KEY=VALUE label stored in the manifest "
                                                          "(repeatable).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Take an incremental, deduplicated snapshot of the bundle into a region (default: the primary)."""
    from llmdr.common.gcpause import gc_paused

    cfg = load_cfg()
    with gc_paused():  # the repository's modules: many objects, no garbage
        from llmdr.repo.ops import snapshot_bundle

    reg = cfg.region(region)
    tags = {}
    for t in tag or []:
        k, sep, v = t.partition("=")
        if not sep or not k:
            raise UsageError(f"--tag {t!r}: write KEY=VALUE")
        tags[k] = v
    res = snapshot_bundle(cfg, region=region, path=path, tags=tags, progress=progress_for(as_json))
    rate = res.bytes_read / res.duration_s if res.duration_s else 0
    emit(as_json, res.to_json() | {"region": reg.name},
         f"snapshot {res.snapshot_id[:12]} of '{cfg.bundle.name}' in {reg.name}: {res.files} files, "
         f"{human_size(res.bytes_total)} ({res.files_unchanged} unchanged files skipped), "
         f"{human_size(res.bytes_new)} new, {human_size(res.bytes_deduplicated)} deduplicated, "
         f"{res.duration_s:.2f}s ({human_size(rate)}/s read)\n"
         f"id: {res.snapshot_id}")


@app.command()
def protect(
    checkpoints: Annotated[bool, typer.Option("--checkpoints", help="Run protect-checkpoints instead.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run the protect-bundle flow now, in this process (no Prefect server or worker needed): completeness,
    snapshot, copy to every secondary, verify the copies, retention, RPO clock."""
    cfg = load_cfg()
    path = str((cfg.source_file or Path("llmdr.yaml")).resolve())
    use_local_prefect(cfg)  # the local server when `stack up --ui` runs one, else a temporary one
    if checkpoints:
        from flows.protect_checkpoints import protect_checkpoints

        out = protect_checkpoints(config_path=path, bundle=cfg.view_of)
        emit(as_json, out, f"{len(out['new'])} new checkpoint(s) of {len(out['found'])} protected "
                           f"({', '.join(n['checkpoint'] for n in out['new']) or 'none new'})"
             + "".join(f"\nincomplete, not taken (looked at again next run): {c['checkpoint']}: "
                       f"{'; '.join(c['problems'])}" for c in out.get("incomplete", [])))
        return
    from flows.protect_bundle import protect_bundle

    out = protect_bundle(config_path=path, bundle=cfg.view_of)
    snap = out["snapshot"]
    lines = [f"snapshot {snap['snapshot_id'][:12]} in {snap['region']}: {human_size(snap['bytes_new'])} new of "
             f"{human_size(snap['bytes_total'])}"]
    for v in out.get("validations", []):
        lines.append(f"dataset {v['dataset']}: validation off by config" if v.get("mode") == "off" else
                     f"dataset {v['dataset']}: {v['evaluated'] - v['failed']}/{v['evaluated']} expectations passed"
                     + (" (suite profiled from the data on this first backup)" if v.get("suite_created") else ""))
    for d in out.get("datasets", []):
        lines.append(f"dataset {d['name']}: md5 {d['md5']} in every region's DVC remote ("
                     + ", ".join(f"{p['region']}: {'already there' if p['already'] else 'pushed'}" for p in d["pushes"])
                     + ")")
    lines += [f"copied to {c['region']}: {c['chunks_copied']}/{c['chunks_total']} chunks, verified"
              for c in out["copies"]]
    if out.get("model_version"):
        mv = out["model_version"]
        lines.append(f"model version {mv['name']} v{mv['version']} ({', '.join(mv.get('aliases', []))})"
                     + (" registered" if mv.get("created") else " (same content: updated)"))
    for r in out["rpo"]:
        lines.append(f"RPO clock {r['region']}: newest snapshot {r['age_s']:.0f}s old "
                     f"({'within' if r['ok'] else 'OVER'} the {r['objective_s']:.0f}s objective)")
    emit(as_json, out, "\n".join(lines))


@app.command()
def snapshots(region: RegionOpt = None, as_json: JsonOpt = False) -> None:
    """List the complete snapshots in a region, oldest first."""
    cfg = load_cfg()
    hidden: dict = {}
    reg, repo = _repo(cfg, region, read_only=True, hidden=hidden)
    snaps = repo.snapshots()
    rows = [{"id": s.id, "bundle": s.bundle, "created": s.created, "files": s.record["stats"].get("files", 0),
             "bytes": s.record["stats"].get("bytes", 0), "new_bytes": s.record["stats"].get("new_bytes"),
             "parent": s.record.get("parent"), "seq": s.seq, "future_dated": s.future, "fork": s.fork}
            for s in snaps]
    lines = [f"{'id':<12}  {'created (UTC)':<20} {'bundle':<16} {'files':>5} {'size':>10} {'new':>10}"]
    for r in rows:
        lines.append(f"{r['id'][:12]}  {r['created'][:19].replace('T', ' '):<20} {r['bundle']:<16} {r['files']:>5} "
                     f"{human_size(r['bytes']):>10} {human_size(r['new_bytes'] or 0):>10}")
    if not rows:
        lines.append(f"(no snapshots in region {reg.name})")
    for key, why in sorted(repo.unreadable.items()):
        typer.echo(f"WARNING: {key} left out, it cannot be read or trusted: {why}", err=True)
    warn_hidden(hidden, reg.name)
    for r in rows:
        if r["future_dated"]:
            typer.echo(f"WARNING: snapshot {r['id'][:12]} says it was created at {r['created']}, later than the store "
                       "received it: the writer's clock was ahead. Order follows the catalog, not this time.", err=True)
        if r["fork"]:
            typer.echo(f"WARNING: snapshot {r['id'][:12]} was written by a writer that did not see the snapshot "
                       "before it (two writers raced); both are kept and listed.", err=True)
    emit(as_json, rows, "\n".join(lines))
    if repo.unreadable:
        raise typer.Exit(6)


@app.command()
def show(
    snapshot_ref: Annotated[str, typer.Argument(metavar="SNAPSHOT", help="Snapshot id, unique prefix or 'latest'.")],
    region: RegionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one snapshot's manifest: files, sizes, digests, parent, times."""
    cfg = load_cfg()
    hidden: dict = {}
    reg, repo = _repo(cfg, region, read_only=True, hidden=hidden)
    sid = repo.resolve(snapshot_ref)
    m = repo.load_manifest(sid)
    warn_hidden(hidden, reg.name)
    if as_json:
        emit(True, {"id": sid, "region": reg.name} | m.to_json())
        return
    lines = [f"snapshot  {sid}", f"region    {reg.name}", f"bundle    {m.bundle} ({m.kind})",
             f"created   {m.created}  (started {m.started})", f"source    {m.host}:{m.source}",
             f"parent    {m.parent or '-'}", f"tool      llmdr {m.tool_version}, {m.hash}, {m.chunker.name}",
             f"size      {human_size(m.total_size)} in {len(m.files)} files, {len(m.chunk_set())} distinct chunks",
             "", f"{'mode':<5} {'size':>10}  {'digest':<12}  path"]
    for f in m.files:
        lines.append(f"{f.mode:04o}  {human_size(f.size):>10}  {f.digest[:12]}  {f.path}")
    typer.echo("\n".join(lines))
