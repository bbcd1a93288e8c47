"""Serving replicas: a model server per region, started from that region's own object store.

A replica in region R is always restored from R's store (never copied from another region's folder), so starting
the DR replica proves the DR copy is usable. The bundle is restored into ``<state>/replicas/<R>/model-<id12>``
(skipped when that snapshot is already fully there), then ``serving.command`` starts the server (default for a
local region: ``llmdr serve``). The process is detached, recorded by PID and argv, and stopped only after checking
that the PID still runs that argv.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shlex
import shutil
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from llmdr.common.files import atomic_write, private_dir
from llmdr.common.process import alive, child_env, cmdline, spawn, tail, terminate, wait_started
from llmdr.config import Config, Region
from llmdr.errors import StackError, UsageError

log = logging.getLogger(__name__)


def ready_marker(model_dir: Path) -> Path:
    """The record that ``model_dir`` holds a complete restore of a snapshot: next to the folder, not inside it,
    so the served folder is exactly the snapshot (its bundle digest equals the original's)."""
    return model_dir.with_name(model_dir.name + ".ready.json")


@dataclass
class ReplicaStatus:
    region: str
    url: str
    running: bool
    healthy: bool
    pid: int | None = None
    snapshot: str | None = None
    model_dir: str | None = None
    started: str | None = None
    restore_s: float | None = None  # time to restore the bundle from the region's store (0 if already there)
    start_s: float | None = None  # time from process start to a healthy answer
    cold: bool | None = None  # True if this start had to restore from the store
    detail: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def replica_dir(cfg: Config, region: Region) -> Path:
    return cfg.bundle_state_path / "replicas" / region.name


def _state_file(cfg: Config, region: Region) -> Path:
    return replica_dir(cfg, region) / "replica.json"


def _read_state(cfg: Config, region: Region) -> dict:
    try:
        return json.loads(_state_file(cfg, region).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def can_start(region: Region) -> bool:
    """llmdr can start a replica here: a start command is configured, or the region is local (llmdr serve)."""
    return region.serving is not None and (region.serving.command is not None or region.is_local)


def _serving(region: Region):
    if region.serving is None:
        raise UsageError(f"region '{region.name}' has no serving: section in llmdr.yaml; add serving: {{url: "
                         "http://HOST:PORT}} (and a command to start a replica there)")
    return region.serving


def command_for(cfg: Config, region: Region, model_dir: Path) -> list[str]:
    serving = _serving(region)
    fields = {"model_dir": str(model_dir), "host": serving.host, "port": str(serving.port)}
    if serving.command is None:
        if not region.is_local:
            raise UsageError(f"region '{region.name}': its serving endpoint {serving.url} is run outside llmdr (no "
                             "serving.command), so llmdr cannot start a replica there; start it yourself or set "
                             "serving.command, e.g. 'vllm serve {model_dir} --host {host} --port {port}'")
        exe = Path(sys.executable).parent / "llmdr"
        base = [str(exe)] if exe.exists() else [sys.executable, "-m", "llmdr.cli"]
        argv = [*base, "serve", str(model_dir), "--host", serving.host, "--port", str(serving.port)]
        if cfg.monitor.drift is not None and cfg.source_file is not None:  # the tee for the drift check
            from llmdr.config import bundle_ref

            ref = bundle_ref(cfg.source_file, cfg.view_of)  # a bundle's view: that bundle's monitor folder
            argv += ["--drift-config", ref, "--drift-target", region.name]
        return argv
    raw = shlex.split(serving.command) if isinstance(serving.command, str) else list(serving.command)
    try:
        return [part.format(**fields) for part in raw]
    except (KeyError, IndexError, ValueError) as exc:
        raise UsageError(f"region '{region.name}': serving.command {serving.command!r} has an unknown placeholder "
                         f"({exc}); use {{model_dir}}, {{host}} and {{port}}") from None


def _pid_matches(pid: int, argv: list[str]) -> bool:
    args = cmdline(pid)
    if args is None:
        return False
    # a script's argv[0] shows up as "python /path/script": compare the arguments after it
    tail_args = argv[1:]
    if not tail_args:  # a one-word command: only the program itself (run directly, or as a script) can identify it
        name = Path(argv[0]).name
        return any(Path(a).name == name for a in args[:2]) and alive(pid)
    return bool(args) and args[-len(tail_args):] == tail_args and alive(pid)


def _running_pid(cfg: Config, region: Region) -> int | None:
    st = _read_state(cfg, region)
    pid, argv = st.get("pid"), st.get("argv")
    if isinstance(pid, int) and argv and _pid_matches(pid, argv):
        return pid
    return None


def _healthy(url: str, path: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url + path, timeout=timeout) as resp:  # noqa: S310 - configured endpoint
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def replica_status(cfg: Config, region: Region) -> ReplicaStatus:
    serving = _serving(region)
    st = _read_state(cfg, region)
    pid = _running_pid(cfg, region)
    healthy = _healthy(serving.url, serving.health_path)
    detail = "ok" if healthy else ("starting or not answering" if pid else "not running")
    if healthy and pid is None and can_start(region) and st.get("pid"):
        detail = "answering, but not the replica llmdr started"
    return ReplicaStatus(region=region.name, url=serving.url, running=pid is not None or (healthy and not
                         can_start(region)), healthy=healthy, pid=pid, snapshot=st.get("snapshot"),
                         model_dir=st.get("model_dir"), started=st.get("started"), restore_s=st.get("restore_s"),
                         start_s=st.get("start_s"), cold=st.get("cold"), detail=detail)


def _prepare_model(cfg: Config, region: Region, ref: str, *, progress=None) -> tuple[str, Path, float, bool]:
    """Restore the snapshot from the region's own store into the replica folder; reuse a complete earlier restore."""
    from llmdr.repo.ops import open_repo
    from llmdr.repo.restore import restore_snapshot

    repo = open_repo(cfg, region, read_only=True, hidden=True)  # a locked version under a delete marker still serves
    sid = repo.resolve(ref, bundle=cfg.bundle.name)
    root = replica_dir(cfg, region)
    target = root / f"model-{sid[:12]}"
    marker = ready_marker(target)
    try:
        if json.loads(marker.read_text()).get("snapshot") == sid:
            return sid, target, 0.0, False
    except (FileNotFoundError, ValueError):
        pass
    partial = root / f"model-{sid[:12]}.partial"
    t0 = time.monotonic()
    restore_snapshot(repo, sid, partial, force=True, workers=cfg.transfer.download_workers,
                     durable=cfg.transfer.fsync, progress=progress, memory_bytes=cfg.transfer.restore_memory_mb << 20)
    marker.unlink(missing_ok=True)
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
    atomic_write(marker, json.dumps({"snapshot": sid, "region": region.name}))
    return sid, target, time.monotonic() - t0, True


@contextlib.contextmanager
def _start_lock(root: Path):
    """One start of a region's replica at a time on this host: a failover and a pre-warm that both find the standby
    cold must not restore into the same folder at once, nor stop each other's starting server. The second waits,
    then finds the first's replica answering and leaves it."""
    fd = os.open(root / "start.lock", os.O_RDWR | os.O_CREAT, 0o600)  # the owner's only, like the folder
    with os.fdopen(fd, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def start_replica(cfg: Config, region: Region, *, ref: str = "latest", progress=None,
                  timeout: float | None = None) -> ReplicaStatus:
    """Start (idempotently) the region's replica on snapshot ``ref`` of its own store and wait until healthy.

    If a replica already runs that snapshot and answers, nothing happens. If it runs another snapshot, it is
    replaced (stop, start) — the router should not point at it while that happens. Two starts of one region on
    this host run one after the other (``_start_lock``).
    """
    _serving(region)
    root = private_dir(replica_dir(cfg, region))  # the restored bundle, its log and state: the owner's only
    with _start_lock(root):
        return _start_replica(cfg, region, root, ref=ref, progress=progress, timeout=timeout)


def _start_replica(cfg: Config, region: Region, root: Path, *, ref: str, progress, timeout: float | None
                   ) -> ReplicaStatus:
    from datetime import datetime, timezone

    serving = _serving(region)
    sid, model_dir, restore_s, cold = _prepare_model(cfg, region, ref, progress=progress)
    current = replica_status(cfg, region)
    if current.pid and current.snapshot == sid and current.healthy:
        return current
    if current.pid:
        stop_replica(cfg, region)
    elif _healthy(serving.url, serving.health_path, timeout=1.0):
        raise StackError(f"region '{region.name}': something not started by llmdr already answers on {serving.url}; "
                         "stop it or change serving.url")
    argv = command_for(cfg, region, model_dir)
    t0 = time.monotonic()
    try:
        # the server gets the allow-listed environment (child_env) plus serving.pass_env: never the regions' keys,
        # the encryption keys or the manifest key llmdr itself runs with
        proc = spawn(argv, root / "serve.log", cwd=root, env=child_env(pass_env=serving.pass_env))
    except OSError as exc:
        raise StackError(f"region '{region.name}': cannot run {argv[0]}: {exc.strerror}") from None
    state = {"pid": proc.pid, "argv": argv, "snapshot": sid, "model_dir": str(model_dir),
             "started": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
             "restore_s": round(restore_s, 3), "cold": cold}
    atomic_write(_state_file(cfg, region), json.dumps(state))
    limit = timeout if timeout is not None else serving.start_timeout.total_seconds()
    failed = wait_started(proc, lambda: _healthy(serving.url, serving.health_path, timeout=1.0), timeout=limit,
                          interval=0.05)
    if failed == "exited":
        raise StackError(f"region '{region.name}': the replica exited with code {proc.returncode} while "
                         f"starting:\n{tail(root / 'serve.log')}")
    if failed == "timeout":
        _stop_pid(proc.pid)
        raise StackError(f"region '{region.name}': the replica did not answer on {serving.url}"
                         f"{serving.health_path} within {limit:.0f}s:\n{tail(root / 'serve.log')}")
    state["start_s"] = round(time.monotonic() - t0, 3)
    atomic_write(_state_file(cfg, region), json.dumps(state))
    _drop_old_models(root, keep=model_dir)
    log.info("replica for %s serving %s on %s (pid %d)", region.name, sid[:12], serving.url, proc.pid)
    return replica_status(cfg, region)


def _drop_old_models(root: Path, keep: Path) -> None:
    for d in root.glob("model-*"):
        if d.is_dir() and d != keep:
            shutil.rmtree(d, ignore_errors=True)
        elif d.is_file() and d != ready_marker(keep):
            d.unlink(missing_ok=True)


def _stop_pid(pid: int) -> None:
    terminate(pid, 10.0)


def stop_replica(cfg: Config, region: Region) -> ReplicaStatus | None:
    """Stop the region's replica if llmdr started it. Regions whose endpoint runs elsewhere are left alone."""
    if region.serving is None:
        return None
    pid = _running_pid(cfg, region)
    if pid is not None:
        _stop_pid(pid)
        log.info("stopped the replica of %s (pid %d)", region.name, pid)
    return replica_status(cfg, region)


def ensure_replica(cfg: Config, region: Region, *, ref: str = "latest", progress=None) -> ReplicaStatus:
    """A healthy replica in ``region``: the warm one if it answers, else a cold start from the region's store."""
    serving = _serving(region)
    st = replica_status(cfg, region)
    if st.healthy:
        st.cold = False
        st.restore_s = st.restore_s if st.pid else None
        return st
    if not can_start(region):
        raise StackError(f"region '{region.name}': its endpoint {serving.url} does not answer and llmdr cannot start "
                         "it (no serving.command)")
    return start_replica(cfg, region, ref=ref, progress=progress)
