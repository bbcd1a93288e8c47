"""Prune (repository format v2, design §5): two phases a safety time ``S`` apart, rescue of planned packs a new
snapshot uses, the writer's commit check, repacking partly used packs, Object Lock, and the race the issue names
("a snapshot that reuses old content while prune runs") looped with widened timing.

Store time is moved with ``MemoryStore.clock_skew`` (everything stored so far becomes older, plans included), never
with the local clock. A writer "that never looks at ``locks/``" (an old client, a second tool) is modelled by
``LockBlind``: the repository's safety must not depend on locks."""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmdr.repo import snapshot as snapshot_mod
from llmdr.repo.chunking import ChunkerParams
from llmdr.repo.integrity import verify_snapshot
from llmdr.repo.layout import RepoConfig, record_key
from llmdr.repo.prune import PRUNE, prune
from llmdr.repo.repolock import LOCKS
from llmdr.repo.repository import Repository
from llmdr.repo.restore import restore_snapshot
from llmdr.repo.snapshot import SnapshotResult, take_snapshot
from llmdr.storage.memory import MemoryStore
from tests.support.damage import chunk_pack, pack_keys
from tests.support.trees import read_tree, write_tree

SMALL = ChunkerParams(avg_size=4096, min_size=1024, max_size=16384)
S = 3600.0  # the safety time used with a moved store clock
BUNDLE = "b"


class LockBlind:
    """A store as seen by a writer that ignores repository locks: its lock objects are never written, and it sees
    nobody else's. ``jitter_s`` sleeps a random time up to that before every call, to widen race windows."""

    def __init__(self, inner, *, jitter_s: float = 0.0, seed: int = 0) -> None:
        self.inner = inner
        self.jitter_s = jitter_s
        self._rnd = random.Random(seed)

    def _wait(self) -> None:
        if self.jitter_s:
            time.sleep(self._rnd.uniform(0, self.jitter_s))

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def put(self, key, data, **kw):
        self._wait()
        if not key.startswith(LOCKS):
            self.inner.put(key, data, **kw)

    def get(self, key, **kw):
        self._wait()
        return self.inner.get(key, **kw)

    def delete(self, key):
        self._wait()
        if not key.startswith(LOCKS):
            self.inner.delete(key)

    def list(self, prefix="", **kw):
        self._wait()
        return iter([i for i in self.inner.list(prefix, **kw) if not i.key.startswith(LOCKS)])


def new_repo(*, encrypted: bool = False, **cfg) -> tuple[Repository, MemoryStore]:
    """A repository on a memory store (its clock is the returned store's), optionally encrypted."""
    store = MemoryStore("prune")
    if encrypted:
        from llmdr.storage.crypto import EncryptingStore

        repo = Repository(EncryptingStore(store, bytes(range(32))))
    else:
        repo = Repository(store)
    repo.ensure_config(RepoConfig(chunker=SMALL, **cfg))
    return repo, store


def content(seed: int, n: int = 60_000) -> bytes:
    return random.Random(seed).randbytes(n)


def snap(repo: Repository, src: Path, files: dict[str, bytes]):
    for old in src.glob("*") if src.exists() else []:
        old.unlink()
    write_tree(src, files)
    return take_snapshot(repo, src, bundle=BUNDLE)


def packs_of(repo: Repository, result) -> set[str]:
    """Pack keys holding the chunks of a snapshot (fresh index)."""
    fresh = Repository(repo.store)
    return {chunk_pack(fresh, d) for d in result.manifest.chunk_set()}


def assert_sound(store, sid: str, src_files: dict[str, bytes], out: Path) -> None:
    """The snapshot verifies (every chunk read and proven) and restores to exactly ``src_files``."""
    fresh = Repository(store)
    res = verify_snapshot(fresh, sid, workers=2)
    assert res.ok, f"snapshot {sid[:12]}: missing {res.missing}, corrupt {res.corrupt}"
    restore_snapshot(fresh, sid, out, durable=False)
    assert read_tree(out) == src_files


@dataclass
class Forgotten:
    """Two snapshots of one small file each (one pack each) on a memory store; the first (``a``, in pack ``p1``) is
    forgotten, its pack not yet older than ``S``."""

    repo: Repository
    store: MemoryStore
    src: Path
    a: dict[str, bytes]
    b: dict[str, bytes]
    s1: SnapshotResult
    s2: SnapshotResult
    p1: str  # key of s1's pack

    @property
    def p1_id(self) -> str:
        return self.p1.rsplit("/", 1)[1]


def around_commit_check(monkeypatch, *, before=None, after=None) -> None:
    """Run ``before()`` and ``after()`` around a writer's commit check (``snapshot._recheck_reused``)."""
    original = snapshot_mod._recheck_reused

    def hooked(*args, **kw):
        if before is not None:
            before()
        original(*args, **kw)
        if after is not None:
            after()

    monkeypatch.setattr(snapshot_mod, "_recheck_reused", hooked)


@pytest.fixture
def forgotten(tmp_path) -> Forgotten:
    repo, store = new_repo()
    src = tmp_path / "src"
    a, b = {"a.bin": content(1)}, {"b.bin": content(2)}
    s1 = snap(repo, src, a)
    s2 = snap(repo, src, b)
    (p1,) = packs_of(repo, s1)
    repo.forget(BUNDLE, [s1.snapshot_id])
    return Forgotten(repo, store, src, a, b, s1, s2, p1)


def test_packs_go_in_two_runs_a_safety_time_apart(forgotten, tmp_path):
    f = forgotten
    repo, store = f.repo, f.store
    r = prune(repo, safety_s=S)  # the packs are younger than S: a writer may not have indexed them yet
    assert r.planned == [] and r.deleted == [] and r.packs_in_grace == 1
    store.clock_skew += S
    r = prune(repo, safety_s=S)  # phase one: marked, nothing deleted
    assert r.planned == [f.p1_id] and r.deleted == []
    assert store.head(f.p1) and any(True for _ in store.list(PRUNE))
    r = prune(repo, safety_s=S - 1)  # the plan is not S old yet: still nothing deleted, nothing planned twice
    assert r.deleted == [] and r.planned == [] and r.plans_pending == 1
    store.clock_skew += S
    r = prune(repo, safety_s=S)  # phase two
    assert r.deleted == [f.p1_id] and r.rescued == []
    assert r.chunks_deleted == len(f.s1.manifest.chunk_set()) and r.bytes_freed >= len(f.a["a.bin"])
    assert f.p1 not in pack_keys(repo) and list(store.list(PRUNE)) == []
    assert record_key(f.s1.snapshot_id) not in {i.key for i in store.list("snaps/")}
    assert set(Repository(store).list_chunks()) == set(f.s2.manifest.chunk_set())
    assert_sound(store, f.s2.snapshot_id, f.b, tmp_path / "out")


def test_a_snapshot_between_plan_and_delete_restores_after_the_delete(forgotten, tmp_path):
    """A writer that sees the plan does not rely on the planned pack: it stores those chunks again."""
    f = forgotten
    f.store.clock_skew += S
    assert prune(f.repo, safety_s=S).planned == [f.p1_id]

    s3 = snap(Repository(f.store), f.src, f.a)  # the forgotten content again
    assert s3.chunks_new == len(s3.manifest.chunk_set())  # none taken from the planned pack
    f.store.clock_skew += S
    r = prune(f.repo, safety_s=S)
    assert r.deleted == [f.p1_id] or r.rescued == [f.p1_id]
    assert_sound(f.store, s3.snapshot_id, f.a, tmp_path / "out")


def test_a_plan_made_after_the_writers_check_is_rescued(forgotten, tmp_path, monkeypatch):
    """The writer checked (no plan yet), then a prune planned the pack it reuses, then the writer published: phase
    two sees the new snapshot and rescues the pack."""
    f = forgotten
    repo, store = f.repo, f.store
    store.clock_skew += 2 * S
    planned = []
    around_commit_check(monkeypatch, after=lambda: planned.extend(prune(repo, safety_s=S).planned))
    s3 = snap(Repository(LockBlind(store)), f.src, f.a)
    assert s3.chunks_new == 0 and planned == [f.p1_id]  # it reused the pack that is now planned
    store.clock_skew += S
    r = prune(repo, safety_s=S)
    assert r.rescued == [f.p1_id] and r.deleted == []
    assert store.head(f.p1)
    assert_sound(store, s3.snapshot_id, f.a, tmp_path / "out")
    store.clock_skew += 2 * S  # the rescued pack is in use: never planned again
    assert prune(repo, safety_s=S).planned == []
    assert prune(repo, safety_s=S).deleted == []
    assert_sound(store, s3.snapshot_id, f.a, tmp_path / "out2")


def test_the_writers_commit_check_stores_chunks_pruned_while_it_ran(forgotten, tmp_path, monkeypatch, caplog):
    """Both prune phases run between the snapshot's chunking (which reused a pack) and its publish: the commit
    check finds the chunks gone and stores them again from the source files."""
    f = forgotten
    repo, store = f.repo, f.store
    store.clock_skew += 2 * S
    runs = []

    def both_phases():
        runs.append(prune(repo, safety_s=S))  # plans the pack the writer reused
        store.clock_skew += S
        runs.append(prune(repo, safety_s=S))  # deletes it: no live snapshot uses it

    around_commit_check(monkeypatch, before=both_phases)
    with caplog.at_level(logging.WARNING, logger="llmdr.repo.snapshot"):
        s3 = snap(Repository(LockBlind(store)), f.src, f.a)
    assert s3.chunks_new == 0  # at chunking time every chunk was in the old pack
    assert runs[0].planned == [f.p1_id] and runs[1].deleted == [f.p1_id]
    assert "pruned meanwhile; storing them again" in caplog.text
    assert_sound(store, s3.snapshot_id, f.a, tmp_path / "out")
    store.clock_skew += 2 * S  # later prunes leave it whole
    prune(repo, safety_s=S)
    store.clock_skew += 2 * S
    prune(repo, safety_s=S)
    assert_sound(store, s3.snapshot_id, f.a, tmp_path / "out2")


def test_a_partly_used_pack_is_repacked(tmp_path):
    repo, store = new_repo()  # default pack target: one snapshot, one pack
    src = tmp_path / "src"
    both = {"big.bin": content(1, 200_000), "small.json": b'{"tokenizer": 1}' * 20}
    s1 = snap(repo, src, both)
    small = {"small.json": both["small.json"]}
    s2 = snap(repo, src, small)  # reuses the small file's chunk from s1's pack
    (p1,) = packs_of(repo, s1)
    assert packs_of(repo, s2) == {p1}
    repo.forget(BUNDLE, [s1.snapshot_id])
    before = sum(i.size for i in store.list("packs/"))
    store.clock_skew += S
    r = prune(repo, safety_s=S)
    assert r.repacked == 1 and r.planned == [p1.rsplit("/", 1)[1]]
    assert packs_of(repo, s2) != {p1} or len(pack_keys(repo)) == 2  # the used chunk has a second home
    store.clock_skew += S
    r = prune(repo, safety_s=S)
    assert r.deleted == [p1.rsplit("/", 1)[1]] and r.rescued == []
    after = sum(i.size for i in store.list("packs/"))
    assert after < before - 190_000 and after < 10_000
    assert packs_of(repo, s2).isdisjoint({p1})
    assert_sound(store, s2.snapshot_id, small, tmp_path / "out")


def test_a_fully_used_pack_is_left_alone(tmp_path):
    repo, store = new_repo()
    src = tmp_path / "src"
    s1 = snap(repo, src, {"a.bin": content(1)})
    store.clock_skew += 3 * S
    r = prune(repo, safety_s=S)
    assert r.planned == [] and r.repacked == 0 and r.packs_in_grace == 0
    store.clock_skew += 3 * S
    assert prune(repo, safety_s=S).deleted == []
    assert_sound(store, s1.snapshot_id, {"a.bin": content(1)}, tmp_path / "out")


def locked_region(stack, tmp_path, period: str):
    """A config whose DR region is a fresh bucket with COMPLIANCE Object Lock for ``period``."""
    from tests.support.config import two_regions

    cfg = two_regions(stack, tmp_path, secondary_bucket=f"llmdr-lock-{uuid.uuid4().hex[:10]}", secondary_prefix="",
                      secondary=f"    object_lock: {{mode: COMPLIANCE, period: {period}}}")
    assert adapter_of(cfg).ensure_bucket(object_lock=True) is True
    return cfg


def adapter_of(cfg):
    from llmdr.storage.factory import adapter

    return adapter(cfg, cfg.secondaries[0])


def test_locked_packs_are_never_deleted(stack, tmp_path):
    """Real SeaweedFS with Object Lock: phase one does not plan a locked pack; a pack whose lock was extended after
    it was planned (an operator's hold) is left by phase two, reported, and stays readable."""
    from llmdr.repo.locks import Locker
    from llmdr.repo.replicate import replicate_snapshot
    from llmdr.storage.factory import open_region

    cfg = locked_region(stack, tmp_path, "3s")
    src = tmp_path / "src"
    primary = Repository(open_region(cfg, cfg.primary))
    primary.ensure_config(RepoConfig(chunker=SMALL))
    dr = Repository(open_region(cfg, cfg.secondaries[0]))
    a, b = {"a.bin": content(1, 30_000)}, {"b.bin": content(2, 30_000)}
    s1 = snap(primary, src, a)
    replicate_snapshot(primary, dr, s1.snapshot_id, workers=2)
    s2 = snap(primary, src, b)
    replicate_snapshot(primary, dr, s2.snapshot_id, workers=2)
    (p1,) = packs_of(dr, s1)
    dr.forget(BUNDLE, [s1.snapshot_id])  # works under Object Lock: a forget entry, nothing deleted

    r = prune(dr, safety_s=0)
    assert r.planned == [] and r.packs_locked >= 1 and r.deleted == []
    time.sleep(3.5)  # the locks end: now it is planned
    r = prune(dr, safety_s=0)
    assert p1.rsplit("/", 1)[1] in r.planned
    locker = Locker.of(dr.store)
    assert locker.extend([p1], until=time.time() + 30) == 1  # locked again after it was planned
    r = prune(dr, safety_s=0)
    assert p1.rsplit("/", 1)[1] not in r.deleted and r.packs_locked >= 1
    assert locker.locked(p1) is not None and dr.store.head(p1).size > 0
    assert dr.store.get(p1)[:8] == b"LLMDRP2\0"
    assert_sound(dr.store, s2.snapshot_id, b, tmp_path / "out")


# the race -------------------------------------------------------------------------------------------------

RACE_S = 0.25  # real seconds: far longer than a writer's commit check to its catalog entry (a few jittered calls)


def race_once(i: int, tmp: Path) -> str:
    """One round: a forgotten snapshot's content is snapshotted again by a lock-ignoring writer while prunes run.
    Returns what happened to the old packs: ``kept`` (the writer published before any plan), ``rescued`` or
    ``deleted`` (the writer stored the chunks anew).

    The region is encrypted, so a pack stored again gets a new id (random nonces); on a plain region it gets the
    old id, which ``test_a_pack_stored_again_under_a_planned_id_during_phase_two`` shows is not yet safe."""
    rnd = random.Random(i)
    repo, clock = new_repo(encrypted=True, pack_target=16 * 1024)
    store = repo.store
    src = tmp / f"src{i}"
    a = {"a.bin": content(3 * i, 40_000), "c.json": b'{"i": %d}' % i}
    b = {"b.bin": content(3 * i + 1, 20_000)}
    s1 = snap(repo, src, a)
    s2 = snap(repo, src, b)
    old = packs_of(repo, s1)
    repo.forget(BUNDLE, [s1.snapshot_id])
    clock.clock_skew += 10 * RACE_S  # everything so far is old enough to plan
    result: dict = {}

    def writer() -> None:
        time.sleep(rnd.uniform(0, 2 * RACE_S))
        try:
            blind = Repository(LockBlind(store, jitter_s=0.004, seed=i))
            result["snap"] = snap(blind, src, a)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            result["error"] = exc

    t = threading.Thread(target=writer)
    t.start()
    outcomes = []
    while t.is_alive():
        outcomes.append(prune(repo, safety_s=RACE_S))
        time.sleep(rnd.uniform(0, RACE_S / 4))
    t.join()
    assert "error" not in result, f"round {i}: the snapshot failed: {result.get('error')!r}"
    time.sleep(RACE_S)
    outcomes.append(prune(repo, safety_s=RACE_S))  # phase two for every plan made while the writer ran
    time.sleep(RACE_S)
    outcomes.append(prune(repo, safety_s=RACE_S))
    s3 = result["snap"]
    for n, (sid, files) in enumerate(((s3.snapshot_id, a), (s2.snapshot_id, b))):
        assert_sound(store, sid, files, tmp / f"out{i}-{n}")
    assert Repository(store).snapshot_ids(bundle=BUNDLE)[-1] == s3.snapshot_id
    old_ids = {k.rsplit("/", 1)[1] for k in old}
    if any(old_ids & set(o.rescued) for o in outcomes):
        return "rescued"
    if any(old_ids & set(o.deleted) for o in outcomes):
        return "deleted"
    return "kept"


@pytest.mark.slow
def test_a_snapshot_reusing_old_content_while_prune_runs_never_loses_a_chunk(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    seen: dict[str, int] = {}
    # 100 independent rounds, two at a time (each mostly waits on its safety time): more contention, not less
    with ThreadPoolExecutor(max_workers=2) as pool:
        for out in pool.map(lambda i: race_once(i, tmp_path / uuid.uuid4().hex[:6]), range(100)):
            seen[out] = seen.get(out, 0) + 1
    # the rounds did meet prune at different moments (not all before or all after it)
    assert len(seen) >= 2, seen
    assert seen.get("deleted", 0) + seen.get("rescued", 0) > 0, seen


def test_a_pack_stored_again_under_a_planned_id_during_phase_two(forgotten, tmp_path):
    f = forgotten
    store = f.store
    store.clock_skew += 2 * S
    assert prune(f.repo, safety_s=S).planned == [f.p1_id]
    store.clock_skew += S
    written = {}

    class SnapshotBeforeDelete(LockBlind):
        """Phase two's store: a lock-ignoring writer snapshots the forgotten content again just before the
        planned pack is deleted (after phase two listed the packs and wrote its index)."""

        def delete(self, key):
            if key == f.p1 and not written:
                written["s3"] = snap(Repository(LockBlind(store)), f.src, f.a)
            self.inner.delete(key)

    r = prune(Repository(SnapshotBeforeDelete(store)), safety_s=S)
    assert written and r.deleted == [f.p1_id]
    assert_sound(store, written["s3"].snapshot_id, f.a, tmp_path / "out")


def test_phase_one_uses_what_phase_two_read(forgotten, monkeypatch):
    """A prune with a due plan lists the plans once and walks the live snapshots' file lists once: phase one takes
    both from phase two (less the records phase two deleted, which are not planned again)."""
    from llmdr.repo import prune as prune_mod

    repo, store = forgotten.repo, forgotten.store
    store.clock_skew += 2 * S
    assert prune(repo, safety_s=S).planned == [forgotten.p1_id]
    store.clock_skew += S
    calls = {"plans": 0, "used_chunks": 0}

    def counting(name: str):
        original = getattr(prune_mod, name)

        def counted(*args, **kw):
            calls[name] += 1
            return original(*args, **kw)
        return counted

    for name in calls:
        monkeypatch.setattr(prune_mod, name, counting(name))
    r = prune(repo, safety_s=S)
    assert r.deleted == [forgotten.p1_id] and r.records_deleted == 1 and r.planned == []
    assert calls == {"plans": 1, "used_chunks": 1}
    assert list(store.list(PRUNE)) == []  # the deleted record was not planned again
