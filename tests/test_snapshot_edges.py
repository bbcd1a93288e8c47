"""Snapshot edges (issue #16): names a snapshot cannot hold are refused before anything is uploaded, a file torn by a
writer is never recorded as good, the stat cache is checked instead of trusted, and every manifest is checked before
it is published.

Most cases run against the memory store (they are about the snapshot's own logic); the CLI case runs for real against
the session's SeaweedFS regions. Files are written and changed for real; where a change must land while a file is
being read, the chunker is wrapped so the change happens at that exact moment (a thread could miss it).
"""

from __future__ import annotations

import json
import logging
import os
import random
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from llmdr.errors import IntegrityError, LlmdrError, UsageError
from llmdr.repo import snapshot as snapshot_mod
from llmdr.repo.chunking import Chunker, ChunkerParams
from llmdr.repo.layout import PACKS, RepoConfig
from llmdr.repo.ops import open_repo
from llmdr.repo.repository import Repository
from llmdr.repo.restore import restore_snapshot
from llmdr.repo.snapshot import take_snapshot
from llmdr.repo.statcache import StatCache
from llmdr.storage.memory import MemoryStore
from tests.support.config import two_regions
from tests.support.trees import read_tree, write_tree

SMALL = ChunkerParams(avg_size=4096, min_size=1024, max_size=16384)


def small_repo() -> Repository:
    repo = Repository(MemoryStore())
    repo.ensure_config(RepoConfig(chunker=SMALL))
    return repo


def rnd(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def nothing_stored(repo: Repository) -> bool:
    return repo.snapshot_ids() == [] and list(repo.store.list(PACKS)) == []


def restored(repo: Repository, sid: str, tmp: Path) -> dict[str, bytes]:
    out = tmp / f"out-{sid[:8]}"
    restore_snapshot(repo, sid, out, durable=False)
    return read_tree(out)


def make_bytes_file(folder: Path, name: bytes, data: bytes = b"x") -> None:
    fd = os.open(os.fsencode(folder) + b"/" + name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


# names -------------------------------------------------------------------------------------------------------------

def test_non_utf8_file_name_is_refused_before_anything_is_uploaded(tmp_path):
    src = tmp_path / "src"
    write_tree(src, {"config.json": b"{}", "sub/w.bin": rnd(60_000)})
    make_bytes_file(src / "sub", b"caf\xe9.bin")
    repo = small_repo()
    with pytest.raises(LlmdrError) as err:
        take_snapshot(repo, src, bundle="b")
    msg = str(err.value)
    assert "sub/ holds a file whose name b'caf\\xe9.bin' is not valid UTF-8" in msg
    assert "Rename" in msg and "nothing was uploaded" in msg
    msg.encode("utf-8")  # the message itself prints anywhere
    assert nothing_stored(repo)


def test_non_utf8_folder_name_is_refused_and_not_walked(tmp_path):
    src = tmp_path / "src"
    write_tree(src, {"config.json": b"{}"})
    os.mkdir(os.fsencode(src) + b"/d\xff")
    make_bytes_file(src / os.fsdecode(b"d\xff"), b"inner.bin")
    repo = small_repo()
    with pytest.raises(LlmdrError) as err:
        take_snapshot(repo, src, bundle="b")
    assert "./ holds a folder whose name b'd\\xff'" in str(err.value)
    assert "inner.bin" not in str(err.value)
    assert nothing_stored(repo)


def test_non_utf8_bundle_folder_is_refused(tmp_path):
    src = Path(os.fsdecode(os.fsencode(tmp_path) + b"/m\xe9"))
    write_tree(src, {"config.json": b"{}"})
    repo = Repository(MemoryStore())
    with pytest.raises(UsageError, match=r"b'.*/m\\xe9': its path is not valid UTF-8"):
        take_snapshot(repo, src, bundle="b")
    assert repo.load_config() is None  # refused before the repository was touched


@pytest.mark.parametrize("rel", [
    ".llmdr-restore.json",          # restore's marker
    ".llmdr-restore.lock",          # restore's lock
    "sub/.w.bin.llmdr-tmp",         # restore's temporary name for sub/w.bin
    "notes.llmdr-tmp",
    ".llmdr-tmp-0123456789abcdef-42",
    "sub/.data.llmdr-old-1234",     # a dataset swap's old copy
    ".llmdr-tmp-dir/inner.bin",     # a folder
])
def test_names_llmdr_reserves_are_refused_not_left_out(tmp_path, rel):
    src = tmp_path / "src"
    write_tree(src, {"config.json": b"{}", "sub/w.bin": rnd(5_000), rel: b"mine"})
    repo = small_repo()
    with pytest.raises(LlmdrError) as err:
        take_snapshot(repo, src, bundle="b")
    msg = str(err.value)
    shown = rel.split("/inner.bin")[0] + ("/" if "inner.bin" in rel else "")
    assert f"{shown}: this {'folder' if 'inner' in rel else 'file'}'s name is reserved" in msg
    assert "Rename" in msg and "interrupted restore" in msg
    assert nothing_stored(repo)


def test_names_like_but_not_reserved_are_stored(tmp_path):
    files = {"llmdr-notes.txt": b"1", "a.llmdr-tmp.bak": b"2", "sub/x.llmdr-restore.json": b"3", "sub/c:x": b"4",
             ".llmdr": b"state folder name: excluded, as before"}
    src = tmp_path / "src"
    write_tree(src, files)
    repo = small_repo()
    res = take_snapshot(repo, src, bundle="b")
    assert restored(repo, res.snapshot_id, tmp_path) == {k: v for k, v in files.items() if k != ".llmdr"}


@pytest.mark.parametrize("rel, why", [
    ("a\\b.txt", "holds a backslash"),
    ("sub/x\\y", "holds a backslash"),
    ("c:notes.txt", "begins like a Windows drive (c:)"),
])
def test_names_restore_would_refuse_are_refused_at_snapshot(tmp_path, rel, why):
    """Restore refuses these paths (manifest.check_relpath); a snapshot holding one could never be read back."""
    src = tmp_path / "src"
    write_tree(src, {"config.json": b"{}", rel: b"data"})
    repo = small_repo()
    with pytest.raises(LlmdrError, match=f"name {why}".replace("(", r"\(").replace(")", r"\)")):
        take_snapshot(repo, src, bundle="b")
    assert nothing_stored(repo)


def test_cli_refuses_unstorable_names_before_upload(stack, tmp_path):
    bundle = tmp_path / "model"
    write_tree(bundle, {"config.json": b"{}", "w.bin": rnd(300_000)})
    make_bytes_file(bundle, b"caf\xe9.bin")
    (bundle / ".llmdr-restore.json").write_text("{}")
    cfg = two_regions(stack, tmp_path, bundle=f"{{name: edgebot, path: {bundle}}}")
    r = subprocess.run([sys.executable, "-m", "llmdr.cli", "--config", str(cfg.source_file), "snapshot"],
                       capture_output=True, text=True, timeout=180, env={**os.environ, "LLMDR_CONFIG": ""})
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert "error: cannot snapshot" in r.stderr and "2 entries cannot be stored" in r.stderr
    assert "./ holds a file whose name b'caf\\xe9.bin' is not valid UTF-8" in r.stderr
    assert ".llmdr-restore.json: this file's name is reserved" in r.stderr
    assert "nothing was uploaded" in r.stderr and "Rename" in r.stderr
    repo = open_repo(cfg, "primary", read_only=True)
    assert repo.snapshot_ids() == [] and repo.pack_infos() == {}


# torn files ----------------------------------------------------------------------------------------------------------

class ChangeWhileRead:
    """Wraps ``Chunker.chunks``: after the first chunk of ``path`` is read, ``change(path)`` runs (``times`` reads
    of that file at most), so the rest of the read sees the changed file."""

    def __init__(self, monkeypatch, path: Path, change, times: int) -> None:
        self.path = str(path.resolve())  # the name the snapshot opens it by
        self.change = change
        self.left = times
        self.reads = 0
        original = Chunker.chunks
        hook = self

        def chunks(chunker, stream, size=None):
            mine = getattr(stream, "name", None) == hook.path
            hook.reads += mine
            for i, c in enumerate(original(chunker, stream, size)):
                yield c
                if mine and i == 0 and hook.left > 0:
                    hook.left -= 1
                    hook.change(Path(hook.path))

        monkeypatch.setattr(Chunker, "chunks", chunks)


def rewrite_keep_mtime(path: Path) -> None:
    """Rewrite ``path`` in place with new bytes (same size) and put its mtime back, as a careless tool would. The
    reader has the head of the old version already: the rest it reads is the new one's."""
    st = os.stat(path)
    with open(path, "r+b") as fh:
        fh.write(rnd(st.st_size, seed=int(time.time_ns() % 100_000)))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns


def torn_src(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src"
    write_tree(src, {"a.txt": b"a", "big.bin": rnd(200_000, 7), "z.txt": b"z"})
    time.sleep(0.05)  # the rewrite lands on a later ctime than the files' creation, whatever the clock's granularity
    return src, src / "big.bin"


def test_file_rewritten_in_place_while_read_is_read_again(tmp_path, monkeypatch, caplog):
    src, big = torn_src(tmp_path)
    hook = ChangeWhileRead(monkeypatch, big, rewrite_keep_mtime, times=1)
    repo = small_repo()
    with caplog.at_level(logging.WARNING, logger="llmdr.repo.snapshot"):
        res = take_snapshot(repo, src, bundle="b")
    assert restored(repo, res.snapshot_id, tmp_path) == read_tree(src)  # the new content whole, not a mix
    assert hook.reads == 2
    assert "big.bin changed while it was being read; reading it again" in caplog.text


def test_file_rewritten_on_every_read_is_refused(tmp_path, monkeypatch):
    src, big = torn_src(tmp_path)
    ChangeWhileRead(monkeypatch, big, rewrite_keep_mtime, times=10)
    repo = small_repo()
    with pytest.raises(LlmdrError, match=r"big\.bin changed while it was being snapshotted, twice .* nothing was "
                                         "published"):
        take_snapshot(repo, src, bundle="b")
    assert repo.snapshot_ids() == []


def test_file_that_grows_while_read_is_read_again(tmp_path, monkeypatch):
    src, big = torn_src(tmp_path)

    def grow(path: Path) -> None:
        with open(path, "ab") as fh:
            fh.write(rnd(50_000, 9))

    ChangeWhileRead(monkeypatch, big, grow, times=1)
    repo = small_repo()
    res = take_snapshot(repo, src, bundle="b")
    assert len(read_tree(src)["big.bin"]) == 250_000
    assert restored(repo, res.snapshot_id, tmp_path) == read_tree(src)


def test_file_deleted_while_read_is_refused_clearly(tmp_path, monkeypatch):
    src, big = torn_src(tmp_path)
    ChangeWhileRead(monkeypatch, big, os.unlink, times=1)
    repo = small_repo()
    with pytest.raises(LlmdrError, match=r"big\.bin was removed while it was being snapshotted; nothing was "
                                         "published"):
        take_snapshot(repo, src, bundle="b")
    assert repo.snapshot_ids() == []


def test_file_replaced_after_the_scan_is_read_not_taken_from_the_stat_cache(tmp_path, monkeypatch):
    """The stat cache matched the scan's stat, but the file was replaced (new inode) before its turn came."""
    src = tmp_path / "src"
    write_tree(src, {"a.bin": rnd(20_000, 1), "b.bin": rnd(20_000, 2)})
    repo, cache = small_repo(), tmp_path / "stat.json"
    take_snapshot(repo, src, bundle="b", stat_cache=cache)
    scan = snapshot_mod.scan_source

    def scan_then_replace(root, *a, **kw):
        files = scan(root, *a, **kw)
        (root / "b.tmp").write_bytes(rnd(20_000, 3))
        os.replace(root / "b.tmp", root / "b.bin")
        return files

    monkeypatch.setattr(snapshot_mod, "scan_source", scan_then_replace)
    res = take_snapshot(repo, src, bundle="b", stat_cache=cache)
    assert res.files_unchanged == 1
    assert restored(repo, res.snapshot_id, tmp_path)["b.bin"] == rnd(20_000, 3)


def unless_blocked(fn, fifo: Path) -> dict[str, object]:
    """``fn()`` on a thread, as {"res": ...} or {"err": ...}; fails the test if it is still blocked (on opening
    ``fifo``) after 30 s, once the FIFO is given a writer so the thread can end."""
    out: dict[str, object] = {}

    def run():
        try:
            out["res"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            out["err"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(30)
    if t.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(30)
        pytest.fail(f"blocked on the FIFO {fifo}")
    return out


def test_file_replaced_by_a_fifo_after_the_scan_does_not_hang_the_snapshot(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_tree(src, {"a.bin": rnd(5_000, 1), "b.bin": rnd(5_000, 2)})
    scan = snapshot_mod.scan_source

    def scan_then_fifo(root, *a, **kw):
        files = scan(root, *a, **kw)
        os.unlink(root / "b.bin")
        os.mkfifo(root / "b.bin")
        return files

    monkeypatch.setattr(snapshot_mod, "scan_source", scan_then_fifo)
    repo = small_repo()
    out = unless_blocked(lambda: take_snapshot(repo, src, bundle="b"), src / "b.bin")
    assert isinstance(out.get("err"), LlmdrError), out
    assert "b.bin was replaced by something other than a regular file" in str(out["err"])
    assert repo.snapshot_ids() == []


# the stat cache ------------------------------------------------------------------------------------------------------

def edit_cache(path: Path, change) -> None:
    """Change the cache's entries in place: ``change(files)`` gets {path: entry}, where ``entry[1]`` is the chunk
    list ([[hex, length], ...]) in every format llmdr wrote. Any checksum line is kept as it was (now stale)."""
    data = path.read_bytes()
    head, sep, body = data.partition(b"\n") if not data.startswith(b"{") else (b"", b"", data)
    raw = json.loads(body)
    change(raw["files"])
    path.write_bytes(head + sep + json.dumps(raw, separators=(",", ":")).encode())


def cached_src(tmp_path: Path, files: dict[str, bytes]) -> tuple[Path, Repository, Path]:
    src = tmp_path / "src"
    write_tree(src, files)
    repo, cache = small_repo(), tmp_path / "cache" / "stat.json"
    first = take_snapshot(repo, src, bundle="b", stat_cache=cache)
    assert first.files == len(files)
    return src, repo, cache


def test_warm_snapshot_verifies_the_cache_as_a_whole_and_leaves_it_in_place(tmp_path, caplog):
    files = {f"f{i}.txt": b"x" * i for i in range(1, 40)}
    src, repo, cache = cached_src(tmp_path, files)
    before = os.stat(cache)
    with caplog.at_level(logging.INFO, logger="llmdr.repo.statcache"):
        res = take_snapshot(repo, src, bundle="b", stat_cache=cache)
    assert res.files_unchanged == len(files) and res.bytes_read == 0
    assert caplog.text == ""  # no entry checked one by one, nothing ignored
    after = os.stat(cache)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten


def test_stat_cache_with_one_changed_digit_is_not_trusted(tmp_path, caplog):
    files = {"a.bin": rnd(40_000, 1), "b.bin": rnd(40_000, 2), "c.txt": b"hello"}
    src, repo, cache = cached_src(tmp_path, files)

    def one_digit(entries):
        d, n = entries["a.bin"][1][0]
        entries["a.bin"][1][0] = [d, int(str(n)[:-1] + str((n + 1) % 10))]

    edit_cache(cache, one_digit)
    with caplog.at_level(logging.WARNING, logger="llmdr.repo.statcache"):
        res = take_snapshot(repo, src, bundle="b", stat_cache=cache)
    repo.load_manifest(res.snapshot_id)  # lengths add up: the repository is not wedged
    assert restored(repo, res.snapshot_id, tmp_path) == files
    assert "the entry for 'a.bin' is ignored" in caplog.text
    assert res.files_unchanged == 2 and res.bytes_read == 40_000
    # the next snapshot trusts the rewritten cache again
    assert take_snapshot(repo, src, bundle="b", stat_cache=cache).files_unchanged == 3


def test_stat_cache_with_two_entries_swapped_restores_each_file_as_itself(tmp_path, caplog):
    files = {"x.bin": rnd(10_000, 1), "y.bin": rnd(10_000, 2), "z.txt": b"z"}
    src, repo, cache = cached_src(tmp_path, files)

    def swap(entries):
        entries["x.bin"][1], entries["y.bin"][1] = entries["y.bin"][1], entries["x.bin"][1]

    edit_cache(cache, swap)
    with caplog.at_level(logging.WARNING, logger="llmdr.repo.statcache"):
        res = take_snapshot(repo, src, bundle="b", stat_cache=cache)
    assert restored(repo, res.snapshot_id, tmp_path) == files
    assert "'x.bin' is ignored (its checksum does not match)" in caplog.text
    assert "'y.bin' is ignored (its checksum does not match)" in caplog.text
    assert res.files_unchanged == 1


def test_truncated_stat_cache_is_ignored_and_every_file_read(tmp_path, caplog):
    files = {"a.bin": rnd(30_000, 1), "b.txt": b"b"}
    src, repo, cache = cached_src(tmp_path, files)
    data = cache.read_bytes()
    cache.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="llmdr.repo.statcache"):
        res = take_snapshot(repo, src, bundle="b", stat_cache=cache)
    assert "ignoring unreadable stat cache" in caplog.text
    assert res.files_unchanged == 0 and res.bytes_read == 30_001
    assert restored(repo, res.snapshot_id, tmp_path) == files


def test_stat_cache_key_is_private_and_a_replaced_key_voids_the_cache(tmp_path):
    files = {"a.bin": rnd(30_000, 1), "b.txt": b"b"}
    src, repo, cache = cached_src(tmp_path, files)
    key = cache.with_name("stat.key")
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600 and len(key.read_bytes()) == 32
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o600
    assert take_snapshot(repo, src, bundle="b", stat_cache=cache).files_unchanged == 2
    key.write_bytes(os.urandom(32))  # another key: no entry verifies
    key.chmod(0o600)
    res = take_snapshot(repo, src, bundle="b", stat_cache=cache)
    assert res.files_unchanged == 0 and restored(repo, res.snapshot_id, tmp_path) == files


def test_stat_cache_key_readable_by_others_is_not_used(tmp_path, caplog):
    files = {"a.bin": rnd(30_000, 1)}
    src, repo, cache = cached_src(tmp_path, files)
    key = cache.with_name("stat.key")
    key.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="llmdr.repo.statcache"):
        res = take_snapshot(repo, src, bundle="b", stat_cache=cache)
    assert "others may read or write it" in caplog.text and res.files_unchanged == 0
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600  # a new key replaced it


def test_stat_cache_from_another_bundle_folder_is_not_used(tmp_path, caplog):
    """The bundle folder is renamed (its files keep inode, ctime and mtime) and the old folder's cache and key are
    copied to the new folder's cache name: its entries are bound to the old folder and are not used."""
    files = {"a.bin": rnd(30_000, 1), "b.txt": b"b"}
    src = tmp_path / "src"
    write_tree(src, files)
    repo = small_repo()
    cache_dir = tmp_path / "cache"
    old_cache = StatCache.for_source(cache_dir, src)
    take_snapshot(repo, src, bundle="b", stat_cache=old_cache)
    moved = tmp_path / "moved"
    os.rename(src, moved)
    new_cache = StatCache.for_source(cache_dir, moved)
    new_cache.write_bytes(old_cache.read_bytes())
    key = new_cache.with_name(new_cache.stem + ".key")
    key.write_bytes(old_cache.with_name(old_cache.stem + ".key").read_bytes())
    key.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="llmdr.repo.statcache"):
        res = take_snapshot(repo, moved, bundle="b", stat_cache=new_cache)
    assert "was made for another bundle folder" in caplog.text
    assert res.files_unchanged == 0 and restored(repo, res.snapshot_id, tmp_path) == files


def test_stat_cache_replaced_by_a_symlink_to_a_fifo_is_not_read(tmp_path, caplog):
    """Reading through the link would block on the FIFO for ever; the cache is opened without following links."""
    files = {"a.bin": rnd(30_000, 1)}
    src, repo, cache = cached_src(tmp_path, files)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cache.unlink()
    cache.symlink_to(fifo)
    with caplog.at_level(logging.WARNING, logger="llmdr.repo.statcache"):
        out = unless_blocked(lambda: take_snapshot(repo, src, bundle="b", stat_cache=cache), fifo)
    assert "err" not in out, out.get("err")
    assert "is not used" in caplog.text
    assert cache.is_file() and not cache.is_symlink() and stat.S_ISFIFO(os.stat(fifo).st_mode)  # link replaced


# every manifest checked before it is published ----------------------------------------------------------------------

def test_entry_whose_lengths_do_not_add_up_is_never_published(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_tree(src, {"a.bin": rnd(60_000, 1), "b.txt": b"b"})
    original = snapshot_mod._chunk_file

    def drop_last(f, *a, **kw):
        chunks = original(f, *a, **kw)
        return chunks[:-1] if f.relpath == "a.bin" else chunks

    monkeypatch.setattr(snapshot_mod, "_chunk_file", drop_last)
    repo = small_repo()
    with pytest.raises(IntegrityError, match=r"entry for 'a\.bin' does not add up: the file is 60000 bytes.*nothing "
                                             "was published"):
        take_snapshot(repo, src, bundle="b")
    assert repo.snapshot_ids() == []


def test_non_empty_file_without_chunks_is_never_published(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_tree(src, {"a.bin": rnd(6_000, 1), "empty": b""})
    original = snapshot_mod._chunk_file
    monkeypatch.setattr(snapshot_mod, "_chunk_file",
                        lambda f, *a, **kw: [] if f.relpath == "a.bin" else original(f, *a, **kw))
    repo = small_repo()
    with pytest.raises(IntegrityError, match=r"'a\.bin' does not add up: the file is 6000 bytes, its 0 chunks 0"):
        take_snapshot(repo, src, bundle="b")
    assert repo.snapshot_ids() == []


def test_stored_chunk_that_no_index_places_is_never_published(tmp_path, monkeypatch):
    """The writer's index never lands (a store that lost it): the snapshot would name chunks nothing can find."""
    src = tmp_path / "src"
    write_tree(src, {"a.bin": rnd(60_000, 1)})
    repo = small_repo()
    monkeypatch.setattr(Repository, "add_index", lambda self, entries, *a, **kw: "0" * 64)
    with pytest.raises(IntegrityError, match=r"chunks of 'a\.bin' stored by this snapshot are not placed by any "
                                             "index"):
        take_snapshot(repo, src, bundle="b")
    assert repo.snapshot_ids() == []
