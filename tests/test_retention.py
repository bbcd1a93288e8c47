"""Retention: the plan keeps the newest and every Mth, in catalog (seq) order; forgetting writes a forget entry and
deletes nothing; the space comes back with prune, in two runs (plan, then delete), only for packs nothing live uses
and that are older than the safety time."""

import random
from datetime import datetime, timedelta, timezone

import pytest

from llmdr.errors import UsageError
from llmdr.repo import snapshot as snapshot_mod
from llmdr.repo.chunking import ChunkerParams
from llmdr.repo.layout import RepoConfig, pack_key, record_key
from llmdr.repo.prune import prune
from llmdr.repo.repository import Repository
from llmdr.repo.restore import restore_snapshot
from llmdr.repo.retention import Policy, apply_retention, plan
from llmdr.repo.snapinfo import SnapshotInfo
from llmdr.repo.snapshot import take_snapshot
from llmdr.storage.memory import MemoryStore
from tests.support.damage import pack_keys
from tests.support.trees import read_tree, write_tree

SMALL = ChunkerParams(avg_size=4096, min_size=1024, max_size=16384)
HOUR = 3600.0


def infos(n):
    record = {"bundle": "b", "created": "2026-01-01T00:00:00.000000Z"}
    return [SnapshotInfo(f"{i:064x}", record, i) for i in range(n)]


def test_plan_keeps_newest_and_every_mth():
    snaps = infos(10)
    keep, forget = plan(snaps, Policy(keep_last=3, keep_every=4))
    assert keep == [snaps[i].id for i in (0, 4, 7, 8, 9)]
    assert forget == [snaps[i].id for i in (1, 2, 3, 5, 6)]
    assert plan(snaps[:2], Policy(keep_last=5)) == ([s.id for s in snaps[:2]], [])


def test_keep_every_keeps_the_same_snapshots_from_run_to_run(tmp_path):
    """Retention after every snapshot, as a protect schedule runs it: forgetting must not renumber what is left, or
    each run would keep other snapshots and in the end only the first and the newest would survive."""
    src = tmp_path / "src"
    repo = Repository(MemoryStore())
    repo.ensure_config(RepoConfig(chunker=SMALL))
    taken = []
    for i in range(21):
        write_tree(src, {"config.json": f'{{"step": {i}}}'.encode()})
        taken.append(take_snapshot(repo, src, bundle="b").snapshot_id)
        apply_retention(repo, "b", Policy(keep_last=3, keep_every=4), prune=False)
    live = repo.snapshot_ids(bundle="b")
    assert live == [taken[i] for i in (0, 4, 8, 12, 16, 18, 19, 20)]
    assert [s.number for s in repo.snapshots(bundle="b")] == [0, 4, 8, 12, 16, 18, 19, 20]


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


def age_everything(store: MemoryStore, seconds: float) -> None:
    """Move the store's clock forward: everything stored so far is ``seconds`` older."""
    store.clock_skew += seconds


def chunks_stored(repo: Repository) -> set[str]:
    return set(Repository(repo.store).list_chunks())


def test_forget_writes_an_entry_and_deletes_nothing(repo_with_history):
    repo, snaps, _ = repo_with_history
    before = {i.key for i in repo.store.list()}
    res = apply_retention(repo, "b", Policy(keep_last=1), prune=False)
    assert res.kept == [snaps[-1].snapshot_id]
    assert res.forgotten == [s.snapshot_id for s in snaps[:-1]]
    after = {i.key for i in repo.store.list()}
    assert before <= after  # nothing deleted: records and packs stay until a prune
    assert [k for k in after - before if not k.startswith("locks/")] != []  # the forget entry
    assert all(k.startswith(("catalog/", "locks/")) for k in after - before)
    assert repo.snapshot_ids(bundle="b") == [snaps[-1].snapshot_id]
    assert all(repo.store.head(record_key(s.snapshot_id)) for s in snaps)


def test_forget_and_prune_free_only_unreferenced_old_packs(repo_with_history, tmp_path):
    repo, snaps, src = repo_with_history
    store = repo.store
    age_everything(store, 7 * HOUR)
    res = apply_retention(repo, "b", Policy(keep_last=1), grace_s=HOUR)
    assert res.kept == [snaps[-1].snapshot_id] and len(res.forgotten) == 3
    assert res.chunks_deleted == 0 and res.prune["planned"] >= 3  # phase one: a plan, nothing deleted
    assert chunks_stored(repo) >= set().union(*(s.manifest.chunk_set() for s in snaps))
    age_everything(store, HOUR)
    p = prune(repo, safety_s=HOUR)  # phase two, S after the plan
    assert p.chunks_deleted > 0 and p.bytes_freed > 0 and p.rescued == []
    assert chunks_stored(repo) == set(snaps[-1].manifest.chunk_set())
    assert all(not k.startswith("snaps/") or k == record_key(snaps[-1].snapshot_id) for k in
               (i.key for i in store.list()))
    restore_snapshot(Repository(store), snaps[-1].snapshot_id, tmp_path / "out")
    assert read_tree(tmp_path / "out") == read_tree(src)


def test_young_unreferenced_packs_survive_the_safety_time(repo_with_history):
    repo, snaps, _ = repo_with_history
    # the pack of an upload still in progress: present, named by no index, just written
    stray = pack_key("ab" * 32)
    repo.store.put(stray, b"in flight")
    res = apply_retention(repo, "b", Policy(keep_last=4), grace_s=HOUR)
    assert res.forgotten == [] and res.chunks_deleted == 0 and res.chunks_in_grace == 1
    assert res.prune["planned"] == 0
    assert repo.store.get(stray) == b"in flight"
    age_everything(repo.store, 2 * HOUR)  # now old and still unindexed: planned, then deleted a run later
    assert prune(repo, safety_s=HOUR).planned == ["ab" * 32]
    age_everything(repo.store, HOUR)
    assert prune(repo, safety_s=HOUR).deleted == ["ab" * 32]
    assert stray not in pack_keys(repo)


def test_other_bundles_keep_their_chunks(repo_with_history, tmp_path):
    repo, snaps, src = repo_with_history
    other = take_snapshot(repo, src, bundle="other")  # same content, another bundle
    age_everything(repo.store, 7 * HOUR)
    apply_retention(repo, "b", Policy(keep_last=1), grace_s=0)
    prune(repo, safety_s=0)
    restore_snapshot(Repository(repo.store), other.snapshot_id, tmp_path / "o")
    assert read_tree(tmp_path / "o") == read_tree(src)
    assert repo.snapshot_ids().count(other.snapshot_id) == 1


def test_a_future_dated_snapshot_is_not_newest(tmp_path, monkeypatch):
    """A host whose clock runs a year ahead wrote a snapshot; later snapshots (higher seq) are the real head."""
    src = tmp_path / "src"
    repo = Repository(MemoryStore())
    repo.ensure_config(RepoConfig(chunker=SMALL))
    write_tree(src, {"w.bin": random.Random(1).randbytes(20_000)})
    ahead = (datetime.now(timezone.utc) + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with monkeypatch.context() as m:
        m.setattr(snapshot_mod, "utc_now", lambda: ahead)
        future = take_snapshot(repo, src, bundle="b")
    assert future.manifest.created == ahead
    write_tree(src, {"w.bin": random.Random(2).randbytes(20_000)})
    head = take_snapshot(repo, src, bundle="b")
    assert head.manifest.created < ahead

    snaps = repo.snapshots(bundle="b")
    assert [s.id for s in snaps] == [future.snapshot_id, head.snapshot_id]  # seq order, not created
    assert [s.future for s in snaps] == [True, False]
    assert repo.newest(bundle="b") == head.snapshot_id
    assert repo.resolve("latest", bundle="b") == head.snapshot_id

    res = apply_retention(repo, "b", Policy(keep_last=1), prune=False)
    assert res.kept == [head.snapshot_id] and res.forgotten == [future.snapshot_id]
    assert repo.snapshot_ids(bundle="b") == [head.snapshot_id]
