"""The local orchestration stack: a Prefect server (SQLite, loopback), the llmdr work pool, the deployments of
``prefect.yaml`` and one process worker, started next to the local S3 regions and stopped by PID.

The server's state lives in ``<state_dir>/prefect``. Workers run flows from the llmdr code checkout
(``$LLMDR_CODE``) with ``$LLMDR_CONFIG`` pointing at this project's ``llmdr.yaml``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from llmdr.common.process import read_pid, spawn, terminate, write_pid
from llmdr.config import Config
from llmdr.errors import StackError

POOL = "llmdr-process"
FAILOVER_POOL = "llmdr-failover"  # served by deployments/warm_runner.py: failover runs start in < 1 s


@dataclass
class OrchestrationStatus:
    url: str
    server_pid: int | None
    worker_pid: int | None
    healthy: bool
    runner_pid: int | None = None

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
    """Start (idempotently) the server, create the pools, deploy, create the automations, start the worker and the
    warm failover runner; with ``start_monitor`` also a monitor-endpoints run now (else the first one waits for
    the schedule's next minute)."""
    e = env(cfg, port)
    root = code_root()
    _dir(cfg).mkdir(parents=True, exist_ok=True)
    (_dir(cfg) / "port").write_text(str(port))
    if _pid(cfg, "server") is None:
        _spawn(cfg, "server", [_prefect(), "server", "start"], e, _dir(cfg).parent)
    deadline = time.monotonic() + timeout
    while not _healthy(port):
        if _pid(cfg, "server") is None or time.monotonic() > deadline:
            raise StackError(f"the Prefect server did not answer on 127.0.0.1:{port}; see {_dir(cfg) / 'server.log'}")
        time.sleep(0.5)
    for pool in (POOL, FAILOVER_POOL):
        found = subprocess.run([_prefect(), "work-pool", "inspect", pool], env=e, capture_output=True, text=True)
        if found.returncode != 0:
            _run([_prefect(), "work-pool", "create", pool, "--type", "process"], e, root)
    _run([_prefect(), "--no-prompt", "deploy", "--all"], e, root)
    _run([sys.executable, str(root / "deployments" / "automations.py")], e, root)
    _run([sys.executable, str(root / "deployments" / "configure.py")], e, root)  # tags, region choices
    if _pid(cfg, "worker") is None:
        _spawn(cfg, "worker", [_prefect(), "worker", "start", "--pool", POOL], e, root)
    if _pid(cfg, "runner") is None:
        _spawn(cfg, "runner", [sys.executable, str(root / "deployments" / "warm_runner.py"), "--pool", FAILOVER_POOL],
               e, root)
    watch = start_monitor and not cfg.multi_bundle  # several bundles: each bundle's monitor deployment, on schedule
    if watch and any(r.serving for r in cfg.regions) and not _monitor_scheduled_soon(port):
        # start watching now rather than at the schedule's next minute
        _run([_prefect(), "deployment", "run", "monitor-endpoints/monitor-endpoints"], e, root)
    return status(cfg, port)


def _monitor_scheduled_soon(port: int) -> bool:
    """A monitor-endpoints run is running, or due within 10 s."""
    import json
    from datetime import datetime, timedelta, timezone

    soon = (datetime.now(timezone.utc) + timedelta(seconds=10)).isoformat()
    body = {"flows": {"name": {"any_": ["monitor-endpoints"]}},
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


def stop(cfg: Config, timeout: float = 20.0) -> None:
    """Stop the worker, the flow runs it started (e.g. a monitor-endpoints run still watching), then the server."""
    import psutil

    for name in ("runner", "worker", "server"):
        pid = _pid(cfg, name)
        if pid is not None:
            try:
                children = psutil.Process(pid).children(recursive=True)
            except psutil.Error:
                children = []
            terminate(pid, timeout)
            for child in children:
                if child.is_running():
                    terminate(child.pid, timeout)
        (_dir(cfg) / f"{name}.pid").unlink(missing_ok=True)


def status(cfg: Config, port: int | None = None) -> OrchestrationStatus:
    if port is None:
        try:
            port = int((_dir(cfg) / "port").read_text())
        except (FileNotFoundError, ValueError):
            port = 4200
    return OrchestrationStatus(url=f"http://127.0.0.1:{port}", server_pid=_pid(cfg, "server"),
                               worker_pid=_pid(cfg, "worker"), runner_pid=_pid(cfg, "runner"), healthy=_healthy(port))


def running(cfg: Config) -> bool:
    return _pid(cfg, "server") is not None


def describe(st: OrchestrationStatus) -> str:
    state = "healthy" if st.healthy else ("starting" if st.server_pid else "stopped")
    return (f"prefect      {state:<8} {st.server_pid or '-':>7}  {st.url} (UI; API {st.url}/api), worker pid "
            f"{st.worker_pid or '-'}, failover runner pid {st.runner_pid or '-'}")
