"""Integrity check: full and sampled reads, missing and corrupt chunks found, repair from another region reported.

Format v2 keeps chunks in packs: a flipped byte damages one chunk's blob (the others in its pack still read), a lost
pack takes every chunk packed with it. Small packs here, so one snapshot spans several of them.
"""

import random
from datetime import datetime, timezone

import pytest

from llmdr.errors import IntegrityError, UsageError
from llmdr.repo.chunking import ChunkerParams
from llmdr.repo.integrity import Subset, verify_snapshot
from llmdr.repo.layout import RepoConfig
from llmdr.repo.repair import rebuild_index
from llmdr.repo.replicate import replicate_snapshot
from llmdr.repo.repository import Repository
from llmdr.repo.restore import restore_snapshot
from llmdr.repo.snapshot import take_snapshot
from llmdr.storage.memory import MemoryStore
from tests.support.damage import (
    chunk_pack,
    chunks_in_same_pack,
    corrupt_chunk,
    pack_keys,
    record_object,
    remove_chunk,
)
from tests.support.trees import read_tree, write_tree

SMALL = ChunkerParams(avg_size=4096, min_size=1024, max_size=16384)
PACK = 40_000  # ~10 chunks a pack


@pytest.fixture
def regions(tmp_path):
    src = tmp_path / "src"
    write_tree(src, {"w.safetensors": random.Random(3).randbytes(300_000), "tokenizer.json": b"{}"})
    a = Repository(MemoryStore("a"))
    a.ensure_config(RepoConfig(chunker=SMALL, pack_target=PACK))
    snap = take_snapshot(a, src, bundle="b")
    b = Repository(MemoryStore("b"))
    b.ensure_config(RepoConfig(chunker=SMALL, pack_target=PACK))
    replicate_snapshot(a, b, snap.snapshot_id)
    return a, b, snap, src


def test_full_verify_reads_every_chunk(regions):
    a, _, snap, _ = regions
    res = verify_snapshot(a, snap.snapshot_id)
    assert res.ok and res.chunks_read == res.chunks_total == len(snap.manifest.chunk_set())
    assert res.bytes_read == snap.manifest.total_size


def other_pack_chunk(repo: Repository, chunks: list[str], than: str) -> str:
    """A chunk of ``chunks`` packed elsewhere than ``than``."""
    return next(c for c in chunks if chunk_pack(repo, c) != chunk_pack(repo, than))


def test_corrupt_and_missing_chunks_found(regions):
    a, _, snap, _ = regions
    chunks = sorted(snap.manifest.chunk_set())
    assert len(pack_keys(a)) > 2
    corrupt_chunk(a, chunks[0])  # same size, one byte: only this blob is damaged
    gone = other_pack_chunk(a, chunks, chunks[0])
    lost = chunks_in_same_pack(a, gone)
    remove_chunk(a, gone)
    res = verify_snapshot(a, snap.snapshot_id)
    assert res.corrupt == [chunks[0]] and res.missing == sorted(lost) and gone in lost
    assert not res.ok and res.unrepaired == sorted({chunks[0], *lost})
    assert res.chunks_read == len(chunks) - len(lost)  # a chunk whose pack is gone is found without a read


def test_lost_pack_is_repaired_from_another_region_and_restores(regions, tmp_path):
    a, b, snap, src = regions
    victim = sorted(snap.manifest.chunk_set())[1]
    lost = chunks_in_same_pack(a, victim)
    remove_chunk(a, victim)
    res = verify_snapshot(a, snap.snapshot_id, repair_from=[("secondary", b)])
    assert res.missing == sorted(lost) and res.repaired == dict.fromkeys(sorted(lost), "secondary") and res.ok
    after = verify_snapshot(a, snap.snapshot_id)
    assert after.ok and after.missing == after.corrupt == [] and after.chunks_read == after.chunks_total
    restore_snapshot(a, snap.snapshot_id, tmp_path / "out")
    assert read_tree(tmp_path / "out") == read_tree(src)


def test_repair_from_another_region_is_reported_and_restores(regions, tmp_path):
    a, b, snap, src = regions
    victim = sorted(snap.manifest.chunk_set())[2]
    corrupt_chunk(a, victim, at=5)
    res = verify_snapshot(a, snap.snapshot_id, repair_from=[("secondary", b)])
    assert res.corrupt == [victim] and res.repaired == {victim: "secondary"} and res.ok
    after = verify_snapshot(a, snap.snapshot_id)
    assert after.ok and after.corrupt == [] and after.chunks_read == after.chunks_total
    restore_snapshot(a, snap.snapshot_id, tmp_path / "out")
    assert read_tree(tmp_path / "out") == read_tree(src)


def test_no_intact_copy_stays_unrepaired(regions):
    a, b, snap, _ = regions
    victim = sorted(snap.manifest.chunk_set())[0]
    key = corrupt_chunk(a, victim)
    corrupt_chunk(b, victim, at=7)
    rotten, packs = a.store.get(key), pack_keys(a)
    res = verify_snapshot(a, snap.snapshot_id, repair_from=[("secondary", b)])
    assert res.corrupt == res.unrepaired == [victim] and res.repaired == {} and not res.ok
    assert a.store.get(key) == rotten and pack_keys(a) == packs  # a bad copy is never written over a bad copy


def test_truncated_pack_is_left_out_of_a_rebuilt_index_and_repaired(regions, tmp_path):
    """A rebuild reads every pack's trailer: a truncated pack fails its checks and is reported, never indexed; its
    chunks are then missing (not silently wrong) and the repair brings them from the other region."""
    a, b, snap, src = regions
    victim = sorted(snap.manifest.chunk_set())[3]
    lost = chunks_in_same_pack(a, victim)
    key = chunk_pack(a, victim)
    a.store.corrupt(key, a.store.get(key)[:-30])  # the tail and part of the trailer gone
    rebuilt = rebuild_index(Repository(a.store))
    assert list(rebuilt.bad_packs) == [key] and "truncated" in rebuilt.bad_packs[key]
    assert rebuilt.packs == len(pack_keys(a)) - 1 and rebuilt.superseded >= 1
    fresh = Repository(a.store)
    res = verify_snapshot(fresh, snap.snapshot_id, repair_from=[("secondary", b)])
    assert res.missing == sorted(lost) and res.repaired == dict.fromkeys(sorted(lost), "secondary") and res.ok
    assert verify_snapshot(Repository(a.store), snap.snapshot_id).chunks_read == res.chunks_total
    restore_snapshot(Repository(a.store), snap.snapshot_id, tmp_path / "out")
    assert read_tree(tmp_path / "out") == read_tree(src)


def test_prune_keeps_the_packs_of_a_live_snapshot_whose_record_is_damaged(regions):
    from llmdr.repo.prune import prune

    a, _, snap, _ = regions
    packs = pack_keys(a)
    key = record_object(snap.snapshot_id)
    a.store.corrupt(key, a.store.get(key).replace(b'"b"', b'"c"', 1))
    for _ in range(2):  # plan, then delete what was planned: the live snapshot's tree comes from its entry
        prune(Repository(a.store), safety_s=0)
    assert pack_keys(a) == packs
    # a damaged file list of a live snapshot makes prune refuse rather than guess
    from llmdr.repo.layout import tree_key

    tkey = tree_key(Repository(a.store).view(snap.manifest.bundle).head.record["tree"])
    a.store.corrupt(tkey, b"{}")
    with pytest.raises(IntegrityError, match="prune refused.*Nothing was deleted"):
        prune(Repository(a.store), safety_s=0)
    assert pack_keys(a) == packs


def test_subsets_partition_the_chunks(regions):
    a, _, snap, _ = regions
    seen = []
    for n in range(1, 5):
        res = verify_snapshot(a, snap.snapshot_id, subset=Subset(n, 4))
        assert res.subset == f"{n}/4"
        seen.append(res.chunks_read)
    assert sum(seen) == len(snap.manifest.chunk_set())
    assert max(seen) < len(snap.manifest.chunk_set())


def test_subset_parsing():
    assert Subset.parse("2/7") == Subset(2, 7)
    day = datetime(2026, 11, 27, tzinfo=timezone.utc)
    assert Subset.parse("7", now=day).n == int(day.timestamp() // 86400) % 7 + 1
    for bad in ("0/3", "4/3", "x", "1/0"):
        with pytest.raises(UsageError):
            Subset.parse(bad)
