"""The index log (design §2, "Reading without growth"): a command reads the newest compaction and what was logged
after it, never every index object ever written, and that short view always equals the full one — with writers
racing, stale views compacting, old repositories without a log, junk in the log and pruned objects."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from llmdr.repo.index import IndexEntry, IndexFile, index_id
from llmdr.repo.indexlog import BASES, ENTRIES, base_key, log_key
from llmdr.repo.layout import INDEX, RepoConfig, index_key
from llmdr.repo.repository import Repository
from llmdr.storage.memory import MemoryStore


class Counting(MemoryStore):
    """A memory store that counts GETs and listed keys per top-level prefix."""

    def __init__(self) -> None:
        super().__init__("counting")
        self.calls: Counter = Counter()

    def get(self, key, **kw):
        self.calls["get " + key.split("/")[0]] += 1
        return super().get(key, **kw)

    def list(self, prefix="", **kw):
        for info in super().list(prefix, **kw):
            self.calls["listed " + prefix.split("/")[0]] += 1
            yield info


def _repo(store: MemoryStore, cache: Path | None = None) -> Repository:
    r = Repository(store, cache_dir=cache)
    r.ensure_config(RepoConfig())
    return r


def _entry(n: int) -> IndexEntry:
    h = hashlib.sha256(str(n).encode()).digest()
    return IndexEntry(h, hashlib.sha256(b"pack" + h).digest(), 16, 10, 10)


def _view(r: Repository) -> tuple:
    idx = r.index()
    return idx.chunks(), idx.packs(), {c: idx.lookup(c) for c in idx.chunks()}


def _fresh(store: MemoryStore, *, full: bool) -> tuple:
    r = Repository(store)
    r.index(full=full)
    return _view(r)


def test_a_cold_read_stays_flat_as_indexes_accumulate(tmp_path: Path) -> None:
    store = Counting()
    writer = _repo(store, tmp_path / "w")
    costs = {}
    for n in range(400):
        writer.index(refresh=True)
        writer.add_index([_entry(n)])
        writer.compact_if_needed()
        if n in (20, 399):
            store.calls.clear()
            cold = Repository(store)
            assert len(cold.index()) == n + 1
            costs[n] = dict(store.calls)
    assert costs[399].get("listed index", 0) == 0  # the index/ objects are not listed once a base exists
    assert costs[399]["get index"] + costs[399]["get indexlog"] <= 2 * 33 + 1
    assert costs[399].get("listed indexlog", 0) <= 33 + 400 // 32 + 1  # the tail and the few bases
    assert _fresh(store, full=False) == _fresh(store, full=True)


def test_a_warm_read_gets_only_what_was_logged_since(tmp_path: Path) -> None:
    store = Counting()
    writer = _repo(store)
    for n in range(100):
        writer.add_index([_entry(n)])
        writer.compact_if_needed()
    warm = _repo(store, tmp_path / "cache")
    warm.index()
    writer.add_index([_entry(1000)])
    store.calls.clear()
    assert len(warm.index(refresh=True)) == 101
    assert store.calls["get indexlog"] == 1 and store.calls.get("get index", 0) == 0


def test_a_writer_with_a_stale_view_logs_after_a_compaction_it_did_not_see() -> None:
    store = MemoryStore()
    a, b = _repo(store), _repo(store)
    for n in range(40):
        a.add_index([_entry(n)])
    b.index(refresh=True)  # b's view: the 40 indexes
    a.index(refresh=True)
    a.compact_if_needed()  # a merges them: a base covers everything logged so far
    b.add_index([_entry(500)])  # b still believes seq 40 is next: it learns better and logs after the merge
    seqs = sorted(int(i.key[len(ENTRIES):]) for i in store.list(ENTRIES))
    assert seqs == list(range(len(seqs)))  # dense: no seq taken twice, none skipped
    fast = _fresh(store, full=False)
    assert fast == _fresh(store, full=True) and hashlib.sha256(b"500").digest() in fast[0]


def test_a_compaction_from_a_stale_view_never_hides_what_it_did_not_see() -> None:
    store = MemoryStore()
    a, b = _repo(store), _repo(store)
    for n in range(40):
        a.add_index([_entry(n)])
    b.index(refresh=True)  # b will compact this view later
    a.add_index([_entry(600)])  # logged after b's view
    b.compact_if_needed()
    assert [i.key for i in store.list(BASES)] == [base_key(40, 41)]  # b's base covers only what b saw
    fast = _fresh(store, full=False)
    assert fast == _fresh(store, full=True) and len(fast[0]) == 41


def test_an_old_repository_without_a_log_is_read_in_full_then_from_its_first_base(tmp_path: Path) -> None:
    store = Counting()
    for n in range(40):  # what llmdr wrote before the log: index/ objects only
        data = IndexFile((_entry(n),), (os.urandom(32),)).to_bytes()
        store.put(index_key(index_id(data)), data)
    store.calls.clear()
    r = _repo(store, tmp_path / "c")
    assert len(r.index()) == 40 and store.calls["listed index"] == 40  # no log yet: every index/ object
    assert r.compact_if_needed() is not None
    assert [i.key for i in store.list(BASES)] == [base_key(0, 0)]  # the merge of every older object, logged first
    r.add_index([_entry(41)])
    store.calls.clear()
    cold = Repository(store)
    assert len(cold.index()) == 41 and store.calls.get("listed index", 0) == 0
    assert _fresh(store, full=False) == _fresh(store, full=True)


def test_junk_in_the_log_falls_back_to_reading_every_index() -> None:
    store = MemoryStore()
    w = _repo(store)
    for n in range(40):
        w.add_index([_entry(n)])
        w.compact_if_needed()
    top = max(int(i.key[len(ENTRIES):]) for i in store.list(ENTRIES))
    store.put(log_key(top + 1), b"junk")
    w.add_index([_entry(99)])  # takes the seq after the junk
    assert _fresh(store, full=False) == _fresh(store, full=True)
    assert hashlib.sha256(b"99").digest() in _fresh(store, full=False)[0]


def test_a_logged_compaction_whose_object_is_gone_falls_back_to_every_index(caplog) -> None:
    store = MemoryStore()
    w = _repo(store)
    for n in range(34):
        w.add_index([_entry(n)])
    merged = w.compact_if_needed()
    assert merged is not None
    w.add_index([_entry(77)])
    store.delete(index_key(merged))  # gone (a prune, or an older llmdr's prune that merged it away unlogged)
    r = Repository(store)
    assert len(r.index()) == 35  # the objects it merged are still there, and read
    assert "reading every index object instead" in caplog.text
    assert _view(r) == _fresh(store, full=True)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["add", "refresh", "compact"])), max_size=60))
def test_the_short_view_always_equals_the_full_view(steps) -> None:
    store = MemoryStore()
    writers = [_repo(store) for _ in range(3)]
    for n, (who, what) in enumerate(steps):
        w = writers[who]
        if what == "add":
            w.add_index([_entry(n)])
        elif what == "refresh":
            w.index(refresh=True)
        else:
            w.compact_if_needed(threshold=2)
    fast, full = _fresh(store, full=False), _fresh(store, full=True)
    assert fast == full
    assert len(full[0]) == sum(1 for _, what in steps if what == "add")


def test_legacy_objects_are_still_written_for_older_llmdr() -> None:
    store = MemoryStore()
    w = _repo(store)
    iid = w.add_index([_entry(1)])
    assert [i.key for i in store.list(INDEX)] == [index_key(iid)]
    assert store.get(log_key(0)) == store.get(index_key(iid))  # a writer's small index is logged inline
