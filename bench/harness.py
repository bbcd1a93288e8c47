"""What the bench scripts share: measured subprocesses, the work folder, the two local SeaweedFS regions started with
``llmdr stack up``, the peers and the steps that ran or were skipped for want of one, and the common options.

Every measured command is a subprocess spawned by rusage_launcher.py: its wall time is taken around it (Python
start-up included) and its peak RSS is the kernel's high-water mark ``ru_maxrss`` returned by ``os.wait4`` for that
child (see that file for why a launcher). Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import peers

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
HOST = "127.0.0.1"
STEP_TIMEOUT_S = 3600
MB = 1_000_000  # throughput and RSS are in decimal MB (10^6 bytes)
MiB = 1 << 20
GiB = 1 << 30


# running subprocesses --------------------------------------------------------------------------------------------------
@dataclass
class Finished:
    wall_s: float
    peak_rss_kib: int
    cpu_s: float
    sys_s: float
    stdout: str


class CommandFailed(RuntimeError):
    pass


def run_measured(cmd: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> Finished:
    """Run ``cmd`` to completion under rusage_launcher.py, which times it and ``os.wait4``s it (see that file)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out_path, err_path, usage_path = log.with_suffix(".out"), log.with_suffix(".err"), log.with_suffix(".rusage.json")
    launcher = [sys.executable, "-I", "-S", str(BENCH_DIR / "rusage_launcher.py"), str(usage_path)]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(launcher + cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=cwd,
                                start_new_session=True)
        try:
            proc.wait(STEP_TIMEOUT_S)
        except BaseException as exc:  # timeout, Ctrl-C, SIGTERM: do not leave the tool running
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the tool share this new process group
            proc.wait()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise CommandFailed(f"{' '.join(cmd)} did not finish within {STEP_TIMEOUT_S}s (logs: {log}.*)") from None
            raise
    if proc.returncode != 0:
        tail = err_path.read_text(errors="replace")[-3000:]
        raise CommandFailed(f"{' '.join(cmd)} exited with {proc.returncode} (logs: {log}.*):\n{tail}")
    u = json.loads(usage_path.read_text())
    return Finished(u["wall_s"], u["maxrss_kib"], u["utime_s"] + u["stime_s"], u["stime_s"], out_path.read_text())


def run_quiet(cmd: list[str], *, env: dict[str, str], cwd: Path) -> str:
    """An unmeasured helper command (set-up, versions); returns stdout, raises with stderr on failure."""
    p = subprocess.run(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if p.returncode != 0:
        raise CommandFailed(f"{' '.join(cmd)} exited with {p.returncode}:\n{p.stderr[-3000:]}")
    return p.stdout


def first_line(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path = REPO_DIR) -> str:
    """The first line a command prints (a version), or "?" when it cannot run."""
    try:
        return run_quiet(cmd, env=dict(os.environ) if env is None else env, cwd=cwd).strip().splitlines()[0]
    except (CommandFailed, IndexError, OSError):
        return "?"


def machine_cpu_s() -> tuple[float, float]:
    """Busy CPU seconds of the whole machine (user, nice, system, irq, softirq) and steal, from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def settle(pause_s: float = 1.0) -> None:
    """Flush dirty pages (the servers' writes of the previous step) so writeback does not overlap the next tool."""
    os.sync()
    time.sleep(pause_s)


def slug(s: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in s.lower()).strip("-")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        while block := fh.read(8 * MiB):
            h.update(block)
    return h.hexdigest()


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def stop_on_sigterm() -> None:
    """SIGTERM becomes SystemExit, so a script's ``finally`` stops its servers."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


@contextlib.contextmanager
def sigterm_deferred() -> Iterator[None]:
    """A block that a SIGTERM does not cut short (a ``finally`` stopping servers): one that arrives meanwhile exits
    (143) once the block is done. Without it, a second SIGTERM, or one that comes while the ``finally`` runs, left
    servers running."""
    got: list[int] = []
    old = signal.signal(signal.SIGTERM, lambda *_: got.append(1))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
        if got:
            sys.exit(143)


# work folder and ports -------------------------------------------------------------------------------------------------
def prepare_work(work: Path, marker: str, script: str, stop_previous: Callable[[Path], None] | None = None) -> None:
    """Empty ``work`` for a new run, but only a folder holding the harness's ``marker`` (else exit, naming it);
    ``stop_previous`` first stops the servers of a previous run that died without stopping them."""
    if work.exists() and any(work.iterdir()):
        if not (work / marker).exists():
            sys.exit(f"{work} is not empty and was not made by this harness ({marker} missing); pick another --work")
        if stop_previous is not None:
            stop_previous(work)
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / marker).write_text(f"made by {script}; emptied at the start of every run\n")


def ports_in_use(ports: list[int]) -> list[int]:
    out = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sk:
            sk.settimeout(0.3)
            if sk.connect_ex((HOST, port)) == 0:
                out.append(port)
    return out


def region_ports(base: int) -> list[int]:
    """What a local region binds: its S3 port to +8, and +10008 (see llmdr.config)."""
    return [*range(base, base + 9), base + 10008]


# the local stack -------------------------------------------------------------------------------------------------------
@dataclass
class Keys:
    access: str
    secret: str


@dataclass
class Measured:
    """One measured command: its rusage and the CPU the servers and the rest of the machine spent meanwhile."""

    fin: Finished
    server_cpu_s: float
    other_cpu_s: float
    steal_s: float


@dataclass(kw_only=True)
class Timed:
    """What a report keeps of one measured command (each script's ``Run`` adds what names it): wall time, peak RSS,
    its CPU and the servers', llmdr's own ``duration_s`` when it printed JSON, a note, and data (the JSON in "json")."""

    wall_s: float
    peak_rss_mb: float
    cpu_s: float
    server_cpu_s: float
    inproc_s: float | None = None
    note: str = ""
    data: dict = field(default_factory=dict)

    def line(self) -> str:
        """Wall time, in-process time and peak RSS, for the console."""
        inproc = "" if self.inproc_s is None else f"(in-process {self.inproc_s:.2f} s)"
        return f"{self.wall_s:8.2f} s {inproc:<22} peak RSS {self.peak_rss_mb:5.0f} MB"


def duration_of(out) -> float | None:
    """llmdr's own ``duration_s`` in a command's JSON (a list's summed), None when it printed none."""
    if isinstance(out, dict) and "duration_s" in out:
        return out["duration_s"]
    if isinstance(out, list) and out and isinstance(out[0], dict) and "duration_s" in out[0]:
        return sum(x["duration_s"] for x in out)
    return None


class LocalStack:
    """Paths, environment, peers and running servers of one run on the two local regions (``llmdr stack up``), and
    the steps it ran or skipped (a peer not installed, or left out)."""

    def __init__(self, work: Path, *, ports: tuple[int, int], smoke: bool, bytecode_cache: bool,
                 found: dict[str, str | None], left_out: str | None = None) -> None:
        self.work = work
        self.smoke = smoke
        self.ports = {"primary": ports[0], "secondary": ports[1]}
        self.config = work / "llmdr.yaml"
        self.logs = work / "logs"
        self.llmdr = str(Path(sys.executable).parent / "llmdr")
        self.peers = found
        self.left_out = left_out  # why every peer is left out (e.g. "--no-peer"), else None
        self.keys: dict[str, Keys] = {}
        self.weed_pids: list[int] = []
        self.steps: list[dict] = []  # every step in run order: ran, or skipped and why
        self.measured = 0  # commands run by timed(): numbers their logs
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith("LLMDR_")}
        if bytecode_cache:
            # Installed tools run from compiled bytecode; this environment sets PYTHONDONTWRITEBYTECODE=1, which
            # would make every llmdr start-up recompile its imports (see PLATFORM.md).
            self.base_env.pop("PYTHONDONTWRITEBYTECODE", None)
            self.base_env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")

    # addresses, keys and commands
    def endpoint(self, region: str) -> str:
        return f"http://{HOST}:{self.ports[region]}"

    def aws_env(self, region: str) -> dict[str, str]:
        k = self.keys[region]
        return self.base_env | {"AWS_ACCESS_KEY_ID": k.access, "AWS_SECRET_ACCESS_KEY": k.secret,
                                "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}

    def s3(self, region: str):
        import boto3
        from botocore.config import Config

        k = self.keys[region]
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint(region), region_name="us-east-1", aws_access_key_id=k.access,
            aws_secret_access_key=k.secret, config=Config(s3={"addressing_style": "path"}))

    def llmdr_cmd(self, *args: str, config: Path | None = None) -> list[str]:
        return [self.llmdr, "-c", str(config or self.config), *args]

    def restic_cmd(self, bucket: str, *args: str) -> list[str]:
        """restic on a repository in ``bucket`` on the primary server."""
        return [self.peers["restic"], "-r", f"s3:{self.endpoint('primary')}/{bucket}", "--cache-dir",
                str(self.work / "restic-cache"), *args]

    def restic_env(self) -> dict[str, str]:
        env = {k: v for k, v in self.aws_env("primary").items() if k != "AWS_CA_BUNDLE"}  # PLATFORM.md: restic/rclone
        return env | {"RESTIC_PASSWORD": "llmdr-bench"}

    # steps
    def ran(self, **step) -> None:
        self.steps.append(step | {"status": "ran"})

    def skip(self, reason: str, **step) -> None:
        """Record a step this run leaves out (a peer is not installed, or --no-peer)."""
        self.steps.append(step | {"status": "skipped", "reason": reason})
        print(f"  {step.get('tool', step.get('step')):<36} skipped: {reason}", flush=True)

    def missing(self, name: str) -> str:
        return self.left_out or peers.missing(name)

    def have(self, *names: str, **step) -> bool:
        """Whether every named peer is there; if not, the step is recorded as skipped, naming the first missing."""
        gone = next((n for n in names if not self.peers.get(n)), None)
        if gone is not None:
            self.skip(self.missing(gone), **step)
        return gone is None

    # measuring
    def server_cpu_s(self) -> float:
        import psutil

        total = 0.0
        for pid in self.weed_pids:
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.NoSuchProcess:
                pass
        return total

    def run(self, cmd: list[str], *, env: dict[str, str], log: str, settle_s: float = 1.0) -> Measured:
        """Settle the machine (no pause in a smoke run), then run one command measured, logs under logs/``log``."""
        settle(0.0 if self.smoke else settle_s)
        server0, (busy0, steal0) = self.server_cpu_s(), machine_cpu_s()
        fin = run_measured(cmd, env=env, cwd=self.work, log=self.logs / log)
        server, (busy, steal) = self.server_cpu_s() - server0, machine_cpu_s()
        return Measured(fin, server, max(0.0, busy - busy0 - fin.cpu_s - server), steal - steal0)

    def timed(self, cmd: list[str], *, log: str, env: dict[str, str] | None = None, settle_s: float = 1.0,
              as_json: bool = False) -> dict:
        """Run one command measured (logs under logs/<n>-``log``) and return the ``Timed`` fields of its run; with
        ``as_json`` its stdout parsed into data["json"], and llmdr's own duration_s as inproc_s."""
        self.measured += 1
        m = self.run(cmd, env=env or self.base_env, log=f"{self.measured:04d}-{log}", settle_s=settle_s)
        out = {"wall_s": m.fin.wall_s, "peak_rss_mb": m.fin.peak_rss_kib * 1024 / MB, "cpu_s": m.fin.cpu_s,
               "server_cpu_s": m.server_cpu_s}
        if as_json:
            j = json.loads(m.fin.stdout)
            out |= {"data": {"json": j}, "inproc_s": duration_of(j)}
        return out

    def drop_cache(self) -> None:
        """What a fresh DR host has locally: nothing (repository format v2 keeps its copies of catalog entries,
        records, trees and indexes, and the stat cache, under .llmdr/cache/)."""
        shutil.rmtree(self.work / ".llmdr" / "cache", ignore_errors=True)

    def rss_floor_mb(self) -> float:
        """Peak RSS of `true` under the launcher: the floor of every measured peak RSS."""
        floor = run_measured(["true"], env=self.base_env, cwd=self.work, log=self.logs / "rss-floor")
        return round(floor.peak_rss_kib * 1024 / MB, 1)

    # the stack
    def prepare(self, marker: str, script: str) -> None:
        prepare_work(self.work, marker, script, lambda w: self._stack_down() if self.config.exists() else None)

    def start(self, marker: str, script: str) -> tuple[str, float]:
        """The start of a run: SIGTERM made an exit (so a ``finally`` stops the servers), an exit when a port either
        region would bind is taken, the work folder prepared. Returns the UTC start time and ``time.perf_counter()``."""
        stop_on_sigterm()
        started = utc_now()
        busy = ports_in_use([p for base in self.ports.values() for p in region_ports(base)])
        if busy:
            sys.exit(f"port {busy[0]} on {HOST} is in use; pick other --primary-port/--secondary-port")
        self.prepare(marker, script)
        return started, time.perf_counter()

    def init(self, *extra: str) -> None:
        """``llmdr init bundle`` with this run's ports (``extra``: more options) writes llmdr.yaml."""
        run_quiet(self.llmdr_cmd("init", "bundle", "--primary-port", str(self.ports["primary"]), "--secondary-port",
                                 str(self.ports["secondary"]), *extra), env=self.base_env, cwd=self.work)

    def up(self) -> None:
        """The S3 servers only (this measures storage, not serving); keys from the work folder's local.env."""
        from llmdr.storage.credentials import read_env_file

        out = json.loads(run_quiet(self.llmdr_cmd("stack", "up", "--no-serving", "--json"), env=self.base_env,
                                   cwd=self.work))
        status = out["regions"] if isinstance(out, dict) else out
        self.weed_pids = [s["pid"] for s in status if s.get("pid")]
        if not all(s["healthy"] for s in status) or len(self.weed_pids) != 2:
            raise CommandFailed(f"llmdr stack up did not bring both regions up: {status}")
        env_file = read_env_file(self.work / ".llmdr" / "local.env")
        for region in ("primary", "secondary"):
            up = region.upper()
            self.keys[region] = Keys(env_file[f"LLMDR_{up}_ACCESS_KEY_ID"], env_file[f"LLMDR_{up}_SECRET_ACCESS_KEY"])

    def _stack_down(self) -> None:
        subprocess.run(self.llmdr_cmd("stack", "down"), cwd=self.work, env=self.base_env, capture_output=True)

    def down(self) -> None:
        """``llmdr stack down`` (it stops each server by its PID file); then make sure those PIDs are gone."""
        import psutil

        if self.config.exists():
            self._stack_down()
        for pid in self.weed_pids:
            try:
                proc = psutil.Process(pid)
                if "weed" in proc.name() and str(self.work) in " ".join(proc.cmdline()):
                    proc.terminate()
                    proc.wait(20)
            except psutil.NoSuchProcess:
                pass
            except psutil.TimeoutExpired:
                proc.kill()
        self.weed_pids = []

    def warm_bytecode(self, modules: str) -> None:
        """Import what the measured Python commands import once, so the bytecode cache is filled before timing."""
        run_quiet([sys.executable, "-c", f"import {modules}"], env=self.base_env, cwd=self.work)
        run_quiet([self.llmdr, "--help"], env=self.base_env, cwd=self.work)


# options ---------------------------------------------------------------------------------------------------------------
def common_args(ap: argparse.ArgumentParser, *, work: Path, smoke: str, ports: tuple[int, int] | None = None,
                keep: str = "keep the work folder (bundle, server data, logs)") -> None:
    """--work, --keep, --results, --smoke; with ``ports`` also --primary-port, --secondary-port and
    --no-bytecode-cache (a run on the two local regions)."""
    ap.add_argument("--work", type=Path, default=work, help=f"scratch folder (default {work.relative_to(REPO_DIR)}/)")
    ap.add_argument("--keep", action="store_true", help=keep)
    if ports is not None:
        ap.add_argument("--primary-port", type=int, default=ports[0], help=f"default {ports[0]}")
        ap.add_argument("--secondary-port", type=int, default=ports[1], help=f"default {ports[1]}")
        ap.add_argument("--no-bytecode-cache", action="store_true",
                        help="run Python tools without a bytecode cache (this environment sets PYTHONDONTWRITEBYTECODE)")
    ap.add_argument("--results", type=Path, default=None,
                    help="folder for the results (default bench/results/, or $LLMDR_BENCH_RESULTS)")
    ap.add_argument("--smoke", action="store_true", help=smoke)


def parse(ap: argparse.ArgumentParser, argv: list[str] | None, smoke: dict) -> argparse.Namespace:
    """The arguments, with the ``smoke`` sizes (option name -> value) put in place for a smoke run."""
    args = ap.parse_args(argv)
    if args.smoke:
        for name, value in smoke.items():
            setattr(args, name, value)
    return args
