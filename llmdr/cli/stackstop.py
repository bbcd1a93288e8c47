"""What `llmdr stack down` stops, and what it says about each process: which one, its PID, and whether it was
stopped, was already stopped, or is still running. The stopping itself is the devstack's (by PID files checked
against the command line); this module reads each PID before and checks it after."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Stopped:
    """One process `llmdr stack down` was asked to stop."""

    what: str  # e.g. "S3 server (SeaweedFS)"
    region: str | None  # None: the stack's own (router, Prefect, MLflow UI)
    pid: int | None  # the PID it ran as; None: it was not running
    running: bool = False  # still running after the stop (the stop failed)

    @property
    def name(self) -> str:
        return f"{self.region} {self.what}" if self.region else self.what

    @property
    def state(self) -> str:
        return "already stopped" if self.pid is None else ("STILL RUNNING" if self.running else "stopped")

    def line(self) -> str:
        return f"{self.state:<15} {self.name}" + (f" (pid {self.pid})" if self.pid is not None else "")

    def to_json(self) -> dict[str, Any]:
        return {"what": self.what, "region": self.region, "pid": self.pid, "state": self.state.lower()}


def stop_stack(cfg, region: str | None = None) -> list[Stopped]:
    """Stop a region's S3 server, serving replica and Prefect workers (``region``: its loss), or every local
    region's plus the router, the Prefect server, every worker and the runner, the MLflow UI, the metrics exporter
    and the local PostgreSQL; in that order, each by its PID. Returns one :class:`Stopped` per process it looked
    for."""
    from llmdr.common.process import alive
    from llmdr.config import CaddyRouter
    from llmdr.devstack import mlflowui, orchestration
    from llmdr.devstack.regions import local_regions, region_pid, stop_region
    from llmdr.devstack.serving import stop_serving
    from llmdr.serving.replica import can_start, replica_status

    regions = local_regions(cfg, region)
    steps: list[tuple[list[Stopped], Callable[[], Any]]] = []
    for view in cfg.views():  # every bundle's replicas and router (a project with bundles: has one set per bundle)
        of = f" of {view.view_of}" if view.view_of else ""
        vregions = local_regions(view, region)
        replicas = [Stopped(f"serving replica{of}", r.name, replica_status(view, r).pid)
                    for r in vregions if can_start(r)]
        router: list[Stopped] = []
        if region is None and isinstance(view.router, CaddyRouter):
            from llmdr.failover.router import open_router

            router.append(Stopped(f"router (Caddy){of}", None, open_router(view).pid()))
        steps.append((replicas + router, lambda v=view, rs=vregions: stop_serving(v, rs, router=region is None)))
    if region is not None:
        # the region's loss includes its workers: flows bound to its pool wait for it, the others carry on
        prefect_here = orchestration.running(cfg)
        for r in regions:
            rows = [Stopped(_worker_what(name), r.name, orchestration.worker_pid(cfg, name))
                    for name in orchestration.worker_names(cfg, r.name)]
            rows = [row for row in rows if prefect_here or row.pid is not None]  # no Prefect here: nothing to say
            steps.append((rows, lambda r=r: orchestration.stop_workers(cfg, r.name, timeout=5.0)))
    if region is None:
        from llmdr.devstack import uiproxy

        steps.append(([Stopped("Prefect UI front (Caddy)", None, uiproxy.pid(cfg))], lambda: uiproxy.stop(cfg)))
        st = orchestration.status(cfg)
        workers = [Stopped("Prefect worker", r, pid) for r, pid in st.workers.items()]
        steps.append(([Stopped("Prefect runner", None, st.runner_pid), *workers,
                       Stopped("Prefect server", None, st.server_pid)], lambda: orchestration.stop(cfg)))
        ml = mlflowui.status(cfg)
        steps.append(([Stopped("MLflow UI", None, ml["pid"] if ml else None)], lambda: mlflowui.stop(cfg)))
        from llmdr.metrics import service as metrics_service

        steps.append(([Stopped("metrics exporter (Prometheus)", None, metrics_service.pid(cfg))],
                      lambda: metrics_service.stop(cfg)))
        from llmdr.devstack import postgres  # after its clients: the Prefect server and the MLflow UI

        steps.append(([Stopped("PostgreSQL", None, postgres.postmaster_pid(cfg))], lambda: postgres.stop(cfg)))
    for r in regions:
        steps.append(([Stopped("S3 server (SeaweedFS)", r.name, region_pid(cfg, r))],
                      lambda r=r: stop_region(cfg, r)))
    out: list[Stopped] = []
    for rows, stop in steps:
        stop()
        for row in rows:
            row.running = row.pid is not None and alive(row.pid)
        out += rows
    return out


def _worker_what(name: str) -> str:
    return "Prefect failover runner" if name.startswith("runner-") else "Prefect worker"
