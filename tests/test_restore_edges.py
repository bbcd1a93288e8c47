"""Restore's edges (issue #16): names as long as the file system allows, names restore keeps for itself, setuid,
setgid and sticky bits, two restores into one target (the lock), sparse files and hard links; and attacks from
inside the target: links and folders planted at the names restore uses, a target that is a symlink."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from llmdr.errors import (
    ChunkMissing,
    LlmdrError,
    TargetLocked,
    TargetNotEmpty,
    TransientStorageError,
    UnsafePathError,
)
from llmdr.repo import restore as restore_module
from llmdr.repo.chunking import ChunkerParams
from llmdr.repo.layout import PACKS, RepoConfig, pack_key
from llmdr.repo.manifest import FileEntry
from llmdr.repo.packer import PackWriter
from llmdr.repo.repository import Repository
from llmdr.repo.reserved import LOCK, MARKER, is_tmp_name, reserved_reason, tmp_name
from llmdr.repo.restore import restore_snapshot
from llmdr.repo.snapshot import take_snapshot
from llmdr.storage.memory import MemoryStore
from llmdr.testing.faulty import FaultyStore
from tests.support.config import two_region_yaml
from tests.support.forge import publish_files
from tests.support.trees import read_tree, write_tree

ROOT = Path(__file__).resolve().parent.parent
SMALL = ChunkerParams(avg_size=4096, min_size=1024, max_size=16384)
MiB = 1 << 20
HOST = socket.gethostname()


def rnd(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_repo(store=None, chunker: ChunkerParams = SMALL) -> Repository:
    repo = Repository(store or MemoryStore())
    repo.ensure_config(RepoConfig(chunker=chunker, pack_target=64 * 1024))
    return repo


def pieces(data: bytes) -> list[bytes]:
    return [data[i:i + SMALL.max_size] for i in range(0, len(data), SMALL.max_size)]


def forge(repo: Repository, files: dict[str, tuple[bytes, int]]) -> str:
    """A snapshot holding exactly ``files`` (path -> (bytes, mode)), whatever the snapshot side would accept: what
    a crafted file list, or an older llmdr, can put in front of restore. Chunks of 16 KiB, all in one pack."""
    with PackWriter(repo, workers=1, pack_target=64 * MiB) as w:
        for data, _ in files.values():
            for c in pieces(data):
                w.add(sha(c), bytes.fromhex(sha(c)), c)
    entries = [FileEntry(p, len(d), mode, 1_700_000_000 * 10**9, tuple((sha(c), len(c)) for c in pieces(d)))
               for p, (d, mode) in sorted(files.items())]
    return publish_files(repo, entries, SMALL)


def modes(root: Path, paths) -> dict[str, int]:
    return {p: stat.S_IMODE(os.lstat(root / p).st_mode) for p in paths}


# 1. long names --------------------------------------------------------------------------------------------------------
LONG_ASCII = "a" * 251 + ".bin"
LONG_UTF8 = "é" * 127 + "x"  # 255 bytes in 128 characters


@pytest.mark.parametrize("name", [LONG_ASCII, LONG_UTF8], ids=["ascii", "utf8"])
@pytest.mark.parametrize("size", [500, 40_000], ids=["one-chunk", "chunks"])
def test_a_name_of_255_bytes_snapshots_and_restores(tmp_path, name, size):
    assert len(name.encode()) == 255
    files = {name: rnd(size, 1), f"sub/{name}": rnd(size, 2), "small.json": b"{}"}
    write_tree(tmp_path / "src", files)
    repo = new_repo()
    snap = take_snapshot(repo, tmp_path / "src", bundle="b")
    res = restore_snapshot(repo, snap.snapshot_id, tmp_path / "out")
    assert read_tree(tmp_path / "out") == files and res.files == 3
    assert all(len(tmp_name(p).encode()) == 27 for p in files)


def test_an_interrupted_restore_of_a_long_name_resumes_and_cleans_its_temporary_file(tmp_path):
    files = {LONG_UTF8: rnd(40_000, 3), "b.bin": rnd(40_000, 4)}
    write_tree(tmp_path / "src", files)
    faulty = FaultyStore(MemoryStore())
    repo = new_repo(faulty)
    snap = take_snapshot(repo, tmp_path / "src", bundle="b")
    out = tmp_path / "out"
    faulty.fail("get", lambda: TransientStorageError("network down"), key_prefix=PACKS)
    with pytest.raises(TransientStorageError):
        restore_snapshot(repo, snap.snapshot_id, out, workers=1)
    assert sorted(os.listdir(out)) == [MARKER]  # the lock went with the failed run; the marker stays for the re-run
    stale = out / tmp_name(LONG_UTF8)
    stale.write_bytes(b"left by a killed restore")  # as if the process had died mid-file
    restore_snapshot(repo, snap.snapshot_id, out)  # the same snapshot: resumes, no --force
    assert read_tree(out) == files


# 2. names restore keeps for itself ------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [MARKER, LOCK, f"{MARKER}/x", "sub/" + tmp_name("sub/a.bin"), tmp_name("x") + "/y",
                                  tmp_name("a.bin", 3)])
def test_a_snapshot_listing_a_name_restore_keeps_for_itself_is_refused_before_anything_is_written(tmp_path, path):
    repo = new_repo()
    sid = forge(repo, {"a.bin": (rnd(3000, 1), 0o644), path: (b"the bundle's own file", 0o644)})
    with pytest.raises(UnsafePathError) as err:
        restore_snapshot(repo, sid, tmp_path / "out")
    msg = str(err.value)
    assert repr(path) in msg and "Nothing was written" in msg and "take a new snapshot" in msg
    assert not (tmp_path / "out").exists()


def test_names_close_to_restores_own_are_restored_intact(tmp_path):
    """Only restore's exact names are reserved; a bundle file named like the temporary name an older llmdr used
    next to ``x`` (``.x.llmdr-tmp``) was deleted by that restore."""
    files = {".x.llmdr-tmp": rnd(100, 2), "x": rnd(3000, 1), ".big.bin.llmdr-tmp": b"mine",  # the bundle's first
             "big.bin": rnd(40_000, 3), f"sub/{MARKER}": b"{}", f"sub/{LOCK}": b"",
             ".llmdr-tmp-not-hex": b"1", ".llmdr-tmp-0123456789abcdef0": b"17 hex", "y.llmdr-tmp": b"3",
             f".{MARKER}.{os.getpid()}.tmp": b"2"}
    assert all(reserved_reason(p) is None for p in files)
    repo = new_repo()
    sid = forge(repo, {p: (d, 0o644) for p, d in files.items()})
    restore_snapshot(repo, sid, tmp_path / "out")
    assert read_tree(tmp_path / "out") == files


def test_two_paths_whose_temporary_names_collide_get_distinct_ones(tmp_path, monkeypatch):
    """Two paths of one folder sharing the 16 hex digits (only a crafted snapshot could): the next name is taken."""
    seen: list[str] = []

    def same(relpath: str, n: int = 0) -> str:
        seen.append(relpath)
        return ".llmdr-tmp-" + "0" * 16 + (f"-{n}" if n else "")

    monkeypatch.setattr(restore_module, "tmp_name", same)
    files = {"d/a": rnd(40_000, 1), "d/b": rnd(40_000, 2), "d/c": rnd(500, 3)}
    repo = new_repo()
    snap = take_snapshot(repo, write_src(tmp_path, files), bundle="b")
    restore_snapshot(repo, snap.snapshot_id, tmp_path / "out")
    assert read_tree(tmp_path / "out") == files and {"d/a", "d/b", "d/c"} <= set(seen)


def write_src(tmp_path: Path, files: dict[str, bytes]) -> Path:
    write_tree(tmp_path / "src", files)
    return tmp_path / "src"


# 3. setuid, setgid, sticky --------------------------------------------------------------------------------------------
SPECIAL = {"suid": 0o4755, "sgid": 0o2750, "sticky": 0o1777, "all": 0o7755, "plain": 0o640, "empty-suid": 0o4700}


def test_setuid_setgid_and_sticky_bits_are_removed_unless_asked(tmp_path, caplog):
    repo = new_repo()
    files = {p: (b"" if p.startswith("empty") else rnd(300, i), m) for i, (p, m) in enumerate(SPECIAL.items())}
    files["big-suid"] = (rnd(40_000, 9), 0o4711)  # restored through the open-file cache, not the one-write path
    sid = forge(repo, files)
    with caplog.at_level(logging.WARNING, logger="llmdr.repo.restore"):
        res = restore_snapshot(repo, sid, tmp_path / "out")
    assert modes(tmp_path / "out", files) == {p: m & 0o777 for p, (_, m) in files.items()}
    assert res.special_bits_stripped == 6 and res.to_json()["special_bits_stripped"] == 6
    assert "6 files" in caplog.text and "--preserve-special-bits" in caplog.text
    kept = restore_snapshot(repo, sid, tmp_path / "kept", preserve_special_bits=True)
    assert modes(tmp_path / "kept", files) == {p: m for p, (_, m) in files.items()}
    assert kept.special_bits_stripped == 0


def test_a_file_kept_in_place_loses_its_special_bits_too(tmp_path):
    repo = new_repo()
    sid = forge(repo, {"tool": (rnd(300, 1), 0o4755), "lib": (rnd(300, 2), 0o2755)})
    out = tmp_path / "out"
    restore_snapshot(repo, sid, out, preserve_special_bits=True)
    assert modes(out, ["tool", "lib"]) == {"tool": 0o4755, "lib": 0o2755}
    again = restore_snapshot(repo, sid, out, force=True)  # the bytes match: kept, only the mode is put right
    assert again.files_skipped == 2 and again.bytes_downloaded == 0
    assert modes(out, ["tool", "lib"]) == {"tool": 0o755, "lib": 0o755}


# 4. the lock ----------------------------------------------------------------------------------------------------------
class Gate(FaultyStore):
    """Holds every pack GET, once ``armed``, until ``release`` is set; ``entered`` says one is waiting."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def get(self, key, *, start=0, length=None, version_id=None):
        if self.armed and key.startswith(PACKS):
            self.entered.set()
            if not self.release.wait(20):
                raise TimeoutError("the gate was never opened")
        return super().get(key, start=start, length=length, version_id=version_id)


def test_a_second_restore_into_the_same_target_is_refused_while_the_first_runs(tmp_path):
    files = {f"f{i}.bin": rnd(20_000, i) for i in range(4)}
    gate = Gate(MemoryStore())
    repo = new_repo(gate)
    sid = take_snapshot(repo, write_src(tmp_path, files), bundle="b").snapshot_id
    out = tmp_path / "out"
    (tmp_path / "via-link").symlink_to(out, target_is_directory=True)
    gate.armed = True
    first: dict = {}

    def run_first() -> None:
        try:
            first["res"] = restore_snapshot(repo, sid, out, workers=1)
        except BaseException as exc:  # noqa: BLE001 - reported below
            first["err"] = exc

    t = threading.Thread(target=run_first)
    t.start()
    try:
        assert gate.entered.wait(10), "the first restore never reached its download"
        for where in (out, tmp_path / "via-link"):  # the same folder by another name: the same lock
            with pytest.raises(LlmdrError, match="locked by another restore") as err:
                restore_snapshot(repo, sid, where, workers=1)
            assert isinstance(err.value, TargetLocked) and err.value.exit_code == 10
            msg = str(err.value)
            assert f"restore target {out.resolve()} is locked" in msg and sid[:12] in msg
            assert f"pid {os.getpid()} on host {HOST}, since 20" in msg
            assert "Wait for it to finish" in msg and str(out.resolve() / LOCK) in msg
    finally:
        gate.release.set()
        t.join(30)
    assert "err" not in first, first.get("err")
    assert read_tree(out) == files and not os.path.lexists(out / LOCK)


HOLD = ("import sys\nfrom llmdr.repo.restoretarget import lock_target\nlock = lock_target(sys.argv[1], 'ab' * 32)\n"
        "print('locked', flush=True)\nsys.stdin.read()\n")


def test_a_restore_in_another_process_holds_the_target_and_its_lock_is_taken_over_once_it_is_killed(tmp_path,
                                                                                                     caplog):
    files = {"a.bin": rnd(20_000, 1), "b.json": b"{}"}
    repo = new_repo()
    sid = take_snapshot(repo, write_src(tmp_path, files), bundle="b").snapshot_id
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"locked\n"
        held = f"pid {holder.pid} on host {re.escape(HOST)}, since .* restoring (ab){{6}}"
        with pytest.raises(TargetLocked, match=held):
            restore_snapshot(repo, sid, out)
        assert os.listdir(out) == [LOCK]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    assert os.listdir(out) == [LOCK]  # a killed holder leaves its lock file behind
    with caplog.at_level(logging.WARNING, logger="llmdr.repo.restoretarget"):
        res = restore_snapshot(repo, sid, out)  # no --force: the lock file does not make the target "not empty"
    assert f"taking over the lock on restore target {out.resolve()}" in caplog.text
    assert f"pid {holder.pid} on host {HOST}" in caplog.text
    assert res.files == 2 and read_tree(out) == files


def test_a_lock_file_left_by_a_dead_pid_is_taken_over(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    files = {"a.bin": rnd(3000, 1)}
    repo = new_repo()
    sid = take_snapshot(repo, write_src(tmp_path, files), bundle="b").snapshot_id
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK).write_text(json.dumps({"pid": pid, "host": HOST, "started": "2026-01-01T00:00:00Z", "snapshot": sid}))
    with caplog.at_level(logging.WARNING, logger="llmdr.repo.restoretarget"):
        restore_snapshot(repo, sid, out)
    assert f"pid {pid} on host {HOST}" in caplog.text and read_tree(out) == files


def test_a_lock_of_another_host_is_never_taken_over(tmp_path):
    repo = new_repo()
    sid = forge(repo, {"a.bin": (rnd(3000, 1), 0o644)})
    out = tmp_path / "out"
    out.mkdir()
    text = json.dumps({"pid": 1, "host": "elsewhere.example", "started": "2026-01-01T00:00:00Z", "snapshot": sid})
    (out / LOCK).write_text(text)
    with pytest.raises(TargetLocked, match="another host: pid 1 on host elsewhere.example.*remove .*lock"):
        restore_snapshot(repo, sid, out)
    assert os.listdir(out) == [LOCK] and (out / LOCK).read_text() == text


@pytest.mark.parametrize("what", ["symlink", "dangling symlink", "folder", "fifo", "hardlink", "someone's file"])
def test_something_else_at_the_lock_name_is_refused_never_followed_nor_removed(tmp_path, what):
    repo = new_repo()
    sid = forge(repo, {"a.bin": (rnd(3000, 1), 0o644)})
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep me")
    out = tmp_path / "out"
    out.mkdir()
    lock = out / LOCK
    if what == "symlink":
        lock.symlink_to(outside)
    elif what == "dangling symlink":
        lock.symlink_to(tmp_path / "would-be-created")
    elif what == "folder":
        (lock / "x").mkdir(parents=True)
    elif what == "hardlink":
        os.link(outside, lock)
    elif what == "someone's file":
        lock.write_bytes(b"keep me")
    else:
        os.mkfifo(lock)
    expected = {"symlink": "a symlink", "dangling symlink": "a symlink", "folder": "a folder",
                "fifo": "not a regular file"}.get(what, "a file that holds no lock record")
    with pytest.raises(UnsafePathError, match=re.escape(f"cannot lock restore target {out.resolve()}: "
                                                        f"{out.resolve() / LOCK} is {expected}")):
        restore_snapshot(repo, sid, out)
    assert outside.read_bytes() == b"keep me" and not (tmp_path / "would-be-created").exists()
    assert os.listdir(out) == [LOCK] and os.path.lexists(lock)
    if what in ("hardlink", "someone's file"):
        assert lock.read_bytes() == b"keep me"  # never truncated


def test_the_lock_is_removed_when_the_restore_fails(tmp_path):
    repo = new_repo()
    files = {"a.bin": rnd(3000, 1), "b.bin": rnd(3000, 2)}
    sid = forge(repo, {p: (d, 0o644) for p, d in files.items()})
    repo.store.delete(pack_key(repo.locate(sha(files["a.bin"])).pack.hex()))
    with pytest.raises(ChunkMissing):
        restore_snapshot(repo, sid, tmp_path / "out")
    assert MARKER in os.listdir(tmp_path / "out") and LOCK not in os.listdir(tmp_path / "out")


# the marker and the target --------------------------------------------------------------------------------------------
def test_links_planted_at_the_markers_names_are_never_followed(tmp_path):
    repo = new_repo()
    files = {"a.bin": rnd(3000, 1)}
    sid = forge(repo, {p: (d, 0o644) for p, d in files.items()})
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep me")
    out = tmp_path / "out"
    out.mkdir()
    old_name = f".{MARKER}.{os.getpid()}.tmp"  # the marker's temporary name before #16, opened with O_TRUNC
    (out / old_name).symlink_to(outside)
    (out / tmp_name(MARKER)).symlink_to(outside)
    restore_snapshot(repo, sid, out, force=True)
    assert outside.read_bytes() == b"keep me"
    assert not os.path.lexists(out / tmp_name(MARKER)) and not os.path.lexists(out / MARKER)
    assert sorted(os.listdir(out)) == sorted([old_name, "a.bin"])  # a stranger's link is left alone


def test_a_marker_that_is_a_link_is_not_read(tmp_path):
    """A link at the marker's name pointing at a file that names the snapshot must not make a non-empty folder
    look like this restore's own unfinished one."""
    repo = new_repo()
    sid = forge(repo, {"a.bin": (rnd(3000, 1), 0o644)})
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"snapshot": sid}))
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).symlink_to(outside)
    with pytest.raises(TargetNotEmpty):
        restore_snapshot(repo, sid, out)
    assert json.loads(outside.read_text()) == {"snapshot": sid} and os.path.islink(out / MARKER)


def test_a_target_that_is_a_symlink_restores_into_the_folder_it_leads_to(tmp_path):
    repo = new_repo()
    files = {"a.bin": rnd(3000, 1), "d/b.bin": rnd(3000, 2)}
    sid = forge(repo, {p: (d, 0o644) for p, d in files.items()})
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    res = restore_snapshot(repo, sid, tmp_path / "link")
    assert res.target == str(real.resolve()) and read_tree(real) == files


def test_a_dangling_symlink_as_target_is_a_clear_error(tmp_path):
    repo = new_repo()
    sid = forge(repo, {"a.bin": (rnd(3000, 1), 0o644)})
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(TargetNotEmpty, match=f"is a symlink to {tmp_path / 'nowhere'}, which does not exist"):
        restore_snapshot(repo, sid, tmp_path / "link")
    assert not (tmp_path / "nowhere").exists()


# 5. sparse files and hard links ---------------------------------------------------------------------------------------
def test_a_sparse_file_comes_back_sparse(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse.bin", "wb") as fh:  # 64 MiB: 1 MiB of data, a hole, 1 MiB at 48 MiB, a hole to the end
        fh.write(rnd(MiB, 1))
        fh.seek(48 * MiB)
        fh.write(rnd(MiB, 2))
        fh.truncate(64 * MiB)
    with open(src / "zeros.bin", "wb") as fh:  # one chunk, all zeros
        fh.truncate(512 * 1024)
    repo = new_repo(chunker=ChunkerParams())
    snap = take_snapshot(repo, src, bundle="b")
    res = restore_snapshot(repo, snap.snapshot_id, tmp_path / "out")
    for name in ("sparse.bin", "zeros.bin"):
        with open(src / name, "rb") as a, open(tmp_path / "out" / name, "rb") as b:
            assert hashlib.file_digest(a, "sha256").digest() == hashlib.file_digest(b, "sha256").digest()
    big = os.stat(tmp_path / "out" / "sparse.bin")
    assert big.st_size == 64 * MiB and big.st_blocks * 512 < 8 * MiB, big.st_blocks * 512
    assert os.stat(tmp_path / "out" / "zeros.bin").st_blocks == 0
    assert res.bytes_sparse >= 60 * MiB and res.to_json()["bytes_sparse"] == res.bytes_sparse


def test_hard_links_come_back_as_separate_files_with_the_same_bytes(tmp_path):
    """Snapshots do not record hard links (documented): each name is restored as a file of its own."""
    src = write_src(tmp_path, {"a.bin": rnd(3000, 1)})
    os.link(src / "a.bin", src / "b.bin")
    repo = new_repo()
    snap = take_snapshot(repo, src, bundle="b")
    restore_snapshot(repo, snap.snapshot_id, tmp_path / "out")
    a, b = os.stat(tmp_path / "out" / "a.bin"), os.stat(tmp_path / "out" / "b.bin")
    assert read_tree(tmp_path / "out") == {"a.bin": rnd(3000, 1), "b.bin": rnd(3000, 1)}
    assert a.st_ino != b.st_ino and a.st_nlink == b.st_nlink == 1


def test_reserved_names_are_exactly_restores_own():
    assert reserved_reason(MARKER) and reserved_reason(LOCK) and reserved_reason(f"{LOCK}/x")
    assert reserved_reason("a/b/" + tmp_name("a/b/c")) and reserved_reason(tmp_name("c", 12) + "/d")
    assert is_tmp_name(tmp_name("x")) and not is_tmp_name(tmp_name("x") + "x") and not is_tmp_name(".x.llmdr-tmp")
    assert tmp_name("a") != tmp_name("b") and tmp_name("a") == tmp_name("a") and tmp_name("a", 1).endswith("-1")
    assert reserved_reason(f"a/{MARKER}") is None and reserved_reason("model.safetensors") is None


# the command ----------------------------------------------------------------------------------------------------------
def test_cli_restore_removes_special_bits_and_keeps_them_with_the_flag(stack, tmp_path):
    bundle = write_src(tmp_path, {"bin/tool": b"#!/bin/sh\necho hi\n", "weights.bin": rnd(5000, 1)})
    os.chmod(bundle / "bin" / "tool", 0o4755)
    state = tmp_path / ".llmdr"
    state.mkdir()
    shutil.copy(stack.state_path / "local.env", state / "local.env")
    config = tmp_path / "llmdr.yaml"
    config.write_text(two_region_yaml(stack.primary.port, stack.secondaries[0].port,
                                      prefix=f"edges-{os.urandom(5).hex()}", bundle=f"{{name: edges, path: {bundle}}}",
                                      extra="transfer: {fsync: false}", state_dir=state))

    def llmdr(*args: str) -> dict:
        r = subprocess.run([sys.executable, "-m", "llmdr.cli", "--config", str(config), *args, "--json"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120, env={**os.environ, "LLMDR_CONFIG": ""})
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    sid = llmdr("snapshot")["snapshot_id"]
    plain = llmdr("restore", sid, "--to", str(tmp_path / "plain"))
    assert plain["special_bits_stripped"] == 1 and modes(tmp_path / "plain", ["bin/tool"]) == {"bin/tool": 0o755}
    kept = llmdr("restore", sid, "--to", str(tmp_path / "kept"), "--preserve-special-bits")
    assert kept["special_bits_stripped"] == 0 and modes(tmp_path / "kept", ["bin/tool"]) == {"bin/tool": 0o4755}
