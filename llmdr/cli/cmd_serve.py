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
    url: Annotated[Optional[str], typer.Option(help="Known-good OpenAI-compatible endpoint, e.g. "
                                                    "http://127.0.0.1:8000. With --snapshot: a region's replica that "
                                                    "llmdr started on that snapshot.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Golden file to write (JSONL); default golden.jsonl without "
                                                     "--snapshot, none with it.")] = None,
    prompts: Annotated[Optional[Path], typer.Option(help="Text file, one chat prompt per line (default: built-in "
                                                        "set; with --snapshot, the prompts of the newest earlier "
                                                        "set).")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="max_tokens for every case (default: the model's).")] = None,
    bundle: Annotated[Optional[Path], typer.Option(help="The bundle folder the endpoint serves: its per-component "
                                                       "digests are recorded, so a restore test can name what "
                                                       "differs.")] = None,
    snapshot: Annotated[Optional[str], typer.Option(help="Record the golden set OF THIS SNAPSHOT (id, prefix or "
                                                         "'latest'): restored from --region and served by llmdr "
                                                         "(or asked at --url), then stored, sealed, in every "
                                                         "region.")] = None,
    region: Annotated[Optional[str], typer.Option(help="With --snapshot: the region whose store holds it (default: "
                                                       "the primary).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Ask the endpoint every prompt (greedy) and write the answers as the golden set; with --snapshot, record the
    set that snapshot must answer and attach it to the snapshot's content in every region."""
    from llmdr.serving import golden
    from llmdr.serving.endpoint import OpenAIEndpoint

    if snapshot is not None:
        _record_snapshot(snapshot, region, url, out, prompts, max_tokens, as_json)
        return
    if url is None:
        raise UsageError("give --url URL (a known-good endpoint) or --snapshot ID|latest (record that snapshot's set)")
    if region is not None:
        raise UsageError("--region goes with --snapshot")
    out = out or Path("golden.jsonl")
    ep = OpenAIEndpoint(url)
    health = ep.health()
    cases = golden.default_cases(_prompt_texts(prompts) or golden.DEFAULT_PROMPTS)
    for c in cases:
        c.max_tokens = max_tokens
    header = {"model": (ep.models() or [None])[0], "bundle_digest": health.get("bundle_digest"), "url": url}
    if bundle is not None:
        from llmdr.repo.bundle import content_digests, detected_specs

        header["components"] = content_digests(bundle, detected_specs(bundle))
    gs = golden.record(cases, ep.answer, header)
    gs.save(out)
    typer.echo(f"recorded {len(gs.cases)} golden answers from {url} into {out}")


def _prompt_texts(prompts: Path | None) -> list[str]:
    if prompts is None:
        return []
    if not prompts.is_file():
        raise UsageError(f"--prompts {prompts}: no such file (one chat prompt per line)")
    texts = [ln.strip() for ln in prompts.read_text().splitlines() if ln.strip()]
    if not texts:
        raise UsageError(f"--prompts {prompts} holds no prompt (one chat prompt per line)")
    return texts


def _record_snapshot(ref: str, region: str | None, url: str | None, out: Path | None, prompts: Path | None,
                     max_tokens: int | None, as_json: bool) -> None:
    """`golden record --snapshot`: the set of that snapshot's content, stored sealed in every region."""
    from llmdr.repo import goldens
    from llmdr.repo.ops import open_repo
    from llmdr.serving import golden
    from llmdr.serving import snapgolden as sg
    from llmdr.serving.endpoint import OpenAIEndpoint
    from llmdr.serving.replica import replica_status

    cfg = load_cfg()
    reg = cfg.region(region)
    repo = open_repo(cfg, reg, read_only=True)
    sid = repo.resolve(ref, bundle=cfg.bundle.name)
    digest = goldens.answer_digest(repo.load_manifest(sid))
    texts = _prompt_texts(prompts)
    cases, whence = (golden.default_cases(texts), f"the prompts of {prompts}") if texts else sg.prompts_for(
        cfg, repo, sid)
    if max_tokens is not None:
        for c in cases:
            c.max_tokens = max_tokens
    if url is None:
        try:
            gs = sg.record_from_snapshot(cfg, repo, sid, cases, cfg.bundle_state_path / "scratch")
        except sg.CannotServe as exc:
            raise UsageError(f"llmdr cannot serve snapshot {sid[:12]} itself ({exc}). Start a replica on it "
                             f"(`llmdr replica start {reg.name} --snapshot {sid[:12]}`) and add --url with that "
                             "region's serving.url") from None
        how_src = f"llmdr serve on snapshot {sid[:12]} restored from {reg.name}"
    else:
        owner = next((r for r in cfg.regions if r.serving is not None
                      and r.serving.url.rstrip("/") == url.rstrip("/")), None)
        st = replica_status(cfg, owner) if owner is not None else None
        if st is None or st.snapshot != sid or not st.healthy:
            serves = f"serves {(st.snapshot or 'an unknown snapshot')[:12]}" if st is not None else \
                "is no region's serving.url"
            raise UsageError(f"--url {url} {serves}, not snapshot {sid[:12]}: a set recorded there would not be this "
                             f"snapshot's. Start a replica on it first: `llmdr replica start REGION --snapshot "
                             f"{sid[:12]}`, then pass that region's serving.url")
        ep = OpenAIEndpoint(url, model=owner.serving.model)
        gs = golden.record(cases, ep.answer, {"model": (ep.models() or [None])[0], "snapshot": sid, "url": url})
        how_src = f"the replica of {owner.name} at {url} on snapshot {sid[:12]}"
    regions = sg.attach(cfg, sid, gs, digest, how="manual", source=f"golden record --snapshot: {how_src}, {whence}")
    if out is not None:
        gs.save(out)
    failed = {r: why for r, why in regions.items() if why != "ok"}
    emit(as_json, {"snapshot": sid, "answer_digest": digest, "cases": len(gs.cases), "regions": regions,
                   "source": how_src, "prompts": whence, "out": str(out) if out else None},
         f"recorded {len(gs.cases)} golden answers of snapshot {sid[:12]} (content {digest[:12]}) from {how_src}; "
         f"stored in " + ", ".join(f"{r} ({why})" for r, why in regions.items()))
    if failed:
        raise LlmdrError(f"the golden set was not written to {', '.join(failed)}; run the command again when the "
                         "region answers")


@golden_app.command("check")
def golden_check(
    url: Annotated[Optional[str], typer.Option(help="Endpoint to check.")] = None,
    golden_file: Annotated[Optional[Path], typer.Option("--golden", help="Golden file (JSONL); default: the set of "
                                                                        "the snapshot the endpoint serves (from "
                                                                        "llmdr.yaml), else golden.jsonl.")] = None,
    region: Annotated[Optional[str], typer.Option(help="Check this region's replica (its serving.url) against its "
                                                       "snapshot's set, instead of --url.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare the endpoint's greedy answers with the golden set, judged by the config's golden_gate (exact without
    a config); exit 5 on a mismatch."""
    from llmdr.errors import ConfigError
    from llmdr.serving import golden
    from llmdr.serving.endpoint import OpenAIEndpoint

    if (url is None) == (region is None):
        raise UsageError("give --url URL or --region REGION (one of them)")
    try:
        cfg = load_cfg()
    except (ConfigError, UsageError):
        if region is not None:
            raise
        cfg = None  # no project here: the file given (or ./golden.jsonl), judged exactly
    basis = None
    if region is not None:
        serving = cfg.region(region).serving
        if serving is None:
            raise UsageError(f"region '{region}' has no serving: section; give --url instead")
        url = serving.url
    if golden_file is not None or cfg is None:
        gs = golden.GoldenSet.load(golden_file or Path("golden.jsonl"))
    else:
        from llmdr.serving.snapgolden import for_region, for_url

        resolved = for_region(cfg, region) if region is not None else for_url(cfg, url)
        gs, basis = resolved.golden, resolved.to_json()
    model = cfg.region(region).serving.model if region is not None else None
    ep = OpenAIEndpoint(url, model=model)
    ep.models()  # unreachable: one clear error, not one per case
    report = golden.check(gs, ep.answer, cfg.golden_gate if cfg is not None else None)
    report.basis = basis
    text = golden_table(report)
    if basis is not None:
        text += f"\njudged by: {basis['note']}" if basis.get("note") else ""
    emit(as_json, report.to_json(), text)
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
    lines.append(f"{report.passed}/{len(report.results)} golden answers match ({report.gate.mode} gate, "
                 f"{report.required} needed)")
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
