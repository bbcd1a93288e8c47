"""The local orchestration stack: a Prefect server (SQLite, or the local PostgreSQL with
``control_plane: {database: postgres}``; loopback), a work pool per region (``llmdr-<region>``), the deployments of
``prefect.yaml``, a process worker per region and the warm failover runner on the DR region's pool, started next to
the local S3 regions and stopped by PID.

The server's state lives in ``<state_dir>/prefect``. Workers run flows from the llmdr code checkout
(``$LLMDR_CODE``) with ``$LLMDR_CONFIG`` pointing at this project's ``llmdr.yaml``. On this one host every region's
worker runs side by side, each started with its region named (``LLMDR_REGION``, worker name
``llmdr-worker-<region>``, PID file ``worker-<region>.pid``), so a region's loss (``llmdr stack down REGION``, the
drill's local outage) stops that region's workers with it: see :func:`stop_workers`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmdr.common.process import read_pid, spawn, terminate, write_pid
from llmdr.config import Config
from llmdr.config.pools import DEFAULT_QUEUE, FAILOVER_QUEUE, deploy_env, dr_region, region_pool
from llmdr.errors import StackError

LEGACY_PID_NAMES = ("runner", "worker")  # the single worker and runner before per-region pools


@dataclass
class OrchestrationStatus:
    url: str
    server_pid: int | None
    worker_pid: int | None  # the primary region's worker
    healthy: bool
    runner_pid: int | None = None  # the warm failover runner, on the DR region's pool
    workers: dict[str, int | None] = field(default_factory=dict)  # region → its process worker's PID
    runner_region: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


def code_root() -> Path:
    root = Path(__file__).resolve().parents[2]
    if not (root / "prefect.yaml").exists():
        raise StackError(f"prefect.yaml not found next to the llmdr package ({root}); run from a checkout "
                         "(`uv sync` installs llmdr editable)")
    return root


def _dir(cfg: Config) -> Path:
    return cfg.state_path / "prefect"


def _prefect() -> str:
    here = Path(sys.executable).parent / "prefect"
    return str(here) if here.exists() else (shutil.which("prefect") or "prefect")


def env(cfg: Config, port: int) -> dict[str, str]:
    e = dict(os.environ)
    e.update({
        "PREFECT_HOME": str(_dir(cfg)),
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",  # a failover run is picked up within a second
        "LLMDR_CODE": str(code_root()),
        "LLMDR_CONFIG": str((cfg.source_file or Path("llmdr.yaml")).resolve()),
    })
    return e


def server_env(cfg: Config, port: int) -> dict[str, str]:
    """The server's environment: :func:`env`, plus its database when ``control_plane.database`` is postgres (the
    ``prefect`` database of the local cluster; ``$PREFECT_API_DATABASE_CONNECTION_URL``, if set, wins: an external
    PostgreSQL). The worker's environment does not carry the database URL."""
    e = env(cfg, port)
    if cfg.control_plane.database == "postgres" and not os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL"):
        from llmdr.storage.credentials import postgres_password

        e["PREFECT_API_DATABASE_CONNECTION_URL"] = cfg.control_plane.postgres_url(
            "prefect", postgres_password(cfg) or "", driver="postgresql+asyncpg")
    return e


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:  # noqa: S310
            return r.status == 200
    except OSError:
        return False


def _pid(cfg: Config, name: str) -> int | None:
    return read_pid(_dir(cfg) / f"{name}.pid")


def _spawn(cfg: Config, name: str, args: list[str], e: dict[str, str], cwd: Path) -> int:
    d = _dir(cfg)
    d.mkdir(parents=True, exist_ok=True)
    proc = spawn(args, d / f"{name}.log", cwd=cwd, env=e)
    write_pid(d / f"{name}.pid", proc.pid)
    return proc.pid


def start(cfg: Config, port: int = 4200, timeout: float = 180.0, *, start_monitor: bool = True) -> OrchestrationStatus:
    """Start (idempotently) the server, create the region pools, deploy, create the automations, start a worker per
    region and the warm failover runner on the DR region's pool; with ``start_monitor`` also a monitor-endpoints run
    now (else the first one waits for the schedule's next minute)."""
    e = env(cfg, port) | deploy_env(cfg)
    root = code_root()
    _dir(cfg).mkdir(parents=True, exist_ok=True)
    (_dir(cfg) / "port").write_text(str(port))
    if _pid(cfg, "server") is None:
        if cfg.control_plane.database == "postgres":
            from llmdr.devstack import postgres

            postgres.start(cfg)
        _spawn(cfg, "server", [_prefect(), "server", "start"], server_env(cfg, port), _dir(cfg).parent)
    deadline = time.monotonic() + timeout
    while not _healthy(port):
        if _pid(cfg, "server") is None or time.monotonic() > deadline:
            raise StackError(f"the Prefect server did not answer on 127.0.0.1:{port}; see {_dir(cfg) / 'server.log'}")
        time.sleep(0.5)
    _run([sys.executable, str(root / "deployments" / "configure.py"), "--pools"], e, root)  # llmdr-<region>
    _run([_prefect(), "--no-prompt", "deploy", "--all"], e, root)
    # pools, tags, region choices, and each bundle's deployment copies, which its failover automation runs
    _run([sys.executable, str(root / "deployments" / "configure.py")], e, root)
    _run([sys.executable, str(root / "deployments" / "automations.py")], e, root)
    # workers of pools no deployment is bound to any more (a renamed region, another DR target, the old layout)
    wanted = {n for r in cfg.regions for n in worker_names(cfg, r.name)}
    spare = _ancestors()
    for name in _all_worker_names(cfg):
        if name not in wanted:
            _stop_pid_file(cfg, name, 20.0, spare)
    start_workers(cfg, port=port)
    if start_monitor:
        # start watching now rather than at the schedule's next minute (a new deployment copy's first scheduled
        # run can be a minute or more away): one run per bundle that serves, of its own monitor deployment
        for deployment in monitor_deployments(cfg):
            if not _monitor_scheduled_soon(port, deployment.split("/", 1)[1]):
                _run([_prefect(), "deployment", "run", deployment], e, root)
    return status(cfg, port)


def monitor_deployments(cfg: Config) -> list[str]:
    """The monitor deployment of every bundle that has an endpoint to watch: ``monitor-endpoints/monitor-endpoints``
    for a one-bundle project, ``monitor-endpoints/monitor-endpoints-<bundle>`` for each of several (configure.py's
    copies)."""
    base = "monitor-endpoints/monitor-endpoints"
    if not cfg.multi_bundle:
        return [base] if any(r.serving for r in cfg.regions) else []
    return [f"{base}-{v.bundle.name}" for v in cfg.views() if any(r.serving for r in v.regions)]


def _monitor_scheduled_soon(port: int, deployment: str = "monitor-endpoints") -> bool:
    """A run of the monitor deployment DEPLOYMENT is running, or due within 10 s."""
    import json
    from datetime import datetime, timedelta, timezone

    soon = (datetime.now(timezone.utc) + timedelta(seconds=10)).isoformat()
    body = {"flows": {"name": {"any_": ["monitor-endpoints"]}}, "deployments": {"name": {"any_": [deployment]}},
            "flow_runs": {"state": {"type": {"any_": ["RUNNING", "PENDING", "SCHEDULED"]}},
                          "expected_start_time": {"before_": soon}}, "limit": 1}
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/flow_runs/filter", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - loopback
            return bool(json.loads(r.read()))
    except OSError:
        return False


def _run(args: list[str], e: dict[str, str], cwd: Path) -> None:
    r = subprocess.run(args, env=e, cwd=cwd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise StackError(f"`{' '.join(args[1:])}` failed:\n{(r.stdout + r.stderr)[-2000:]}")


def _port(cfg: Config) -> int:
    try:
        return int((_dir(cfg) / "port").read_text())
    except (FileNotFoundError, ValueError):
        return 4200


def worker_pid(cfg: Config, name: str) -> int | None:
    """The PID of a running worker by its PID-file name (see :func:`worker_names`), None if it is not running."""
    return _pid(cfg, name)


def worker_names(cfg: Config, region: str) -> list[str]:
    """The PID-file names of a region's workers: its process worker, and the warm runner on the DR region."""
    return [f"worker-{region}"] + ([f"runner-{region}"] if region == dr_region(cfg) else [])


def start_workers(cfg: Config, regions: list[str] | None = None, *, port: int | None = None) -> dict[str, int]:
    """Start (idempotently) the process worker of each region's pool (default: every configured region) and, for
    the DR region, the warm failover runner on its pool's ``failover`` queue (that region's process worker then
    serves only ``default``: see ``llmdr.config.pools.FAILOVER_QUEUE``); each with ``LLMDR_REGION`` set. Returns the
    PID of each, by PID-file name."""
    # not a flow run's own variables (a drill ending its outage restarts the workers from inside a run)
    e = {k: v for k, v in env(cfg, port or _port(cfg)).items() if not k.startswith("PREFECT__")}
    root = code_root()
    out = {}
    for region in regions if regions is not None else [r.name for r in cfg.regions]:
        cfg.region(region)  # an unknown name is a usage error
        re_ = e | {"LLMDR_REGION": region}
        pool = region_pool(region)
        for name in worker_names(cfg, region):
            pid = _pid(cfg, name)
            if pid is None:
                if name.startswith("runner-"):
                    args = [sys.executable, str(root / "deployments" / "warm_runner.py"), "--pool", pool,
                            "--queue", FAILOVER_QUEUE]
                else:
                    args = [_prefect(), "worker", "start", "--pool", pool, "--name", f"llmdr-worker-{region}"]
                    if region == dr_region(cfg):
                        args += ["--work-queue", DEFAULT_QUEUE]
                pid = _spawn(cfg, name, args, re_, root)
            out[name] = pid
    return out


def _stop_pid_file(cfg: Config, name: str, timeout: float, spare: set[int]) -> tuple[int | None, bool]:
    """Stop the process of one PID file and the processes it started (its flow runs), unless it is in ``spare``
    (the caller or one of its ancestors: a drill must not stop the worker that runs it). (pid, stopped)."""
    import psutil

    pid = _pid(cfg, name)
    if pid is None:
        (_dir(cfg) / f"{name}.pid").unlink(missing_ok=True)
        return None, False
    if pid in spare:
        return pid, False
    try:
        children = [c for c in psutil.Process(pid).children(recursive=True) if c.pid not in spare]
    except psutil.Error:
        children = []
    terminate(pid, timeout)
    for child in children:
        if child.is_running():
            terminate(child.pid, timeout)
    (_dir(cfg) / f"{name}.pid").unlink(missing_ok=True)
    return pid, True


def _ancestors() -> set[int]:
    import psutil

    me = psutil.Process()
    return {me.pid, *(p.pid for p in me.parents())}


def stop_workers(cfg: Config, region: str, timeout: float = 20.0) -> list[tuple[str, int | None, bool]]:
    """Stop a region's workers (its process worker; on the DR region also the warm runner) and the flow runs they
    run: part of "the region is lost". A worker that runs the caller (e.g. a drill started on that region's pool)
    is left running. One (name, pid or None, stopped) per worker looked for."""
    spare = _ancestors()
    return [(name, *_stop_pid_file(cfg, name, timeout, spare)) for name in worker_names(cfg, region)]


def _all_worker_names(cfg: Config) -> list[str]:
    """Every worker PID file here: the configured regions', any other region's left from an older llmdr.yaml, and
    the single worker/runner of the layout before per-region pools."""
    names = {p.stem for p in _dir(cfg).glob("worker-*.pid")} | {p.stem for p in _dir(cfg).glob("runner-*.pid")}
    names |= {n for r in cfg.regions for n in worker_names(cfg, r.name)}
    return sorted(names) + list(LEGACY_PID_NAMES)


def stop(cfg: Config, timeout: float = 20.0) -> None:
    """Stop the runner and every worker, the flow runs they started (e.g. a monitor-endpoints run still watching),
    then the server."""
    spare = _ancestors()
    for name in [*_all_worker_names(cfg), "server"]:
        _stop_pid_file(cfg, name, timeout, spare)


def status(cfg: Config, port: int | None = None) -> OrchestrationStatus:
    if port is None:
        port = _port(cfg)
    dr = dr_region(cfg)
    workers = {r.name: _pid(cfg, f"worker-{r.name}") for r in cfg.regions}
    return OrchestrationStatus(url=f"http://127.0.0.1:{port}", server_pid=_pid(cfg, "server"),
                               worker_pid=workers.get(cfg.primary.name) or _pid(cfg, "worker"),
                               runner_pid=_pid(cfg, f"runner-{dr}") or _pid(cfg, "runner"), healthy=_healthy(port),
                               workers=workers, runner_region=dr)


def running(cfg: Config) -> bool:
    return _pid(cfg, "server") is not None


def describe(st: OrchestrationStatus) -> str:
    state = "healthy" if st.healthy else ("starting" if st.server_pid else "stopped")
    workers = ", ".join(f"{region_pool(r)} pid {pid or '-'}" for r, pid in st.workers.items())
    return (f"prefect      {state:<8} {st.server_pid or '-':>7}  {st.url} (UI; API {st.url}/api); workers: "
            f"{workers or '-'}; failover runner ({region_pool(st.runner_region) if st.runner_region else '-'}) pid "
            f"{st.runner_pid or '-'}")
