"""The snapshot catalog (repository format v2 §3–4): order by seq through conditional creates, segments, tolerant
reads, forks, future-dated records, and reads whose cost does not grow with history."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import pytest

from llmdr.repo import catalog as cat
from llmdr.repo.catalog import Catalog, Entry, entry_key
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

    def get(self, key, **kw):
        self.calls["get"] += 1
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
    gets: list[str] = []
    real_get = store.get

    def get(key, **kw):
        gets.append(key)
        return real_get(key, **kw)

    store.get = get  # type: ignore[method-assign]
    v = Catalog(store, "m").read()
    assert [e.seq for e in v.live] == list(range(600))
    entries = [k for k in gets if "/e/" in k]
    segs = [k for k in gets if "/seg/" in k or "/s/" in k]
    assert len(entries) <= cat.SMALL_SEGMENT - 1  # 600 = 2 × 256 + 5 × 16 + 8
    assert len(entries) == 8 and len(segs) == 2 + 5
    assert store.calls["listed"] == 2 + 5 + 8  # small segments under large ones are not even listed
