"""The exporter next to the local stack: `llmdr stack up` starts ``llmdr metrics serve --with-stack`` detached on
``metrics.listen`` (every bundle of the project in that one exporter) (PID file ``<state>/metrics/exporter.pid``, log ``exporter.log``), `llmdr stack status` shows
it, `llmdr stack down` stops it by PID. It also stops by itself once the stack's S3 servers are all gone."""

from __future__ import annotations

import os
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from llmdr.common.files import private_dir
from llmdr.common.process import port_open, read_pid, spawn, tail, terminate, write_pid
from llmdr.config import Config


@dataclass
class ExporterStatus:
    url: str
    pid: int | None
    healthy: bool
    started: bool = False  # by this call
    error: str = ""

    def to_json(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """One row for `llmdr stack up|status|down`, aligned with the region rows."""
        if self.error:
            return f"{'metrics':<12} {'FAILED':<8} {'-':>7}  {self.url}/metrics: {self.error}"
        state = "serving" if self.healthy else ("starting" if self.pid else "stopped")  # as the replicas' rows
        return f"{'metrics':<12} {state:<8} {self.pid or '-':>7}  {self.url}/metrics (Prometheus exporter)"


def _dir(cfg: Config) -> Path:
    return cfg.state_path / "metrics"


def _url(cfg: Config) -> str:
    return f"http://{cfg.metrics.listen}"


def pid(cfg: Config) -> int | None:
    return read_pid(_dir(cfg) / "exporter.pid", matches=lambda args: "metrics" in args and "serve" in args)


def healthy(cfg: Config) -> bool:
    try:
        with urllib.request.urlopen(f"{_url(cfg)}/healthz", timeout=2) as r:  # noqa: S310 - the configured exporter
            return r.status == 200
    except OSError:
        return False


def status(cfg: Config) -> ExporterStatus:
    p = pid(cfg)
    return ExporterStatus(_url(cfg), p, p is not None and healthy(cfg))


def start(cfg: Config, timeout: float = 60.0) -> ExporterStatus:
    """Start the exporter (idempotent) and wait until it answers. Never raises for the exporter's own trouble (the
    stack is up without it): a taken port or an exporter that does not start is reported in ``error``."""
    d = _dir(cfg)
    st = status(cfg)
    if st.pid is not None:
        return st
    host, port = cfg.metrics.host, cfg.metrics.port
    if port_open(host, port):
        st.error = (f"port {port} is in use by another program (or another project's exporter); set metrics.listen "
                    "in llmdr.yaml to a free port, or metrics.with_stack: false")
        return st
    argv = [sys.executable, "-m", "llmdr.cli"]
    if cfg.source_file is not None:
        argv += ["--config", str(cfg.source_file.resolve())]
    argv += ["metrics", "serve", "--with-stack"]
    private_dir(d)  # 0700 like the rest of the state folder, whatever the umask
    # llmdr itself, so it gets llmdr's environment: it reads the regions with the same keys; every bundle of the
    # project (not one chosen by $LLMDR_BUNDLE)
    env = {k: v for k, v in os.environ.items() if k != "LLMDR_BUNDLE"}
    proc = spawn(argv, d / "exporter.log", cwd=cfg.base_dir, env=env)
    write_pid(d / "exporter.pid", proc.pid)
    deadline = time.monotonic() + timeout
    while not healthy(cfg):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(cfg)
            last = tail(d / "exporter.log", 3).strip().splitlines()
            st.error = f"the exporter did not start (see {d / 'exporter.log'}): {last[-1] if last else 'no output'}"
            return st
        time.sleep(0.2)
    return ExporterStatus(_url(cfg), proc.pid, True, started=True)


def stop(cfg: Config) -> int | None:
    """Stop the exporter the stack started, by PID; returns that PID (None if none ran)."""
    p = pid(cfg)
    if p is not None:
        terminate(p, 10.0)
    (_dir(cfg) / "exporter.pid").unlink(missing_ok=True)
    return p
