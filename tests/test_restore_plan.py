"""Restore planned by pack (design §7): coalescing of blobs into ranged GETs, a chunk fetched once for every place
that uses it, the memory budget, the open-file cap, encrypted regions, damage and resume; the memory store, and one
run against SeaweedFS."""

import errno
import hashlib
import os
import random
import threading
import time
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmdr.errors import ChunkMissing, IntegrityError, LlmdrError
from llmdr.repo import restore as restore_module
from llmdr.repo.chunking import ChunkerParams
from llmdr.repo.index import IndexEntry
from llmdr.repo.layout import PACKS, RepoConfig, pack_key
from llmdr.repo.manifest import FileEntry
from llmdr.repo.packer import PackWriter
from llmdr.repo.replicate import replicate_snapshot
from llmdr.repo.repository import Repository
from llmdr.repo.reserved import MARKER, is_tmp_name
from llmdr.repo.restore import restore_snapshot
from llmdr.repo.restoreplan import MAX_GAP, MAX_RANGE, plan_ranges
from llmdr.repo.snapshot import take_snapshot
from llmdr.storage.crypto import EncryptingStore
from llmdr.storage.factory import open_region
from llmdr.storage.memory import MemoryStore
from llmdr.testing.faulty import FaultyStore
from tests.support.damage import corrupt_chunk, remove_chunk
from tests.support.forge import publish_files
from tests.support.trees import read_tree, write_tree

SMALL = ChunkerParams(avg_size=4096, min_size=1024, max_size=16384)
KEY = bytes(range(32))
MiB = 1 << 20


def rnd(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def new_repo(store=None, *, pack_target: int = 16384) -> Repository:
    repo = Repository(store or MemoryStore())
    repo.ensure_config(RepoConfig(chunker=SMALL, pack_target=pack_target))
    return repo


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def forge(repo: Repository, files: dict[str, list[bytes]], packs: list[list[bytes]]) -> str:
    """A snapshot whose files are the given chunk lists, the chunks stored in exactly the given packs (one pack per
    group, in that order): to control which chunks share a pack and a range."""
    for group in packs:
        with PackWriter(repo, workers=1, pack_target=64 * MiB) as w:
            for data in group:
                w.add(sha(data), bytes.fromhex(sha(data)), data)
    entries = [FileEntry(p, sum(map(len, cs)), 0o644, 0, tuple((sha(c), len(c)) for c in cs))
               for p, cs in sorted(files.items())]
    return publish_files(repo, entries, SMALL)


class Watch(FaultyStore):
    """Records every pack GET as (key, start, length) and calls ``on_get`` first."""

    def __init__(self, inner, on_get=None) -> None:
        super().__init__(inner)
        self.fetched: list[tuple[str, int, int | None]] = []
        self.on_get = on_get

    def get(self, key, *, start=0, length=None, version_id=None):
        if key.startswith(PACKS):
            self.fetched.append((key, start, length))
            if self.on_get:
                return self.on_get(key, lambda: super(Watch, self).get(key, start=start, length=length), length)
        return super().get(key, start=start, length=length, version_id=version_id)


def tmp_files(root) -> list:
    return [p for p in root.rglob("*") if is_tmp_name(p.name)]


# coalescing ----------------------------------------------------------------------------------------------------------
def blob(pack: int, offset: int, length: int) -> IndexEntry:
    chunk = hashlib.sha256(f"{pack}/{offset}".encode()).digest()
    return IndexEntry(chunk, bytes([pack]) * 32, offset, length, length)


def spans(ranges) -> list[tuple[int, int, int, int]]:
    return [(r.pack[0], r.start, r.length, len(r.blobs)) for r in ranges]


@pytest.mark.parametrize(("blobs", "want"), [
    # neighbours with a gap of exactly MAX_GAP share a range; one byte more splits them
    ([blob(1, 16, 100), blob(1, 116 + MAX_GAP, 50)], [(1, 16, 100 + MAX_GAP + 50, 2)]),
    ([blob(1, 16, 100), blob(1, 117 + MAX_GAP, 50)], [(1, 16, 100, 1), (1, 117 + MAX_GAP, 50, 1)]),
    # a range never grows past MAX_RANGE: three contiguous 12 MiB blobs are 24 MiB + 12 MiB
    ([blob(1, i * 12 * MiB, 12 * MiB) for i in range(3)], [(1, 0, 24 * MiB, 2), (1, 24 * MiB, 12 * MiB, 1)]),
    # exactly MAX_RANGE still fits in one
    ([blob(1, 0, MAX_RANGE // 2), blob(1, MAX_RANGE // 2, MAX_RANGE // 2)], [(1, 0, MAX_RANGE, 2)]),
    # a blob larger than MAX_RANGE is a range of its own
    ([blob(1, 0, 10), blob(1, 10, MAX_RANGE + 1), blob(1, MAX_RANGE + 11, 10)],
     [(1, 0, 10, 1), (1, 10, MAX_RANGE + 1, 1), (1, MAX_RANGE + 11, 10, 1)]),
    # listed twice or out of order: fetched once, in offset order
    ([blob(1, 500, 10), blob(1, 16, 10), blob(1, 500, 10)], [(1, 16, 494, 2)]),
    # two packs are never one range, whatever their offsets
    ([blob(2, 16, 10), blob(1, 26, 10)], [(1, 26, 10, 1), (2, 16, 10, 1)]),
])
def test_plan_ranges_coalescing_rules(blobs, want):
    assert spans(plan_ranges(blobs)) == want


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.integers(0, 40), st.integers(1, 30)), max_size=40),
       st.integers(0, 20), st.integers(1, 120))
def test_plan_ranges_covers_every_blob_once_within_the_limits(layout, max_gap, max_range):
    # lay out non-overlapping blobs per pack: (pack, gap before, length)
    blobs, ends = [], {}
    for pack, gap, length in layout:
        offset = ends.get(pack, 16) + gap
        blobs.append(blob(pack, offset, length))
        ends[pack] = offset + length
    ranges = plan_ranges(blobs, max_gap=max_gap, max_range=max_range)
    seen = [(r.pack, b.offset) for r in ranges for b in r.blobs]
    assert sorted(seen) == sorted({(b.pack, b.offset) for b in blobs})
    for r in ranges:
        assert r.start == r.blobs[0].offset and r.start + r.length == r.blobs[-1].offset + r.blobs[-1].stored_length
        assert r.length <= max_range or len(r.blobs) == 1
        assert all(b.pack == r.pack for b in r.blobs)
        for a, b in pairwise(r.blobs):
            assert 0 <= b.offset - (a.offset + a.stored_length) <= max_gap
    for a, b in pairwise(ranges):
        if a.pack == b.pack:  # they were split for a reason: the gap, or the size
            nxt = b.blobs[0]
            assert nxt.offset - (a.start + a.length) > max_gap or nxt.offset + nxt.stored_length - a.start > max_range


# what gets fetched -------------------------------------------------------------------------------------------------
def test_a_shared_chunk_is_fetched_once_and_written_at_every_place(tmp_path):
    x, y = rnd(5000, 1), rnd(3000, 2)
    watch = Watch(MemoryStore())
    repo = new_repo(watch)
    sid = forge(repo, {"a": [x, y], "sub/b": [x], "c": [y, x, x]}, [[x, y]])
    res = restore_snapshot(repo, sid, tmp_path / "out", workers=4, durable=True)
    assert read_tree(tmp_path / "out") == {"a": x + y, "sub/b": x, "c": y + x + x}
    ex, ey = repo.locate(sha(x)), repo.locate(sha(y))
    start = min(ex.offset, ey.offset)
    assert watch.fetched == [(pack_key(ex.pack.hex()), start, ex.stored_length + ey.stored_length)]  # one GET
    assert res.bytes_downloaded == res.bytes_total == 3 * len(x) + 2 * len(y) + len(x)


def test_many_small_files_come_from_few_ranges(tmp_path):
    files = {f"d{i % 7}/f{i:03d}.json": rnd(i * 13 % 3000, i) for i in range(400)}
    write_tree(tmp_path / "src", files)
    watch = Watch(MemoryStore())
    repo = new_repo(watch)
    res = take_snapshot(repo, tmp_path / "src", bundle="b")
    packs = {repo.locate(d).pack for f in res.manifest.files for d, _ in f.chunks}
    assert len(packs) > 5  # spread over several packs
    watch.fetched.clear()
    out = restore_snapshot(repo, res.snapshot_id, tmp_path / "out", workers=4)
    assert read_tree(tmp_path / "out") == files
    assert sorted(k for k, _, _ in watch.fetched) == sorted(pack_key(p.hex()) for p in packs)  # one GET per pack
    assert out.files == 400 and not tmp_files(tmp_path / "out")


def test_open_files_are_capped(tmp_path, monkeypatch):
    """Six files start with a chunk from one pack and end with one each from their own: after the first range
    every file is started, yet no more than the cap stay open."""
    monkeypatch.setattr(restore_module, "MAX_OPEN_FILES", 2)
    shared = rnd(4000, 9)
    tails = [rnd(2000, 10 + i) for i in range(6)]
    open_seen = []

    def link(fd: str) -> str:
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the descriptor listdir used to read the folder
            return ""

    def count_open(key, get, length):
        open_seen.append(sum(1 for fd in os.listdir("/proc/self/fd") if is_tmp_name(os.path.basename(link(fd)))))
        return get()

    repo = new_repo(Watch(MemoryStore(), count_open))
    sid = forge(repo, {f"f{i}": [shared, t] for i, t in enumerate(tails)}, [[shared]] + [[t] for t in tails])
    restore_snapshot(repo, sid, tmp_path / "out", workers=1)
    assert read_tree(tmp_path / "out") == {f"f{i}": shared + t for i, t in enumerate(tails)}
    assert len(open_seen) == 7 and max(open_seen) == 2  # started six files, kept two open


def test_memory_budget_bounds_the_workers_and_their_buffers(tmp_path):
    """Each worker streams its ranges into one buffer as large as the largest blob: the budget caps how many run
    (at least one), so memory does not depend on the bundle's size; without a tight budget they run at once."""
    data = rnd(1_500_000, 4)
    write_tree(tmp_path / "src", {"w.bin": data})
    lock = threading.Lock()
    state = {"now": 0, "peak": 0, "calls": 0}
    gate: list[threading.Barrier] = []  # when set: the first six streams wait until all six are open

    class Counted(Watch):
        def open_range(self, key, start, length, *, version_id=None):
            with lock:
                state["now"] += 1
                state["peak"] = max(state["peak"], state["now"])
                state["calls"] += 1
                first = state["calls"] <= 6
            if gate and first:
                gate[0].wait(timeout=60)
            else:
                time.sleep(0.02)  # gives the other workers every chance to open theirs meanwhile
            reader = super().open_range(key, start, length, version_id=version_id)
            close = reader.close

            def closed():
                with lock:
                    state["now"] -= 1
                close()
            reader.close = closed
            return reader

    repo = new_repo(Counted(MemoryStore()), pack_target=65536)
    res = take_snapshot(repo, tmp_path / "src", bundle="b")
    biggest = max(repo.locate(d).stored_length for d, _ in res.manifest.files[0].chunks)
    assert len(res.manifest.files[0].chunks) >= 6
    out = restore_snapshot(repo, res.snapshot_id, tmp_path / "o1", workers=8, memory_bytes=3 * biggest)
    assert (tmp_path / "o1" / "w.bin").read_bytes() == data
    assert state["peak"] == 3 and state["now"] == 0 and out.buffer_bytes == 3 * biggest
    state.update(peak=0, calls=0)
    out = restore_snapshot(repo, res.snapshot_id, tmp_path / "o2", workers=8, memory_bytes=biggest // 2)
    assert (tmp_path / "o2" / "w.bin").read_bytes() == data and state["peak"] == 1  # too small: one still runs
    # the same restore without the budget: six streams are open at once
    state.update(peak=0, calls=0)
    gate.append(threading.Barrier(6))
    restore_snapshot(repo, res.snapshot_id, tmp_path / "o3", workers=8, memory_bytes=1 << 40)
    assert state["peak"] >= 6
    # a cross-region copy reads the same way, within its own budget (transfer.copy_memory_mb)
    gate.clear()
    state.update(peak=0, calls=0)
    dst = Repository(MemoryStore())
    copied = replicate_snapshot(repo, dst, res.snapshot_id, workers=8, memory_bytes=2 * biggest)
    assert copied.chunks_copied == len(res.manifest.files[0].chunks) and state["peak"] == 2 and state["now"] == 0
    restore_snapshot(dst, res.snapshot_id, tmp_path / "o4")
    assert (tmp_path / "o4" / "w.bin").read_bytes() == data


# encrypted regions and damage ----------------------------------------------------------------------------------------
def test_encrypted_region_restores_and_a_tampered_blob_is_refused(tmp_path):
    files = {"model.bin": rnd(120_000, 5), "config.json": b'{"a": 1}'}
    write_tree(tmp_path / "src", files)
    inner = MemoryStore()
    repo = new_repo(EncryptingStore(inner, KEY))
    res = take_snapshot(repo, tmp_path / "src", bundle="b")
    assert not any(files["model.bin"][5000:5064] in inner.get(k.key) for k in inner.list(PACKS))  # sealed
    restore_snapshot(repo, res.snapshot_id, tmp_path / "out")
    assert read_tree(tmp_path / "out") == files
    victim = res.manifest.files[1].chunks[3][0]
    pack = corrupt_chunk(repo, victim, at=40)
    with pytest.raises(IntegrityError, match=victim[:12]) as err:
        restore_snapshot(repo, res.snapshot_id, tmp_path / "again")
    assert pack in str(err.value)
    assert not (tmp_path / "again" / "model.bin").exists() and not tmp_files(tmp_path / "again")


def test_missing_pack_names_the_pack_and_its_files_and_leaves_no_partial_file(tmp_path):
    shared, a, b = rnd(3000, 1), rnd(3000, 2), rnd(3000, 3)
    repo = new_repo()
    sid = forge(repo, {"a.bin": [a], "b.bin": [shared, b], "c.bin": [shared]}, [[a], [shared], [b]])
    key = remove_chunk(repo, sha(shared))
    out = tmp_path / "out"
    with pytest.raises(ChunkMissing, match=key) as err:
        restore_snapshot(repo, sid, out, workers=1)
    assert "'b.bin'" in str(err.value) and "'c.bin'" in str(err.value) and "'a.bin'" not in str(err.value)
    assert not (out / "b.bin").exists() and not (out / "c.bin").exists() and not tmp_files(out)
    assert (out / MARKER).exists()  # the same command resumes once the pack is back


def test_chunk_in_no_index_fails_before_anything_is_written(tmp_path):
    repo = new_repo()
    ghost = rnd(100, 7)
    sid = forge(repo, {"a": [rnd(100, 6)], "b": [ghost]}, [[rnd(100, 6)]])
    with pytest.raises(ChunkMissing, match=f"{sha(ghost)[:12]} of 'b' at 0 is in no index"):
        restore_snapshot(repo, sid, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MARKER]


# crash and resume ----------------------------------------------------------------------------------------------------
def test_disk_full_mid_restore_leaves_whole_files_only_and_the_rerun_resumes(tmp_path, monkeypatch):
    files = {f"f{i}.bin": rnd(20_000, i) for i in range(8)}
    write_tree(tmp_path / "src", files)
    repo = new_repo()
    res = take_snapshot(repo, tmp_path / "src", bundle="b")
    real = restore_module._pwrite_all
    writes = {"n": 0}

    def fills_up(fd, data, offset, path):
        writes["n"] += 1
        if writes["n"] == 25:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        real(fd, data, offset, path)

    monkeypatch.setattr(restore_module, "_pwrite_all", fills_up)
    out = tmp_path / "out"
    with pytest.raises(LlmdrError, match="no space left on the device") as err:
        restore_snapshot(repo, res.snapshot_id, out, workers=3)
    assert "no partial file was left" in str(err.value)
    done = {p.name for p in out.iterdir() if p.name in files}
    assert 0 < len(done) < len(files) and not tmp_files(out) and (out / MARKER).exists()
    assert all((out / p).read_bytes() == files[p] for p in done)
    monkeypatch.setattr(restore_module, "_pwrite_all", real)
    again = restore_snapshot(repo, res.snapshot_id, out)
    assert read_tree(out) == files
    assert again.files_skipped == len(done)
    assert again.bytes_downloaded == sum(len(files[p]) for p in files if p not in done)


# on a real server ----------------------------------------------------------------------------------------------------
def test_on_seaweedfs_ranges_shared_chunks_and_a_missing_pack(region_config, tmp_path):
    """The same plan against SeaweedFS: ranged GETs within a small budget, one set of chunks written to two files,
    and a pack deleted behind the index reported by key with the files it held."""
    base = rnd(300_000, 1)
    files = {"a.bin": base, "copy/a.bin": base, "b.bin": rnd(200_000, 2),
             **{f"small/{i:02d}.json": rnd(i * 37 % 2000, i) for i in range(50)}}
    write_tree(tmp_path / "src", files)
    repo = new_repo(open_region(region_config, region_config.primary), pack_target=65536)
    res = take_snapshot(repo, tmp_path / "src", bundle="b", workers=4)
    out = restore_snapshot(repo, res.snapshot_id, tmp_path / "out", workers=8, memory_bytes=256 * 1024)
    assert read_tree(tmp_path / "out") == files
    assert out.bytes_downloaded == sum(map(len, files.values()))
    b_chunks = next(f for f in res.manifest.files if f.path == "b.bin").chunks
    key = remove_chunk(repo, b_chunks[len(b_chunks) // 2][0])
    with pytest.raises(ChunkMissing, match=key) as err:
        restore_snapshot(Repository(repo.store), res.snapshot_id, tmp_path / "again", workers=8)
    assert "'b.bin'" in str(err.value)
    assert not (tmp_path / "again" / "b.bin").exists() and not tmp_files(tmp_path / "again")
