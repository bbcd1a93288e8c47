"""`llmdr metrics serve|show`: the Prometheus exporter in the foreground, or one scrape printed."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from llmdr.cli.root import app, load_cfg
from llmdr.errors import UsageError

metrics_app = typer.Typer(help="Prometheus metrics: RPO age, endpoint health, drills, failovers, readiness.",
                          no_args_is_help=True)
app.add_typer(metrics_app, name="metrics")


def _project():
    """(the whole project's config, the bundle views to export): --bundle NAME's alone, else every bundle's."""
    from llmdr.cli.root import state

    cfg = load_cfg(whole=True)
    return cfg, cfg.views() if state.bundle in (None, "all") else [cfg.for_bundle(state.bundle)]


def _listen(text: str | None, default: str) -> tuple[str, int]:
    from llmdr.config.sections import split_listen

    try:
        return split_listen(text or default)
    except ValueError as exc:
        raise UsageError(f"--listen {exc}") from None


@metrics_app.command("serve")
def serve(
    listen: Annotated[Optional[str], typer.Option(help="host:port to listen on (default: metrics.listen, "
                                                  "127.0.0.1:18309). No authentication: keep it on loopback or "
                                                  "behind a firewall that only lets Prometheus in.")] = None,
    with_stack: Annotated[bool, typer.Option("--with-stack", hidden=True, help="Stop once the config's local S3 "
                                             "servers are all gone (how `llmdr stack up` runs it).")] = False,
) -> None:
    """Serve the metrics until interrupted: /metrics for Prometheus, / as an HTML page, /healthz. Every bundle of
    the project (each sample labelled bundle=...), or only --bundle NAME's. Stores are read at most once per
    metrics.cache; probe histograms are live."""
    from llmdr.metrics.server import open_exporter, stop_with_stack

    cfg, views = _project()
    host, port = _listen(listen, cfg.metrics.listen)
    exporter = open_exporter(cfg, host, port, views=views)
    if with_stack:
        stop_with_stack(cfg, exporter)
    names = ", ".join(f"'{v.bundle.name}'" for v in views)
    typer.echo(f"serving llmdr metrics of {names} on {exporter.url}/metrics (Ctrl-C stops)", err=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"WARNING: {host} is not loopback and the exporter has no authentication: anyone who reaches "
                   "this port reads the metrics (region names, RPO, endpoints); let only Prometheus in", err=True)
    try:
        exporter.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        exporter.close()


@metrics_app.command("show")
def show() -> None:
    """Print the metrics once (Prometheus text format), every bundle's or --bundle NAME's, without serving anything.
    The probe counters count every probe the monitor's store keeps (a running exporter counts those since it
    started)."""
    from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest

    from llmdr.metrics.collector import ProjectCollector

    disable_created_metrics()
    cfg, views = _project()
    collector = ProjectCollector(cfg, views, probes_from=0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        typer.echo(generate_latest(registry).decode(), nl=False)
    finally:
        collector.close()
