"""Scale: a 10,000-file bundle, and 50 successive snapshots of a changing bundle (issue #9, item 8).

    uv run python bench/scale.py                                  # 10,000 files (~290 MB), 50 steps; ~15 min, 2 cores
    uv run python bench/scale.py --files 2000 --steps 6 --no-peer  # a quick run, about 2 minutes
    uv run python bench/scale.py --smoke --results DIR             # every step, 200 files, 2 steps: checks the harness

restic must be installed for a measuring run (or pass --no-peer); ``--smoke`` runs without it when it is missing and
records its steps as skipped, and writes ``scale-smoke.json|.md`` into ``--results`` (never into bench/results/).

(a) One bundle of ``--files`` files: the sample bundle's 4 safetensors shards of 32 MiB with its tokenizer and
configs, plus thousands of small files (1-64 KB, log-uniform: prompt templates, few-shot/eval examples, knowledge
snippets, security rules). Cold snapshot, warm re-snapshot (nothing changed), ``llmdr snapshots``, replicate to the
secondary, restore from the secondary (every file's SHA-256 checked). Peer: restic backup (cold, warm) and restore
of the same tree.

(b) A fresh repository (another key prefix in the same two buckets), then ``--steps`` snapshots of the bundle, each
after changing ``--change-pct`` % of the small files (modify, add, delete, rename; every 10th step also 8 MiB in the
middle of one shard), each replicated. The harness keeps a {path: SHA-256} map of the tree at the steps it restores
(not copies). Then: listing with all snapshots (manifest cache warm, and empty as on a fresh DR machine), restores of
the 1st, middle and last snapshot from the secondary, ``llmdr forget --keep-last 10 --grace 0s`` on the primary, and
a restore of the oldest kept snapshot afterwards. Peer: restic backup per step, ``restic snapshots``,
``restic forget --keep-last 10 --prune``.

Every llmdr command is a subprocess run under bench/rusage_launcher.py (wall time, exact peak RSS from os.wait4).
The stack (``llmdr stack up --no-serving``, 127.0.0.1:38833 and :38933 by default, each also +1..+8 and +10008) is
stopped by PID in a ``finally``. Results: bench/results/scale-<UTC>.json|.md and scale-latest.*.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from bench import CommandFailed, Keys, results_dir, run_measured, run_quiet, write_files  # noqa: E402

HOST = "127.0.0.1"
# Not used by bench.py (38333/38433), bench/rto.py (38533/38633, 38700-38710) or the tests (10000-32758).
PRIMARY_PORT, SECONDARY_PORT, ROUTER_PORT = 38833, 38933, 38880
RESTIC_BUCKET_A, RESTIC_BUCKET_B = "scale-restic-a", "scale-restic-b"
HISTORY_PREFIX = "scale-history"  # part (b)'s repository: the same buckets, another key prefix
WORK_MARKER = ".llmdr-scale-work"
SHARDS, SHARD_MIB = 4, 32
KEEP_LAST = 10
MB = 1_000_000
MiB = 1 << 20

# Small files by kind: (share of the small files, folder, suffix, min size, max size).
KINDS = {
    "prompt": (0.20, "prompts", ".jinja", 1 << 10, 16 << 10),
    "security": (0.01, "security/rules", ".txt", 1 << 10, 4 << 10),
    "example": (0.30, "examples", ".json", 1 << 10, 64 << 10),
    "knowledge": (0.49, "knowledge", ".md", 1 << 10, 64 << 10),
}
PER_FOLDER = 100


# the bundle and its expected state -------------------------------------------------------------------------------------
def _content(kind: str, rng: random.Random) -> bytes:
    _, _, _, lo, hi = KINDS[kind]
    size = int(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    text = base64.b64encode(rng.randbytes(size * 3 // 4)).decode()
    if kind == "prompt":  # a valid Jinja template: the completeness check parses every one
        return f"You are {{{{ persona }}}}. Context: {text}\n{{% for m in messages %}}{{{{ m.content }}}}{{% endfor %}}\n".encode()
    if kind == "example":
        return json.dumps({"input": text[: len(text) // 2], "output": text[len(text) // 2:]}).encode()
    return (text + "\n").encode()


class Tree:
    """The bundle on disk and a {relative path: SHA-256 hex} map of what it holds, kept up to date as it changes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.digests: dict[str, str] = {}
        self.small: dict[str, str] = {}  # mutable small files: path -> kind
        self.folders: dict[str, list[str]] = {k: [] for k in KINDS}

    def write(self, rel: str, data: bytes) -> None:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        self.digests[rel] = hashlib.sha256(data).hexdigest()

    def generate(self, files: int, seed: int, shard_mib: int = SHARD_MIB) -> None:
        from llmdr.devstack.samples import write_sample_bundle

        for p in write_sample_bundle(self.root, shards=SHARDS, shard_size=shard_mib * MiB, seed=seed):
            self.digests[p.relative_to(self.root).as_posix()] = _sha256(p)
        rng = random.Random(seed)
        n_small = files - len(self.digests)
        counts = {k: int(n_small * share) for k, (share, *_r) in KINDS.items()}
        counts["knowledge"] += n_small - sum(counts.values())
        for kind, n in counts.items():
            _, folder, suffix, _, _ = KINDS[kind]
            for i in range(n):
                sub = f"{folder}/{kind}-{i // PER_FOLDER:03d}"
                if i % PER_FOLDER == 0:
                    self.folders[kind].append(sub)
                rel = f"{sub}/{kind}-{i:05d}{suffix}"
                self.write(rel, _content(kind, rng))
                self.small[rel] = kind

    def mutate(self, step: int, pct: float, seed: int, shard_every: int = 10) -> dict:
        """Change ``pct`` % of the small files (40 % modified, 20 % added, 20 % deleted, 20 % renamed); every 10th
        (``shard_every``) step also overwrite 8 MiB (at most a quarter shard) in the middle of one shard (a
        fine-tune touching one tensor region)."""
        rng = random.Random(seed * 100_003 + step)
        n = max(5, round(len(self.digests) * pct / 100))
        ops = {"modified": int(n * 0.4), "added": int(n * 0.2), "deleted": int(n * 0.2)}
        ops["renamed"] = n - sum(ops.values())
        picked = rng.sample(sorted(self.small), ops["modified"] + ops["deleted"] + ops["renamed"])
        modify, delete = picked[: ops["modified"]], picked[ops["modified"]: ops["modified"] + ops["deleted"]]
        rename = picked[ops["modified"] + ops["deleted"]:]
        for rel in modify:
            self.write(rel, _content(self.small[rel], rng))
        for rel in delete:
            (self.root / rel).unlink()
            del self.digests[rel], self.small[rel]
        for i, rel in enumerate(rename):
            kind = self.small.pop(rel)
            new = f"{rel.rsplit('/', 1)[0]}/{kind}-s{step:03d}r{i:04d}{KINDS[kind][2]}"
            os.rename(self.root / rel, self.root / new)
            self.digests[new] = self.digests.pop(rel)
            self.small[new] = kind
        kinds = list(KINDS)
        weights = [KINDS[k][0] for k in kinds]
        for i in range(ops["added"]):
            kind = rng.choices(kinds, weights)[0]
            rel = f"{rng.choice(self.folders[kind])}/{kind}-s{step:03d}a{i:04d}{KINDS[kind][2]}"
            self.write(rel, _content(kind, rng))
            self.small[rel] = kind
        if step % shard_every == 0:
            shards = sorted(r for r in self.digests if r.endswith(".safetensors"))
            rel = shards[(step // shard_every) % len(shards)]
            path = self.root / rel
            with open(path, "r+b") as fh:
                fh.seek(path.stat().st_size // 2)
                fh.write(rng.randbytes(min(8 * MiB, path.stat().st_size // 4)))
            self.digests[rel] = _sha256(path)
            ops["shard_region_rewritten"] = rel
        return ops

    def total_bytes(self) -> int:
        return sum((self.root / r).stat().st_size for r in self.digests)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        while block := fh.read(8 * MiB):
            h.update(block)
    return h.hexdigest()


def tree_digest(digests: dict[str, str]) -> str:
    return hashlib.sha256("".join(f"{p}\0{d}\n" for p, d in sorted(digests.items())).encode()).hexdigest()


def check_identical(restored: Path, expected: dict[str, str]) -> dict:
    """SHA-256 of every restored file against the expected map; raises unless the trees are identical."""
    got = {}
    for dirpath, _, names in os.walk(restored):
        for name in names:
            p = Path(dirpath) / name
            got[p.relative_to(restored).as_posix()] = _sha256(p)
    if got != expected:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        differ = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
        raise CommandFailed(f"{restored} is not the expected tree: missing {missing[:5]} ({len(missing)}), extra "
                            f"{extra[:5]} ({len(extra)}), different {differ[:5]} ({len(differ)})")
    return {"files": len(got), "identical": True, "tree_digest": tree_digest(got)}


# running ---------------------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One measured subprocess."""

    part: str
    step: str
    tool: str
    wall_s: float
    peak_rss_mb: float
    cpu_s: float
    server_cpu_s: float
    inproc_s: float | None = None
    note: str = ""
    data: dict = field(default_factory=dict)


class Scale:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work: Path = args.work.resolve()
        self.bundle = self.work / "bundle"
        self.config = self.work / "llmdr.yaml"
        self.config_b = self.work / "llmdr-history.yaml"
        self.logs = self.work / "logs"
        self.llmdr = str(Path(sys.executable).parent / "llmdr")
        self.smoke: bool = args.smoke
        self.restic = None if args.no_peer else shutil.which("restic")
        if self.restic is None and not args.no_peer and not self.smoke:
            sys.exit("restic is not installed (apt-get install -y restic): it is the peer this benchmark compares "
                     "with. Install it, pass --no-peer to measure llmdr alone, or --smoke to check the harness.")
        self.steps: list[dict] = []  # every (part, step, tool) in run order: ran, or skipped and why
        self.ports = {"primary": args.primary_port, "secondary": args.secondary_port}
        self.keys: dict[str, Keys] = {}
        self.weed_pids: list[int] = []
        self.runs: list[Run] = []
        self.details: dict = {}
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith("LLMDR_")}
        if not args.no_bytecode_cache:  # as bench.py: installed tools run from bytecode (PYTHONDONTWRITEBYTECODE=1 here)
            self.base_env.pop("PYTHONDONTWRITEBYTECODE", None)
            self.base_env["PYTHONPYCACHEPREFIX"] = str(self.work / "pycache")
        self._n = 0
        self.shard_mib = 2 if self.smoke else SHARD_MIB
        self.shard_every = 2 if self.smoke else 10  # a shard region rewritten every Nth step of part (b)
        self.keep_last = 1 if self.smoke else KEEP_LAST  # smoke: forget does forget and prune something

    def endpoint(self, region: str) -> str:
        return f"http://{HOST}:{self.ports[region]}"

    def llmdr_cmd(self, *args: str, config: Path | None = None) -> list[str]:
        return [self.llmdr, "-c", str(config or self.config), *args]

    def server_cpu_s(self) -> float:
        import psutil

        total = 0.0
        for pid in self.weed_pids:
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def measure(self, part: str, step: str, tool: str, cmd: list[str], *, env: dict | None = None,
                settle_s: float = 1.0, as_json: bool = False, note: str = "") -> Run:
        """Flush dirty pages, run ``cmd`` under the rusage launcher and record it; ``--json`` output goes in data."""
        os.sync()
        time.sleep(0.0 if self.smoke else settle_s)
        self._n += 1
        server0 = self.server_cpu_s()
        fin = run_measured(cmd, env=env or self.base_env, cwd=self.work, log=self.logs / f"{self._n:04d}-{_slug(tool)}")
        run = Run(part, step, tool, fin.wall_s, fin.peak_rss_kib * 1024 / MB, fin.cpu_s,
                  self.server_cpu_s() - server0, note=note)
        if as_json:
            out = json.loads(fin.stdout)
            run.data = {"json": out}
            if isinstance(out, dict) and "duration_s" in out:
                run.inproc_s = out["duration_s"]
            elif isinstance(out, list) and out and isinstance(out[0], dict) and "duration_s" in out[0]:
                run.inproc_s = sum(x["duration_s"] for x in out)
        self.runs.append(run)
        self.steps.append({"part": part, "step": step, "tool": tool, "status": "ran"})
        inproc = "" if run.inproc_s is None else f"(in-process {run.inproc_s:.2f} s)"
        print(f"  {part} {step:<18} {tool:<38} {run.wall_s:8.2f} s {inproc:<22} peak RSS {run.peak_rss_mb:5.0f} MB",
              flush=True)
        return run

    def skip(self, part: str, step: str, tool: str, reason: str) -> None:
        """Record a step this run leaves out (the peer is not installed, or --no-peer)."""
        self.steps.append({"part": part, "step": step, "tool": tool, "status": "skipped", "reason": reason})

    def peer_missing(self) -> str:
        return "--no-peer" if self.args.no_peer else "restic is not installed (apt-get install -y restic)"

    # restic
    def restic_cmd(self, bucket: str, *args: str) -> list[str]:
        return [self.restic, "-r", f"s3:{self.endpoint('primary')}/{bucket}", "--cache-dir",
                str(self.work / "restic-cache"), *args]

    def restic_env(self) -> dict:
        k = self.keys["primary"]
        env = {k2: v for k2, v in self.base_env.items() if k2 != "AWS_CA_BUNDLE"}  # PLATFORM.md: restic/rclone
        return env | {"AWS_ACCESS_KEY_ID": k.access, "AWS_SECRET_ACCESS_KEY": k.secret, "AWS_REGION": "us-east-1",
                      "RESTIC_PASSWORD": "llmdr-scale"}


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in s.lower()).strip("-")


# work folder and stack -------------------------------------------------------------------------------------------------
def prepare_work(s: Scale) -> None:
    w = s.work
    if w.exists() and any(w.iterdir()):
        if not (w / WORK_MARKER).exists():
            sys.exit(f"{w} is not empty and was not made by this harness ({WORK_MARKER} missing); pick another --work")
        if s.config.exists():  # a previous run that died without stopping its servers
            subprocess.run(s.llmdr_cmd("stack", "down"), cwd=w, env=s.base_env, capture_output=True)
        shutil.rmtree(w)
    w.mkdir(parents=True, exist_ok=True)
    (w / WORK_MARKER).write_text("made by bench/scale.py; emptied at the start of every run\n")


def ports_free(s: Scale) -> None:
    for base in s.ports.values():
        for port in [*range(base, base + 9), base + 10008]:
            with socket.socket() as sock:
                if sock.connect_ex((HOST, port)) == 0:
                    sys.exit(f"port {port} on {HOST} is in use; pick other --primary-port/--secondary-port")


def stack_up(s: Scale) -> None:
    from llmdr.storage.credentials import read_env_file

    run_quiet(s.llmdr_cmd("init", "bundle", "--primary-port", str(s.ports["primary"]), "--secondary-port",
                          str(s.ports["secondary"]), "--router-port", str(ROUTER_PORT)), env=s.base_env, cwd=s.work)
    text = s.config.read_text()
    # Part (b)'s repository: the same buckets under another key prefix (a fresh, empty repository).
    s.config_b.write_text(text.replace("    bucket: llmdr-primary\n",
                                       f"    bucket: llmdr-primary\n    prefix: {HISTORY_PREFIX}\n")
                          .replace("    bucket: llmdr-secondary\n",
                                   f"    bucket: llmdr-secondary\n    prefix: {HISTORY_PREFIX}\n"))
    out = json.loads(run_quiet(s.llmdr_cmd("stack", "up", "--no-serving", "--json"), env=s.base_env, cwd=s.work))
    status = out["regions"] if isinstance(out, dict) else out
    s.weed_pids = [r["pid"] for r in status if r.get("pid")]
    if not all(r["healthy"] for r in status) or len(s.weed_pids) != 2:
        raise CommandFailed(f"llmdr stack up did not bring both regions up: {status}")
    env_file = read_env_file(s.work / ".llmdr" / "local.env")
    for region in ("primary", "secondary"):
        up = region.upper()
        s.keys[region] = Keys(env_file[f"LLMDR_{up}_ACCESS_KEY_ID"], env_file[f"LLMDR_{up}_SECRET_ACCESS_KEY"])
    if s.restic:
        import boto3
        from botocore.config import Config

        k = s.keys["primary"]
        client = boto3.session.Session().client(
            "s3", endpoint_url=s.endpoint("primary"), region_name="us-east-1", aws_access_key_id=k.access,
            aws_secret_access_key=k.secret, config=Config(s3={"addressing_style": "path"}))
        for bucket in (RESTIC_BUCKET_A, RESTIC_BUCKET_B):
            client.create_bucket(Bucket=bucket)
    print(f"stack: weed pids {s.weed_pids} at {s.endpoint('primary')} and {s.endpoint('secondary')}", flush=True)


def stack_down(s: Scale) -> None:
    """``llmdr stack down`` (it stops each server by its PID file); then make sure those PIDs are gone."""
    import psutil

    if s.config.exists():
        subprocess.run(s.llmdr_cmd("stack", "down"), cwd=s.work, env=s.base_env, capture_output=True)
    for pid in s.weed_pids:
        try:
            proc = psutil.Process(pid)
            if "weed" in proc.name() and str(s.work) in " ".join(proc.cmdline()):
                proc.terminate()
                proc.wait(20)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            proc.kill()
    s.weed_pids = []


def warm_bytecode(s: Scale) -> None:
    run_quiet([sys.executable, "-c", "import llmdr.cli, llmdr.repo.snapshot, llmdr.repo.restore, llmdr.repo.replicate, "
               "llmdr.repo.retention, llmdr.repo.statcache, llmdr.storage.factory, boto3.s3.transfer, botocore.config, "
               "pyfastcdc, jinja2, tokenizers"], env=s.base_env, cwd=s.work)
    run_quiet([s.llmdr, "--help"], env=s.base_env, cwd=s.work)


def drop_manifest_cache(s: Scale) -> None:
    shutil.rmtree(s.work / ".llmdr" / "cache" / "manifests", ignore_errors=True)


# part (a): one 10,000-file bundle --------------------------------------------------------------------------------------
def part_a(s: Scale, tree: Tree) -> None:
    print("(a) one bundle of many files", flush=True)
    cold = s.measure("a", "cold", "llmdr snapshot", s.llmdr_cmd("snapshot", "--json"), as_json=True)
    sid = cold.data["json"]["snapshot_id"]
    if cold.data["json"]["files"] != len(tree.digests):
        raise CommandFailed(f"cold snapshot holds {cold.data['json']['files']} files, the bundle {len(tree.digests)}")
    cold.note = _snap_note(cold.data["json"])
    warm = s.measure("a", "warm (no change)", "llmdr snapshot", s.llmdr_cmd("snapshot", "--json"), as_json=True)
    warm.note = _snap_note(warm.data["json"])
    if warm.data["json"]["bytes_new"] != 0 or warm.data["json"]["files_unchanged"] != len(tree.digests):
        raise CommandFailed(f"the warm snapshot read or uploaded something: {warm.data['json']}")
    listing = s.measure("a", "list (2 snapshots)", "llmdr snapshots", s.llmdr_cmd("snapshots", "--json"), as_json=True)
    listing.note = f"{len(listing.data['json'])} snapshots"
    rep = s.measure("a", "replicate", "llmdr replicate", s.llmdr_cmd("replicate", sid, "--to", "secondary", "--json"),
                    as_json=True)
    r = rep.data["json"][0]
    rep.note = f"{r['chunks_copied']} chunks, {r['bytes_copied'] / MB:.0f} MB to the empty secondary"
    target = s.work / "restore-a"
    res = s.measure("a", "restore", "llmdr restore",
                    s.llmdr_cmd("restore", sid, "--region", "secondary", "--to", str(target), "--json"), as_json=True)
    res.data["verified"] = check_identical(target, tree.digests)
    res.note = (f"from the secondary, {res.data['json']['files']} files, "
                f"{res.data['json']['bytes_downloaded'] / MB:.0f} MB; SHA-256 of every file identical")
    shutil.rmtree(target)
    print(f"  restore verified: {res.data['verified']['files']} files identical", flush=True)
    s.details["a_snapshot_id"] = sid
    if s.restic:
        run_quiet(s.restic_cmd(RESTIC_BUCKET_A, "init"), env=s.restic_env(), cwd=s.work)
        s.measure("a", "cold", "restic backup", s.restic_cmd(RESTIC_BUCKET_A, "backup", "-q", "--host", "scale",
                                                               "bundle"), env=s.restic_env())
        s.measure("a", "warm (no change)", "restic backup",
                  s.restic_cmd(RESTIC_BUCKET_A, "backup", "-q", "--host", "scale", "bundle"), env=s.restic_env())
        s.measure("a", "list (2 snapshots)", "restic snapshots", s.restic_cmd(RESTIC_BUCKET_A, "snapshots", "--json"),
                  env=s.restic_env())
        target = s.work / "restore-restic"
        rr = s.measure("a", "restore", "restic restore",
                       s.restic_cmd(RESTIC_BUCKET_A, "restore", "latest", "--target", str(target)), env=s.restic_env(),
                       note="from the primary server (restic has no cross-region copy here)")
        check_identical(target / "bundle", tree.digests)
        shutil.rmtree(target)
        rr.note += "; identical"
    else:
        for step, tool in (("cold", "restic backup"), ("warm (no change)", "restic backup"),
                           ("list (2 snapshots)", "restic snapshots"), ("restore", "restic restore")):
            s.skip("a", step, tool, s.peer_missing())


def _snap_note(j: dict) -> str:
    return (f"{j['files']} files, {j['files_unchanged']} unchanged (stat cache), {j['bytes_read'] / MB:.1f} MB read, "
            f"{j['bytes_new'] / MB:.1f} MB new in {j['chunks_new']}/{j['chunks_total']} chunks")


# part (b): many snapshots of a changing bundle -------------------------------------------------------------------------
def part_b(s: Scale, tree: Tree) -> None:
    steps = s.args.steps
    middle = (steps + 1) // 2
    restore_steps = sorted({1, middle, steps})
    keep_last = s.keep_last
    oldest_kept = max(1, steps - keep_last + 1)
    keep_maps = set(restore_steps) | {oldest_kept}
    print(f"(b) {steps} snapshots of a changing bundle into a fresh repository (prefix {HISTORY_PREFIX})", flush=True)
    cfg = s.config_b
    expected: dict[int, dict[str, str]] = {}
    ids: dict[int, str] = {}
    series: list[dict] = []
    if s.restic:
        run_quiet(s.restic_cmd(RESTIC_BUCKET_B, "init"), env=s.restic_env(), cwd=s.work)
    for step in range(1, steps + 1):
        ops = {} if step == 1 else tree.mutate(step, s.args.change_pct, s.args.seed, s.shard_every)
        snap = s.measure("b", f"step {step}", "llmdr snapshot", s.llmdr_cmd("snapshot", "--json", config=cfg),
                         settle_s=0.2, as_json=True)
        j = snap.data["json"]
        if j["files"] != len(tree.digests):
            raise CommandFailed(f"step {step}: the snapshot holds {j['files']} files, the bundle {len(tree.digests)}")
        ids[step] = j["snapshot_id"]
        snap.note = _snap_note(j)
        rep = s.measure("b", f"step {step}", "llmdr replicate",
                        s.llmdr_cmd("replicate", ids[step], "--to", "secondary", "--json", config=cfg),
                        settle_s=0.2, as_json=True)
        r = rep.data["json"][0]
        rep.note = f"{r['chunks_copied']} chunks, {r['bytes_copied'] / MB:.1f} MB"
        row = {"step": step, "ops": ops, "snapshot_id": ids[step], "files": j["files"], "bytes": j["bytes_total"],
               "files_unchanged": j["files_unchanged"], "bytes_read": j["bytes_read"], "bytes_new": j["bytes_new"],
               "chunks_new": j["chunks_new"], "snapshot_wall_s": snap.wall_s, "snapshot_inproc_s": snap.inproc_s,
               "snapshot_rss_mb": snap.peak_rss_mb, "replicate_wall_s": rep.wall_s, "replicate_inproc_s": rep.inproc_s,
               "replicate_rss_mb": rep.peak_rss_mb, "chunks_copied": r["chunks_copied"],
               "bytes_copied": r["bytes_copied"], "tree_digest": tree_digest(tree.digests)}
        if s.restic:
            rb = s.measure("b", f"step {step}", "restic backup",
                           s.restic_cmd(RESTIC_BUCKET_B, "backup", "-q", "--host", "scale", "bundle"),
                           env=s.restic_env(), settle_s=0.2)
            row |= {"restic_wall_s": rb.wall_s, "restic_rss_mb": rb.peak_rss_mb}
        else:
            s.skip("b", f"step {step}", "restic backup", s.peer_missing())
        series.append(row)
        if step in keep_maps:
            expected[step] = dict(tree.digests)
        if step == 1 or step % 10 == 0 or step == steps:  # listing time as the history grows
            ls = s.measure("b", f"list ({step} snapshots)", "llmdr snapshots",
                           s.llmdr_cmd("snapshots", "--json", config=cfg), settle_s=0.2, as_json=True)
            if len(ls.data["json"]) != step:
                raise CommandFailed(f"llmdr snapshots lists {len(ls.data['json'])} snapshots after {step} steps")
            ls.note = "primary, manifest cache warm"
    s.details["series"] = series

    print("  after the series", flush=True)
    drop_manifest_cache(s)
    ls = s.measure("b", f"list ({steps} snapshots), no cache", "llmdr snapshots",
                   s.llmdr_cmd("snapshots", "--region", "secondary", "--json", config=cfg), as_json=True,
                   note="secondary, manifest cache empty (a fresh DR machine)")
    if len(ls.data["json"]) != steps:
        raise CommandFailed(f"the secondary lists {len(ls.data['json'])} snapshots, expected {steps}")
    for step in restore_steps:
        target = s.work / f"restore-b-{step}"
        res = s.measure("b", f"restore step {step}", "llmdr restore",
                        s.llmdr_cmd("restore", ids[step], "--region", "secondary", "--to", str(target), "--json",
                                    config=cfg), as_json=True)
        res.data["verified"] = check_identical(target, expected[step])
        res.note = (f"from the secondary, {res.data['json']['files']} files; identical to the tree at step {step}")
        shutil.rmtree(target)
        print(f"  restore of step {step} verified: {res.data['verified']['files']} files identical", flush=True)
    fg = s.measure("b", f"forget --keep-last {keep_last}", "llmdr forget",
                   s.llmdr_cmd("forget", "--keep-last", str(keep_last), "--grace", "0s", "--json", config=cfg),
                   as_json=True)
    f = fg.data["json"]
    if len(f["kept"]) != min(keep_last, steps) or len(f["forgotten"]) != max(0, steps - keep_last) or f["raced"]:
        raise CommandFailed(f"forget kept {len(f['kept'])}, forgot {len(f['forgotten'])}, raced {f['raced']}")
    fg.note = (f"primary: forgot {len(f['forgotten'])}, kept {len(f['kept'])}; pruned {f['chunks_deleted']} chunks, "
               f"{f['bytes_freed'] / MB:.1f} MB freed")
    target = s.work / f"restore-b-kept-{oldest_kept}"
    res = s.measure("b", f"restore step {oldest_kept} after forget", "llmdr restore",
                    s.llmdr_cmd("restore", ids[oldest_kept], "--to", str(target), "--json", config=cfg), as_json=True)
    res.data["verified"] = check_identical(target, expected[oldest_kept])
    res.note = f"oldest kept snapshot, from the pruned primary; identical to the tree at step {oldest_kept}"
    shutil.rmtree(target)
    s.details["restored_steps"] = restore_steps
    s.details["oldest_kept"] = oldest_kept
    if s.restic:
        s.measure("b", f"list ({steps} snapshots)", "restic snapshots",
                  s.restic_cmd(RESTIC_BUCKET_B, "snapshots", "--json"), env=s.restic_env())
        rf = s.measure("b", f"forget --keep-last {keep_last}", "restic forget --prune",
                       s.restic_cmd(RESTIC_BUCKET_B, "forget", "--keep-last", str(keep_last), "--prune"),
                       env=s.restic_env())
        rf.note = "restic 0.14: forget, then prune (repacks partly used packs)"
    else:
        s.skip("b", f"list ({steps} snapshots)", "restic snapshots", s.peer_missing())
        s.skip("b", f"forget --keep-last {keep_last}", "restic forget --prune", s.peer_missing())


# summary and report ----------------------------------------------------------------------------------------------------
def find(s: Scale, part: str, step: str, tool: str) -> Run | None:
    return next((r for r in s.runs if r.part == part and r.step == step and r.tool == tool), None)


def summarise(s: Scale) -> dict:
    series = s.details["series"]
    snap_walls = [x["snapshot_wall_s"] for x in series[1:]] or [series[0]["snapshot_wall_s"]]
    rep_walls = [x["replicate_wall_s"] for x in series[1:]] or [series[0]["replicate_wall_s"]]

    def mmm(xs: list[float]) -> dict:
        return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}

    out = {
        "incremental_snapshot_wall_s": mmm(snap_walls),
        "incremental_snapshot_inproc_s": mmm([x["snapshot_inproc_s"] for x in series[1:]] or [0.0]),
        "replicate_wall_s": mmm(rep_walls),
        "snapshot_rss_mb": mmm([x["snapshot_rss_mb"] for x in series]),
        "replicate_rss_mb": mmm([x["replicate_rss_mb"] for x in series]),
        "bytes_new_per_step": mmm([x["bytes_new"] for x in series[1:]] or [0]),
        "files_read_per_step": mmm([x["files"] - x["files_unchanged"] for x in series[1:]] or [0]),
    }
    if len(series) > 2:
        first, last = series[1], series[-1]
        out["rss_first_incremental_mb"] = first["snapshot_rss_mb"]
        out["rss_last_mb"] = last["snapshot_rss_mb"]
        out["rss_growth_per_snapshot_mb"] = ((last["snapshot_rss_mb"] - first["snapshot_rss_mb"])
                                             / (last["step"] - first["step"]))
        out["inproc_first_incremental_s"] = first["snapshot_inproc_s"]
        out["inproc_last_s"] = last["snapshot_inproc_s"]
    if "restic_wall_s" in series[0]:
        out["restic_backup_wall_s"] = mmm([x["restic_wall_s"] for x in series[1:]] or [series[0]["restic_wall_s"]])
        out["restic_rss_mb"] = mmm([x["restic_rss_mb"] for x in series])
    return out


def checks(s: Scale, summary: dict) -> list[dict]:
    out = []

    def add(metric: str, value: float, op: str, bound: float | None, unit: str = "x", detail: str = "") -> None:
        verdict = "report" if bound is None else ("PASS" if (value <= bound if op == "<=" else value >= bound) else "FAIL")
        out.append({"metric": metric, "value": value, "op": op, "bound": bound, "unit": unit, "detail": detail,
                    "verdict": verdict})

    llmdr_rss = max(r.peak_rss_mb for r in s.runs if r.tool.startswith("llmdr"))
    worst = max((r for r in s.runs if r.tool.startswith("llmdr")), key=lambda r: r.peak_rss_mb)
    add("peak RSS of every llmdr command", llmdr_rss, "<=", 300, "MB", f"highest: {worst.tool}, {worst.part} {worst.step}")
    if "rss_last_mb" in summary:
        add("snapshot peak RSS, last ÷ first incremental", summary["rss_last_mb"] / summary["rss_first_incremental_mb"],
            "<=", 1.25, "x", f"{summary['rss_first_incremental_mb']:.0f} MB at step 2 -> {summary['rss_last_mb']:.0f} "
            f"MB at step {s.args.steps} ({summary['rss_growth_per_snapshot_mb']:+.2f} MB per snapshot in the history)")
        add("snapshot in-process time, last ÷ first incremental",
            summary["inproc_last_s"] / summary["inproc_first_incremental_s"], "", None, "x",
            f"{summary['inproc_first_incremental_s']:.2f} s -> {summary['inproc_last_s']:.2f} s")
    warm, cold = find(s, "a", "warm (no change)", "llmdr snapshot"), find(s, "a", "cold", "llmdr snapshot")
    add("warm no-change ÷ cold snapshot (wall)", warm.wall_s / cold.wall_s, "", None, "%",
        f"{warm.wall_s:.2f} s / {cold.wall_s:.2f} s for {s.details['bundle']['files']} files")
    for step in ("cold", "warm (no change)", "restore"):
        ours = find(s, "a", step, "llmdr snapshot" if step != "restore" else "llmdr restore")
        peer = find(s, "a", step, "restic backup" if step != "restore" else "restic restore")
        if peer is not None:
            add(f"(a) {step}: restic wall ÷ llmdr wall", peer.wall_s / ours.wall_s, "", None, "x",
                f"llmdr {ours.wall_s:.2f} s, restic {peer.wall_s:.2f} s (>1: llmdr faster)")
    if "restic_backup_wall_s" in summary:
        ours, peer = summary["incremental_snapshot_wall_s"]["median"], summary["restic_backup_wall_s"]["median"]
        add("(b) median incremental: restic backup ÷ llmdr snapshot", peer / ours, "", None, "x",
            f"llmdr {ours:.2f} s (+ replicate {summary['replicate_wall_s']['median']:.2f} s), restic {peer:.2f} s")
    steps = s.args.steps
    ls_ours = find(s, "b", f"list ({steps} snapshots)", "llmdr snapshots")
    ls_peer = find(s, "b", f"list ({steps} snapshots)", "restic snapshots")
    if ls_peer is not None:
        add(f"(b) listing {steps} snapshots: restic ÷ llmdr (both caches warm)", ls_peer.wall_s / ls_ours.wall_s, "",
            None, "x", f"llmdr {ls_ours.wall_s:.2f} s, restic {ls_peer.wall_s:.2f} s")
    verified = [r for r in s.runs if r.tool == "llmdr restore"]
    add("restores byte-identical", sum(1 for r in verified if r.data.get("verified", {}).get("identical")), ">=",
        len(verified), "n", "every file's SHA-256 against the expected tree")
    return out


def fmt(c: dict, v: float) -> str:
    return {"x": f"{v:.2f}", "%": f"{v:.1%}", "MB": f"{v:.0f} MB", "n": f"{v:.0f}"}[c["unit"]]


def render_markdown(s: Scale, meta: dict, summary: dict, cks: list[dict]) -> str:
    b = s.details["bundle"]
    steps = s.args.steps
    out = [f"# llmdr scale benchmark, {meta['started_utc']}", "",
           f"Bundle: {b['files']} files, {b['bytes'] / MB:.0f} MB: {SHARDS} safetensors shards of {s.shard_mib} MiB, the "
           f"tokenizer and configs, and {b['small_files']} small files of 1-64 KB ({b['small_bytes'] / MB:.0f} MB: "
           f"{', '.join(f'{v} {k}' for k, v in b['small_by_kind'].items())}). Machine: {meta['cpus']} CPUs, "
           f"{meta['cpu_model']}; llmdr {meta['llmdr_version']} ({meta['git']}); restic {meta['restic']}. "
           "Single runs; two `weed mini` servers on 127.0.0.1.", "",
           *([f"**WARNING: {meta['warning']}.**", ""] if meta.get("warning") else []),
           "## (a) one bundle of many files", "",
           "| step | tool | wall s | llmdr duration_s | peak RSS MB | CPU s | servers CPU s | note |",
           "|---|---|---:|---:|---:|---:|---:|---|"]
    out += [_row(r) for r in s.runs if r.part == "a"]
    series = s.details["series"]
    out += ["", f"## (b) {steps} successive snapshots of a changing bundle", "",
            f"Each step after the first changes {s.args.change_pct:g} % of the files "
            "(40 % of those modified, 20 % added, 20 % deleted, 20 % renamed); every 10th step also rewrites 8 MiB in "
            "the middle of one shard. Each snapshot is replicated to the secondary at once.", "",
            "| per step (steps 2..N) | min | median | max |", "|---|---:|---:|---:|"]
    for key, label, unit in (("incremental_snapshot_wall_s", "llmdr snapshot, wall s", "s"),
                             ("incremental_snapshot_inproc_s", "llmdr snapshot, duration_s", "s"),
                             ("replicate_wall_s", "llmdr replicate, wall s", "s"),
                             ("restic_backup_wall_s", "restic backup, wall s", "s"),
                             ("snapshot_rss_mb", "llmdr snapshot peak RSS MB (all steps)", "mb"),
                             ("replicate_rss_mb", "llmdr replicate peak RSS MB (all steps)", "mb"),
                             ("restic_rss_mb", "restic backup peak RSS MB (all steps)", "mb"),
                             ("files_read_per_step", "files read (not in the stat cache)", "n"),
                             ("bytes_new_per_step", "new bytes uploaded, MB", "bytes")):
        if key not in summary:
            continue
        v = summary[key]
        f = {"s": lambda x: f"{x:.2f}", "mb": lambda x: f"{x:.0f}", "n": lambda x: f"{x:.0f}",
             "bytes": lambda x: f"{x / MB:.1f}"}[unit]
        out.append(f"| {label} | {f(v['min'])} | {f(v['median'])} | {f(v['max'])} |")
    out += ["", "| step | files | read | new MB | snapshot wall s | duration_s | RSS MB | replicate wall s | RSS MB "
            "| restic backup s |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    shown = {1, 2, 3, steps} | {x for x in range(10, steps + 1, 10)} | set(s.details["restored_steps"])
    for x in series:
        if x["step"] not in shown:
            continue
        out.append(f"| {x['step']} | {x['files']} | {x['files'] - x['files_unchanged']} | {x['bytes_new'] / MB:.1f} | "
                   f"{x['snapshot_wall_s']:.2f} | {x['snapshot_inproc_s']:.2f} | {x['snapshot_rss_mb']:.0f} | "
                   f"{x['replicate_wall_s']:.2f} | {x['replicate_rss_mb']:.0f} | "
                   f"{x.get('restic_wall_s', float('nan')):.2f} |")
    out += ["", "(every step is in the JSON under details.series)", "",
            "| step | tool | wall s | llmdr duration_s | peak RSS MB | CPU s | servers CPU s | note |",
            "|---|---|---:|---:|---:|---:|---:|---|"]
    out += [_row(r) for r in s.runs if r.part == "b" and not r.step.startswith("step ")]
    out += ["", "## Checks", "", "| check | value | goal | verdict | detail |", "|---|---:|---|---|---|"]
    for c in cks:
        goal = "" if c["bound"] is None else f"{c['op']} {fmt(c, c['bound'])}"
        out.append(f"| {c['metric']} | {fmt(c, c['value'])} | {goal} | {c['verdict']} | {c['detail']} |")
    out += ["", "Notes:", *[f"- {n}" for n in standing_notes(s)]]
    return "\n".join(out) + "\n"


def _row(r: Run) -> str:
    inproc = "" if r.inproc_s is None else f"{r.inproc_s:.2f}"
    return (f"| {r.step} | {r.tool} | {r.wall_s:.2f} | {inproc} | {r.peak_rss_mb:.0f} | {r.cpu_s:.1f} | "
            f"{r.server_cpu_s:.1f} | {r.note} |")


def standing_notes(s: Scale) -> list[str]:
    return [
        "Wall time: time.perf_counter() around each subprocess, Python start-up included; llmdr's own duration_s "
        "(from --json, the core function only) beside it. Peak RSS: ru_maxrss from os.wait4() of the command, "
        f"spawned by bench/rusage_launcher.py (floor {s.details.get('rss_floor_mb', '?')} MB). CPU s: the "
        "command's user+system time; servers CPU s: both weed processes.",
        "`sync` and a short pause (1 s in (a), 0.2 s within the series) before every measured command. The bundle "
        "was just written, so it is in the page cache for every tool alike.",
        "Restores are checked file by file: SHA-256 of every restored file against a {path: SHA-256} map the "
        "harness kept of the tree at that step (no copies of the bundle are kept).",
        "The regions are configured as `llmdr init` writes them: the secondary with Object Lock (COMPLIANCE, "
        "30 d) and client-side encryption, manifests signed (HMAC); the primary plain.",
        "Forget runs with --grace 0s (the default 6 h keeps every chunk written in the last 6 h, so a bench "
        "would free nothing) on the primary only: nothing in the secondary may be deleted before its lock ends.",
        "restic runs against a bucket on the same primary server (its repository v2, compression auto), without "
        "AWS_CA_BUNDLE (PLATFORM.md). Its restore is from the primary server; llmdr's from the secondary.",
    ]


def environment(s: Scale, started: str) -> dict:
    import llmdr

    def first_line(cmd: list[str]) -> str:
        try:
            return run_quiet(cmd, env=s.base_env, cwd=s.work).strip().splitlines()[0]
        except (CommandFailed, IndexError, OSError):
            return "?"

    import platform

    cpu_model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), platform.processor())
    git = first_line(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"])
    dirty = first_line(["git", "-C", str(REPO_DIR), "status", "--porcelain", "--", "llmdr"])
    return {"started_utc": started, "cpus": os.cpu_count(), "cpu_model": cpu_model,
            "python": platform.python_version(), "llmdr_version": llmdr.__version__,
            "git": git + ("+dirty llmdr/" if dirty not in ("", "?") else ""), "llmdr_code_at_start": llmdr_code(),
            "weed": first_line([str(Path(sys.executable).parent / "weed"), "version"]),
            "restic": first_line([s.restic, "version"]) if s.restic else "not run",
            "args": {k: str(v) for k, v in vars(s.args).items()}}


def llmdr_code() -> str:
    """A digest of the llmdr/ sources as they are on disk: every measured command imports them afresh, so a change
    during the run (others work in the same tree) would mix two versions in one result."""
    h = hashlib.sha256()
    for p in sorted((REPO_DIR / "llmdr").rglob("*.py")):
        h.update(p.relative_to(REPO_DIR).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def write_results(s: Scale, meta: dict, summary: dict, cks: list[dict], folder: Path) -> Path:
    """``scale-<UTC>.json|.md`` and ``scale-latest.*``; a smoke run writes only ``scale-smoke.json|.md``."""
    doc = {"meta": meta, "steps": s.steps, "summary": summary, "checks": cks, "runs": [asdict(r) for r in s.runs],
           "details": s.details, "notes": standing_notes(s)}
    md = render_markdown(s, meta, summary, cks)
    stamp = "smoke" if s.smoke else meta["started_utc"].replace("-", "").replace(":", "")
    files = [(f"scale-{stamp}.json", json.dumps(doc, indent=2)), (f"scale-{stamp}.md", md)]
    if not s.smoke:
        files += [("scale-latest.json", json.dumps(doc, indent=2)), ("scale-latest.md", md)]
    write_files(folder, files)
    print("\n" + md)
    return folder / f"scale-{stamp}.md"


# main ------------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="llmdr at scale: many files, many snapshots.")
    ap.add_argument("--files", type=int, default=10_000, help="files in the bundle (default 10000)")
    ap.add_argument("--steps", type=int, default=50, help="successive snapshots in part (b) (default 50)")
    ap.add_argument("--change-pct", type=float, default=3.0, help="percent of the files changed per step (default 3)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path, default=BENCH_DIR / "work" / "scale", help="scratch folder")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder afterwards")
    ap.add_argument("--no-peer", action="store_true", help="skip restic")
    ap.add_argument("--primary-port", type=int, default=PRIMARY_PORT)
    ap.add_argument("--secondary-port", type=int, default=SECONDARY_PORT)
    ap.add_argument("--no-bytecode-cache", action="store_true")
    ap.add_argument("--results", type=Path, default=None,
                    help="folder for the results (default bench/results/, or $LLMDR_BENCH_RESULTS)")
    ap.add_argument("--smoke", action="store_true",
                    help="check the harness: 200 files with 2 MiB shards, 2 steps, keep-last 1, restic only if "
                         "installed; writes "
                         "scale-smoke.json|.md, never into bench/results/")
    args = ap.parse_args(argv)
    if args.smoke:
        args.files, args.steps = 200, 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.files < 200 or args.steps < 1:
        sys.exit("--files must be at least 200 and --steps at least 1")
    out = results_dir(args.results, args.smoke, "scale-")
    s = Scale(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below stops the servers
    started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    ports_free(s)
    prepare_work(s)
    t0 = time.perf_counter()
    tree = Tree(s.bundle)
    tree.generate(args.files, args.seed, s.shard_mib)
    small = [r for r in tree.digests if r in tree.small]
    by_kind = {k: sum(1 for r in small if tree.small[r] == k) for k in KINDS}
    s.details["bundle"] = {"files": len(tree.digests), "bytes": tree.total_bytes(), "small_files": len(small),
                           "small_bytes": sum((s.bundle / r).stat().st_size for r in small),
                           "small_by_kind": by_kind, "generated_s": round(time.perf_counter() - t0, 1)}
    print(f"bundle: {s.details['bundle']}", flush=True)
    try:
        stack_up(s)
        warm_bytecode(s)
        meta = environment(s, started)
        floor = run_measured(["true"], env=s.base_env, cwd=s.work, log=s.logs / "rss-floor")
        s.details["rss_floor_mb"] = round(floor.peak_rss_kib * 1024 / MB, 1)
        part_a(s, tree)
        part_b(s, tree)
    finally:
        stack_down(s)
    meta["llmdr_code_at_end"] = llmdr_code()
    if meta["llmdr_code_at_end"] != meta["llmdr_code_at_start"]:
        meta["warning"] = "llmdr/ changed during the run: the measured commands did not all run the same code"
        print(f"WARNING: {meta['warning']}", flush=True)
    summary = summarise(s)
    cks = checks(s, summary)
    path = write_results(s, meta, summary, cks, out)
    print(f"results: {path}" + ("" if s.smoke else f" (and {out / 'scale-latest.md'})")
          + f"; total {time.perf_counter() - t0:.0f} s")
    if not args.keep:
        shutil.rmtree(s.work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
