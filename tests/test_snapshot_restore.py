"""Snapshot and restore against the memory store: round trips, dedup, incremental, crash safety, hostile input."""

import hashlib
import json
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmdr.errors import IntegrityError, LlmdrError, TargetNotEmpty, TransientStorageError, UnsafePathError
from llmdr.repo.catalog import entry_key
from llmdr.repo.chunking import ChunkerParams
from llmdr.repo.indexlog import INDEX_LOG
from llmdr.repo.layout import INDEX, PACKS, TREES, RepoConfig, pack_key, record_key, tree_key
from llmdr.repo.manifest import FileEntry, Manifest, canonical_json
from llmdr.repo.repository import Repository
from llmdr.repo.reserved import MARKER, is_tmp_name, tmp_name
from llmdr.repo.restore import restore_snapshot
from llmdr.repo.restoreplan import plan_ranges
from llmdr.repo.snapshot import take_snapshot
from llmdr.repo.tree import record_bytes
from llmdr.storage.memory import MemoryStore
from llmdr.testing.faulty import FaultyStore
from tests.support.damage import corrupt_chunk, pack_keys
from tests.support.trees import read_tree, write_tree

SMALL = ChunkerParams(avg_size=4096, min_size=1024, max_size=16384)


def small_repo(store=None, *, pack_target: int | None = None) -> Repository:
    """A repository with small chunks; ``pack_target`` small too when a test needs many packs."""
    repo = Repository(store or MemoryStore())
    cfg = RepoConfig(chunker=SMALL) if pack_target is None else RepoConfig(chunker=SMALL, pack_target=pack_target)
    repo.ensure_config(cfg)
    return repo


def rnd(n, seed=0) -> bytes:
    return random.Random(seed).randbytes(n)


names = st.text(alphabet="abcdefghij_-.", min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.dictionaries(st.lists(names, min_size=1, max_size=3).map("/".join), st.binary(max_size=40_000),
                             max_size=6))
def test_snapshot_restore_round_trip_is_byte_identical(tmp_path_factory, files):
    src = tmp_path_factory.mktemp("src")
    # a name cannot be both a file and a folder
    files = {k: v for k, v in files.items() if not any(o.startswith(k + "/") for o in files)}
    write_tree(src, files)
    repo = small_repo()
    res = take_snapshot(repo, src, bundle="b", workers=3)
    out = tmp_path_factory.mktemp("out") / "restored"
    restore_snapshot(repo, res.snapshot_id, out, durable=False)
    assert read_tree(out) == files


def test_dedup_across_files_and_snapshots(tmp_path):
    blob = rnd(200_000)
    write_tree(tmp_path / "src", {"a.bin": blob, "copy/b.bin": blob})
    repo = small_repo()
    r1 = take_snapshot(repo, tmp_path / "src", bundle="b")
    assert r1.bytes_new < len(blob) * 1.05  # the second copy costs nothing
    assert r1.bytes_deduplicated >= len(blob) * 0.95
    r2 = take_snapshot(repo, tmp_path / "src", bundle="b")
    assert r2.bytes_new == 0 and r2.chunks_new == 0
    assert r2.manifest.parent == r1.snapshot_id


def test_incremental_uploads_only_new_chunks_and_stat_cache_skips_reads(tmp_path):
    src = tmp_path / "src"
    write_tree(src, {"w1.safetensors": rnd(300_000, 1), "w2.safetensors": rnd(300_000, 2), "config.json": b"{}"})
    repo = small_repo()
    cache = tmp_path / "stat.json"
    take_snapshot(repo, src, bundle="b", stat_cache=cache)
    warm = take_snapshot(repo, src, bundle="b", stat_cache=cache)
    assert warm.bytes_read == 0 and warm.files_unchanged == 3
    data = bytearray((src / "w2.safetensors").read_bytes())
    data[150_000:150_010] = b"X" * 10
    (src / "w2.safetensors").write_bytes(bytes(data))
    inc = take_snapshot(repo, src, bundle="b", stat_cache=cache)
    assert inc.files_unchanged == 2
    assert inc.bytes_read == len(data)
    assert 0 < inc.bytes_new <= 3 * SMALL.max_size  # only the chunks around the edit
    out = tmp_path / "out"
    restore_snapshot(repo, inc.snapshot_id, out, durable=False)
    assert (out / "w2.safetensors").read_bytes() == bytes(data)


def test_stat_cache_entry_ignored_when_chunks_are_gone(tmp_path):
    src = tmp_path / "src"
    write_tree(src, {"a": rnd(50_000)})
    repo = small_repo()
    cache = tmp_path / "stat.json"
    take_snapshot(repo, src, bundle="b", stat_cache=cache)
    # the chunks leave the repository (packs and the indexes naming them, as a prune of everything would)
    for info in list(repo.store.list(PACKS)) + list(repo.store.list(INDEX)):
        repo.store.delete(info.key)
    repo = Repository(repo.store)
    res = take_snapshot(repo, src, bundle="b", stat_cache=cache)
    assert res.files_unchanged == 0 and res.bytes_new == 50_000
    restore_snapshot(repo, res.snapshot_id, tmp_path / "out", durable=False)
    assert (tmp_path / "out" / "a").read_bytes() == rnd(50_000)


def test_crash_during_upload_leaves_no_visible_snapshot_and_retry_completes(tmp_path):
    """v2: packs uploaded before the crash are not indexed (the index is written after the last pack), so nothing
    names them; the retry stores its own packs and the orphans wait for prune."""
    src = tmp_path / "src"
    write_tree(src, {"a": rnd(200_000, 3), "b": rnd(100_000, 4)})
    faulty = FaultyStore(MemoryStore())
    repo = small_repo(faulty, pack_target=16384)
    faulty.fail("put", lambda: TransientStorageError("connection reset"), after=5, key_prefix=PACKS)
    with pytest.raises(TransientStorageError):
        take_snapshot(repo, src, bundle="b", workers=2)
    faulty.assert_all_fired()
    assert repo.snapshot_ids() == []  # nothing visible
    orphans = pack_keys(repo)
    assert orphans and repo.list_chunks() == {}  # packs landed, no index names them
    res = take_snapshot(repo, src, bundle="b")
    assert res.chunks_new == len(res.manifest.chunk_set())
    assert repo.snapshot_ids() == [res.snapshot_id]
    restore_snapshot(repo, res.snapshot_id, tmp_path / "out", durable=False)
    assert read_tree(tmp_path / "out") == {"a": rnd(200_000, 3), "b": rnd(100_000, 4)}


def test_catalog_entry_is_the_last_write(tmp_path):
    """Packs, then the index naming them, then trees, then the record, then the catalog entry that publishes it
    (locks aside): a reader never meets a snapshot naming something not yet stored."""
    write_tree(tmp_path / "src", {"a": rnd(100_000)})
    order = []

    class Recording(MemoryStore):
        def put(self, key, data, **kw):
            order.append(key)
            super().put(key, data, **kw)

    repo = small_repo(Recording(), pack_target=16384)
    order.clear()
    res = take_snapshot(repo, tmp_path / "src", bundle="b")
    data = [k for k in order if not k.startswith(("locks/", "bundles/"))]
    assert data[-1] == entry_key("b", 0)  # the first entry of the bundle
    assert data[-2] == record_key(res.snapshot_id)
    kinds = [next(p for p in (PACKS, INDEX, TREES) if k.startswith(p)) for k in data[:-2]
             if not k.startswith(INDEX_LOG)]  # the index's log entry follows the index object
    assert sum(k.startswith(INDEX_LOG) for k in data) == sum(k.startswith(INDEX) for k in data)
    assert kinds == sorted(kinds, key=[PACKS, INDEX, TREES].index) and kinds.count(PACKS) > 1


def test_modes_and_mtimes_restored(tmp_path):
    src = tmp_path / "src"
    write_tree(src, {"run.sh": b"#!/bin/sh\n", "empty": b""})
    os.chmod(src / "run.sh", 0o750)
    os.utime(src / "run.sh", ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    repo = small_repo()
    res = take_snapshot(repo, src, bundle="b")
    restore_snapshot(repo, res.snapshot_id, tmp_path / "out", durable=False)
    st = os.stat(tmp_path / "out" / "run.sh")
    assert st.st_mode & 0o7777 == 0o750
    assert st.st_mtime_ns == 1_700_000_000_123_456_789
    assert (tmp_path / "out" / "empty").read_bytes() == b""


def test_symlinked_files_are_stored_as_content(tmp_path):
    src = tmp_path / "src"
    write_tree(tmp_path / "blobs", {"x": b"weights"})
    src.mkdir()
    os.symlink(tmp_path / "blobs" / "x", src / "model.safetensors")
    repo = small_repo()
    res = take_snapshot(repo, src, bundle="b")
    restore_snapshot(repo, res.snapshot_id, tmp_path / "out", durable=False)
    out = tmp_path / "out" / "model.safetensors"
    assert out.read_bytes() == b"weights" and not out.is_symlink()


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(LlmdrError, match="does not exist"):
        take_snapshot(small_repo(), tmp_path / "nope", bundle="b")


# restore safety ------------------------------------------------------------------------------------------------------
def _forge(repo: Repository, entries: list[FileEntry]) -> str:
    """A snapshot record and tree listing ``entries`` as given (no path check): what an attacker could write."""
    m = Manifest(bundle="b", source="/x", host="h", started="2026-01-01T00:00:00.000000Z",
                 created="2026-01-01T00:00:00.000000Z", tool_version="0", chunker=SMALL, files=())
    tree = canonical_json({"files": [e.to_json() for e in sorted(entries, key=lambda e: e.path)]})
    tid = hashlib.sha256(tree).hexdigest()
    repo.store.put(tree_key(tid), tree)
    data = record_bytes(m, tid)
    sid = hashlib.sha256(data).hexdigest()
    repo.store.put(record_key(sid), data)
    return sid


@pytest.mark.parametrize("evil", ["../escape", "/tmp/abs", "a/../../escape"])
def test_path_traversal_refused_and_nothing_written(tmp_path, evil):
    repo = small_repo()
    repo.save_chunk(hashlib.sha256(b"x").hexdigest(), b"x")
    good = FileEntry("ok.txt", 1, 0o644, 0, ((hashlib.sha256(b"x").hexdigest(), 1),))
    bad = FileEntry.__new__(FileEntry)
    object.__setattr__(bad, "path", evil)
    for f, v in (("size", 1), ("mode", 0o644), ("mtime_ns", 0), ("chunks", good.chunks)):
        object.__setattr__(bad, f, v)
    sid = _forge(repo, [good, bad])
    out = tmp_path / "target"
    with pytest.raises(UnsafePathError):
        restore_snapshot(repo, sid, out, durable=False)
    assert not (out / "ok.txt").exists()
    assert not (tmp_path / "escape").exists()


def test_symlink_in_target_pointing_out_is_refused(tmp_path):
    src = tmp_path / "src"
    write_tree(src, {"sub/f": b"data"})
    repo = small_repo()
    res = take_snapshot(repo, src, bundle="b")
    target = tmp_path / "target"
    target.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, target / "sub")
    with pytest.raises(UnsafePathError, match="outside the target"):
        restore_snapshot(repo, res.snapshot_id, target, force=True, durable=False)
    assert list(outside.iterdir()) == []


def test_non_empty_target_needs_force(tmp_path):
    src = tmp_path / "src"
    write_tree(src, {"a": b"new"})
    repo = small_repo()
    res = take_snapshot(repo, src, bundle="b")
    target = tmp_path / "t"
    write_tree(target, {"a": b"old", "keep": b"mine"})
    with pytest.raises(TargetNotEmpty, match="--force"):
        restore_snapshot(repo, res.snapshot_id, target, durable=False)
    assert (target / "a").read_bytes() == b"old"
    restore_snapshot(repo, res.snapshot_id, target, force=True, durable=False)
    assert read_tree(target) == {"a": b"new", "keep": b"mine"}


def test_corrupt_chunk_detected_and_no_partial_file(tmp_path):
    src = tmp_path / "src"
    write_tree(src, {"weights.bin": rnd(100_000, 9), "small.json": b"{}"})
    store = MemoryStore()
    repo = small_repo(store)
    res = take_snapshot(repo, src, bundle="b")
    entry = next(f for f in res.manifest.files if f.path == "weights.bin")
    victim = entry.chunks[len(entry.chunks) // 2][0]
    pack = corrupt_chunk(repo, victim, at=10**9)  # the blob's last byte
    out = tmp_path / "out"
    with pytest.raises(IntegrityError, match=victim[:12]) as err:
        restore_snapshot(repo, res.snapshot_id, out, durable=False)
    assert pack in str(err.value) and "weights.bin" in str(err.value)
    assert not (out / "weights.bin").exists()
    assert not any(is_tmp_name(p.name) for p in out.rglob("*"))


def test_interrupted_restore_resumes_without_redownloading(tmp_path):
    src = tmp_path / "src"
    files = {f"f{i}.bin": rnd(30_000, i) for i in range(6)}
    write_tree(src, files)
    faulty = FaultyStore(MemoryStore())
    repo = small_repo(faulty, pack_target=16384)  # several packs, so several ranges
    res = take_snapshot(repo, src, bundle="b")
    out = tmp_path / "out"
    faulty.fail("get", lambda: TransientStorageError("network down"), after=5, key_prefix=PACKS)
    with pytest.raises(TransientStorageError):
        restore_snapshot(repo, res.snapshot_id, out, workers=1, durable=False)
    faulty.assert_all_fired()
    assert (out / MARKER).exists()
    done_before = [p for p in files if (out / p).exists()]
    assert 0 < len(done_before) < len(files)
    assert not any(is_tmp_name(p.name) for p in out.iterdir())
    fetched = []

    class Watch(FaultyStore):
        def get(self, key, *, start=0, length=None, version_id=None):
            if key.startswith(PACKS):
                fetched.append((key, start, length))
            return super().get(key, start=start, length=length, version_id=version_id)

    repo.store = Watch(faulty.inner)
    again = restore_snapshot(repo, res.snapshot_id, out, durable=False)  # no --force needed: same snapshot
    assert again.files_skipped == len(done_before)
    assert read_tree(out) == files
    assert not (out / MARKER).exists()
    # exactly the ranges the unfinished files need, nothing of the files already in place
    needed = {bytes.fromhex(d) for f in res.manifest.files if f.path not in done_before for d, _ in f.chunks}
    want = plan_ranges(e for c in needed if (e := repo.locate(c.hex())) is not None)
    assert sorted(fetched) == sorted((pack_key(r.pack.hex()), r.start, r.length) for r in want)
    assert again.bytes_downloaded == sum(len(files[p]) for p in files if p not in done_before)


def test_restore_into_folder_of_another_restore_needs_force(tmp_path):
    src = tmp_path / "src"
    write_tree(src, {"a": b"1"})
    repo = small_repo()
    r1 = take_snapshot(repo, src, bundle="b")
    (src / "a").write_bytes(b"2")
    r2 = take_snapshot(repo, src, bundle="b")
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"snapshot": r1.snapshot_id}))
    with pytest.raises(TargetNotEmpty):
        restore_snapshot(repo, r2.snapshot_id, out, durable=False)


def test_file_changing_during_snapshot_is_refused(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_tree(src, {"a": rnd(100_000)})
    repo = small_repo()
    import llmdr.repo.snapshot as snap

    real = snap._chunk_file

    def mutate_then_chunk(f, *args):
        out = real(f, *args)
        with open(f.abspath, "ab") as fh:
            fh.write(b"late write")
        return out

    monkeypatch.setattr(snap, "_chunk_file", mutate_then_chunk)
    with pytest.raises(LlmdrError, match="changed while it was being snapshotted"):
        take_snapshot(repo, src, bundle="b")
    assert repo.snapshot_ids() == []


def test_large_file_streams_with_bounded_inflight(tmp_path):
    """A file much larger than the in-flight cap still round-trips (the cap blocks, it does not fail)."""
    src = tmp_path / "src"
    write_tree(src, {"big.safetensors": rnd(3_000_000, 5)})
    repo = small_repo()
    res = take_snapshot(repo, src, bundle="b", workers=2, max_inflight_bytes=SMALL.max_size)
    assert res.chunks_total > 50
    restore_snapshot(repo, res.snapshot_id, tmp_path / "out", durable=False)
    assert (tmp_path / "out" / "big.safetensors").read_bytes() == rnd(3_000_000, 5)


@pytest.mark.parametrize("size", [500, 40_000])  # one chunk: the direct path; several: the open-file cache
def test_restore_never_writes_through_a_link_planted_at_its_temporary_name(tmp_path, size):
    """A symlink waiting at the temporary name restore writes to (``.llmdr-tmp-<hash>``) must be removed, never
    followed: the file outside the target stays as it was and the restored file is right."""
    data = rnd(size, 5)
    write_tree(tmp_path / "src", {"model/w.bin": data})
    repo = small_repo()
    snap = take_snapshot(repo, tmp_path / "src", bundle="b")
    assert (len(snap.manifest.files[0].chunks) > 1) == (size > 500)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep me")
    target = tmp_path / "out"
    (target / "model").mkdir(parents=True)
    os.symlink(outside, target / "model" / tmp_name("model/w.bin"))
    restore_snapshot(repo, snap.snapshot_id, target, force=True)
    assert outside.read_bytes() == b"keep me"
    assert (target / "model" / "w.bin").read_bytes() == data and not (target / "model" / "w.bin").is_symlink()
    assert not os.path.lexists(target / "model" / tmp_name("model/w.bin"))


def test_a_folder_at_the_temporary_name_is_a_clear_error(tmp_path):
    write_tree(tmp_path / "src", {"m/w.bin": rnd(500, 6)})
    repo = small_repo()
    snap = take_snapshot(repo, tmp_path / "src", bundle="b")
    (tmp_path / "out" / "m" / tmp_name("m/w.bin") / "x").mkdir(parents=True)
    with pytest.raises(UnsafePathError, match=f"'m/w.bin': a folder is in the way at .*{tmp_name('m/w.bin')}"):
        restore_snapshot(repo, snap.snapshot_id, tmp_path / "out", force=True)
    assert (tmp_path / "out" / "m" / tmp_name("m/w.bin") / "x").is_dir()  # left as it was


def test_restore_and_replicate_find_chunks_an_older_llmdr_indexed_without_the_log(tmp_path):
    """An llmdr from before the index log writes index/ objects only. After this one has compacted (so readers
    start from the log), a snapshot whose index is such an unlogged object must still restore and replicate: the
    planner falls back to reading every index/ object when the logged view lacks a chunk."""
    from llmdr.repo.indexlog import ENTRIES
    from llmdr.repo.replicate import replicate_snapshot

    store = MemoryStore()
    repo = small_repo(store)
    take_snapshot(repo, write_tree(tmp_path / "a", {"a.bin": rnd(30_000, 7)}) or tmp_path / "a", bundle="b")
    assert repo.compact_if_needed(threshold=0) is not None  # the log now has a base: readers trust it
    snap = take_snapshot(repo, write_tree(tmp_path / "s", {"w.bin": rnd(40_000, 8)}) or tmp_path / "s", bundle="b")
    new = set(repo.load_manifest(snap.snapshot_id).chunk_set())
    logged = [i.key for i in store.list(ENTRIES)]
    store.delete(logged[-1])  # that snapshot's index, as an older llmdr writes it: under index/ only, not logged
    fresh = Repository(store)
    assert any(fresh.index().lookup(bytes.fromhex(d)) is None for d in new)  # ... so the short view lacks it
    restore_snapshot(fresh, snap.snapshot_id, tmp_path / "out")
    assert read_tree(tmp_path / "out") == read_tree(tmp_path / "s")
    dst = small_repo()
    replicate_snapshot(Repository(store), dst, snap.snapshot_id)
    restore_snapshot(dst, snap.snapshot_id, tmp_path / "out2")
    assert read_tree(tmp_path / "out2") == read_tree(tmp_path / "s")
