"""`llmdr serve` (a bundle over an OpenAI-compatible API), `llmdr golden record|check` (the golden answers a
restored model must give) and `llmdr replica start|stop|status` (each region's serving replica)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmdr.cli.root import JsonOpt, app, emit, load_cfg, progress_for
from llmdr.errors import LlmdrError, UsageError

golden_app = typer.Typer(help="Record and check golden answers of a serving endpoint.", no_args_is_help=True)
app.add_typer(golden_app, name="golden")
replica_app = typer.Typer(help="Start, stop and show the serving replica of a region.", no_args_is_help=True)
app.add_typer(replica_app, name="replica")


@app.command()
def serve(
    bundle_dir: Annotated[Path, typer.Argument(help="Bundle folder to serve (an llmdr-tiny model).")],
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    host: Annotated[str, typer.Option(help="Address to bind; loopback by default.")] = "127.0.0.1",
    drift_config: Annotated[str | None, typer.Option(
        help="llmdr.yaml (optionally PATH#BUNDLE) whose monitor.drift says which share of whole answers to keep, "
             "as counts only, for the monitor's drift check; `llmdr replica start` passes it when monitor.drift "
             "is set.")] = None,
    drift_target: Annotated[str | None, typer.Option(help="The region these answers are counted for (with "
                                                          "--drift-config).")] = None,
) -> None:
    """Serve a bundle over an OpenAI-compatible API (/v1/completions, /v1/chat/completions with streaming,
    /v1/models, /health). SIGTERM or Ctrl-C: requests in flight finish, then it exits."""
    import socket

    from llmdr.serving.server import ModelService, make_server

    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port} is not a TCP port; give one between 1 and 65535 (0: any free port)")
    on_answer = None
    if drift_config or drift_target:
        if not (drift_config and drift_target):
            raise UsageError("--drift-config and --drift-target go together: give both (or neither)")
        from llmdr.config import load_config
        from llmdr.failover.drift import tee

        cfg = load_config(drift_config)
        if cfg.monitor.drift is None:
            raise UsageError(f"--drift-config {drift_config}: monitor.drift is not set there; add e.g. "
                             "`monitor: {drift: {sample: 0.05}}` or leave --drift-config out")
        on_answer = tee(cfg, drift_target)
    service = ModelService(bundle_dir)
    try:
        httpd = make_server(service, host, port, on_answer=on_answer)
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: {exc.strerror}; give an address or a name this machine resolves, e.g. "
                         "127.0.0.1") from None
    except OSError as exc:
        raise LlmdrError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port") from None
    bound = httpd.server_address[1]
    typer.echo(f"serving {service.name} from {bundle_dir} on http://{host}:{bound} (bundle {service.digest[:12]})",
               err=True)
    try:
        httpd.serve_forever()  # returns after SIGTERM once requests in flight have finished
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


@golden_app.command("record")
def golden_record(
    url: Annotated[str, typer.Option(help="Known-good OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000.")],
    out: Annotated[Path, typer.Option(help="Golden file to write (JSONL).")] = Path("golden.jsonl"),
    prompts: Annotated[Optional[Path], typer.Option(help="Text file, one chat prompt per line (default: built-in "
                                                        "set).")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="max_tokens for every case (default: the model's).")] = None,
    bundle: Annotated[Optional[Path], typer.Option(help="The bundle folder the endpoint serves: its per-component "
                                                       "digests are recorded, so a restore test can name what "
                                                       "differs.")] = None,
) -> None:
    """Ask the endpoint every prompt (greedy) and write the answers as the golden set."""
    from llmdr.serving import golden
    from llmdr.serving.endpoint import OpenAIEndpoint

    ep = OpenAIEndpoint(url)
    health = ep.health()
    texts = [ln.strip() for ln in prompts.read_text().splitlines() if ln.strip()] if prompts else golden.DEFAULT_PROMPTS
    cases = golden.default_cases(texts)
    for c in cases:
        c.max_tokens = max_tokens
    header = {"model": (ep.models() or [None])[0], "bundle_digest": health.get("bundle_digest"), "url": url}
    if bundle is not None:
        from llmdr.repo.bundle import content_digests, detected_specs

        header["components"] = content_digests(bundle, detected_specs(bundle))
    gs = golden.record(cases, ep.answer, header)
    gs.save(out)
    typer.echo(f"recorded {len(gs.cases)} golden answers from {url} into {out}")


@golden_app.command("check")
def golden_check(
    url: Annotated[str, typer.Option(help="Endpoint to check.")],
    golden_file: Annotated[Path, typer.Option("--golden", help="Golden file (JSONL).")] = Path("golden.jsonl"),
    as_json: JsonOpt = False,
) -> None:
    """Compare the endpoint's greedy answers with the golden set; exit 5 on any mismatch."""
    from llmdr.serving import golden
    from llmdr.serving.endpoint import OpenAIEndpoint

    gs = golden.GoldenSet.load(golden_file)
    ep = OpenAIEndpoint(url)
    ep.models()  # unreachable: one clear error, not one per case
    report = golden.check(gs, ep.answer)
    emit(as_json, report.to_json(), golden_table(report))
    if not report.ok:
        raise typer.Exit(5)


def golden_table(report) -> str:
    lines = [f"{'case':<10} {'result':<8} {'similarity':>10}  answer"]
    for r in report.results:
        verdict = "ok" if r.ok else ("ERROR" if r.error else "MISMATCH")
        shown = r.error or r.actual or ""
        lines.append(f"{r.id:<10} {verdict:<8} {r.similarity:>10.2f}  {shown[:70]}")
        if not r.ok and not r.error:
            lines.append(f"{'':<10} {'':<8} {'expected':>10}  {r.expected[:70]}")
    lines.append(f"{report.passed}/{len(report.results)} golden answers match")
    return "\n".join(lines)


@replica_app.command("start")
def replica_start(
    region: Annotated[str, typer.Argument(help="Region whose replica to start.")],
    snapshot: Annotated[str, typer.Option(help="Snapshot id, prefix or 'latest' in that region's store.")] = "latest",
    as_json: JsonOpt = False,
) -> None:
    """Restore SNAPSHOT from REGION's own store and start its serving replica (replaces one on another snapshot)."""
    from llmdr.serving.replica import start_replica

    cfg = load_cfg()
    st = start_replica(cfg, cfg.region(region), ref=snapshot, progress=progress_for(as_json))
    emit(as_json, st.to_json(), f"replica {region}: {st.url} serving {(st.snapshot or '')[:12]} (pid {st.pid}; "
                                f"restore {st.restore_s or 0:.2f}s, start {st.start_s or 0:.2f}s)")


@replica_app.command("stop")
def replica_stop(region: Annotated[str, typer.Argument(help="Region whose replica to stop.")]) -> None:
    """Stop REGION's replica (only a process llmdr started)."""
    from llmdr.serving.replica import stop_replica

    cfg = load_cfg()
    stop_replica(cfg, cfg.region(region))
    typer.echo(f"replica {region}: stopped")


@replica_app.command("status")
def replica_status_cmd(as_json: JsonOpt = False) -> None:
    """Each region's replica: answering, pid, snapshot."""
    from llmdr.serving.replica import replica_status

    cfg = load_cfg()
    rows = [replica_status(cfg, r) for r in cfg.regions if r.serving]
    emit(as_json, [r.to_json() for r in rows], "\n".join(
        f"{r.region:<12} {'healthy' if r.healthy else 'down':<8} {r.pid or '-':>7}  {r.url:<28} "
        f"{(r.snapshot or '-')[:12]}  {r.detail}" for r in rows))
