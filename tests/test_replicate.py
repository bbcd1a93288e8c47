import random

import pytest

from llmdr.errors import ChunkMissing, IntegrityError, TransientStorageError
from llmdr.repo.chunking import ChunkerParams
from llmdr.repo.layout import PACKS, SNAPS, RepoConfig
from llmdr.repo.prune import prune
from llmdr.repo.replicate import replicate_snapshot
from llmdr.repo.repository import Repository
from llmdr.repo.restore import restore_snapshot
from llmdr.repo.snapshot import take_snapshot
from llmdr.storage.memory import MemoryStore
from llmdr.testing.faulty import FaultyStore
from tests.support.damage import chunk_pack, chunks_in_same_pack, corrupt_chunk, pack_keys, remove_chunk
from tests.support.trees import read_tree, write_tree

SMALL = ChunkerParams(avg_size=4096, min_size=1024, max_size=16384)
PACK_TARGET = 16 * 1024  # small packs: a 200 kB bundle spans a dozen, so faults can hit one in the middle


def rnd(n, seed=0):
    return random.Random(seed).randbytes(n)


@pytest.fixture
def two(tmp_path):
    src_dir = tmp_path / "src"
    write_tree(src_dir, {"w.safetensors": rnd(200_000, 1), "tokenizer.json": b'{"v":1}'})
    a = Repository(MemoryStore("a"))
    a.ensure_config(RepoConfig(chunker=SMALL, pack_target=PACK_TARGET))
    snap = take_snapshot(a, src_dir, bundle="b")
    assert len(pack_keys(a)) > 5
    return a, src_dir, snap


def test_replicate_copies_everything_then_restores_identically(two, tmp_path):
    a, src_dir, snap = two
    b = Repository(MemoryStore("b"))
    res = replicate_snapshot(a, b, snap.snapshot_id)
    assert res.chunks_copied == res.chunks_total == len(snap.manifest.chunk_set())
    ca, cb = a.load_config(), b.load_config()
    assert cb.shares_chunks_with(ca) and cb.pack_target == ca.pack_target
    assert cb.repo_id != ca.repo_id  # each region packs (and seals) on its own; chunk ids are what is shared
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


def test_crash_mid_copy_is_invisible_and_resumable(two, tmp_path):
    a, src_dir, snap = two
    faulty = FaultyStore(MemoryStore("b"))
    b = Repository(faulty)
    faulty.fail("put", lambda: TransientStorageError("secondary went away"), after=3, key_prefix=PACKS)
    with pytest.raises(TransientStorageError):
        replicate_snapshot(a, b, snap.snapshot_id, workers=2)
    faulty.assert_all_fired()
    assert b.snapshot_ids() == [] and list(faulty.list(SNAPS)) == []
    orphans = pack_keys(b)
    assert len(orphans) >= 3  # uploaded before the fault, but no index names them: invisible
    assert b.list_chunks() == {}
    res = replicate_snapshot(a, b, snap.snapshot_id)
    # one index per writer: nothing of the crashed run was indexed, so every chunk is copied again
    assert res.chunks_copied == len(snap.manifest.chunk_set())
    assert b.snapshot_ids() == [snap.snapshot_id]
    restore_snapshot(Repository(faulty), snap.snapshot_id, tmp_path / "out", durable=False)
    assert read_tree(tmp_path / "out") == read_tree(src_dir)
    # crashed packs the resumed run did not write again (same chunks, same order: same pack id) are garbage
    # that a prune removes (plan, then delete); the snapshot is untouched
    indexed = {p.hex() for p in Repository(faulty).index().packs()}
    garbage = {k.rsplit("/", 1)[1] for k in orphans} - indexed
    assert set(prune(b, safety_s=0).planned) == garbage
    assert set(prune(b, safety_s=0).deleted) == garbage
    assert {k.rsplit("/", 1)[1] for k in pack_keys(b)} == indexed
    restore_snapshot(Repository(faulty), snap.snapshot_id, tmp_path / "out2", durable=False)
    assert read_tree(tmp_path / "out2") == read_tree(src_dir)


def test_corrupt_source_chunk_is_not_propagated(two):
    a, _, snap = two
    victim = snap.manifest.files[0].chunks[0][0]
    key = corrupt_chunk(a, victim)
    b_store = MemoryStore("b")
    b = Repository(b_store)
    with pytest.raises(IntegrityError, match=rf"chunk {victim[:12]} of snapshot .* \(source\) in {key} of "
                                             "memory://a.*not published"):
        replicate_snapshot(a, b, snap.snapshot_id)
    assert list(b_store.list(SNAPS)) == [] and b.snapshot_ids() == []
    assert victim not in b.list_chunks()


def test_missing_source_chunk_is_named_and_nothing_published(two):
    a, _, snap = two
    victim = snap.manifest.files[0].chunks[0][0]
    key = remove_chunk(a, victim)
    b = Repository(MemoryStore("b"))
    with pytest.raises(ChunkMissing, match=rf"pack {key}, which holds chunks of snapshot {snap.snapshot_id[:12]} "
                                           r"\(source\), is missing from memory://a\..*not published"):
        replicate_snapshot(a, b, snap.snapshot_id)
    assert b.snapshot_ids() == []


def test_recheck_repairs_a_pack_lost_in_the_destination(two, tmp_path):
    a, src_dir, snap = two
    b = Repository(MemoryStore("b"))
    replicate_snapshot(a, b, snap.snapshot_id)
    lost = snap.manifest.files[0].chunks[0][0]
    gone = chunks_in_same_pack(b, lost)
    remove_chunk(b, lost)
    assert len(gone) > 1 and set(b.list_chunks()).isdisjoint(gone)
    assert replicate_snapshot(a, b, snap.snapshot_id).already_present  # catalog entry present: trusted
    res = replicate_snapshot(a, b, snap.snapshot_id, recheck=True)
    assert res.chunks_copied == len(gone)
    assert gone <= set(b.list_chunks())
    # stored again in a NEW pack (plain packs are salted: never the removed pack's id); reads find it there, and
    # once the packs were listed, the repository names the pack that exists
    assert len(b.load_chunk(lost)) == dict(snap.manifest.files[0].chunks)[lost]
    assert chunk_pack(b, lost) in pack_keys(b)
    fresh = Repository(b.store)
    assert gone <= set(fresh.list_chunks())
    restore_snapshot(fresh, snap.snapshot_id, tmp_path / "out", durable=False)
    assert read_tree(tmp_path / "out") == read_tree(src_dir)


def test_destination_with_other_chunker_is_refused(two):
    a, _, snap = two
    b = Repository(MemoryStore("b"))
    b.ensure_config(RepoConfig())  # default params differ from SMALL
    with pytest.raises(IntegrityError, match="different chunking"):
        replicate_snapshot(a, b, snap.snapshot_id)
