"""The ``llmdr`` command line. Each command loads the config, opens the regions it needs and calls one core
function; errors print one line (or a few) and exit non-zero, never a traceback."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.exceptions import TyperException

from llmdr import __version__
from llmdr.errors import LlmdrError, UnsafePathError, UsageError

app = typer.Typer(
    name="llmdr",
    help="Disaster recovery for LLM bundles: snapshot, replicate, verify, restore.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
stack_app = typer.Typer(help="Run the local two-region SeaweedFS stack.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
golden_app = typer.Typer(help="Record and check golden answers of a serving endpoint.", no_args_is_help=True)
app.add_typer(golden_app, name="golden")
report_app = typer.Typer(help="Check drill reports.", no_args_is_help=True)
app.add_typer(report_app, name="report")
datasets_app = typer.Typer(help="DVC-versioned datasets: status per region, validate, pull from a region.",
                           no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="Path to llmdr.yaml (default: ./llmdr.yaml or $LLMDR_CONFIG).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of text.")]
RegionOpt = Annotated[Optional[str], typer.Option("--region", "-r", help="Region name (default: the primary).")]


class _State:
    config_path: Path | None = None


state = _State()


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"llmdr {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    config: ConfigOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", callback=_print_version,
                                          is_eager=True)] = False,
) -> None:
    state.config_path = config
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


def _cfg(config: Path | None = None):
    from llmdr.config import load_config

    return load_config(config or state.config_path)


def _emit(as_json: bool, data: Any, text: str | None = None) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif text is not None:
        typer.echo(text)


def _progress(as_json: bool):
    from llmdr.common.progress import NoProgress

    if as_json or not sys.stderr.isatty():
        return NoProgress()
    return _RichProgress()


class _RichProgress:
    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

        self._p = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                           TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        self._task = None

    def start(self, description: str, total_bytes: int) -> None:
        self._p.start()
        self._task = self._p.add_task(description, total=total_bytes)

    def advance(self, nbytes: int) -> None:
        if self._task is not None:
            self._p.advance(self._task, nbytes)

    def finish(self) -> None:
        self._p.stop()


def _repo(cfg, region_name: str | None, *, read_only: bool = False):
    from llmdr.repo.ops import open_repo

    region = cfg.region(region_name)
    return region, open_repo(cfg, region, read_only=read_only)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# init ------------------------------------------------------------------------------------------------------------------
@app.command()
def init(
    bundle_dir: Annotated[Path, typer.Argument(help="The model bundle folder to protect.")],
    name: Annotated[Optional[str], typer.Option(help="Bundle name (default: the folder name).")] = None,
    config: Annotated[Path, typer.Option("--config", "-c", help="Where to write the config.")] = Path("llmdr.yaml"),
    primary_port: Annotated[int, typer.Option(help="S3 port of the local primary region.")] = 18333,
    secondary_port: Annotated[int, typer.Option(help="S3 port of the local secondary region.")] = 18433,
    router_port: Annotated[int, typer.Option(help="Port of the local router (its admin API: the next one).")] = 18300,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing config file.")] = False,
) -> None:
    """Write a commented llmdr.yaml for BUNDLE_DIR with two local regions."""
    from llmdr.repo.scaffold import render_config

    if config.exists() and not force:
        raise LlmdrError(f"{config} already exists; pass --force to overwrite it")
    if not bundle_dir.is_dir():
        raise LlmdrError(f"{bundle_dir} is not a folder; give the model bundle's folder")
    text = render_config(bundle_dir, name=name, config_path=config, primary_port=primary_port,
                         secondary_port=secondary_port, router_port=router_port)
    from llmdr.config import parse_config

    parse_config(text, source=config)  # never write a config llmdr itself would refuse
    tmp = config.with_name(f".{config.name}.tmp")
    tmp.write_text(text)
    tmp.replace(config)
    typer.echo(f"wrote {config}; next: `llmdr stack up` then `llmdr snapshot`")


@app.command("demo-bundle")
def demo_bundle(
    target: Annotated[Path, typer.Argument(help="Folder to write the tiny model bundle into.")],
    prompt: Annotated[Optional[str], typer.Option(help="Also load the model and answer this chat message.")] = None,
) -> None:
    """Write a tiny real model (2-layer numpy transformer, ~1.5 MB): safetensors shards, tokenizer, configs,
    chat template, serving config. Its answers are gibberish but depend on every one of those files."""
    from llmdr.serving.tinymodel import TinyModel, write_demo_bundle

    if target.exists() and any(target.iterdir()):
        raise UsageError(f"{target} is not empty; choose a new folder")
    files = write_demo_bundle(target)
    typer.echo(f"wrote {len(files)} files into {target}")
    if prompt is not None:
        text, n_in, n_out, finish = TinyModel(target).chat([{"role": "user", "content": prompt}])
        typer.echo(f"> {prompt}\n{text}\n({n_in} prompt tokens, {n_out} completion tokens, finish: {finish})")


@app.command()
def serve(
    bundle_dir: Annotated[Path, typer.Argument(help="Bundle folder to serve (an llmdr-tiny model).")],
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    host: Annotated[str, typer.Option(help="Address to bind; loopback by default.")] = "127.0.0.1",
) -> None:
    """Serve a bundle over an OpenAI-compatible API (/v1/completions, /v1/chat/completions, /v1/models, /health)."""
    from llmdr.serving.server import ModelService, make_server

    service = ModelService(bundle_dir)
    try:
        httpd = make_server(service, host, port)
    except OSError as exc:
        raise LlmdrError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port") from None
    typer.echo(f"serving {service.name} from {bundle_dir} on http://{host}:{port} (bundle {service.digest[:12]})",
               err=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


@golden_app.command("record")
def golden_record(
    url: Annotated[str, typer.Option(help="Known-good OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000.")],
    out: Annotated[Path, typer.Option(help="Golden file to write (JSONL).")] = Path("golden.jsonl"),
    prompts: Annotated[Optional[Path], typer.Option(help="Text file, one chat prompt per line (default: built-in set).")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="max_tokens for every case (default: the model's).")] = None,
    bundle: Annotated[Optional[Path], typer.Option(help="The bundle folder the endpoint serves: its per-component "
                                                         "digests are recorded, so a restore test can name what differs.")] = None,
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
    _emit(as_json, report.to_json(), _golden_table(report))
    if not report.ok:
        raise typer.Exit(5)


def _golden_table(report) -> str:
    lines = [f"{'case':<10} {'result':<8} {'similarity':>10}  answer"]
    for r in report.results:
        verdict = "ok" if r.ok else ("ERROR" if r.error else "MISMATCH")
        shown = r.error or r.actual or ""
        lines.append(f"{r.id:<10} {verdict:<8} {r.similarity:>10.2f}  {shown[:70]}")
        if not r.ok and not r.error:
            lines.append(f"{'':<10} {'':<8} {'expected':>10}  {r.expected[:70]}")
    lines.append(f"{report.passed}/{len(report.results)} golden answers match")
    return "\n".join(lines)


@app.command()
def verify(
    snapshot_ref: Annotated[str, typer.Argument(metavar="SNAPSHOT", help="Snapshot id, unique prefix or 'latest'.")],
    region: RegionOpt = None,
    sample: Annotated[Optional[str], typer.Option(help="Read only subset N/T of the chunks (or T: today's share, "
                                                       "rotating daily). Default: every chunk.")] = None,
    repair: Annotated[bool, typer.Option("--repair", help="Fix corrupt or missing chunks from another region.")] = False,
    restore_test: Annotated[bool, typer.Option("--restore-test", help="Also restore, check, serve and ask the golden set.")] = False,
    golden_file: Annotated[Path, typer.Option("--golden", help="Golden file for --restore-test (JSONL).")] = Path("golden.jsonl"),
    as_json: JsonOpt = False,
) -> None:
    """Verify a snapshot in a region: every chunk (or a subset) read back and hashed; optionally repaired from
    another region; optionally the restore test. Exit 6 when anything is wrong."""
    from llmdr.repo import ops

    cfg = _cfg()
    reg = cfg.region(region)
    check = ops.verify(cfg, snapshot_ref, region=region, sample=sample, repair=repair, progress=_progress(as_json))
    sid = check.snapshot_id
    scope = f"subset {check.subset}" if check.subset else "every chunk"
    lines = [f"verify {sid[:12]} in {reg.name} ({scope}): {'ok' if check.ok else 'FAILED'} - {check.chunks_read} of "
             f"{check.chunks_total} chunks read ({_human(check.bytes_read)}) in {check.duration_s:.2f}s"]
    from llmdr.repo.repository import chunk_key

    mc = getattr(check, "manifest", None)
    if mc is not None and mc.repaired_from:
        lines.append(f"  - manifest {mc.key} {mc.state}: repaired from {mc.repaired_from}")
    for state, ids in (("missing", check.missing), ("corrupt", check.corrupt)):
        for d in ids:
            lines.append(f"  - chunk {d[:12]} {state} ({chunk_key(d)})"
                         + (f": repaired from {check.repaired[d]}" if d in check.repaired else ""))
    if check.unrepaired and not repair:
        lines.append("    run again with --repair to fetch intact copies from another region")
    out = {"region": reg.name, "chunks": check.to_json()}
    ok = check.ok
    if restore_test:
        from llmdr.serving import restoretest

        res = restoretest.run_restore_test(cfg, sid, region=region, golden_path=golden_file)
        ok = ok and res.ok
        out["restore_test"] = res.to_json()
        lines.append(f"restore test of {sid[:12]} from {reg.name}: {'PASS' if res.ok else 'FAIL'} ({res.duration_s:.2f}s)")
        lines += [f"  - {p}" for p in res.problems]
        if res.golden is not None:
            lines.append(_golden_table(res.golden))
    _emit(as_json, out | {"ok": ok}, "\n".join(lines))
    if not ok:
        raise typer.Exit(6)


@app.command()
def forget(
    keep_last: Annotated[int, typer.Option(min=1, help="Keep the newest N snapshots of the bundle.")],
    keep_every: Annotated[Optional[int], typer.Option(min=1, help="Also keep every Mth older snapshot.")] = None,
    region: RegionOpt = None,
    prune: Annotated[bool, typer.Option(help="Delete chunks no snapshot references any more.")] = True,
    grace: Annotated[str, typer.Option(help="Never prune chunks younger than this (uploads in progress).")] = "6h",
    as_json: JsonOpt = False,
) -> None:
    """Forget the bundle's snapshots outside the retention policy in one region, then prune unreferenced chunks."""
    from llmdr.config import parse_duration
    from llmdr.repo.ops import forget as do_forget

    cfg = _cfg()
    reg = cfg.region(region)
    try:
        grace_s = parse_duration(grace).total_seconds()
    except ValueError as exc:
        raise UsageError(f"--grace: {exc}") from None
    res = do_forget(cfg, keep_last=keep_last, keep_every=keep_every, region=region, prune=prune, grace_s=grace_s)
    text = (f"{reg.name}: kept {len(res.kept)}, forgot {len(res.forgotten)} snapshot(s); pruned {res.chunks_deleted} "
            f"chunk(s), {_human(res.bytes_freed)} freed ({res.chunks_in_grace} unreferenced chunk(s) kept: younger "
            f"than {grace})")
    if res.locked or res.chunks_locked:
        text += (f"\nkept by Object Lock: {len(res.locked)} snapshot(s) the policy forgets ("
                 + ", ".join(f"{k[:12]} until {v}" for k, v in res.locked.items())
                 + f") and {res.chunks_locked} unreferenced chunk(s); a later run removes them once unlocked")
    if res.locks_extended:
        text += f"\nextended the Object Lock of {res.locks_extended} object(s) of kept snapshots"
    if res.raced:
        text += f"\nWARNING: snapshot(s) {', '.join(r[:12] for r in res.raced)} were written during the prune and " \
                "lost a chunk; run `llmdr verify latest --repair`"
    _emit(as_json, res.to_json() | {"region": reg.name}, text)
    if res.raced:
        raise typer.Exit(6)


@app.command("sample-bundle")
def sample_bundle(
    target: Annotated[Path, typer.Argument(help="Folder to write the sample bundle into.")],
    shards: Annotated[int, typer.Option(min=1, help="Number of safetensors shards.")] = 2,
    shard_mb: Annotated[int, typer.Option(min=1, help="Size of each shard in MiB.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed for the tensor bytes.")] = 0,
) -> None:
    """Write a synthetic model bundle (safetensors shards, tokenizer, configs, templates) for trying llmdr."""
    from llmdr.devstack.samples import MiB, write_sample_bundle

    files = write_sample_bundle(target, shards=shards, shard_size=shard_mb * MiB, seed=seed)
    typer.echo(f"wrote {len(files)} files into {target}")


# stack -----------------------------------------------------------------------------------------------------------------
def _status_table(rows) -> str:
    out = [f"{'region':<12} {'state':<8} {'pid':>7}  {'endpoint':<24} {'auth':<5} detail"]
    for s in rows:
        state_txt = "healthy" if s.healthy else ("running" if s.running else "stopped")
        auth = "on" if s.auth_enforced else ("OFF" if s.auth_enforced is False else "-")
        out.append(f"{s.region:<12} {state_txt:<8} {s.pid or '-':>7}  {s.endpoint:<24} {auth:<5} {s.detail}")
    return "\n".join(out)


@stack_app.command("up")
def stack_up(
    region: Annotated[Optional[str], typer.Argument(help="Only this region (default: every local region).")] = None,
    ui: Annotated[bool, typer.Option("--ui", help="Also start a Prefect server + worker, deploy the flows and "
                                     "create the automations.")] = False,
    ui_port: Annotated[int, typer.Option(help="Port of the Prefect server and UI.")] = 4200,
    serving: Annotated[bool, typer.Option("--serving/--no-serving", help="Start the replicas (from each region's "
                                          "own newest snapshot) and the router.")] = True,
    mlflow: Annotated[bool, typer.Option("--mlflow", help="Also start the MLflow UI over the project's tracking "
                                         "store (model versions, drill runs, training runs).")] = False,
    mlflow_port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
    as_json: JsonOpt = False,
) -> None:
    """Start the local S3 servers (idempotent), wait until they answer, create the buckets; then each region's
    serving replica restored from that region's store, and the Caddy router. With --ui also the Prefect server,
    the llmdr work pool, the deployments, the automations and a worker."""
    from llmdr.devstack.regions import local_regions, start_region, start_router, start_serving

    cfg = _cfg()
    regions = local_regions(cfg, region)
    if not regions:
        raise UsageError(f"no region in {cfg.source_file} has a local: section, so there is nothing for `llmdr stack` "
                         "to start; remote regions are run by their owners")
    rows = [start_region(cfg, r) for r in regions]
    text = _status_table(rows)
    out: dict[str, Any] = {"regions": [s.to_json() for s in rows]}
    if serving:
        notes = start_serving(cfg, regions)
        router = start_router(cfg)
        notes += [router] if router else []
        text += "\n" + "\n".join(f"{n.region:<12} {'serving' if n.started else '-':<8} {n.detail}" for n in notes)
        out["serving"] = [n.__dict__ for n in notes]
    if ui:
        from llmdr.devstack import orchestration

        st = orchestration.start(cfg, ui_port)
        text += "\n" + orchestration.describe(st)
        out["prefect"] = st.to_json()
    if mlflow:
        from llmdr.devstack import mlflowui

        ml = mlflowui.start(cfg, mlflow_port)
        text += f"\nmlflow       healthy  {ml['pid']:>7}  {ml['url']} (UI)"
        out["mlflow"] = ml
    _emit(as_json, out, text)


@stack_app.command("down")
def stack_down(
    region: Annotated[Optional[str], typer.Argument(help="Only this region (its S3 server and its replica), e.g. "
                                                    "to simulate its outage.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop the local servers by their PIDs: a region's S3 server and serving replica; without REGION also the
    router and the Prefect server and worker. Data stays on disk."""
    from llmdr.devstack import orchestration
    from llmdr.devstack.regions import local_regions, stop_region, stop_serving

    cfg = _cfg()
    regions = local_regions(cfg, region)
    stop_serving(cfg, regions, router=region is None)
    if region is None and orchestration.running(cfg):
        orchestration.stop(cfg)
    if region is None:
        from llmdr.devstack import mlflowui

        mlflowui.stop(cfg)
    rows = [stop_region(cfg, r) for r in regions]
    _emit(as_json, [s.to_json() for s in rows], _status_table(rows))


@stack_app.command("status")
def stack_status(
    region: Annotated[Optional[str], typer.Argument(help="Only this region.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show each local region: running, healthy (authenticated access works), auth enforced."""
    from llmdr.devstack import orchestration
    from llmdr.devstack.regions import local_regions, region_status

    cfg = _cfg()
    rows = [region_status(cfg, r) for r in local_regions(cfg, region)]
    text = _status_table(rows)
    if orchestration.running(cfg):
        text += "\n" + orchestration.describe(orchestration.status(cfg))
    _emit(as_json, [s.to_json() for s in rows], text)
    if not all(s.healthy for s in rows):
        raise typer.Exit(3)


# snapshot / replicate / list / show / restore ----------------------------------------------------------------------------
@app.command()
def snapshot(
    region: RegionOpt = None,
    path: Annotated[Optional[Path], typer.Option(help="Snapshot this folder instead of bundle.path.")] = None,
    tag: Annotated[Optional[list[str]], typer.Option(help="KEY=VALUE label stored in the manifest (repeatable).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Take an incremental, deduplicated snapshot of the bundle into a region (default: the primary)."""
    from llmdr.repo.ops import snapshot_bundle

    cfg = _cfg()
    reg = cfg.region(region)
    tags = {}
    for t in tag or []:
        k, sep, v = t.partition("=")
        if not sep or not k:
            raise UsageError(f"--tag {t!r}: write KEY=VALUE")
        tags[k] = v
    res = snapshot_bundle(cfg, region=region, path=path, tags=tags, progress=_progress(as_json))
    rate = res.bytes_read / res.duration_s if res.duration_s else 0
    _emit(as_json, res.to_json() | {"region": reg.name},
          f"snapshot {res.snapshot_id[:12]} of '{cfg.bundle.name}' in {reg.name}: {res.files} files, "
          f"{_human(res.bytes_total)} ({res.files_unchanged} unchanged files skipped), {_human(res.bytes_new)} new, "
          f"{_human(res.bytes_deduplicated)} deduplicated, {res.duration_s:.2f}s ({_human(rate)}/s read)\n"
          f"id: {res.snapshot_id}")


@app.command()
def protect(
    checkpoints: Annotated[bool, typer.Option("--checkpoints", help="Run protect-checkpoints instead.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run the protect-bundle flow now, in this process (no Prefect server or worker needed): completeness,
    snapshot, copy to every secondary, verify the copies, retention, RPO clock."""
    import os

    cfg = _cfg()
    path = str((cfg.source_file or Path("llmdr.yaml")).resolve())
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    _use_local_prefect(cfg)  # the local server when `stack up --ui` runs one, else a temporary one
    if checkpoints:
        from flows.protect_checkpoints import protect_checkpoints

        out = protect_checkpoints(config_path=path)
        _emit(as_json, out, f"{len(out['new'])} new checkpoint(s) of {len(out['found'])} protected "
                            f"({', '.join(n['checkpoint'] for n in out['new']) or 'none new'})")
        return
    from flows.protect_bundle import protect_bundle

    out = protect_bundle(config_path=path)
    snap = out["snapshot"]
    lines = [f"snapshot {snap['snapshot_id'][:12]} in {snap['region']}: {_human(snap['bytes_new'])} new of "
             f"{_human(snap['bytes_total'])}"]
    for v in out.get("validations", []):
        lines.append(f"dataset {v['dataset']}: {v['evaluated'] - v['failed']}/{v['evaluated']} expectations passed"
                     + (" (suite profiled from the data on this first backup)" if v.get("suite_created") else ""))
    for d in out.get("datasets", []):
        lines.append(f"dataset {d['name']}: md5 {d['md5']} in every region's DVC remote ("
                     + ", ".join(f"{p['region']}: {'already there' if p['already'] else 'pushed'}" for p in d["pushes"])
                     + ")")
    lines += [f"copied to {c['region']}: {c['chunks_copied']}/{c['chunks_total']} chunks, verified" for c in out["copies"]]
    if out.get("model_version"):
        mv = out["model_version"]
        lines.append(f"model version {mv['name']} v{mv['version']} ({', '.join(mv.get('aliases', []))})"
                     + (" registered" if mv.get("created") else " (same content: updated)"))
    for r in out["rpo"]:
        lines.append(f"RPO clock {r['region']}: newest snapshot {r['age_s']:.0f}s old "
                     f"({'within' if r['ok'] else 'OVER'} the {r['objective_s']:.0f}s objective)")
    _emit(as_json, out, "\n".join(lines))


@app.command()
def check(
    folder: Annotated[Optional[Path], typer.Argument(help="Bundle folder (default: bundle.path).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check the bundle is complete: every required component present, non-empty and parsable."""
    from llmdr.repo.ops import check as do_check

    cfg = _cfg()
    report = do_check(cfg, folder)
    lines = [f"{'component':<18} {'req':<4} {'files':>5}  status"]
    for c in report.components:
        status = "ok" if c.ok else "; ".join(p.message if p.file is None else f"{p.file}: {p.message}"
                                            for p in c.problems)
        lines.append(f"{c.kind.value:<18} {'yes' if c.required else 'no':<4} {len(c.files):>5}  {status}")
    lines.append(f"bundle at {report.root}: {'complete' if report.complete else 'INCOMPLETE'}")
    _emit(as_json, report.to_json(), "\n".join(lines))
    if not report.complete:
        raise typer.Exit(4)


@app.command()
def replicate(
    snapshot_ref: Annotated[str, typer.Argument(metavar="SNAPSHOT", help="Snapshot id, unique prefix, 'latest' or 'all'.")],
    to: Annotated[str, typer.Option("--to", help="Destination region.")],
    source: Annotated[Optional[str], typer.Option("--from", help="Source region (default: the primary).")] = None,
    recheck: Annotated[bool, typer.Option(help="Compare chunks even when the snapshot is already there.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Copy a snapshot to another region: missing chunks only, verified, manifest last (atomic)."""
    from llmdr.repo.ops import replicate as do_replicate

    cfg = _cfg()
    dst_name = cfg.region(to).name
    results = do_replicate(cfg, snapshot_ref, to=to, source=source, recheck=recheck, progress=_progress(as_json))
    for res in results:
        if not as_json:
            sid = res.snapshot_id
            if res.already_present:
                typer.echo(f"{sid[:12]}: already complete in {dst_name}")
            else:
                typer.echo(f"{sid[:12]}: {res.chunks_copied}/{res.chunks_total} chunks copied to {dst_name} "
                           f"({_human(res.bytes_copied)} in {res.duration_s:.2f}s)")
    if as_json:
        _emit(True, [r.to_json() for r in results])


@app.command()
def snapshots(region: RegionOpt = None, as_json: JsonOpt = False) -> None:
    """List the complete snapshots in a region, oldest first."""
    cfg = _cfg()
    reg, repo = _repo(cfg, region, read_only=True)
    snaps = repo.snapshots(strict=False)
    rows = [{"id": s.id, "bundle": s.manifest.bundle, "created": s.manifest.created, "files": len(s.manifest.files),
             "bytes": s.manifest.total_size, "new_bytes": s.manifest.stats.get("new_bytes"),
             "parent": s.manifest.parent} for s in snaps]
    lines = [f"{'id':<12}  {'created (UTC)':<20} {'bundle':<16} {'files':>5} {'size':>10} {'new':>10}"]
    for r in rows:
        lines.append(f"{r['id'][:12]}  {r['created'][:19].replace('T', ' '):<20} {r['bundle']:<16} {r['files']:>5} "
                     f"{_human(r['bytes']):>10} {_human(r['new_bytes'] or 0):>10}")
    if not rows:
        lines.append(f"(no snapshots in region {reg.name})")
    for sid, why in sorted(repo.unreadable.items()):
        typer.echo(f"WARNING: snapshot {sid[:12]} left out, its manifest cannot be trusted: {why}", err=True)
    _emit(as_json, rows, "\n".join(lines))
    if repo.unreadable:
        raise typer.Exit(6)


@app.command()
def show(
    snapshot_ref: Annotated[str, typer.Argument(metavar="SNAPSHOT", help="Snapshot id, unique prefix or 'latest'.")],
    region: RegionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one snapshot's manifest: files, sizes, digests, parent, times."""
    cfg = _cfg()
    reg, repo = _repo(cfg, region, read_only=True)
    sid = repo.resolve(snapshot_ref)
    m = repo.load_manifest(sid)
    if as_json:
        _emit(True, {"id": sid, "region": reg.name} | m.to_json())
        return
    lines = [f"snapshot  {sid}", f"region    {reg.name}", f"bundle    {m.bundle} ({m.kind})",
             f"created   {m.created}  (started {m.started})", f"source    {m.host}:{m.source}",
             f"parent    {m.parent or '-'}", f"tool      llmdr {m.tool_version}, {m.hash}, {m.chunker.name}",
             f"size      {_human(m.total_size)} in {len(m.files)} files, {len(m.chunk_set())} distinct chunks",
             "", f"{'mode':<5} {'size':>10}  {'digest':<12}  path"]
    for f in m.files:
        lines.append(f"{f.mode:04o}  {_human(f.size):>10}  {f.digest[:12]}  {f.path}")
    typer.echo("\n".join(lines))


@app.command()
def restore(
    snapshot_ref: Annotated[str, typer.Argument(metavar="SNAPSHOT", help="Snapshot id, unique prefix or 'latest'.")],
    to: Annotated[Path, typer.Option("--to", help="Target folder (created if missing).")],
    region: RegionOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Restore into a non-empty folder, overwriting the snapshot's files.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Restore a snapshot from a region into a folder, verifying every chunk; resumes an interrupted restore."""
    from llmdr.repo.ops import restore as do_restore

    cfg = _cfg()
    reg = cfg.region(region)
    try:
        res = do_restore(cfg, snapshot_ref, to, region=region, force=force, progress=_progress(as_json))
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
    _emit(as_json, res.to_json() | {"region": reg.name},
          f"restored {sid[:12]} from {reg.name} into {res.target}: {res.files} files, {_human(res.bytes_total)} "
          f"({res.files_skipped} already in place), {res.duration_s:.2f}s ({_human(rate)}/s), every chunk verified")


# serving: status / monitor / failover / failback / replica ---------------------------------------------------------------
replica_app = typer.Typer(help="Start, stop and show the serving replica of a region.", no_args_is_help=True)
app.add_typer(replica_app, name="replica")


def _use_local_prefect(cfg) -> None:
    """Send events and flow runs to the local Prefect server when `llmdr stack up --ui` runs one (unless the
    environment already names a Prefect API)."""
    import os

    from llmdr.devstack import orchestration

    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if "PREFECT_API_URL" not in os.environ and orchestration.running(cfg):
        st = orchestration.status(cfg)
        if st.healthy:
            os.environ["PREFECT_API_URL"] = st.url + "/api"


def _age(iso: str | None) -> str:
    if not iso:
        return "-"
    from datetime import datetime, timezone

    from llmdr.repo.manifest import parse_utc

    secs = (datetime.now(timezone.utc) - parse_utc(iso)).total_seconds()
    return f"{secs:.0f}s ago" if secs < 120 else (f"{secs / 60:.0f}m ago" if secs < 7200 else f"{secs / 3600:.1f}h ago")


@app.command()
def status(as_json: JsonOpt = False) -> None:
    """Where traffic goes now and the health of everything behind it: router, replicas, stores, monitor, last
    failover. Exit 3 if the active region does not answer."""
    from llmdr.devstack.regions import region_status
    from llmdr.failover import steps as fo
    from llmdr.failover.router import open_router, router_log
    from llmdr.failover.watch import read_status
    from llmdr.serving.replica import replica_status

    cfg = _cfg()
    out: dict[str, Any] = {"bundle": cfg.bundle.name}
    rec = router_log(cfg).current() if cfg.router else None
    active = None
    router_err = None
    if cfg.router:
        try:
            active = open_router(cfg).active()
        except LlmdrError as exc:
            router_err = str(exc).splitlines()[0]
    out["router"] = {"kind": cfg.router.kind if cfg.router else None, "url": cfg.router.url if cfg.router else None,
                     "active": active, "recorded": rec, "error": router_err}
    mon = read_status(cfg)
    rows = []
    for r in cfg.regions:
        st = region_status(cfg, r) if r.is_local else None
        rep = replica_status(cfg, r) if r.serving else None
        rows.append({"region": r.name, "role": r.role, "active": r.name == active,
                     "store": ("healthy" if st.healthy else "down") if st else "remote",
                     "replica": rep.to_json() if rep else None, "monitor": mon.get(r.name, {}).get("status")})
    out["regions"] = rows
    hist = fo.history(cfg)
    out["last_failover"] = hist[-1].to_json() if hist else None
    lines = []
    if cfg.router:
        since = f", since {rec['since']} ({_age(rec['since'])}): {rec['reason']}" if rec and rec.get("since") else ""
        lines.append(f"router   {cfg.router.kind} {cfg.router.url} -> "
                     f"{active or 'UNREACHABLE (' + (router_err or '?') + ')'}{since}")
    else:
        lines.append("router   none configured")
    lines.append(f"{'region':<12} {'role':<10} {'traffic':<8} {'store':<8} {'replica':<9} {'snapshot':<13} monitor")
    for row in rows:
        rep = row["replica"] or {}
        rstate = "-" if not rep else ("healthy" if rep["healthy"] else "down")
        lines.append(f"{row['region']:<12} {row['role']:<10} {'ACTIVE' if row['active'] else '':<8} {row['store']:<8} "
                     f"{rstate:<9} {(rep.get('snapshot') or '-')[:12]:<13} {row['monitor'] or '-'}")
    if hist:
        h = hist[-1]
        verdict = "noop" if h.noop else ("ok" if h.ok else "FAILED")
        rto = f", RTO {h.rto_s:.1f}s" if h.rto_s is not None else ""
        lines.append(f"last {h.kind}: {h.from_region} -> {h.to_region} {verdict}{rto} ({h.trigger}, "
                     f"{_age(fo.utc(h.started_ts))})")
    _emit(as_json, out, "\n".join(lines))
    act = next((r for r in rows if r["active"]), None)
    if cfg.router and (act is None or not (act["replica"] or {}).get("healthy")):
        raise typer.Exit(3)


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

    cfg = _cfg()
    _use_local_prefect(cfg)

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
        for e in res.emitted:
            typer.echo(f"{when}  event {e['event']} ({e['target']}){'' if e['sent'] else ' [no Prefect API: not sent]'}")

    summary = watch(cfg, rounds=1 if once else None, duration=duration, on_round=show)
    last = summary.last
    if last.active and last.assessments.get(last.active) and last.assessments[last.active].status == "down":
        raise typer.Exit(3)


def _run_flow(fn, **kw) -> dict:
    cfg = _cfg()
    _use_local_prefect(cfg)
    path = str((cfg.source_file or Path("llmdr.yaml")).resolve())
    return fn(config_path=path, **kw)


def _failover_text(out: dict) -> str:
    from llmdr.artifacts import failover_markdown

    return failover_markdown(out)


@app.command()
def failover(
    to: Annotated[Optional[str], typer.Option("--to", help="Target region (default: failover.target or the first "
                                              "secondary).")] = None,
    reason: Annotated[str, typer.Option(help="Why; recorded with the switch.")] = "manual failover",
    as_json: JsonOpt = False,
) -> None:
    """Move traffic to a verified replica in another region now: start it from that region's store if it is not
    warm, check the golden set against it, switch the router, check again through the router (switch rolled back
    if that fails). Runs the failover flow in this process (visible in the UI when `stack up --ui` runs)."""
    _use_local_prefect(_cfg())
    from flows.failover import failover as flow

    out = _run_flow(flow, to=to or "", reason=reason, trigger="manual")
    _emit(as_json, out, _failover_text(out))


@app.command()
def failback(
    reason: Annotated[str, typer.Option(help="Why; recorded with the switch.")] = "primary healthy again",
    as_json: JsonOpt = False,
) -> None:
    """Return traffic to the primary: its store must answer; snapshots taken meanwhile are copied back; its
    replica is (re)started on the newest snapshot and verified before the router switches."""
    _use_local_prefect(_cfg())
    from flows.failover import failback as flow

    out = _run_flow(flow, reason=reason, trigger="manual")
    _emit(as_json, out, _failover_text(out))


@app.command()
def failovers(as_json: JsonOpt = False) -> None:
    """Every failover and failback so far: when, where to, what started it, the RTO and where it went."""
    from llmdr.failover import steps as fo

    cfg = _cfg()
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
    _emit(as_json, hist, "\n".join(lines) if hist else "no failover or failback yet")


@app.command()
def drill(as_json: JsonOpt = False) -> None:
    """Run a DR drill now: cut the primary region off, watch the automation fail over on its own, measure RTO and
    RPO, check the answers through the router, run the restore test from the DR store, bring the primary back and
    fail back; write a signed report (HTML, PDF, JSON) and an MLflow run. Needs `llmdr stack up --ui` (the
    automation and the monitor run there). Exit 8 if any control fails."""
    import getpass

    from llmdr.devstack import orchestration
    from llmdr.drill.record import DrillFailed

    cfg = _cfg()
    if "PREFECT_API_URL" not in __import__("os").environ and not orchestration.status(cfg).healthy:
        raise UsageError("a drill watches the monitor → automation → failover chain, which runs on the Prefect "
                         "server: start it with `llmdr stack up --ui` (or set PREFECT_API_URL)")
    _use_local_prefect(cfg)
    from flows.dr_drill import dr_drill

    try:
        out = _run_flow(dr_drill, started_by=f"cli:{getpass.getuser()}")
    except DrillFailed as exc:
        if exc.record is not None:
            _emit(as_json, exc.record, _drill_text(exc.record))
        raise
    _emit(as_json, out, _drill_text(out))


def _drill_text(rec: dict) -> str:
    verdict = "PASS" if rec["passed"] else "FAIL"
    lines = [f"DR drill {rec['id']} of {rec['bundle']}: {verdict}"]
    if rec.get("failed_over_at_end"):
        lines.append("!!! THE SYSTEM IS LEFT FAILED OVER: run `llmdr failback` !!!")
    for c in rec["controls"]:
        lines.append(f"  {'PASS' if c['passed'] else 'FAIL'}  {c['name']}: {c['value']} (objective {c['objective']})")
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

    cfg = _cfg()
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
        warn = f"WARNING: no passing drill on record; run one (`llmdr drill`) — objective: every {format_duration(cfg.objectives.drill_interval)}"
    elif stale:
        warn = (f"WARNING: the last passing drill was {format_duration(timedelta(seconds=time.time() - last))} ago, "
                f"more than the {format_duration(cfg.objectives.drill_interval)} drill interval: your plan may be broken")
    else:
        warn = f"last passing drill {format_duration(timedelta(seconds=time.time() - last))} ago (interval {format_duration(cfg.objectives.drill_interval)})"
    if chart is not None and rows:
        from llmdr.drill.report import trend_chart

        trend_chart(rows, chart)
        lines.append(f"trend chart: {chart}")
    _emit(as_json, {"drills": rows, "stale": stale, "warning": warn}, "\n".join(lines + [warn]))


@app.command()
def readiness(
    only: Annotated[Optional[str], typer.Option(help="Comma-separated check kinds: credentials, rpo, components, "
                                                "drill, separation, immutability, bandwidth, footprint.")] = None,
    markdown: Annotated[Optional[Path], typer.Option(help="Also write the report as markdown here.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Is the DR plan ready today? Every check (credentials, RPO, components, drill, separation, immutability,
    bandwidth vs RTO, footprint and cost) as PASS / WARN / FAIL with what to do. Exits 9 on any FAIL, so it can
    gate a pipeline."""
    from llmdr.common.files import atomic_write
    from llmdr.drill.readiness import EXIT_FAIL, render_markdown, render_text, run_checks

    cfg = _cfg()
    kinds = {k.strip() for k in only.split(",") if k.strip()} if only else None
    rep = run_checks(cfg, only=kinds)
    if markdown is not None:
        atomic_write(markdown, render_markdown(rep))
    _emit(as_json, rep.to_json(), render_text(rep))
    if not rep.ok:
        raise typer.Exit(EXIT_FAIL)


@app.command()
def plan(
    size: Annotated[Optional[str], typer.Option(help="Bundle size, e.g. 140GB, 512GiB (default with --region: "
                                                "the newest snapshot there).")] = None,
    bandwidth: Annotated[Optional[str], typer.Option(help="Link from the DR store, e.g. 1Gbps, 250MB/s (default "
                                                     "with --region: measured).")] = None,
    rto: Annotated[Optional[str], typer.Option(help="Recovery time objective, e.g. 15m (default: the config's).")] = None,
    start: Annotated[Optional[str], typer.Option(help="Replica start time once the bundle is on disk (default: "
                                                 "readiness.start_estimate, or 60s).")] = None,
    region: Annotated[Optional[str], typer.Option("--region", "-r", help="Measure size and throughput in this "
                                                  "region's store.")] = None,
    efficiency: Annotated[float, typer.Option(help="Share of a given link's rate a restore reaches (a measured "
                                              "rate is used as is).")] = 0.8,
    as_json: JsonOpt = False,
) -> None:
    """Does a cold restore from the DR region meet the RTO, and what would (warm standby, more bandwidth, a
    pre-staged copy)? The arithmetic is shown. With --region, size and throughput are measured there."""
    from llmdr.drill.plan import make_plan, parse_bandwidth, parse_seconds, parse_size, render_plan

    cfg = None
    if region is not None or rto is None or start is None:
        try:
            cfg = _cfg()
        except LlmdrError:
            if region is not None or rto is None:
                raise
    if rto is None and cfg is None:
        raise UsageError("give --rto (e.g. --rto 15m), or run where llmdr.yaml names objectives.rto")
    rto_s = parse_seconds(rto, what="--rto") if rto else cfg.objectives.rto.total_seconds()
    start_s = parse_seconds(start, what="--start") if start else (
        cfg.readiness.start_estimate.total_seconds() if cfg else 60.0)
    size_b = parse_size(size) if size else None
    bps = parse_bandwidth(bandwidth) if bandwidth else None
    source, eff, warm_rto = "given", efficiency, 60.0
    if region is not None:
        from llmdr.drill.readiness import measure_throughput
        from llmdr.failover.steps import history as failover_history
        from llmdr.repo.repository import Repository
        from llmdr.storage.factory import open_region

        reg = cfg.region(region)
        repo = Repository(open_region(cfg, reg, read_only=True))
        snaps = repo.snapshots(bundle=cfg.bundle.name)
        if not snaps:
            raise UsageError(f"no snapshot of '{cfg.bundle.name}' in region {region} to measure; protect first or "
                             "give --size and --bandwidth")
        manifest = snaps[-1].manifest
        if size_b is None:
            size_b = sum(manifest.chunk_set().values())
        if bps is None:
            m = measure_throughput(repo.store, manifest, probe_bytes=min(cfg.readiness.probe_mb << 20,
                                   sum(manifest.chunk_set().values())), workers=cfg.transfer.download_workers)
            bps, eff = m["bytes_per_s"] * 8, 1.0
            source = f"measured from {region} ({m['bytes'] / 1e6:.1f} MB in {m['seconds']:.2f} s)"
        rtos = [r.rto_s for r in failover_history(cfg) if r.rto_s and r.ok and r.to_region == region]
        if rtos:
            warm_rto = sorted(rtos)[len(rtos) // 2]
    if size_b is None or bps is None:
        raise UsageError("give --size and --bandwidth (e.g. --size 140GB --bandwidth 1Gbps), or --region to "
                         "measure them")
    p = make_plan(size_b, bps, rto_s, start_s=start_s, efficiency=eff, warm_rto_s=warm_rto, source=source)
    _emit(as_json, p.to_json(), render_plan(p))


@app.command()
def runbook(
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Where to write it (default: runbook.path, "
                                                "RUNBOOK.md next to llmdr.yaml).")] = None,
) -> None:
    """Write the DR runbook (markdown) from the config: who is notified, how to fail over by hand (CLI and UI),
    how to restore, where credentials live (names only), emergency access."""
    from llmdr.drill.runbook import write_runbook

    path = write_runbook(_cfg(), out)
    typer.echo(f"runbook written to {path}")


@report_app.command("verify")
def report_verify(
    folder: Annotated[Path, typer.Argument(help="A drill report folder (holds SIGNATURE.json).")],
    public_key: Annotated[Optional[Path], typer.Option(help="Ed25519 public key (PEM). Default: the project's "
                                                       "drill.signing.public_key.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a drill report offline: every file's SHA-256 against the signed list, and the signature (Ed25519 with
    the public key, or HMAC with the key in drill.signing.hmac_key_env). Exit 10 if anything was changed."""
    import os

    from llmdr.drill.signing import verify_folder

    if folder.is_file():
        folder = folder.parent
    key = public_key
    hmac_key = None
    try:
        cfg = _cfg()
        if key is None:
            key = cfg.state_path / cfg.drill.signing.public_key
        env = os.environ.get(cfg.drill.signing.hmac_key_env)
        hmac_key = env.encode() if env else None
    except LlmdrError:
        if key is None:
            raise UsageError("no llmdr.yaml here to find the public key: pass --public-key FILE") from None
    res = verify_folder(folder, public_key=key if key and key.exists() else None, hmac_key=hmac_key)
    text = (f"{folder}: signature OK ({res.algorithm}, key {res.key_id}); {len(res.files)} files unchanged"
            if res.ok else f"{folder}: VERIFICATION FAILED\n" + "\n".join(f"  - {p}" for p in res.problems))
    _emit(as_json, {"ok": res.ok, "problems": res.problems, "key_id": res.key_id, "algorithm": res.algorithm,
                    "files": res.files}, text)
    if not res.ok:
        raise typer.Exit(10)


@app.command()
def lineage(
    ref: Annotated[str, typer.Argument(help="MODEL, MODEL@alias (production, drill-verified), MODEL@VERSION, or a "
                                       "snapshot id / prefix.")],
    as_json: JsonOpt = False,
) -> None:
    """The chain behind a model version: snapshot (components) → regions holding it now → datasets (DVC md5,
    remotes) → training run → drill results."""
    from llmdr.lineage.registry import lineage as query
    from llmdr.lineage.registry import render_lineage

    cfg = _cfg()
    data = query(cfg, ref, tracking_uri=cfg.tracking.uri)
    _emit(as_json, data, render_lineage(data))


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

    cfg = _cfg()
    rows = []
    for d in cfg.datasets:
        v = version(cfg, d, check_workspace=False)
        where = {}
        for r in cfg.regions:
            try:
                where[r.name] = present(cfg, d, r.name, ver=v)
            except LlmdrError as exc:
                where[r.name] = None
                logging.getLogger(__name__).warning("%s", exc)
        rows.append(v.to_json() | {"regions": where})
    lines = [f"{'dataset':<20} {'md5':<34} {'size':>10}  regions"]
    for r in rows:
        regs = ", ".join(f"{k}: {'yes' if v else ('?' if v is None else 'MISSING')}" for k, v in r["regions"].items())
        lines.append(f"{r['name']:<20} {r['md5']:<34} {_human(r['size']):>10}  {regs}")
    _emit(as_json, rows, "\n".join(lines) if rows else "no datasets: section in the config")


@datasets_app.command("remotes")
def datasets_remotes(as_json: JsonOpt = False) -> None:
    """Write one DVC remote per region (llmdr-<region>) into each dataset's repository: URL and endpoint in
    .dvc/config (commit it), keys in .dvc/config.local (git-ignored), so `dvc pull -r llmdr-secondary` works by hand
    too. llmdr's own pushes and pulls do not need this."""
    from llmdr.lineage.datasets import _locate, configure_remotes

    cfg = _cfg()
    done: dict[str, list[str]] = {}
    for d in cfg.datasets:
        _, root, _ = _locate(cfg, d)
        if str(root) not in done:
            done[str(root)] = configure_remotes(cfg, root)
    _emit(as_json, done, "\n".join(f"{root}: remotes {', '.join(names)} (commit .dvc/config; keys are in "
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

    cfg = _cfg()
    ds = _ds(cfg, name)
    suite, created = ensure_suite(cfg, ds)
    rep = validate(cfg, ds, path=path)
    _emit(as_json, rep.to_json(), (f"suite profiled into {suite}\n" if created else "") + rep.summary())
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

    cfg = _cfg()
    ds = _ds(cfg, name)
    reg = cfg.region(region)
    from llmdr.lineage.expectations import validate

    v = pull(cfg, ds, reg.name, target=to, force=force)
    landed = to or cfg.dataset_path(ds)
    rep = validate(cfg, ds, path=landed) if cfg.suite_path(ds).exists() else None
    _emit(as_json, v.to_json() | {"region": reg.name, "validation": rep.to_json() if rep else None},
          f"{name}: md5 {v.md5} pulled from {reg.name} into {landed}, md5 checked"
          + (f"\n{rep.summary()}" if rep else " (no expectation suite yet)"))
    if rep is not None and not rep.success:
        raise typer.Exit(4)


@replica_app.command("start")
def replica_start(
    region: Annotated[str, typer.Argument(help="Region whose replica to start.")],
    snapshot: Annotated[str, typer.Option(help="Snapshot id, prefix or 'latest' in that region's store.")] = "latest",
    as_json: JsonOpt = False,
) -> None:
    """Restore SNAPSHOT from REGION's own store and start its serving replica (replaces one on another snapshot)."""
    from llmdr.serving.replica import start_replica

    cfg = _cfg()
    st = start_replica(cfg, cfg.region(region), ref=snapshot, progress=_progress(as_json))
    _emit(as_json, st.to_json(), f"replica {region}: {st.url} serving {(st.snapshot or '')[:12]} (pid {st.pid}; "
                                 f"restore {st.restore_s or 0:.2f}s, start {st.start_s or 0:.2f}s)")


@replica_app.command("stop")
def replica_stop(region: Annotated[str, typer.Argument(help="Region whose replica to stop.")]) -> None:
    """Stop REGION's replica (only a process llmdr started)."""
    from llmdr.serving.replica import stop_replica

    cfg = _cfg()
    stop_replica(cfg, cfg.region(region))
    typer.echo(f"replica {region}: stopped")


@replica_app.command("status")
def replica_status_cmd(as_json: JsonOpt = False) -> None:
    """Each region's replica: answering, pid, snapshot."""
    from llmdr.serving.replica import replica_status

    cfg = _cfg()
    rows = [replica_status(cfg, r) for r in cfg.regions if r.serving]
    _emit(as_json, [r.to_json() for r in rows], "\n".join(
        f"{r.region:<12} {'healthy' if r.healthy else 'down':<8} {r.pid or '-':>7}  {r.url:<28} "
        f"{(r.snapshot or '-')[:12]}  {r.detail}" for r in rows))


def main() -> None:
    try:
        rv = app(standalone_mode=False)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except TyperException as e:  # usage errors: missing argument, bad option...
        show = getattr(e, "show", None)
        if show is not None:
            show()
        else:
            typer.echo(f"error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("interrupted; nothing partial is visible. Run the same command again to resume.", err=True)
        sys.exit(130)
    except LlmdrError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except OSError as e:
        typer.echo(f"error: {e.strerror or e}{': ' + str(e.filename) if e.filename else ''}", err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
