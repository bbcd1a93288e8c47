"""Retention: the plan keeps the newest and every Mth; forget removes manifests; prune frees only chunks nothing
references and that are older than the grace period."""

import random

import pytest

from llmdr.errors import UsageError
from llmdr.repo.chunking import ChunkerParams
from llmdr.repo.manifest import Manifest
from llmdr.repo.repository import RepoConfig, Repository, SnapshotInfo, chunk_key
from llmdr.repo.restore import restore_snapshot
from llmdr.repo.retention import Policy, apply_retention, plan
from llmdr.repo.snapshot import take_snapshot
from llmdr.storage.memory import MemoryStore
from tests.support.trees import read_tree, write_tree

SMALL = ChunkerParams(avg_size=4096, min_size=1024, max_size=16384)


def infos(n):
    m = Manifest(bundle="b", source="/", host="h", started="2026-01-01T00:00:00.000000Z",
                 created="2026-01-01T00:00:00.000000Z", tool_version="x", chunker=SMALL, files=())
    return [SnapshotInfo(f"{i:064x}", m) for i in range(n)]


def test_plan_keeps_newest_and_every_mth():
    snaps = infos(10)
    keep, forget = plan(snaps, Policy(keep_last=3, keep_every=4))
    assert keep == [snaps[i].id for i in (0, 4, 7, 8, 9)]
    assert forget == [snaps[i].id for i in (1, 2, 3, 5, 6)]
    assert plan(snaps[:2], Policy(keep_last=5)) == ([s.id for s in snaps[:2]], [])


def test_policy_never_forgets_everything():
    with pytest.raises(UsageError):
        Policy(keep_last=0)


@pytest.fixture
def repo_with_history(tmp_path):
    src = tmp_path / "src"
    repo = Repository(MemoryStore())
    repo.ensure_config(RepoConfig(chunker=SMALL))
    snaps = []
    for i in range(4):
        write_tree(src, {"ckpt.bin": random.Random(i).randbytes(60_000), "config.json": b"{}"})
        snaps.append(take_snapshot(repo, src, bundle="b"))
    return repo, snaps, src


def test_forget_and_prune_free_only_unreferenced_old_chunks(repo_with_history, tmp_path):
    repo, snaps, src = repo_with_history
    store = repo.store
    for info in store.list("chunks/"):
        store.age(info.key, 7 * 3600)
    res = apply_retention(repo, "b", Policy(keep_last=1))
    assert res.kept == [snaps[-1].snapshot_id] and len(res.forgotten) == 3
    remaining = {i.key for i in store.list("chunks/")}
    assert remaining == {chunk_key(d) for d in snaps[-1].manifest.chunk_set()}
    assert res.chunks_deleted > 0 and res.bytes_freed > 0 and res.raced == []
    restore_snapshot(repo, snaps[-1].snapshot_id, tmp_path / "out")
    assert read_tree(tmp_path / "out") == read_tree(src)


def test_young_unreferenced_chunks_survive_the_grace_period(repo_with_history):
    repo, snaps, _ = repo_with_history
    # chunks of an upload still in progress: present, referenced by no manifest, just written
    repo.store.put(chunk_key("ab" * 32), b"in flight")
    res = apply_retention(repo, "b", Policy(keep_last=4))
    assert res.forgotten == [] and res.chunks_deleted == 0 and res.chunks_in_grace == 1
    assert repo.store.get(chunk_key("ab" * 32)) == b"in flight"


def test_other_bundles_keep_their_chunks(repo_with_history, tmp_path):
    repo, snaps, src = repo_with_history
    other = take_snapshot(repo, src, bundle="other")  # same content, another bundle
    for info in repo.store.list("chunks/"):
        repo.store.age(info.key, 7 * 3600)
    apply_retention(repo, "b", Policy(keep_last=1))
    restore_snapshot(repo, other.snapshot_id, tmp_path / "o")
    assert repo.snapshot_ids().count(other.snapshot_id) == 1
