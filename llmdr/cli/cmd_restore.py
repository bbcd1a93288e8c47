"""`llmdr restore`: a snapshot from a region into a folder, every chunk verified."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmdr.cli.root import (
    JsonOpt,
    RegionOpt,
    app,
    as_of,
    emit,
    hidden_json,
    human_size,
    load_cfg,
    progress_for,
    warn_hidden,
)
from llmdr.errors import UnsafePathError


@app.command()
def restore(
    snapshot_ref: Annotated[str | None, typer.Argument(
        metavar="[SNAPSHOT]", help="Snapshot id, unique prefix or 'latest' (omit it with --checkpoint).")] = None,
    to: Annotated[Path | None, typer.Option("--to", help="Target folder (created if missing).")] = None,
    region: RegionOpt = None,
    checkpoint: Annotated[str | None, typer.Option(
        "--checkpoint", metavar="latest|step:N", help="Restore a training checkpoint of the bundle's checkpoint "
        "series instead: the highest step, or step N.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Restore into a non-empty folder, overwriting the "
                                        "snapshot's files.")] = False,
    preserve_special_bits: Annotated[bool, typer.Option(
        "--preserve-special-bits", help="Restore setuid, setgid and sticky bits as the snapshot records them "
        "(by default they are removed, as tar does without -p).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Restore a snapshot from a region into a folder, verifying every chunk; resumes an interrupted restore."""
    from llmdr.errors import UsageError
    from llmdr.repo.ops import restore as do_restore

    if (snapshot_ref is None) == (checkpoint is None):
        raise UsageError("name what to restore: a SNAPSHOT (id, prefix or latest) or --checkpoint latest|step:N, "
                         "not both")
    if to is None:
        raise UsageError("restore needs --to FOLDER, the folder to restore into (created if missing)")
    cfg = load_cfg()
    reg = cfg.region(region)
    if checkpoint is not None:
        _restore_checkpoint(cfg, checkpoint, to, reg.name, force, as_json)
        return
    hidden: dict = {}
    try:
        res = do_restore(cfg, snapshot_ref, to, region=region, force=force, progress=progress_for(as_json),
                         as_of=as_of("restore"), hidden=hidden, preserve_special_bits=preserve_special_bits)
    except UnsafePathError as e:
        if "manifest path" not in str(e):  # a symlink in the target: its message says where and why
            raise
        # The manifest is read and every path checked before the target is touched.
        raise UnsafePathError(
            f"snapshot {snapshot_ref} in region '{reg.name}' was refused: {e}. Nothing was written. Its manifest was "
            f"damaged or tampered with: restore another snapshot (`llmdr snapshots --region {reg.name}`) or from "
            "another region, and check who can write to that bucket."
        ) from None
    sid = res.snapshot_id
    rate = res.bytes_downloaded / res.duration_s if res.duration_s else 0
    warn_hidden(hidden, reg.name)
    emit(as_json, res.to_json() | {"region": reg.name, "hidden": hidden_json(hidden)},
         f"restored {sid[:12]} from {reg.name} into {res.target}: {res.files} files, {human_size(res.bytes_total)} "
         f"({res.files_skipped} already in place), {res.duration_s:.2f}s ({human_size(rate)}/s), "
         "every chunk verified"
         + (f"; setuid/setgid/sticky bits removed from {res.special_bits_stripped} files (--preserve-special-bits "
            "keeps them)" if res.special_bits_stripped else ""))


def _restore_checkpoint(cfg, ref: str, to: Path, region: str, force: bool, as_json: bool) -> None:
    from llmdr.repo.ops import restore_checkpoint

    res = restore_checkpoint(cfg, ref, to, region=region, force=force, progress=progress_for(as_json))
    emit(as_json, res.to_json() | {"region": region, "checkpoint": ref},
         f"restored checkpoint {ref} (snapshot {res.snapshot_id[:12]}) from {region} into {res.target}: {res.files} "
         f"files, {human_size(res.bytes_total)} ({res.files_skipped} already in place), {res.duration_s:.2f}s, "
         "every chunk verified")
