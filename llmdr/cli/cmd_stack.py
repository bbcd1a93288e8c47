"""`llmdr stack up|down|status` (the local two-region stack: S3 servers, replicas, router, optionally Prefect and
the MLflow UI) and `llmdr status` (where traffic goes now and the health of everything behind it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from llmdr.cli.root import JsonOpt, app, emit, load_cfg, load_views
from llmdr.errors import LlmdrError, StackError, UsageError

stack_app = typer.Typer(help="Run the local two-region SeaweedFS stack.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")


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
    ui: Annotated[bool, typer.Option("--ui", help="Also start a Prefect server, a work pool and worker per region "
                                     "(+ the warm failover runner on the DR region's), deploy the flows and "
                                     "create the automations.")] = False,
    ui_port: Annotated[int, typer.Option(help="Port of the Prefect server and UI.")] = 4200,
    serving: Annotated[bool, typer.Option("--serving/--no-serving", help="Start the replicas (from each region's "
                                          "own newest snapshot) and the router.")] = True,
    mlflow: Annotated[bool, typer.Option("--mlflow", help="Also start the MLflow UI over the project's tracking "
                                         "store (model versions, drill runs, training runs).")] = False,
    mlflow_port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
    ui_listen: Annotated[Optional[str], typer.Option(
        help="With --ui: also start an authenticating front (Caddy, HTTP basic auth, one login per person, JSON "
             "access log) on HOST:PORT before the Prefect UI and API, which stay on loopback. Needs --ui-users. "
             "The login that resumes a paused drill goes into its signed evidence.")] = None,
    ui_users: Annotated[Optional[Path], typer.Option(
        help="The front's users: one 'name:hash' line per person, the hash from `caddy hash-password`.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Start the local S3 servers (idempotent), wait until they answer, create the buckets; the local PostgreSQL
    when control_plane.database is postgres; then each region's serving replica restored from that region's store,
    and the Caddy router. With --ui also the Prefect server, the llmdr work pool, the deployments, the automations
    and a worker; with --ui-listen the authenticating front."""
    from llmdr.devstack import uiproxy
    from llmdr.devstack.regions import local_regions, start_region
    from llmdr.devstack.serving import start_router, start_serving
    from llmdr.devstack.stacklock import stack_lock

    uiproxy.check(ui_listen, ui_users, ui=ui, prefect_port=ui_port)  # refused before anything starts
    cfg = load_cfg(whole=True)
    with stack_lock(cfg, "stack up"):
        regions = local_regions(cfg, region)
        if not regions:
            raise UsageError(f"no region in {cfg.source_file} has a local: section, so there is nothing for "
                             "`llmdr stack` to start; remote regions are run by their owners")
        rows = [start_region(cfg, r) for r in regions]
        text = _status_table(rows)
        out: dict[str, Any] = {"regions": [s.to_json() for s in rows]}
        if cfg.control_plane.database == "postgres" and (region is None or ui or mlflow):
            from llmdr.devstack import postgres

            pg = postgres.start(cfg)
            text += "\n" + postgres.describe(pg)
            out["postgres"] = pg.to_json()
        if serving:  # every bundle's replicas and router
            notes = []
            for view in cfg.views():
                vregions = local_regions(view, region)
                vnotes = start_serving(view, vregions)
                router = start_router(view)
                vnotes += [router] if router else []
                if view.view_of:
                    for n in vnotes:
                        n.region = f"{n.region}/{view.view_of}"
                notes += vnotes
            text += "\n" + "\n".join(f"{n.region:<12} {'serving' if n.started else '-':<8} {n.detail}" for n in notes)
            out["serving"] = [n.__dict__ for n in notes]
        if ui:
            from llmdr.devstack import orchestration

            if ui_listen:  # the UI reached through the front asks its own origin for the API, not 127.0.0.1
                import os

                os.environ.setdefault("PREFECT_UI_API_URL", "/api")
            st = orchestration.start(cfg, ui_port)
            text += "\n" + orchestration.describe(st)
            out["prefect"] = st.to_json()
            if ui_listen and ui_users:
                front = uiproxy.start(cfg, ui_listen, ui_users, ui_port)
                text += (f"\nui front     healthy  {front['pid']:>7}  {front['url']} (basic auth: "
                         f"{', '.join(front['users'])}; access log {front['access_log']})")
                out["ui_front"] = front
        elif region is not None:  # a region back after `stack down REGION`: its workers too, if Prefect runs here
            from llmdr.devstack import orchestration

            if orchestration.running(cfg):
                pids = orchestration.start_workers(cfg, [r.name for r in regions])
                text += "\n" + "\n".join(f"{name:<20} pid {pid}" for name, pid in pids.items())
                out["workers"] = pids
        if mlflow:
            from llmdr.devstack import mlflowui

            ml = mlflowui.start(cfg, mlflow_port)
            text += f"\nmlflow       healthy  {ml['pid']:>7}  {ml['url']} (UI)"
            out["mlflow"] = ml
        # the Prometheus exporter (metrics: in llmdr.yaml), one for every bundle; its trouble never fails the stack
        if cfg.metrics.with_stack:
            from llmdr.metrics import service as metrics_service

            exporter = metrics_service.start(cfg)
            text += "\n" + exporter.line()
            out["metrics"] = exporter.to_json()
    emit(as_json, out, text)


@stack_app.command("down")
def stack_down(
    region: Annotated[Optional[str], typer.Argument(help="Only this region (its S3 server, its replica and its "
                                                    "Prefect workers), e.g. to simulate its outage.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop the local servers by their PIDs: a region's S3 server, serving replica and Prefect workers (its work
    pool's worker; on the DR region also the failover runner); without REGION also the router, the Prefect server
    and every worker, the MLflow UI and the local PostgreSQL. Says, for each, what it stopped (and its PID) or that
    it was already stopped; exits 1 if one still runs. Data stays on disk."""
    from llmdr.cli.stackstop import stop_stack
    from llmdr.devstack.stacklock import stack_lock

    cfg = load_cfg(whole=True)
    with stack_lock(cfg, "stack down"):
        rows = stop_stack(cfg, region)
    emit(as_json, {"processes": [r.to_json() for r in rows]}, "\n".join(r.line() for r in rows))
    running = [r.name for r in rows if r.running]
    if running:
        raise StackError(f"still running after `llmdr stack down`: {', '.join(running)}; stop them by their PIDs "
                         "(listed above) and check their logs in the state folder")


@stack_app.command("status")
def stack_status(
    region: Annotated[Optional[str], typer.Argument(help="Only this region.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show each local region: running, healthy (authenticated access works), auth enforced; the Prefect server
    and the local PostgreSQL when they run or are configured."""
    from llmdr.devstack import orchestration
    from llmdr.devstack.regions import local_regions, region_status

    cfg = load_cfg(whole=True)
    rows = [region_status(cfg, r) for r in local_regions(cfg, region)]
    text = _status_table(rows)
    if orchestration.running(cfg):
        text += "\n" + orchestration.describe(orchestration.status(cfg))
    if cfg.control_plane.database == "postgres":
        from llmdr.devstack import postgres

        text += "\n" + postgres.describe(postgres.status(cfg))
    if cfg.metrics.with_stack:
        from llmdr.metrics import service as metrics_service

        text += "\n" + metrics_service.status(cfg).line()
    emit(as_json, [s.to_json() for s in rows], text)
    if not all(s.healthy for s in rows):
        raise typer.Exit(3)


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
    failover; with --bundle all, for each bundle. Exit 3 if the active region (of any bundle shown) does not
    answer."""
    views = load_views()
    shown = [_bundle_status(cfg) for cfg in views]
    if len(shown) == 1:
        emit(as_json, shown[0][0], "\n".join(shown[0][1]))
    else:
        emit(as_json, {"bundles": [out for out, _, _ in shown]},
             "\n\n".join("\n".join([f"bundle   {out['bundle']}", *lines]) for out, lines, _ in shown))
    if any(down for _, _, down in shown):
        raise typer.Exit(3)


def _bundle_status(cfg) -> tuple[dict[str, Any], list[str], bool]:
    """One bundle's status: the JSON document, the text lines, and whether its active region does not answer."""
    from llmdr.devstack.regions import region_status
    from llmdr.failover import steps as fo
    from llmdr.failover.router import open_router, router_log
    from llmdr.failover.watch import read_status
    from llmdr.serving.replica import replica_status

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
    act = next((r for r in rows if r["active"]), None)
    return out, lines, bool(cfg.router and (act is None or not (act["replica"] or {}).get("healthy")))
