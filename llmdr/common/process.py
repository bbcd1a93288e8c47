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
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from llmdr.common.files import atomic_write, open_private


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
    atomic_write(path, f"{pid}\n")


def terminate(pid: int, timeout: float = 20.0, *,
              ladder: Sequence[tuple[signal.Signals, float]] | None = None) -> None:
    """Stop ``pid``: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; returns once the process is gone.
    ``ladder``: other (signal, seconds to wait for the process to go) steps, tried in turn (e.g. PostgreSQL's
    SIGINT, SIGQUIT); SIGKILL follows unless the ladder ends with it."""
    steps = list(ladder if ladder is not None else [(signal.SIGTERM, timeout)])
    if steps[-1][0] != signal.SIGKILL:
        steps.append((signal.SIGKILL, float("inf")))
    for sig, wait in steps:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not alive(pid):
                return
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


# What a child llmdr starts (a serving replica or serving.command, Caddy, a local SeaweedFS) gets from llmdr's own
# environment: these names, and names starting with CHILD_ENV_PREFIXES unless they look like a secret. Everything
# else is withheld: llmdr's environment holds both regions' S3 keys, the DR encryption key and the manifest key, and
# a model server needs none of them. Allowed: running programs at all (PATH, HOME, locale, time zone, temp folder),
# running llmdr itself (PYTHON*, VIRTUAL_ENV), certificates and proxies (a server that downloads through them), and
# what GPU servers such as vLLM, TGI or llama.cpp read (CUDA_*, NCCL_*, HF_* caches, VLLM_*, TORCH_*...).
CHILD_ENV_NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "TERM",
    "VIRTUAL_ENV", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "LD_LIBRARY_PATH", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS", "TOKENIZERS_PARALLELISM", "TRANSFORMERS_CACHE", "TRANSFORMERS_OFFLINE",
})
CHILD_ENV_PREFIXES = ("LC_", "XDG_", "PYTHON", "CUDA_", "NCCL_", "HF_", "VLLM_", "TORCH_", "TRITON_", "ROCM_", "HIP_")
# a prefix-allowed name containing one of these is withheld all the same (HF_TOKEN, VLLM_API_KEY): name it in
# serving.pass_env to give it to a replica
_SECRET_WORDS = ("KEY", "SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")


def child_env(extra: dict[str, str] | None = None, *, pass_env: Iterable[str] = (),
              environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process: the allowed part of ``environ`` (default ``os.environ``, see
    ``CHILD_ENV_NAMES``), the variables named in ``pass_env`` if set, then ``extra`` (what llmdr passes on
    purpose)."""
    src = os.environ if environ is None else environ
    wanted = set(pass_env)
    out = {k: v for k, v in src.items()
           if k in CHILD_ENV_NAMES or k in wanted
           or (k.startswith(CHILD_ENV_PREFIXES) and not any(w in k.upper() for w in _SECRET_WORDS))}
    out.update(extra or {})
    return out


def hide_environ() -> bool:
    """Make this process non-dumpable (``prctl(PR_SET_DUMPABLE, 0)``), so that other processes of the same user, the
    children llmdr starts included, can no longer read its ``/proc/<pid>/environ`` (the keys the operator exported
    before running llmdr) or its memory; root still can. A child gets its normal dumpable state back when it
    executes its program. Also no core dumps of llmdr. False where prctl is not available (not Linux)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE = 4
    except (OSError, AttributeError):
        return False


def spawn(argv: list[str], log_path: Path, *, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``argv`` detached from us (own session, no stdin), its output appended to ``log_path`` (0600).

    ``env`` None gives the child ``child_env()`` only, never llmdr's whole environment; a caller that must pass
    keys to its child builds ``env`` itself. The child runs with umask 077, so what it creates (SeaweedFS volumes,
    Caddy's data, a server's caches) is its owner's only. An ``OSError`` (no such program...) is the caller's to
    report. Before the first child starts, llmdr hides its own environment from it (``hide_environ``)."""
    hide_environ()
    fd = open_private(log_path, os.O_WRONLY | os.O_APPEND)
    try:
        return subprocess.Popen(argv, env=child_env() if env is None else env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=fd, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                umask=0o077)
    finally:
        os.close(fd)


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
