"""`llmdr verify` (chunks read back and hashed, repair, the restore test) and `llmdr forget` (retention and
prune)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmdr.cli.cmd_serve import golden_table
from llmdr.cli.root import JsonOpt, RegionOpt, app, as_of, emit, hidden_json, human_size, load_cfg, progress_for
from llmdr.errors import UsageError


@app.command()
def verify(
    snapshot_ref: Annotated[str, typer.Argument(metavar="SNAPSHOT", help="Snapshot id, unique prefix or 'latest'.")],
    region: RegionOpt = None,
    sample: Annotated[Optional[str], typer.Option(help="Read only subset N/T of the chunks (or T: today's share, "
                                                       "rotating daily). Default: every chunk.")] = None,
    repair: Annotated[bool, typer.Option("--repair", help="Fix corrupt or missing chunks from another "
                                         "region.")] = False,
    restore_test: Annotated[bool, typer.Option("--restore-test", help="Also restore, check, serve and ask the "
                                               "golden set.")] = False,
    golden_file: Annotated[Path, typer.Option("--golden", help="Golden file for --restore-test (JSONL); judges "
                                              "only snapshots from before golden sets were versioned (a newer "
                                              "snapshot is judged by its own set).")] = Path("golden.jsonl"),
    as_json: JsonOpt = False,
) -> None:
    """Verify a snapshot in a region: every chunk (or a subset) read back and hashed; optionally repaired from
    another region; optionally the restore test. Exit 6 when anything is wrong."""
    from llmdr.repo import ops

    cfg = load_cfg()
    reg = cfg.region(region)
    hidden: dict = {}
    check = ops.verify(cfg, snapshot_ref, region=region, sample=sample, repair=repair, progress=progress_for(as_json),
                       as_of=as_of("verify --repair" if repair else "verify"), hidden=hidden)
    sid = check.snapshot_id
    scope = f"subset {check.subset}" if check.subset else "every chunk"
    lines = [f"verify {sid[:12]} in {reg.name} ({scope}): {'ok' if check.ok else 'FAILED'} - {check.chunks_read} of "
             f"{check.chunks_total} chunks read ({human_size(check.bytes_read)}) in {check.duration_s:.2f}s"]
    mc = getattr(check, "manifest", None)
    if mc is not None and mc.repaired_from:
        lines.append(f"  - manifest {mc.key} {mc.state}: repaired from {mc.repaired_from}")
    for state, ids in (("missing", check.missing), ("corrupt", check.corrupt)):
        for d in ids:
            lines.append(f"  - chunk {d[:12]} {state} ({check.where.get(d, 'in no index')})"
                         + (f": repaired from {check.repaired[d]}" if d in check.repaired else ""))
    if check.unrepaired and not repair:
        lines.append("    run again with --repair to fetch intact copies from another region")
    from llmdr.repo.undelete import describe

    for h in hidden_json(hidden):  # readable through its locked version, but a plain read finds nothing
        lines.append(f"  - {describe(h)}: run `llmdr undelete --region {reg.name}`")
    out = {"region": reg.name, "chunks": check.to_json(), "hidden": hidden_json(hidden)}
    ok = check.ok and not hidden
    if restore_test:
        from llmdr.serving import restoretest

        res = restoretest.run_restore_test(cfg, sid, region=region, golden_path=golden_file)
        ok = ok and res.ok
        out["restore_test"] = res.to_json()
        lines.append(f"restore test of {sid[:12]} from {reg.name}: {'PASS' if res.ok else 'FAIL'} "
                     f"({res.duration_s:.2f}s)")
        lines += [f"  - {p}" for p in res.problems]
        if res.golden is not None:
            lines.append(golden_table(res.golden))
    emit(as_json, out | {"ok": ok}, "\n".join(lines))
    if not ok:
        raise typer.Exit(6)


@app.command()
def forget(
    keep_last: Annotated[int, typer.Option(min=1, help="Keep the newest N snapshots of the bundle.")],
    keep_every: Annotated[Optional[int], typer.Option(min=1, help="Also keep every Mth older snapshot.")] = None,
    region: RegionOpt = None,
    prune: Annotated[bool, typer.Option(help="Then prune: delete packs marked earlier, mark those no snapshot uses "
                                        "now.")] = True,
    grace: Annotated[str, typer.Option(help="Prune safety time: packs are deleted this long after they were "
                                       "marked, and never younger than this.")] = "6h",
    as_json: JsonOpt = False,
) -> None:
    """Forget the bundle's snapshots outside the retention policy in one region (the newest is never forgotten),
    then prune (`llmdr prune`)."""
    from llmdr.config import parse_duration
    from llmdr.repo.ops import forget as do_forget

    cfg = load_cfg()
    reg = cfg.region(region)
    try:
        grace_s = parse_duration(grace).total_seconds()
    except ValueError as exc:
        raise UsageError(f"--grace: {exc}") from None
    res = do_forget(cfg, keep_last=keep_last, keep_every=keep_every, region=region, prune=prune, grace_s=grace_s)
    text = f"{reg.name}: kept {len(res.kept)}, forgot {len(res.forgotten)} snapshot(s)"
    if res.prune is not None:
        p = res.prune
        text += (f"; prune deleted {p['deleted']} pack(s) ({human_size(res.bytes_freed)} freed) and marked "
                 f"{p['planned']} for deletion after {grace} ({res.chunks_in_grace} unused pack(s) younger than that)")
    if res.locked or res.chunks_locked:
        text += (f"\nObject Lock keeps the objects of {len(res.locked)} forgotten snapshot(s) ("
                 + ", ".join(f"{k[:12]} until {v}" for k, v in res.locked.items())
                 + f") and {res.chunks_locked} unused pack(s); a later prune removes them once unlocked")
    if res.locks_extended:
        text += f"\nextended the Object Lock of {res.locks_extended} object(s) of kept snapshots"
    if res.raced:
        text += f"\nWARNING: snapshot(s) {', '.join(r[:12] for r in res.raced)} were written during the prune and " \
                "lost a chunk; run `llmdr verify latest --repair`"
    emit(as_json, res.to_json() | {"region": reg.name}, text)
    if res.raced:
        raise typer.Exit(6)
