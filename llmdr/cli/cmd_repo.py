"""Repository maintenance: `llmdr prune` (the two-phase delete of unused packs), `llmdr repair index` (rebuild the
index from the packs, or compact it), `llmdr locks` (who holds the repository, stale locks removed on request) and
`llmdr sign-manifests` (re-sign after a manifest-signing key rotation)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmdr.cli.root import JsonOpt, RegionOpt, app, emit, human_size, load_cfg
from llmdr.errors import UsageError

repair_app = typer.Typer(help="Repair a region's repository (`llmdr repair index`).", no_args_is_help=True)
app.add_typer(repair_app, name="repair")

SafetyOpt = Annotated[str, typer.Option("--safety-time", help="Delete a pack only when a plan marked it at least this "
                                        "long ago by the store's clock, and never a pack younger than this (a "
                                        "running snapshot may not have indexed it yet). Default: retention.grace "
                                        "of llmdr.yaml, else 6h.")]
WaitOpt = Annotated[str, typer.Option("--lock-wait", help="Wait up to this long for a conflicting lock (e.g. 10m).")]


def _seconds(text: str, what: str) -> float:
    from llmdr.config import parse_duration

    try:
        return parse_duration(text).total_seconds()
    except ValueError as exc:
        raise UsageError(f"{what}: {exc}") from None


@app.command()
def prune(region: RegionOpt = None, safety_time: SafetyOpt = "", lock_wait: WaitOpt = "0s",
          as_json: JsonOpt = False) -> None:
    """Give back the space of forgotten snapshots in one region: delete the packs a plan marked at least the safety
    time ago (those a snapshot uses again are rescued), then mark the packs no live snapshot uses now."""
    from llmdr.repo.ops import open_repo
    from llmdr.repo.prune import prune as run_prune

    cfg = load_cfg()
    reg = cfg.region(region)
    safety = _seconds(safety_time, "--safety-time") if safety_time else (
        cfg.retention.grace.total_seconds() if cfg.retention is not None else 6 * 3600.0)
    res = run_prune(open_repo(cfg, reg), safety_s=safety, lock_wait_s=_seconds(lock_wait, "--lock-wait"))
    text = (f"{reg.name}: deleted {len(res.deleted)} pack(s) ({res.chunks_deleted} chunks, {human_size(res.bytes_freed)}"
            f" freed), rescued {len(res.rescued)}, marked {len(res.planned)} for deletion after {safety:.0f} s"
            f" ({res.repacked} repacked); {res.packs_in_grace} unused pack(s) younger than the safety time, "
            f"{res.packs_locked} kept by Object Lock, {res.plans_pending} plan(s) not yet due")
    emit(as_json, res.to_json() | {"region": reg.name, "safety_s": safety}, text)


@repair_app.command("index")
def repair_index(region: RegionOpt = None, compact: Annotated[bool, typer.Option(
        "--compact", help="Merge the index objects into one instead of re-reading every pack.")] = False,
        lock_wait: WaitOpt = "0s", as_json: JsonOpt = False) -> None:
    """Rebuild a region's index from the trailers of its packs (after an index object was lost or damaged), or
    with --compact merge many index objects into one."""
    from llmdr.repo.ops import open_repo
    from llmdr.repo.repair import compact_index, rebuild_index

    cfg = load_cfg()
    reg = cfg.region(region)
    repo = open_repo(cfg, reg, cache=False)
    wait = _seconds(lock_wait, "--lock-wait")
    res = compact_index(repo, lock_wait_s=wait) if compact else rebuild_index(repo, lock_wait_s=wait)
    text = (f"{reg.name}: index {'compacted' if compact else 'rebuilt from ' + str(res.packs) + ' pack(s)'}: "
            f"{res.chunks} chunk(s), new index {(res.index or '-')[:12]}, {res.superseded} index object(s) superseded")
    for key, why in sorted(res.bad_packs.items()):
        text += f"\n  - {key} left out: {why}"
    if res.bad_packs:
        text += "\n  their chunks are now missing: `llmdr verify latest --repair` copies them from another region"
    emit(as_json, res.to_json() | {"region": reg.name}, text)
    if res.bad_packs:
        raise typer.Exit(6)


@app.command()
def locks(region: RegionOpt = None, remove_stale: Annotated[bool, typer.Option(
        "--remove-stale", help="Delete locks whose holder stopped refreshing them (stale by the store's clock).")]
        = False, remove: Annotated[Optional[str], typer.Option(
        "--remove", metavar="KEY", help="Delete this lock object (locks/<id>.json), e.g. one a crashed command left "
        "behind on a host that is gone. Make sure its command is not running: its lock then stops protecting it.")]
        = None, as_json: JsonOpt = False) -> None:
    """List the locks held on a region's repository (snapshot, replicate: shared; prune, repair: exclusive)."""
    from llmdr.repo import repolock
    from llmdr.repo.ops import open_repo

    cfg = load_cfg()
    reg = cfg.region(region)
    store = open_repo(cfg, reg, read_only=not (remove_stale or remove)).store
    removed = repolock.remove_stale(store) if remove_stale else []
    if remove is not None:
        held = {h.key for h in repolock.list_locks(store)}
        if remove not in held:
            raise UsageError(f"no lock object {remove!r} in {reg.name}; `llmdr locks --region {reg.name}` lists them")
        store.delete(remove)
        removed.append(remove)
    held = repolock.list_locks(store)
    rows = [{"key": h.key, "kind": h.kind, "op": h.op, "host": h.host, "pid": h.pid, "age_s": round(h.age_s, 1),
             "live": h.live} for h in held]
    lines = [f"{r['kind']:<9} {r['op']:<12} {r['host']}:{r['pid']}  refreshed {r['age_s']:.0f} s ago"
             f"{'' if r['live'] else ' (STALE)'}  {r['key']}" for r in rows] or [f"(no locks in {reg.name})"]
    lines += [f"removed {key}" for key in removed]
    emit(as_json, {"region": reg.name, "locks": rows, "removed": removed}, "\n".join(lines))


@app.command("sign-manifests")
def sign_manifests(region: RegionOpt = None, dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Only verify and count: write nothing, take no lock.")] = False,
        lock_wait: WaitOpt = "0s", as_json: JsonOpt = False) -> None:
    """After rotating the manifest-signing key: verify every signed object of a region (snapshot records, catalog)
    and write those an old key signed again under the current key (new versions, same content), so the old key can
    be removed from manifest_signing.previous_*. Refused in a region under COMPLIANCE Object Lock. Exit 6 when an
    object does not verify (it is left as it is, never re-signed)."""
    from llmdr.repo.resign import sign_manifests as run

    cfg = load_cfg()
    reg = cfg.region(region)
    res = run(cfg, reg, dry_run=dry_run, lock_wait_s=_seconds(lock_wait, "--lock-wait"))
    verb = "to re-sign" if dry_run else "re-signed"
    text = (f"{reg.name}: {len(res.resigned)} object(s) {verb} with key {res.key_id}, {res.current} already signed "
            f"with it, {len(res.refused)} not verified")
    for key, why in sorted(res.refused.items()):
        text += f"\n  - {key} left as it is: {why}"
    if res.refused:
        text += ("\n  each is damaged, forged, or signed with a key the config does not list; an intact copy can be "
                 f"taken from another region with `llmdr verify <snapshot> --region {reg.name} --repair`")
    elif not dry_run:
        text += (f"\nevery current object in {reg.name} now carries the current key; once every region is re-signed, "
                 "the previous keys can be removed from manifest_signing (reads of the past with --as-of still "
                 "need them)")
    emit(as_json, res.to_json(), text)
    if res.refused:
        raise typer.Exit(6)
