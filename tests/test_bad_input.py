"""Bad input, table-driven: malformed configs, unknown names, broken or hostile bundles, a forged manifest, wrong
keys, a missing bucket and a full disk. Each must give one clear error (what, where, what to do: asserted as key
words), a non-zero exit, no traceback, and no partial output (no snapshot listed after a refused snapshot, no file
under its final name that is not complete, no temporary file left, no config file written).

The CLI runs for real in a subprocess against the real SeaweedFS regions of the session stack; the flows are called
with bad parameters under the Prefect test harness.

Two cases need privileges that a test may or may not have, and say which way they ran (``pytest -s`` prints it):
- an unreadable file: ``chmod 000`` does not stop root, so when the tests run as root the CLI runs without
  CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (dropped from its bounding set), where root obeys file modes like any user;
- a full disk: a 2 MiB tmpfs mounted on the restore target when ``mount`` is permitted, else a 1 MiB RLIMIT_FSIZE
  on the restore process (writes then fail with EFBIG instead of ENOSPC).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from llmdr.config import load_config
from llmdr.repo.layout import tree_key
from llmdr.repo.manifest import canonical_json
from llmdr.repo.ops import open_repo
from llmdr.repo.reserved import is_tmp_name
from llmdr.serving.tinymodel import write_demo_bundle
from tests.support.config import two_region_yaml
from tests.support.requirements import need
from tests.support.trees import read_tree

LLMDR = [sys.executable, "-m", "llmdr.cli"]

# The cases' expected line numbers (regions on line 9, the primary's credentials on 15, transfer on 22) follow
# from this bundle block and the builder's fixed layout.
BUNDLE = """
  name: badbot
  path: {bundle}
  components:
    weights: {{paths: ["*.safetensors", "model.safetensors.index.json"]}}
    tokenizer: {{paths: ["tokenizer.json"]}}
    generation_config: {{paths: ["generation_config.json"]}}
"""

MiB = 1024 * 1024


@dataclass
class Ctx:
    """One case's world: a good config on a fresh key prefix, a copy of the tiny model, and what the case changed."""

    tmp: Path
    stack: object
    prefix: str = field(default_factory=lambda: f"t-{uuid.uuid4().hex[:10]}")
    env: dict[str, str] = field(default_factory=dict)
    preexec: Callable[[], None] | None = None
    cwd: Path | None = None
    how: str = ""  # how a privilege-dependent case ran

    def __post_init__(self) -> None:
        self.bundle = self.tmp / "model"
        write_demo_bundle(self.bundle)
        self.state = self.tmp / ".llmdr"
        self.state.mkdir()
        keys = self.stack.state_path / "local.env"
        if keys.exists():
            shutil.copy(keys, self.state / "local.env")
        self.good = self.write_config("llmdr.yaml")
        self.config = self.good  # the config the command runs with; a case may point it at a bad one

    def config_text(self, *, bundle: Path | None = None, p_bucket: str = "llmdr-primary", p_extra: str = "",
                    workers: str = "4") -> str:
        return two_region_yaml(self.stack.primary.port, self.stack.secondaries[0].port, prefix=self.prefix,
                               primary_bucket=p_bucket, primary_creds=p_extra,
                               bundle=BUNDLE.format(bundle=bundle or self.bundle),
                               extra=f"transfer: {{workers: {workers}, download_workers: 4, fsync: false}}",
                               state_dir=self.state)

    def write_config(self, name: str, text: str | None = None, **kw) -> Path:
        path = self.tmp / name
        path.write_text(text if text is not None else self.config_text(**kw))
        return path

    def snapshot_ids(self, region: str = "primary") -> list[str]:
        return open_repo(load_config(self.good), region, read_only=True).snapshot_ids()

    def chunk_count(self, region: str = "primary") -> int:
        return len(open_repo(load_config(self.good), region, read_only=True).list_chunks())

    def pack_count(self, region: str = "primary") -> int:
        """Packs stored, indexed or not (a refused snapshot must not leave even an unindexed one)."""
        return len(open_repo(load_config(self.good), region, read_only=True).pack_infos())

    def take_snapshot(self) -> str:
        r = run(self, "snapshot", "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["snapshot_id"]


def run(ctx: Ctx, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LLMDR, "--config", str(ctx.config), *args], capture_output=True, text=True,
                          timeout=180, cwd=ctx.cwd or ctx.tmp, env={**os.environ, "LLMDR_CONFIG": "", **ctx.env},
                          preexec_fn=ctx.preexec)


def no_tmp_files(root: Path) -> list[str]:
    return [p.as_posix() for p in root.rglob("*") if is_tmp_name(p.name)]


# the cases -------------------------------------------------------------------------------------------------------------
# Each: (name, setup(ctx) -> argv, exit code, key words the message must hold, after(ctx, result) -> None).

def yaml_syntax(ctx):
    ctx.config = ctx.write_config("broken.yaml", ctx.config_text().replace("  name: badbot\n",
                                                                          "  name: [badbot\n"))
    return ["snapshots"]


def wrong_type(ctx):
    ctx.config = ctx.write_config("types.yaml", workers="many")
    return ["snapshots"]


def regions_not_a_list(ctx):
    text = ctx.config_text()
    ctx.config = ctx.write_config("regions.yaml", text[:text.index("regions:")] + "regions: primary\n"
                                  + text[text.index("transfer:"):])
    return ["snapshots"]


def unknown_key(ctx):
    ctx.config = ctx.write_config("unknown.yaml", ctx.config_text().replace("  components:", "  compnents:"))
    return ["snapshots"]


SECRET_LITERAL = "Sup3rSecretLiteralValue"


def pasted_secret(ctx):
    ctx.config = ctx.write_config("pasted.yaml", ctx.config_text().replace(
        "secret_key_env: LLMDR_TEST_P_SK", f"secret_key_env: {PASTED}"))
    return ["snapshots"]


def pasted_key_id(ctx):
    ctx.config = ctx.write_config("pasted-id.yaml", ctx.config_text().replace(
        "access_key_env: LLMDR_TEST_P_AK", "access_key_env: AKIAIOSFODNN7EXAMPLE"))
    return ["snapshots"]


PASTED = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def after_nothing_echoed(ctx, r):
    assert PASTED not in r.stdout + r.stderr and "AKIAIOSFODNN7EXAMPLE" not in r.stdout + r.stderr


def literal_secret(ctx):
    ctx.config = ctx.write_config("secret.yaml", p_extra=f", secret_access_key: {SECRET_LITERAL}")
    return ["snapshot"]


def after_literal_secret(ctx, r):
    assert SECRET_LITERAL not in r.stdout + r.stderr  # the refusal never echoes the value
    assert ctx.snapshot_ids() == []


def unknown_region_snapshot(ctx):
    return ["snapshot", "--region", "nowhere"]


def unknown_region_restore(ctx):
    return ["restore", "latest", "--region", "nowhere", "--to", str(ctx.tmp / "target")]


def after_nothing_restored(ctx, r):
    assert not (ctx.tmp / "target").exists()


def after_no_snapshot(ctx, r):
    assert ctx.snapshot_ids() == []


def after_nothing_uploaded(ctx, r):
    assert ctx.snapshot_ids() == [] and ctx.chunk_count() == 0 and ctx.pack_count() == 0


def missing_bundle(ctx):
    ctx.config = ctx.write_config("gone.yaml", bundle=ctx.tmp / "gone")
    return ["snapshot"]


def init_missing_bundle(ctx):
    ctx.cwd = ctx.tmp / "init"
    ctx.cwd.mkdir()
    return ["init", str(ctx.tmp / "gone")]


def after_no_config_written(ctx, r):
    assert list((ctx.tmp / "init").iterdir()) == []


def drop_dac() -> None:
    """Run as root without the capabilities that let root ignore file modes (for the child process only)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def unreadable_file(ctx):
    f = ctx.bundle / "security" / "denylist.txt"
    f.chmod(0)
    if os.geteuid() == 0:
        probe = subprocess.run([sys.executable, "-c", f"open({str(f)!r}, 'rb')"], preexec_fn=drop_dac,
                               capture_output=True, text=True)
        need(probe.returncode != 0 and "PermissionError" in probe.stderr,
             "running as root and the capabilities that let root read a mode-000 file cannot be "
             f"dropped here, so no file can be made unreadable ({probe.stderr.strip()[-200:]})")
        ctx.preexec = drop_dac
        ctx.how = "root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH"
    else:
        ctx.how = f"uid {os.geteuid()}, chmod 000"
    return ["snapshot"]


def unreadable_component(ctx):
    argv = unreadable_file(ctx)
    (ctx.bundle / "security" / "denylist.txt").chmod(0o644)
    (ctx.bundle / "tokenizer.json").chmod(0)
    return argv


def unreadable_folder(ctx):
    argv = unreadable_file(ctx)
    (ctx.bundle / "security" / "denylist.txt").chmod(0o644)
    (ctx.bundle / "security").chmod(0)
    return argv


def dangling_symlink(ctx):
    (ctx.bundle / "tokenizer_config.json").unlink()
    os.symlink(ctx.tmp / "blobs" / "missing", ctx.bundle / "tokenizer_config.json")
    return ["snapshot"]


def dir_symlink_loop(ctx):
    os.symlink("..", ctx.bundle / "security" / "loop")
    return ["snapshot"]


def file_symlink_loop(ctx):
    os.symlink("b.json", ctx.bundle / "a.json")
    os.symlink("a.json", ctx.bundle / "b.json")
    return ["snapshot"]


def _forge_manifest(ctx, bad_path: str) -> str:
    """A snapshot whose tree names ``bad_path``: the tree and the record put into the store each under its correct
    hash id (with real chunks), so only the path check can stop it."""
    sid = ctx.take_snapshot()
    repo = open_repo(load_config(ctx.good), "primary")
    record = repo.load_record(sid)
    tree = json.loads(repo.tree_bytes(record["tree"]))
    tree["files"][0]["path"] = bad_path
    tdata = canonical_json(tree)
    tid = hashlib.sha256(tdata).hexdigest()
    repo.store.put(tree_key(tid), tdata, sha256=bytes.fromhex(tid))
    data = canonical_json({**record, "tree": tid, "components": {}})
    forged = hashlib.sha256(data).hexdigest()
    repo.save_record(forged, data)
    return forged


def traversal_relative(ctx):
    forged = _forge_manifest(ctx, "../../etc/x")
    return ["restore", forged, "--to", str(ctx.tmp / "a" / "b" / "target")]


def after_traversal_relative(ctx, r):
    assert not (ctx.tmp / "a" / "etc").exists() and not (ctx.tmp / "a" / "b" / "target").exists()


def traversal_absolute(ctx):
    forged = _forge_manifest(ctx, str(ctx.tmp / "escaped" / "x"))
    return ["restore", forged, "--to", str(ctx.tmp / "target")]


def after_traversal_absolute(ctx, r):
    assert not (ctx.tmp / "escaped").exists() and not (ctx.tmp / "target").exists()


def no_such_snapshot(ctx):
    ctx.take_snapshot()
    return ["restore", "0123abcd", "--to", str(ctx.tmp / "target")]


def no_such_full_id(ctx):
    return ["restore", "ab" * 32, "--to", str(ctx.tmp / "target")]


def no_snapshot_yet(ctx):
    return ["restore", "latest", "--to", str(ctx.tmp / "target")]


WRONG_SECRET = "wR0ngSecretKeyValue/+="


def wrong_credentials(ctx):
    ctx.env = {"LLMDR_TEST_P_AK": "LLMDRWRONGKEYID0", "LLMDR_TEST_P_SK": WRONG_SECRET}
    return ["snapshot"]


def after_wrong_credentials(ctx, r):
    assert WRONG_SECRET not in r.stdout + r.stderr
    ctx.env = {}
    assert ctx.snapshot_ids() == []


def wrong_credentials_list(ctx):
    ctx.env = {"LLMDR_TEST_P_AK": "LLMDRWRONGKEYID0", "LLMDR_TEST_P_SK": WRONG_SECRET}
    return ["snapshots"]


def missing_bucket(ctx):
    ctx.config = ctx.write_config("bucket.yaml", p_bucket="llmdr-no-such-bucket")
    return ["snapshot"]


def after_missing_bucket(ctx, r):
    listing = run(ctx, "snapshots")  # the refused snapshot did not create the bucket either
    assert listing.returncode == 1 and "does not exist" in listing.stderr


def _fsize_limit() -> None:
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (MiB, MiB))


@contextlib.contextmanager
def small_disk(where: Path):
    """A 2 MiB tmpfs mounted at ``where``; skips the test when mounting is not permitted here (fails it in CI)."""
    where.mkdir()
    m = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "llmdr-test-full", str(where)],
                       capture_output=True, text=True) if shutil.which("mount") else None
    need(m is not None and m.returncode == 0,
         "mounting a tmpfs is not permitted here (the RLIMIT_FSIZE variant covers a write failing): "
         + (m.stderr.strip() if m is not None else "no mount command"))
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


CASES = [
    ("yaml syntax error", yaml_syntax, 2, ["broken.yaml:4:7", "not valid yaml", "flow sequence started at line 3",
                                           "unclosed bracket"], None),
    ("wrong type", wrong_type, 2, ["types.yaml", "transfer.workers (line 22)", "valid integer"], None),
    ("regions not a list", regions_not_a_list, 2, ["regions (line 9)", "valid list"], None),
    ("unknown key", unknown_key, 2, ["unknown.yaml", "bundle.compnents (line 5)", "unknown key",
                                     "check its spelling"], None),
    ("literal secret", literal_secret, 2, ["secret.yaml (line 15)", "regions[0].credentials.secret_access_key",
                                           "literal secrets are not allowed", "environment variable"],
     after_literal_secret),
    ("secret pasted as secret_key_env", pasted_secret, 2, ["pasted.yaml", "regions[0].credentials (line 15)",
                                                            "secret_key_env must be the name of an environment "
                                                            "variable", "not shown"], after_nothing_echoed),
    ("key id pasted as access_key_env", pasted_key_id, 2, ["access_key_env must be the name", "not shown"],
     after_nothing_echoed),
    ("unknown region (snapshot)", unknown_region_snapshot, 2,
     ["no region named 'nowhere'", "llmdr.yaml", "known regions: primary, secondary"], after_no_snapshot),
    ("unknown region (restore)", unknown_region_restore, 2, ["no region named 'nowhere'", "known regions"],
     after_nothing_restored),
    ("missing bundle folder", missing_bundle, 2, ["bundle folder", "gone", "does not exist", "bundle.path"],
     after_no_snapshot),
    ("init on a missing folder", init_missing_bundle, 1, ["gone", "is not a folder", "bundle's folder"],
     after_no_config_written),
    ("unreadable file", unreadable_file, 1, ["security/denylist.txt", "cannot be read", "permission denied",
                                             "nothing was uploaded", "chmod"], after_nothing_uploaded),
    ("unreadable component file", unreadable_component, 1, ["tokenizer.json", "cannot be read",
                                                            "nothing was uploaded"], after_nothing_uploaded),
    ("unreadable folder", unreadable_folder, 1, ["security/", "folder cannot be read", "permission denied",
                                                 "nothing was uploaded"], after_nothing_uploaded),
    ("dangling symlink", dangling_symlink, 1, ["tokenizer_config.json", "symlink", "does not exist",
                                               "nothing was uploaded"], after_nothing_uploaded),
    ("symlink loop (folder)", dir_symlink_loop, 1, ["security/loop", "symlink loop", "nothing was uploaded"],
     after_nothing_uploaded),
    ("symlink loop (files)", file_symlink_loop, 1, ["a.json", "b.json", "symlink loop", "nothing was uploaded"],
     after_nothing_uploaded),
    ("manifest path ../../etc/x", traversal_relative, 1, ["'../../etc/x'", "not a plain relative path",
                                                          "region 'primary'", "another snapshot"],
     after_traversal_relative),
    ("manifest absolute path", traversal_absolute, 1, ["is absolute", "region 'primary'", "another snapshot"],
     after_traversal_absolute),
    ("snapshot id prefix that does not exist", no_such_snapshot, 1,
     ["no snapshot '0123abcd'", "s3://llmdr-primary/", "llmdr snapshots"], after_nothing_restored),
    ("full snapshot id that does not exist", no_such_full_id, 1, ["no snapshot 'abababababab", "llmdr snapshots"],
     after_nothing_restored),
    ("latest with no snapshot", no_snapshot_yet, 1, ["no snapshot of bundle 'badbot'", "llmdr snapshot"],
     after_nothing_restored),
    ("wrong credentials (snapshot)", wrong_credentials, 1, ["access denied", "primary", "credentials",
                                                            "llmdr.yaml"], after_wrong_credentials),
    ("wrong credentials (list)", wrong_credentials_list, 1, ["access denied", "credentials"],
     after_wrong_credentials),
    ("missing bucket", missing_bucket, 1, ["bucket 'llmdr-no-such-bucket' does not exist", "create it"],
     after_missing_bucket),
]

ROWS: list[str] = []


@pytest.mark.s3
@pytest.mark.parametrize("name,setup,code,words,after", CASES, ids=[c[0] for c in CASES])
def test_bad_input(stack, tmp_path, name, setup, code, words, after):
    ctx = Ctx(tmp_path, stack)
    argv = setup(ctx)
    r = run(ctx, *argv)
    out = r.stdout + r.stderr
    print(f"\nROW | {name} | llmdr {' '.join(argv)} | exit {r.returncode} | "
          f"{r.stderr.strip().splitlines()[0][:160] if r.stderr.strip() else ''}{' | ' + ctx.how if ctx.how else ''}")
    assert r.returncode == code, out
    assert "Traceback" not in out, out
    assert r.stderr.startswith("error: "), out
    for w in words:
        assert w.lower() in r.stderr.lower(), f"{w!r} not in: {r.stderr}"
    if after is not None:
        after(ctx, r)


@pytest.mark.s3
def test_fifo_in_bundle_is_skipped_with_a_warning(stack, tmp_path):
    """A FIFO (or socket) holds no content to protect: it is skipped, never opened (no hang), and named."""
    ctx = Ctx(tmp_path, stack)
    os.mkfifo(ctx.bundle / "control.fifo")
    r = run(ctx, "snapshot", "--json")
    print(f"\nROW | fifo in the bundle | llmdr snapshot | exit {r.returncode} | {r.stderr.strip()[:160]}")
    assert r.returncode == 0, r.stderr
    assert "control.fifo" in r.stderr and "not a regular file" in r.stderr
    sid = json.loads(r.stdout)["snapshot_id"]
    paths = [f.path for f in open_repo(load_config(ctx.good), "primary").load_manifest(sid).files]
    assert "control.fifo" not in paths and "tokenizer.json" in paths


@pytest.mark.s3
@pytest.mark.parametrize("way", ["tmpfs", "rlimit"])
def test_disk_full_on_restore(stack, tmp_path, way):
    """A restore into a folder that runs out of room (a 2 MiB tmpfs: ENOSPC, and short writes before it; or a 1 MiB
    RLIMIT_FSIZE on the restore process: EFBIG) stops with what/where/what to do, leaves no temporary file and no
    incomplete file under its final name, and resumes once there is room."""
    ctx = Ctx(tmp_path, stack)
    (ctx.bundle / "extra.bin").write_bytes(os.urandom(3 * MiB))
    sid = ctx.take_snapshot()
    source = read_tree(ctx.bundle)
    with small_disk(tmp_path / "small") if way == "tmpfs" else contextlib.nullcontext(tmp_path / "big") as room:
        target = room / "restored"
        if way == "tmpfs":
            how, words = "tmpfs size=2m (ENOSPC)", ["no space left on the device", "free there now"]
        else:
            ctx.preexec = _fsize_limit
            how, words = "RLIMIT_FSIZE 1 MiB (EFBIG)", ["file size limit", "ulimit -f", "extra.bin"]
        r = run(ctx, "restore", sid, "--to", str(target))
        print(f"\nROW | disk full on restore ({how}) | llmdr restore {sid[:12]} --to {target} | exit {r.returncode} | "
              f"{r.stderr.strip()}")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "Traceback" not in r.stderr and r.stderr.startswith("error: ")
        for w in [*words, sid[:12], str(target), "no partial file was left", "run the same command again"]:
            assert w.lower() in r.stderr.lower(), f"{w!r} not in: {r.stderr}"
        assert no_tmp_files(target) == []
        landed = {k: v for k, v in read_tree(target).items() if k != ".llmdr-restore.json"}
        assert len(landed) < len(source)
        if way == "rlimit":
            assert "extra.bin" not in landed  # larger than the limit: never complete
        for rel, data in landed.items():
            assert data == source[rel], f"{rel} is under its final name but not complete"
        # what the message says to do works: make room, run the same command again
        if way == "tmpfs":
            subprocess.run(["mount", "-o", "remount,size=16m", str(room)], check=True)
        ctx.preexec = None
        again = run(ctx, "restore", sid, "--to", str(target))
        assert again.returncode == 0, again.stderr
        assert read_tree(target) == source


@pytest.mark.s3
def test_check_names_an_unreadable_component(stack, tmp_path):
    """`llmdr check` (and the protect flow's first task, which runs the same check) reports an unreadable component
    file as a problem of that component instead of failing on the read."""
    ctx = Ctx(tmp_path, stack)
    unreadable_component(ctx)
    r = run(ctx, "check", "--json")
    print(f"\nROW | unreadable component, llmdr check | llmdr check --json | exit {r.returncode} | "
          f"{r.stdout.strip()[-200:]} | {ctx.how}")
    assert r.returncode == 4 and "Traceback" not in r.stderr, r.stdout + r.stderr
    tok = next(c for c in json.loads(r.stdout)["components"] if c["kind"] == "tokenizer")
    assert tok["problems"] == ["tokenizer tokenizer.json: cannot be read (Permission denied)"]


# flows ----------------------------------------------------------------------------------------------------------------
@pytest.mark.s3
def test_flows_fail_with_the_clear_message(stack, tmp_path, prefect_harness):
    from flows.protect_bundle import protect_bundle
    from flows.restore_bundle import restore_bundle

    ctx = Ctx(tmp_path, stack)
    cases = [
        (lambda: restore_bundle(target=str(tmp_path / "t1"), region="nowhere", config_path=str(ctx.good)),
         ["no region named 'nowhere'", "known regions: primary, secondary"]),
        (lambda: restore_bundle(target=str(tmp_path / "t2"), region="primary", snapshot="0123abcd",
                                config_path=str(ctx.good)),
         ["no snapshot '0123abcd'", "llmdr snapshots"]),
        (lambda: protect_bundle(config_path=str(ctx.write_config("gone.yaml", bundle=tmp_path / "gone"))),
         ["gone", "not a folder"]),
        (lambda: restore_bundle(target=str(tmp_path / "t3"), config_path=str(tmp_path / "missing.yaml")),
         ["missing.yaml: no such file", "llmdr init"]),
    ]
    for call, words in cases:
        with pytest.raises(Exception) as info:
            call()
        msg = str(info.value)
        print(f"\nFLOW | {type(info.value).__name__}: {msg[:200]}")
        for w in words:
            assert w in msg, msg
    assert not (tmp_path / "t1").exists() and not (tmp_path / "t2").exists() and not (tmp_path / "t3").exists()
    assert ctx.snapshot_ids() == []


def test_a_file_whose_first_open_failed_gives_every_chunk_that_error(tmp_path, monkeypatch):
    """The restore of a file of several chunks: when pre-sizing its temporary file fails (EFBIG under a file size
    limit), that file is abandoned; another thread writing another of its chunks must get the same EFBIG, not ENOENT on
    the removed temporary file (which the restore then reported instead, 1 run in 20 of test_disk_full_on_restore)."""
    import errno

    from llmdr.repo import restore
    from llmdr.repo.manifest import FileEntry

    def efbig(fd, size):
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))

    monkeypatch.setattr(restore.os, "ftruncate", efbig)
    entry = FileEntry("big.bin", 3 * MiB, 0o644, 0, (("aa" * 32, 2 * MiB), ("bb" * 32, MiB)))
    job = restore._FileJob(entry, str(tmp_path / "big.bin"), str(tmp_path / ".llmdr-tmp-0123456789abcdef"), 0o644,
                           False)
    for _ in range(2):  # the first chunk's thread, then the second's
        with pytest.raises(OSError) as err:
            job.open()
        assert err.value.errno == errno.EFBIG and err.value.filename == "big.bin"
    assert list(tmp_path.iterdir()) == []  # no temporary file left
