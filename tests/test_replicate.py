import random

import pytest

from llmdr.errors import ChunkMissing, IntegrityError, TransientStorageError
from llmdr.repo.chunking import ChunkerParams
from llmdr.repo.replicate import replicate_snapshot
from llmdr.repo.repository import CHUNKS, SNAPSHOTS, RepoConfig, Repository, chunk_key
from llmdr.repo.restore import restore_snapshot
from llmdr.repo.snapshot import take_snapshot
from llmdr.storage.memory import MemoryStore
from llmdr.testing.faulty import FaultyStore
from tests.support.trees import read_tree, write_tree

SMALL = ChunkerParams(avg_size=4096, min_size=1024, max_size=16384)


def rnd(n, seed=0):
    return random.Random(seed).randbytes(n)


@pytest.fixture
def two(tmp_path):
    src_dir = tmp_path / "src"
    write_tree(src_dir, {"w.safetensors": rnd(200_000, 1), "tokenizer.json": b'{"v":1}'})
    a = Repository(MemoryStore("a"))
    a.ensure_config(RepoConfig(chunker=SMALL))
    snap = take_snapshot(a, src_dir, bundle="b")
    return a, src_dir, snap


def test_replicate_copies_everything_then_restores_identically(two, tmp_path):
    a, src_dir, snap = two
    b = Repository(MemoryStore("b"))
    res = replicate_snapshot(a, b, snap.snapshot_id)
    assert res.chunks_copied == res.chunks_total == len(snap.manifest.chunk_set())
    assert b.load_config() == a.load_config()
    restore_snapshot(b, snap.snapshot_id, tmp_path / "out", durable=False)
    assert read_tree(tmp_path / "out") == read_tree(src_dir)


def test_second_snapshot_copies_only_missing_chunks(two, tmp_path):
    a, src_dir, snap = two
    b = Repository(MemoryStore("b"))
    replicate_snapshot(a, b, snap.snapshot_id)
    (src_dir / "tokenizer.json").write_bytes(b'{"v":2}')
    snap2 = take_snapshot(a, src_dir, bundle="b")
    res = replicate_snapshot(a, b, snap2.snapshot_id)
    assert res.chunks_copied == 1 and res.bytes_copied == len(b'{"v":2}')
    again = replicate_snapshot(a, b, snap2.snapshot_id)
    assert again.already_present and again.chunks_copied == 0


def test_crash_mid_copy_is_invisible_and_resumable(two):
    a, _, snap = two
    faulty = FaultyStore(MemoryStore("b"))
    b = Repository(faulty)
    faulty.fail("put", lambda: TransientStorageError("secondary went away"), after=10, key_prefix=CHUNKS)
    with pytest.raises(TransientStorageError):
        replicate_snapshot(a, b, snap.snapshot_id, workers=2)
    faulty.assert_all_fired()
    assert b.snapshot_ids() == []
    partial = len(b.list_chunks())
    assert 0 < partial < len(snap.manifest.chunk_set())
    res = replicate_snapshot(a, b, snap.snapshot_id)
    assert res.chunks_copied == len(snap.manifest.chunk_set()) - partial
    assert b.snapshot_ids() == [snap.snapshot_id]


def test_corrupt_source_chunk_is_not_propagated(two):
    a, _, snap = two
    victim = snap.manifest.files[0].chunks[0][0]
    a.store.corrupt(chunk_key(victim), b"rot")
    b_store = MemoryStore("b")
    b = Repository(b_store)
    with pytest.raises(IntegrityError, match=rf"chunk {chunk_key(victim)} of snapshot .* \(source\) is corrupt in "
                                             "memory://a.*not published"):
        replicate_snapshot(a, b, snap.snapshot_id)
    assert list(b_store.list(SNAPSHOTS)) == []
    assert chunk_key(victim) not in {i.key for i in b_store.list(CHUNKS)}


def test_missing_source_chunk_is_named_and_nothing_published(two):
    a, _, snap = two
    victim = snap.manifest.files[0].chunks[0][0]
    a.store.delete(chunk_key(victim))
    b = Repository(MemoryStore("b"))
    with pytest.raises(ChunkMissing, match=rf"chunk {chunk_key(victim)} .* is missing from memory://a"):
        replicate_snapshot(a, b, snap.snapshot_id)
    assert b.snapshot_ids() == []


def test_recheck_repairs_a_chunk_lost_in_the_destination(two):
    a, _, snap = two
    b = Repository(MemoryStore("b"))
    replicate_snapshot(a, b, snap.snapshot_id)
    lost = snap.manifest.files[0].chunks[0][0]
    b.store.delete(chunk_key(lost))
    assert replicate_snapshot(a, b, snap.snapshot_id).already_present  # manifest present: trusted
    res = replicate_snapshot(a, b, snap.snapshot_id, recheck=True)
    assert res.chunks_copied == 1
    assert b.store.head(chunk_key(lost)).size > 0


def test_destination_with_other_chunker_is_refused(two):
    a, _, snap = two
    b = Repository(MemoryStore("b"))
    b.ensure_config(RepoConfig())  # default params differ from SMALL
    with pytest.raises(IntegrityError, match="different parameters"):
        replicate_snapshot(a, b, snap.snapshot_id)
