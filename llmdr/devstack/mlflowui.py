"""The MLflow UI next to the local stack (`llmdr stack up --mlflow`): one `mlflow server` on loopback over the
project's tracking store, with the S3 settings of the region that holds the artifacts, started and stopped by PID.
"""

from __future__ import annotations

import sys
import time
import urllib.request
from pathlib import Path

from llmdr.common.process import child_env, read_pid, spawn, terminate, write_pid
from llmdr.config import Config
from llmdr.errors import StackError


def _dir(cfg: Config) -> Path:
    return cfg.state_path / "mlflow"


def _pid(cfg: Config) -> int | None:
    return read_pid(_dir(cfg) / "ui.pid", matches=lambda args: any("mlflow" in a for a in args))


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:  # noqa: S310 - loopback
            return r.status == 200
    except OSError:
        return False


def start(cfg: Config, port: int = 5000, timeout: float = 120.0) -> dict:
    """Start (idempotently) the MLflow UI on 127.0.0.1:``port`` and wait until it answers."""
    from llmdr.lineage.tracking import target_for

    d = _dir(cfg)
    d.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    pid = _pid(cfg)
    if pid is None:
        if cfg.control_plane.database == "postgres":
            from llmdr.devstack import postgres

            postgres.start(cfg)
        target = target_for(cfg, tracking_uri=cfg.tracking.uri)
        # the allow-listed environment (never the other region's keys, the encryption or manifest keys), plus the DR
        # region's S3 settings so the UI can list and download the artifacts in its bucket; the store's URI goes in
        # the environment, not on the command line every local user can read (it may hold a database password)
        env = child_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
                         "MLFLOW_BACKEND_STORE_URI": target.tracking_uri, **target.s3_env})
        exe = Path(sys.executable).parent / "mlflow"
        args = [str(exe) if exe.exists() else "mlflow", "server", "--default-artifact-root", target.artifact_location,
                "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        proc = spawn(args, d / "ui.log", cwd=d, env=env)
        write_pid(d / "ui.pid", proc.pid)
        (d / "ui.port").write_text(str(port))
        deadline = time.monotonic() + timeout
        while not _healthy(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(cfg)
                raise StackError(f"the MLflow UI did not answer on {url} (see {d / 'ui.log'})")
            time.sleep(0.5)
        pid = proc.pid
    return {"url": url, "pid": pid}


def stop(cfg: Config) -> None:
    pid = _pid(cfg)
    if pid is not None:
        terminate(pid, 20.0)
    (_dir(cfg) / "ui.pid").unlink(missing_ok=True)


def status(cfg: Config) -> dict | None:
    pid = _pid(cfg)
    if pid is None:
        return None
    try:
        port = int((_dir(cfg) / "ui.port").read_text())
    except (FileNotFoundError, ValueError):
        return {"pid": pid, "url": None}
    return {"pid": pid, "url": f"http://127.0.0.1:{port}", "healthy": _healthy(port)}
