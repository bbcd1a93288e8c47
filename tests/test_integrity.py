"""Integrity check: full and sampled reads, missing and corrupt chunks found, repair from another region reported."""

import random
from datetime import datetime, timezone

import pytest

from llmdr.errors import UsageError
from llmdr.repo.chunking import ChunkerParams
from llmdr.repo.integrity import Subset, verify_snapshot
from llmdr.repo.replicate import replicate_snapshot
from llmdr.repo.repository import RepoConfig, Repository, chunk_key
from llmdr.repo.restore import restore_snapshot
from llmdr.repo.snapshot import take_snapshot
from llmdr.storage.memory import MemoryStore
from tests.support.trees import read_tree, write_tree

SMALL = ChunkerParams(avg_size=4096, min_size=1024, max_size=16384)


@pytest.fixture
def regions(tmp_path):
    src = tmp_path / "src"
    write_tree(src, {"w.safetensors": random.Random(3).randbytes(300_000), "tokenizer.json": b"{}"})
    a = Repository(MemoryStore("a"))
    a.ensure_config(RepoConfig(chunker=SMALL))
    snap = take_snapshot(a, src, bundle="b")
    b = Repository(MemoryStore("b"))
    replicate_snapshot(a, b, snap.snapshot_id)
    return a, b, snap, src


def test_full_verify_reads_every_chunk(regions):
    a, _, snap, _ = regions
    res = verify_snapshot(a, snap.snapshot_id)
    assert res.ok and res.chunks_read == res.chunks_total == len(snap.manifest.chunk_set())
    assert res.bytes_read == snap.manifest.total_size


def test_corrupt_and_missing_chunks_found(regions):
    a, _, snap, _ = regions
    chunks = sorted(snap.manifest.chunk_set())
    good = a.store.get(chunk_key(chunks[0]))
    a.store.corrupt(chunk_key(chunks[0]), good[:-1] + bytes([good[-1] ^ 1]))  # same size, one bit
    a.store.delete(chunk_key(chunks[1]))
    res = verify_snapshot(a, snap.snapshot_id)
    assert res.corrupt == [chunks[0]] and res.missing == [chunks[1]]
    assert not res.ok and res.unrepaired == sorted(chunks[:2])


def test_repair_from_another_region_is_reported_and_restores(regions, tmp_path):
    a, b, snap, src = regions
    victim = sorted(snap.manifest.chunk_set())[2]
    a.store.corrupt(chunk_key(victim), b"rot")
    res = verify_snapshot(a, snap.snapshot_id, repair_from=[("secondary", b)])
    assert res.corrupt == [victim] and res.repaired == {victim: "secondary"} and res.ok
    assert verify_snapshot(a, snap.snapshot_id).corrupt == []
    restore_snapshot(a, snap.snapshot_id, tmp_path / "out")
    assert read_tree(tmp_path / "out") == read_tree(src)


def test_no_intact_copy_stays_unrepaired(regions):
    a, b, snap, _ = regions
    victim = sorted(snap.manifest.chunk_set())[0]
    a.store.corrupt(chunk_key(victim), b"rot-a")
    b.store.corrupt(chunk_key(victim), b"rot-b")
    res = verify_snapshot(a, snap.snapshot_id, repair_from=[("secondary", b)])
    assert res.unrepaired == [victim] and not res.ok
    assert a.store.get(chunk_key(victim)) == b"rot-a"  # a bad copy is never written over a bad copy


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
