"""The snapshot catalog (repository format v2 §3–4): order by seq through conditional creates, segments, tolerant
reads, forks, future-dated records, and reads whose cost does not grow with history."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmdr.errors import StorageError
from llmdr.repo import catalog as cat
from llmdr.repo.catalog import Catalog, Entry, entry_key
from llmdr.repo.layout import RepoConfig
from llmdr.repo.manifest import canonical_json
from llmdr.storage.memory import MemoryStore


def _record(bundle: str, n: int, created: str = "2026-12-03T07:00:00.000000Z") -> tuple[str, dict]:
    import hashlib

    rec = {"bundle": bundle, "created": created, "n": n}
    return hashlib.sha256(canonical_json(rec)).hexdigest(), rec


def _snap(c: Catalog, n: int, **kw) -> Entry:
    def make(seq: int, prev: str | None) -> Entry:
        sid, rec = _record(c.bundle, n, **kw)
        return Entry(seq, "snapshot", sid, prev, rec)

    return c.append(make)


class Counting(MemoryStore):
    """A memory store that counts calls per method (what a command costs against a real store)."""

    def __init__(self) -> None:
        super().__init__("counting")
        self.calls: Counter = Counter()
        self.gets: list[str] = []  # every key read, in order

    def get(self, key, **kw):
        self.calls["get"] += 1
        self.gets.append(key)
        return super().get(key, **kw)

    def list(self, prefix="", **kw):
        self.calls["list"] += 1
        for info in super().list(prefix, **kw):
            self.calls["listed"] += 1
            yield info


def test_seq_order_prev_chain_and_forget() -> None:
    c = Catalog(MemoryStore(), "m")
    a, b, d = _snap(c, 1), _snap(c, 2), _snap(c, 3)
    assert [a.seq, b.seq, d.seq] == [0, 1, 2]
    assert (a.prev, b.prev, d.prev) == (None, a.id, b.id)
    c.append(lambda seq, prev: Entry(seq, "forget", forget=(b.id,)))
    v = c.read()
    assert [e.id for e in v.live] == [a.id, d.id] and v.head.id == d.id and v.next_seq == 4
    e = _snap(c, 4)
    assert e.prev == d.id and not c.read().forks


def test_two_writers_never_share_a_seq() -> None:
    store = MemoryStore()
    done: list[Entry] = []
    lock = threading.Lock()

    def writer(k: int) -> None:
        c = Catalog(store, "m")
        for i in range(10):
            e = _snap(c, k * 100 + i)
            with lock:
                done.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seqs = [e.seq for e in done]
    assert sorted(seqs) == list(range(40))  # 40 appends, 40 distinct seqs, no gap
    v = Catalog(store, "m").read()
    assert len(v.live) == 40 and not v.forks  # each entry's prev was the head when it won its seq


def test_segments_cover_history_and_reads_stay_flat(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cat, "SEGMENT", 16)
    store = Counting()
    c = Catalog(store, "m", cache_dir=tmp_path / "cache")
    for i in range(100):
        _snap(c, i)
    segs = [i.key for i in MemoryStore.list(store, "catalog/") if "/seg/" in i.key]
    assert len(segs) == 6  # 96 entries sealed in 6 segments; 4 in the tail
    cold = Catalog(store, "m")  # no cache: segments + tail only
    store.calls.clear()
    v = cold.read()
    assert [e.seq for e in v.live] == list(range(100)) and v.covered == 96
    assert store.calls["get"] == 6 + 4 and store.calls["listed"] == 6 + 4
    warm = Catalog(store, "m", cache_dir=tmp_path / "cache2")
    warm.read()
    store.calls.clear()
    warm.read()
    assert store.calls["get"] == 0  # everything seen before comes from the cache


def test_junk_entry_is_named_and_skipped_and_keeps_its_seq() -> None:
    store = MemoryStore()
    c = Catalog(store, "m")
    a = _snap(c, 1)
    store.put(entry_key("m", 1), b"not json at all")
    forged = {"kind": "snapshot", "seq": 2, "id": "0" * 64, "prev": a.id, "record": {"bundle": "m", "created": "x"}}
    store.put(entry_key("m", 2), canonical_json(forged))
    v = c.read()
    assert [e.id for e in v.live] == [a.id]
    assert set(v.skipped) == {entry_key("m", 1), entry_key("m", 2)}
    assert "does not hash" in v.skipped[entry_key("m", 2)]
    b = _snap(c, 2)
    assert b.seq == 3 and b.prev == a.id  # the next writer takes the seq after the junk


def test_fork_and_future_dated_are_reported() -> None:
    store = MemoryStore()
    c = Catalog(store, "m")
    a = _snap(c, 1)
    _snap(c, 2)
    sid, rec = _record("m", 3)
    store.put(entry_key("m", 2), canonical_json(Entry(2, "snapshot", sid, a.id, rec).to_json()))  # a stale prev
    fut = _snap(c, 4, created="2099-01-01T00:00:00.000000Z")
    v = c.read()
    assert v.forks == [sid] and v.future == [fut.id]
    assert v.head.id == fut.id  # order is seq, whatever the record claims


def test_entry_of_another_bundle_is_not_listed() -> None:
    store = MemoryStore()
    sid, rec = _record("other", 1)
    store.put(entry_key("m", 0), canonical_json(Entry(0, "snapshot", sid, None, rec).to_json()))
    v = Catalog(store, "m").read()
    assert not v.live and entry_key("m", 0) in v.skipped


def test_segment_that_does_not_hash_to_its_name_is_skipped(monkeypatch) -> None:
    monkeypatch.setattr(cat, "SEGMENT", 4)
    store = MemoryStore()
    c = Catalog(store, "m")
    ids = [_snap(c, i).id for i in range(6)]
    seg = next(i.key for i in store.list("catalog/") if "/seg/" in i.key)
    store.corrupt(seg, json.dumps({"first": 0, "last": 3, "entries": []}).encode())
    v = Catalog(store, "m").read()  # a new reader (this process already proved and kept the intact one)
    assert seg in v.skipped
    assert [e.id for e in v.live] == ids  # the entries below the bad segment are read one by one
    skipped: dict[str, str] = {}
    assert [e.id for e in Catalog(store, "m").newest_first(skipped)] == ids[::-1] and seg in skipped


@pytest.mark.parametrize("n", [10, 300])
def test_head_cost_does_not_grow_with_history(n: int, monkeypatch) -> None:
    store = Counting()
    c = Catalog(store, "m")
    for i in range(n):
        _snap(c, i)
    store.calls.clear()
    Catalog(store, "m").read()
    assert store.calls["listed"] <= cat.SEGMENT + 2  # a segment or two and the tail, never every entry


def test_a_cold_reader_gets_at_most_15_entries_one_by_one() -> None:
    store = Counting()
    c = Catalog(store, "m")
    for i in range(600):
        _snap(c, i)
    store.calls.clear()
    gets = store.gets
    gets.clear()
    v = Catalog(store, "m").read()
    assert [e.seq for e in v.live] == list(range(600))
    entries = [k for k in gets if "/e/" in k]
    segs = [k for k in gets if "/seg/" in k or "/s/" in k]
    assert len(entries) <= cat.SMALL_SEGMENT - 1  # 600 = 2 × 256 + 5 × 16 + 8
    assert len(entries) == 8 and len(segs) == 2 + 1  # the widest small segment holds all 80 past the large ones
    assert store.calls["listed"] == 2 + 5 + 8  # small segments under large ones are not even listed


def test_the_tip_reads_only_the_recent_past() -> None:
    """A writer (and `latest`) needs the head and the next seq: a cold reader of 600 entries fetches the entries
    past the last small segment and nothing older, however long the history."""
    store = Counting()
    c = Catalog(store, "m")
    made = [_snap(c, i) for i in range(600)]
    gets = store.gets
    gets.clear()
    tip = Catalog(store, "m").tip()
    assert tip.head.id == made[-1].id and tip.next_seq == 600 and tip.covered == 592
    assert [e.seq for e in tip.tail] == list(range(592, 600))
    assert gets and all("/e/" in k for k in gets)  # no segment at all: the head is among the newest entries
    # the head's entry forgotten with the 40 before it: the walk goes back into the (one) small segment
    c.append(lambda seq, prev: Entry(seq, "forget", forget=tuple(e.id for e in made[-41:])))
    gets.clear()
    tip = Catalog(store, "m").tip()
    assert tip.head.id == made[-42].id and tip.next_seq == 601
    assert not any("/seg/" in k for k in gets) and sum("/s/" in k for k in gets) == 1


class _SealsFail(MemoryStore):
    """Refuses segment puts while ``failing`` (a seal that did not happen: best effort, a later one makes up)."""

    failing = False

    def put(self, key, data, **kw):
        if self.failing and ("/s/" in key or "/seg/" in key):
            raise StorageError("segment refused (test)")
        return super().put(key, data, **kw)


@given(st.lists(st.tuples(st.sampled_from(["new", "again", "forget", "other", "seals"]), st.integers(0, 10**6)),
                max_size=80))
@settings(max_examples=80, deadline=None)
def test_the_newest_first_walk_agrees_with_the_full_read(ops) -> None:
    """Whatever the mix of new snapshots, copies published twice, forgets, entries of another bundle and seals
    that failed (small blocks here: 4 entries, 8 per large segment): the lazy walk lists what the full read lists
    (reversed), the tip has its head and next seq, and every entry is in the segments or read one by one."""
    saved = cat.SEGMENT, cat.SMALL_SEGMENT
    cat.SEGMENT, cat.SMALL_SEGMENT = 8, 4
    try:
        _walk_agrees(ops)
    finally:
        cat.SEGMENT, cat.SMALL_SEGMENT = saved


def _walk_agrees(ops) -> None:
    store = _SealsFail()
    c = Catalog(store, "m")
    made: list[Entry] = []
    for i, (op, pick) in enumerate(ops):
        if op == "seals":
            store.failing = not store.failing
        elif op == "new" or not made:
            made.append(_snap(c, i))
        elif op == "again":
            old = made[pick % len(made)]
            c.append(lambda seq, prev, old=old: Entry(seq, "snapshot", old.id, prev, old.record))
        elif op == "forget":
            c.append(lambda seq, prev, pick=pick: Entry(seq, "forget", forget=(made[pick % len(made)].id,)))
        else:
            sid, rec = _record("other", i)
            c.append(lambda seq, prev, sid=sid, rec=rec: Entry(seq, "snapshot", sid, prev, rec))
    fresh = Catalog(store, "m")
    full = fresh.read()
    assert [e.seq for e in full.entries] == list(range(full.next_seq))  # nothing lost between segments
    assert [e.seq for e in fresh.newest_first()] == [e.seq for e in reversed(full.live)]
    tip = Catalog(store, "m").tip()
    assert (tip.head, tip.next_seq) == (full.head, full.next_seq)


def test_a_copy_published_twice_takes_its_newer_place() -> None:
    """Two replicates of one snapshot racing: both entries stay; the snapshot is listed once, at the newer one
    (so "latest" is the live entry with the highest seq, as the lazy walk finds it)."""
    c = Catalog(MemoryStore(), "m")
    a, b = _snap(c, 1), _snap(c, 2)
    c.append(lambda seq, prev: Entry(seq, "snapshot", a.id, prev, a.record))
    v = c.read()
    assert [e.id for e in v.live] == [b.id, a.id] and v.head.seq == 2 and not v.forks
    assert c.tip().head.seq == 2


def test_no_record_means_no_snapshot_without_reading_the_catalog() -> None:
    """Replicate asks the destination whether it lists a snapshot: without the record (stored before the entry)
    it cannot, and the destination's catalog is not read at all."""
    from llmdr.repo.repository import Repository

    store = Counting()
    repo = Repository(store)
    repo.ensure_config(RepoConfig())
    store.calls.clear()
    assert not repo.has_snapshot("ab" * 32, bundle="m") and store.calls["list"] == 0


def test_a_large_segment_that_failed_is_written_by_the_next_seal(monkeypatch) -> None:
    monkeypatch.setattr(cat, "SEGMENT", 8)
    monkeypatch.setattr(cat, "SMALL_SEGMENT", 4)
    store = _SealsFail()
    c = Catalog(store, "m")
    store.failing = True
    for i in range(10):  # the seals at seq 3 and 7 (small, then the large one) fail
        _snap(c, i)
    assert not [i.key for i in store.list("catalog/") if "/seg/" in i.key or "/s/" in i.key]
    store.failing = False
    for i in range(10, 12):  # the seal at seq 11 writes the large segment 0-7 and the small one 8-11
        _snap(c, i)
    segs = sorted(i.key.rsplit("/", 2)[-2] + "/" + i.key.rsplit("/", 1)[1][:25] for i in store.list("catalog/")
                  if "/seg/" in i.key or "/s/" in i.key)
    assert segs == ["s/000000000008-000000000011", "seg/000000000000-000000000007"]
    gets: list[str] = []
    real_get = store.get
    store.get = lambda key, **kw: gets.append(key) or real_get(key, **kw)  # type: ignore[method-assign]
    v = Catalog(store, "m").read()
    assert [e.seq for e in v.live] == list(range(12)) and not [k for k in gets if "/e/" in k]
