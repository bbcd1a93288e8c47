"""`llmdr drill` (run the DR drill flow in this process), `drills` (their history), `report verify` (check a signed
drill report offline) and `runbook` (write the DR runbook)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmdr.cli.root import JsonOpt, app, emit, load_cfg, run_flow, use_local_prefect
from llmdr.errors import LlmdrError, UsageError

report_app = typer.Typer(help="Check drill reports.", no_args_is_help=True)
app.add_typer(report_app, name="report")


@app.command()
def drill(as_json: JsonOpt = False) -> None:
    """Run a DR drill now: cut the primary region off, watch the automation fail over on its own, measure RTO and
    RPO, check the answers through the router, run the restore test from the DR store, bring the primary back and
    fail back; write a signed report (HTML, PDF, JSON) and an MLflow run. Needs `llmdr stack up --ui` (the
    automation and the monitor run there). Exit 8 if any control fails."""
    import getpass

    from llmdr.devstack import orchestration
    from llmdr.drill.record import DrillFailed

    cfg = load_cfg()
    if "PREFECT_API_URL" not in __import__("os").environ and not orchestration.status(cfg).healthy:
        raise UsageError("a drill watches the monitor → automation → failover chain, which runs on the Prefect "
                         "server: start it with `llmdr stack up --ui` (or set PREFECT_API_URL)")
    use_local_prefect(cfg)
    from flows.dr_drill import dr_drill

    try:
        out = run_flow(dr_drill, started_by=f"cli:{getpass.getuser()}")
    except DrillFailed as exc:
        if exc.record is not None:
            emit(as_json, exc.record, _drill_text(exc.record))
        raise
    emit(as_json, out, _drill_text(out))


def _drill_text(rec: dict) -> str:
    verdict = "PASS" if rec["passed"] else "FAIL"
    lines = [f"DR drill {rec['id']} of {rec['bundle']}: {verdict}"]
    if rec.get("failed_over_at_end"):
        lines.append("!!! THE SYSTEM IS LEFT FAILED OVER: run `llmdr failback` !!!")
    for c in rec["controls"]:
        res = "N/A " if c["passed"] is None else ("PASS" if c["passed"] else "FAIL")
        lines.append(f"  {res}  {c['name']}: {c['value']} (objective {c['objective']})")
    rep = rec.get("report") or {}
    if rep:
        files = rep.get("files", {})
        lines.append(f"report: {rep.get('folder')}")
        for k in ("html", "pdf", "evidence"):
            if k in files:
                lines.append(f"  {k}: {files[k]}")
        lines.append(f"  verify: llmdr report verify {rep.get('folder')}")
        if rep.get("mlflow_run_id"):
            lines.append(f"  MLflow run: {rep['mlflow_run_id']} (experiment dr-drills)")
    return "\n".join(lines)


@app.command()
def drills(
    chart: Annotated[Optional[Path], typer.Option(help="Also write the RTO/RPO trend chart (PNG) here.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Past drills (date, RTO, RPO, result), newest last; warns when the last passing drill is older than
    objectives.drill_interval, or there is none (`llmdr readiness` turns that into a failing check)."""
    import time

    from llmdr.drill import record as core

    cfg = load_cfg()
    hist = core.history(cfg)
    rows = [r.to_json() for r in hist]
    lines = [f"{'started (UTC)':<24} {'drill id':<24} {'RTO s':>7} {'RPO s':>7}  result"]
    for r in rows:
        m = r["measurements"]
        rto = f"{m['rto_s']:.1f}" if m.get("rto_s") is not None else "-"
        rpo = f"{m['rpo_s']:.1f}" if m.get("rpo_s") is not None else "-"
        res = "PASS" if r["passed"] else ("FAIL (left failed over)" if r["failed_over_at_end"] else "FAIL")
        lines.append(f"{r['started_utc']:<24} {r['id']:<24} {rto:>7} {rpo:>7}  {res}")
    last = core.last_pass_ts(cfg)
    interval = cfg.objectives.drill_interval.total_seconds()
    stale = last is None or time.time() - last > interval
    from datetime import timedelta

    from llmdr.config import format_duration

    if last is None:
        warn = ("WARNING: no passing drill on record; run one (`llmdr drill`) — objective: every "
                f"{format_duration(cfg.objectives.drill_interval)}")
    elif stale:
        warn = (f"WARNING: the last passing drill was {format_duration(timedelta(seconds=time.time() - last))} ago, "
                f"more than the {format_duration(cfg.objectives.drill_interval)} drill interval: your plan may be "
                "broken")
    else:
        warn = (f"last passing drill {format_duration(timedelta(seconds=time.time() - last))} ago "
                f"(interval {format_duration(cfg.objectives.drill_interval)})")
    if chart is not None and rows:
        from llmdr.drill.report import trend_chart

        trend_chart(rows, chart)
        lines.append(f"trend chart: {chart}")
    emit(as_json, {"drills": rows, "stale": stale, "warning": warn}, "\n".join(lines + [warn]))


@app.command()
def runbook(
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Where to write it (default: runbook.path, "
                                                "RUNBOOK.md next to llmdr.yaml).")] = None,
) -> None:
    """Write the DR runbook (markdown) from the config: who is notified, how to fail over by hand (CLI and UI),
    how to restore, where credentials live (names only), emergency access."""
    from llmdr.drill.runbook import write_runbook

    cfg = load_cfg()
    path = write_runbook(cfg, out)
    typer.echo(f"runbook written to {path}")
    if out is None:  # the runbook in force: into every region's store too, so it outlives this host
        from llmdr.control import put_document

        place = put_document(cfg, "runbook", path)
        typer.echo(f"stored in region(s): {', '.join(place.held) or '-'}"
                   + (f"; pending for {', '.join(place.pending)} (`llmdr control sync`)" if place.pending else ""))


@report_app.command("verify")
def report_verify(
    folder: Annotated[Path, typer.Argument(help="A drill report folder (holds SIGNATURE.json).")],
    public_key: Annotated[Optional[Path], typer.Option(help="Ed25519 public key (PEM). Default: the project's "
                                                       "drill.signing.public_key, else the report-signing.pub "
                                                       "shipped in the folder.")] = None,
    fingerprint: Annotated[Optional[str], typer.Option(
        help="The signer's published key fingerprint (64 hex digits) or key id (ed25519:...): fail (exit 12) unless "
             "the report was signed by that key. Without it, a report signed by the key shipped in the folder only "
             "proves the files match that key.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a drill report offline: every file's SHA-256 against the signed list, the signature (Ed25519 with the
    public key, or HMAC with the key in drill.signing.hmac_key_env), and that the folder is named after the drill it
    was signed for. Symlinks, FIFOs, device files and extra folders are refused. Exit 12 if anything was changed."""
    import os

    from llmdr.drill.portable import PUBLIC_KEY_FILE, expected_key, fingerprint_problem, key_fingerprint
    from llmdr.drill.signing import verify_folder

    expected = expected_key(fingerprint) if fingerprint is not None else None

    if folder.is_file():
        folder = folder.parent
    if str(folder) in (".", ".."):  # `llmdr report verify .` inside the folder: name the folder in the output
        folder = Path(os.path.abspath(folder))
    key = public_key
    hmac_key = None
    try:
        cfg = load_cfg()
        if key is None:
            key = cfg.state_path / cfg.drill.signing.public_key
        env_name = cfg.drill.signing.hmac_key_env
    except LlmdrError:  # outside a project (an auditor in the report folder): the folder's own key, said so below
        env_name = "LLMDR_REPORT_HMAC_KEY"
    env = os.environ.get(env_name)
    hmac_key = env.encode() if env else None
    source = "given" if public_key is not None else "project"
    if (key is None or not key.exists()) and public_key is None and (folder / PUBLIC_KEY_FILE).is_file():
        key, source = folder / PUBLIC_KEY_FILE, "folder"
    res = verify_folder(folder, public_key=key if key and key.exists() else None, hmac_key=hmac_key)
    fp = key_fingerprint(key) if res.algorithm == "ed25519" and key and key.exists() else None
    if expected is not None and res.ok and (problem := fingerprint_problem(expected, fp)):
        res.ok, res.problems = False, [*res.problems, problem]
    shipped = " by the key shipped in the folder" if fp and source == "folder" and expected is None else ""
    note = ""
    if expected is not None and fp:
        note = f"\nfingerprint {fp}: the one you expected"
    elif shipped:
        note = (f"\nfingerprint {fp} ({PUBLIC_KEY_FILE}): a key in the folder proves only that the files match it; "
                "compare the fingerprint with the one the signer published, or pass --public-key FILE")
    elif fp:
        note = f"\npublic key {key}, fingerprint {fp}"
    text = (f"{folder}: signature OK{shipped} for drill {res.drill_id} ({res.algorithm}, key {res.key_id}); "
            f"{len(res.files)} files unchanged" + note if res.ok else
            f"{folder}: VERIFICATION FAILED\n" + "\n".join(f"  - {p}" for p in res.problems))
    emit(as_json, {"ok": res.ok, "problems": res.problems, "key_id": res.key_id, "algorithm": res.algorithm,
                   "drill_id": res.drill_id, "files": res.files, "public_key": str(key) if key else None,
                   "public_key_source": source if fp else None, "fingerprint": fp}, text)
    if not res.ok:
        raise typer.Exit(12)
