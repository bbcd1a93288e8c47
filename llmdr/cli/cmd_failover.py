"""`llmdr monitor` (probe the endpoints, flag degraded or down ones), `failover`, `failback` (run those flows in this
process) and `failovers` (their history)."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from llmdr.cli.root import JsonOpt, app, emit, load_cfg, run_flow, use_local_prefect


@app.command()
def monitor(
    once: Annotated[bool, typer.Option("--once", help="One probe round, then exit.")] = False,
    duration: Annotated[Optional[float], typer.Option(help="Watch this many seconds (default: until Ctrl-C).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Probe every region's endpoint and the router every monitor.interval, learn each one's normal latency /
    tokens / error rate, and flag degraded or down endpoints (as Prefect events when a server runs: a down active
    region starts the failover automation). Exit 3 if the last round found the active region down."""
    from llmdr.failover.watch import watch

    cfg = load_cfg()
    use_local_prefect(cfg)

    def show(res) -> None:
        if as_json:
            typer.echo(json.dumps(res.to_json(), sort_keys=True, default=str))
            return
        from datetime import datetime, timezone

        when = datetime.fromtimestamp(res.ts, timezone.utc).strftime("%H:%M:%S")
        for smp in res.samples:
            a = res.assessments[smp.target]
            lat = f"{smp.latency_s * 1000:7.1f} ms" if smp.latency_s is not None else "      -   "
            mark = "*" if smp.target == res.active else " "
            why = "; ".join(a.reasons) if a.reasons else (smp.error or "")
            typer.echo(f"{when} {mark}{smp.target:<11} {a.status:<9} {lat}  {why}")
        for region, hw in res.hardware.items():
            why = "; ".join(hw.reasons + [f"{g.uuid}: {'; '.join(g.reasons)}" for g in hw.gpus if g.reasons])
            typer.echo(f"{when}  hardware {region:<11} {hw.status:<9} {len(hw.gpus)} GPU(s)  {why}")
        for e in res.emitted:
            sent = "" if e["sent"] else " [no Prefect API: not sent]"
            typer.echo(f"{when}  event {e['event']} ({e['target']}){sent}")

    summary = watch(cfg, rounds=1 if once else None, duration=duration, on_round=show)
    last = summary.last
    if last.active and last.assessments.get(last.active) and last.assessments[last.active].status == "down":
        raise typer.Exit(3)


def _failover_text(out: dict) -> str:
    from llmdr.artifacts import failover_markdown

    return failover_markdown(out)


@app.command()
def failover(
    to: Annotated[Optional[str], typer.Option("--to", help="Target region (default: failover.target or the first "
                                              "secondary).")] = None,
    reason: Annotated[Optional[str], typer.Option(help="Why; recorded with the switch (default \"manual failover\"). "
                                                  "Required with --accept-golden-mismatch.")] = None,
    accept_golden_mismatch: Annotated[bool, typer.Option(
        "--accept-golden-mismatch", help="Move traffic even if the target's answers fail the golden gate (they must "
        "still answer every case); needs --reason. Recorded with your user@host, signed, and announced.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Move traffic to a verified replica in another region now: start it from that region's store if it is not
    warm, check the golden set against it (judged by golden_gate), switch the router, check again through the
    router (switch rolled back if that fails). Runs the failover flow in this process (visible in the UI when
    `stack up --ui` runs)."""
    from llmdr.failover.run import DEFAULT_REASON, golden_override

    golden_override("manual", accept_golden_mismatch, reason or "", by="-")  # a missing reason: before anything
    use_local_prefect(load_cfg())
    from flows.failover import failover as flow

    out = run_flow(flow, to=to or "", reason=reason or DEFAULT_REASON, trigger="manual",
                   accept_golden_mismatch=accept_golden_mismatch)
    emit(as_json, out, _failover_text(out))


@app.command()
def failback(
    reason: Annotated[str, typer.Option(help="Why; recorded with the switch.")] = "primary healthy again",
    as_json: JsonOpt = False,
) -> None:
    """Return traffic to the primary: its store must answer; snapshots taken meanwhile are copied back; its
    replica is (re)started on the newest snapshot and verified before the router switches."""
    use_local_prefect(load_cfg())
    from flows.failover import failback as flow

    out = run_flow(flow, reason=reason, trigger="manual")
    emit(as_json, out, _failover_text(out))


@app.command()
def failovers(as_json: JsonOpt = False) -> None:
    """Every failover and failback so far: when, where to, what started it, the RTO and where it went."""
    from llmdr.failover import steps as fo

    cfg = load_cfg()
    hist = [h.to_json() for h in fo.history(cfg)]
    lines = [f"{'started (UTC)':<24} {'kind':<9} {'from -> to':<22} {'trigger':<10} {'result':<8} {'RTO s':>6}  "
             "detection + dispatch + recovery"]
    for h in hist:
        b = h.get("rto_breakdown")
        parts = f"{b['detection_s']:.1f} + {b['dispatch_s']:.1f} + {b['recovery_s']:.1f}" if b else "-"
        result = "noop" if h.get("noop") else ("ok" if h["ok"] else "FAILED")
        rto = f"{h['rto_s']:.2f}" if h.get("rto_s") is not None else "-"
        lines.append(f"{h['started_utc']:<24} {h['kind']:<9} {str(h['from_region']) + ' -> ' + h['to_region']:<22} "
                     f"{h['trigger']:<10} {result:<8} {rto:>6}  {parts}")
    emit(as_json, hist, "\n".join(lines) if hist else "no failover or failback yet")
