"""`llmdr migrate`: convert a region's repository from format v1 to format v2 in place, and later (`--finish`)
delete the v1 objects it no longer needs (docs/design/repository-format-v2.md §8)."""

from __future__ import annotations

from typing import Annotated

import typer

from llmdr.cli.root import JsonOpt, RegionOpt, app, emit, human_size, load_cfg, progress_for
from llmdr.errors import UsageError

DEFAULT_SAFETY = "24h"


@app.command()
def migrate(
    region: RegionOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Migrate even though a v1 object was written in the last "
                                        "10 minutes (only when no v1 llmdr writes to this region).")] = False,
    finish: Annotated[bool, typer.Option("--finish", help="After a migration: delete the v1 objects (chunks/, "
                                         "snapshots/) the v2 repository no longer needs, older than the safety "
                                         "time; locked ones are reported and left.")] = False,
    safety_time: Annotated[str, typer.Option("--safety-time", help="With --finish: delete only v1 objects at least "
                                             "this old by the store's clock.")] = DEFAULT_SAFETY,
    lock_wait: Annotated[str, typer.Option("--lock-wait", help="Wait up to this long for a conflicting lock "
                                           "(e.g. 10m).")] = "0s",
    as_json: JsonOpt = False,
) -> None:
    """Convert a region's v1 repository to format v2 (resumable; v1 keeps working until the last step). Exit 6
    when a v1 snapshot could not be migrated."""
    from llmdr.config import parse_duration
    from llmdr.repo.migrate import migrate as run_migrate
    from llmdr.repo.migrate import migrate_finish
    from llmdr.storage.factory import open_region

    def seconds(text: str, what: str) -> float:
        try:
            return parse_duration(text).total_seconds()
        except ValueError as exc:
            raise UsageError(f"{what}: {exc}") from None

    cfg = load_cfg()
    reg = cfg.region(region)
    store = open_region(cfg, reg)
    wait_s = seconds(lock_wait, "--lock-wait")
    if finish:
        if force:
            raise UsageError("--force applies to the migration, not to --finish; run them separately")
        safety = seconds(safety_time, "--safety-time")
        fin = migrate_finish(store, safety_s=safety, workers=cfg.transfer.workers, lock_wait_s=wait_s)
        lines = [f"{reg.name}: deleted {fin.deleted} v1 object(s) ({human_size(fin.bytes_freed)} freed); "
                 f"{fin.young} younger than {safety_time} left for a later run"]
        if fin.locked:
            lines.append(f"{len(fin.locked)} v1 object(s) kept by Object Lock (v2 ignores them; run --finish again "
                         "after their retention ends):")
            lines += [f"  - {k}" for k in sorted(fin.locked)[:10]]
        if fin.kept:
            lines.append(f"{len(fin.kept)} v1 object(s) kept because v2 still lacks them:")
            lines += [f"  - {k}: {why}" for k, why in sorted(fin.kept.items())[:10]]
        emit(as_json, fin.to_json() | {"region": reg.name, "safety_s": safety}, "\n".join(lines))
        return
    res = run_migrate(store, force=force, workers=cfg.transfer.workers, progress=progress_for(as_json),
                      lock_wait_s=wait_s)
    if res.format_before == 2 and not res.migrated and not res.skipped:
        text = f"{reg.name}: already format v2; nothing left to migrate"
    else:
        text = (f"{reg.name}: migrated {len(res.migrated)} snapshot(s) ({len(res.already)} by an earlier run); "
                f"packed {res.chunks_packed} chunk(s), {human_size(res.bytes_packed)} in {res.packs} pack(s); checked "
                f"{res.chunks_checked} chunk(s), read back {res.chunks_read}, in {res.duration_s:.1f}s")
    lines = [text]
    if res.evidence_copied:
        lines.append(f"copied {res.evidence_copied} evidence object(s) to the new snapshot ids")
    shown = list(res.migrated.items())
    lines += [f"  - v1 {v1[:12]} -> {v2[:12]}" for v1, v2 in shown[:20]]
    if len(shown) > 20:
        lines.append(f"  ... and {len(shown) - 20} more (--json lists every one)")
    if res.skipped:
        lines.append(f"NOT migrated ({len(res.skipped)}); their v1 objects stay, `--finish` keeps them:")
        lines += [f"  - {k}: {why}" for k, why in sorted(res.skipped.items())]
    if res.config_written:
        lines.append(f"config.json now says format 2: every llmdr command works on {reg.name}; old snapshot ids "
                     "still resolve.")
    lines.append(f"Next: once no v1 llmdr uses {reg.name}, `llmdr migrate --region {reg.name} --finish` deletes the "
                 f"v1 objects (after --safety-time, default {DEFAULT_SAFETY}).")
    emit(as_json, res.to_json() | {"region": reg.name}, "\n".join(lines))
    if not res.ok:
        raise typer.Exit(6)
