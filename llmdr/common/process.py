"""Local helper processes started and stopped by PID: the SeaweedFS regions, the serving replicas, the Caddy
router, the Prefect server and worker, the MLflow UI.

Every one of them is started detached (its own session, output appended to a log file), recorded in a PID file, and
stopped only after checking that the PID still runs the command llmdr started (a PID can be reused by another
program after a reboot or a crash). Tests start these servers in-process, so ``alive`` and ``reap`` also collect our
own exited children: a zombie is not alive.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def alive(pid: int) -> bool:
    """Does ``pid`` run (a zombie does not)? Collects it first if it is our exited child."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (FileNotFoundError, IndexError):
        return False


def cmdline(pid: int) -> list[str] | None:
    """The process's arguments (``argv[0]`` first, empty ones left out), or None if it is gone or not readable."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def read_pid(path: Path, *, matches: Callable[[list[str]], bool] | None = None) -> int | None:
    """The PID recorded in the file ``path`` if that process is alive and, when ``matches`` is given, its command
    line (see ``cmdline``) passes that check; else None."""
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if matches is not None:
        args = cmdline(pid)
        if not args or not matches(args):
            return None
    try:
        return pid if alive(pid) else None
    except PermissionError:  # alive, but another user's process: not ours
        return None


def write_pid(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{pid}\n")


def terminate(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; returns once the process is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    while alive(pid):
        time.sleep(0.05)


def reap(pid: int, timeout: float = 5.0) -> None:
    """If ``pid`` is our child, collect it so no zombie stays behind. A Go program's main thread shows as a zombie
    while its other threads still exit, so this waits until ``waitpid`` succeeds (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done == pid:
            return
        time.sleep(0.01)


def spawn(argv: list[str], log_path: Path, *, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``argv`` detached from us (own session, no stdin), its output appended to ``log_path``.
    An ``OSError`` (no such program...) is the caller's to report."""
    with open(log_path, "ab") as logf:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)


def tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    """Does something accept TCP connections on ``host``:``port``?"""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


def wait_started(proc: subprocess.Popen, ready: Callable[[], bool], *, timeout: float,
                 interval: float = 0.1) -> str | None:
    """Poll ``ready()`` until it is true while ``proc`` starts. None once ready; ``"exited"`` if the process ended
    first (its code is ``proc.returncode``); ``"timeout"`` after ``timeout`` seconds (the process is left running:
    the caller stops it and says why)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            return "exited"
        if time.monotonic() > deadline:
            return "timeout"
        time.sleep(interval)
    return None


def wait_for_port(host: str, port: int, *, timeout: float, interval: float = 0.05) -> bool:
    """Wait until ``host``:``port`` accepts connections; False if it did not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not port_open(host, port):
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True
