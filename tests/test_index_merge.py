"""Index objects (design §2): byte format, damage detection, merge laws and the master index's superseding rule."""

from __future__ import annotations

import hashlib
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmdr.errors import IntegrityError
from llmdr.repo.index import IndexEntry, IndexFile, MasterIndex, index_id, merge

CHUNKS = [bytes([0xC0 + i]) * 32 for i in range(6)]
PACKS = [bytes([0x10 + i]) * 32 for i in range(4)]
FAST = settings(max_examples=150, deadline=None)

entry_st = st.builds(
    IndexEntry,
    chunk=st.sampled_from(CHUNKS),
    pack=st.sampled_from(PACKS),
    offset=st.one_of(st.integers(0, 100), st.just(2**64 - 1)),
    stored_length=st.one_of(st.integers(0, 100), st.just(2**32 - 1)),
    plain_length=st.integers(0, 100),
)
raw_id_st = st.binary(min_size=32, max_size=32)
file_st = st.builds(IndexFile, entries=st.lists(entry_st, max_size=12).map(tuple),
                    supersedes=st.lists(raw_id_st, max_size=3).map(tuple))


def named(f: IndexFile) -> tuple[str, IndexFile]:
    return index_id(f.to_bytes()), f


def key(e: IndexEntry) -> tuple:
    return (e.chunk, e.pack, e.offset, e.stored_length, e.plain_length)


def master_of(pairs, order_seed: int = 0) -> MasterIndex:
    pairs = list(pairs)
    random.Random(order_seed).shuffle(pairs)
    m = MasterIndex()
    for i, f in pairs:
        m.add(i, f)
    return m


def view(m: MasterIndex, avoid: frozenset[bytes]) -> tuple:
    """Everything a caller can observe of a master index, for comparing two of them."""
    return (
        len(m), m.chunks(), m.packs(),
        {c: m.lookup(c, avoid=avoid) for c in CHUNKS},
        {c: m.has(c, avoid=avoid) for c in CHUNKS},
        {p: m.entries_of_pack(p) for p in PACKS},
    )


# --- the byte format -------------------------------------------------------------------------------------------


@FAST
@given(file_st)
def test_round_trip_is_byte_stable(f):
    data = f.to_bytes()
    back = IndexFile.from_bytes(data, where="mem:index/x")
    assert back == f
    assert back.to_bytes() == data
    assert index_id(data) == hashlib.sha256(data).hexdigest()
    assert back.packs == {e.pack for e in f.entries}


def test_layout_matches_the_design():
    e1 = IndexEntry(CHUNKS[1], PACKS[1], 7, 40, 24)
    e0 = IndexEntry(CHUNKS[0], PACKS[2], 2**40, 9, 9)
    sup = b"\x05" * 32
    data = IndexFile((e1, e0), supersedes=(sup,)).to_bytes()
    body = (b"LLMDRI2\0" + b"\0" + struct.pack("<H", 1) + sup
            + struct.pack("<I", 2) + PACKS[1] + PACKS[2]
            + struct.pack("<I", 2)
            + CHUNKS[0] + struct.pack("<IQII", 1, 2**40, 9, 9)
            + CHUNKS[1] + struct.pack("<IQII", 0, 7, 40, 24))
    assert data == body + hashlib.sha256(body).digest()
    assert len(IndexFile((e0,)).to_bytes()) == 8 + 1 + 2 + 4 + 32 + 4 + 52 + 32


def test_construction_normalises_order_and_duplicates():
    a = IndexEntry(CHUNKS[0], PACKS[0], 5, 1, 1)
    b = IndexEntry(CHUNKS[0], PACKS[0], 3, 1, 1)
    c = IndexEntry(CHUNKS[0], PACKS[1], 9, 1, 1)
    f = IndexFile((c, a, b), supersedes=(b"\x02" * 32, b"\x01" * 32, b"\x02" * 32))
    assert f.entries == (b, c)
    assert f.supersedes == (b"\x01" * 32, b"\x02" * 32)
    with pytest.raises(ValueError, match="32 raw bytes"):
        IndexFile((IndexEntry(b"short", PACKS[0], 0, 1, 1),))
    with pytest.raises(ValueError, match="64 bits"):
        IndexFile((IndexEntry(CHUNKS[0], PACKS[0], 2**64, 1, 1),))


@FAST
@given(file_st, st.data())
def test_truncation_anywhere_is_detected(f, data):
    raw = f.to_bytes()
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(IntegrityError, match="llmdr repair index"):
        IndexFile.from_bytes(raw[:cut], where="r1:index/abc")


@FAST
@given(file_st, st.data())
def test_any_flipped_byte_is_detected(f, data):
    raw = bytearray(f.to_bytes())
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(IntegrityError, match="r1:index/abc"):
        IndexFile.from_bytes(bytes(raw), where="r1:index/abc")


def rehashed(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


def entry_bytes(chunk: bytes, num: int) -> bytes:
    return chunk + struct.pack("<IQII", num, 0, 1, 1)


@pytest.mark.parametrize(("body", "complaint"), [
    (b"LLMDRI2\0\x01" + struct.pack("<HII", 0, 0, 0), "unknown flags"),
    (b"LLMDRI2\0\0" + struct.pack("<HI", 0, 1) + PACKS[0] + struct.pack("<I", 1) + entry_bytes(CHUNKS[0], 1),
     "pack number 1 of 1"),
    (b"LLMDRI2\0\0" + struct.pack("<HI", 0, 1) + PACKS[0] + struct.pack("<I", 2) + entry_bytes(CHUNKS[1], 0)
     + entry_bytes(CHUNKS[0], 0), "not sorted"),
    (b"LLMDRI2\0\0" + struct.pack("<HI", 0, 1) + PACKS[0] + struct.pack("<I", 2) + entry_bytes(CHUNKS[0], 0)
     + entry_bytes(CHUNKS[0], 0), "not sorted"),
    (b"LLMDRI2\0\0" + struct.pack("<HI", 0, 2) + PACKS[1] + PACKS[0] + struct.pack("<I", 2)
     + entry_bytes(CHUNKS[0], 0) + entry_bytes(CHUNKS[0], 1), "pack ids are not sorted"),
    (b"LLMDRI2\0\0" + struct.pack("<HI", 0, 2) + PACKS[0] + PACKS[1] + struct.pack("<I", 1)
     + entry_bytes(CHUNKS[0], 0), "holds no entry"),
    (b"LLMDRI2\0\0" + struct.pack("<H", 2) + b"\x02" * 32 + b"\x01" * 32 + struct.pack("<II", 0, 0),
     "superseded index ids are not sorted"),
    (b"LLMDRI2\0\0" + struct.pack("<HI", 0, 0) + struct.pack("<I", 1), "1 entries"),
    (b"LLMDRI2\0\0" + struct.pack("<HI", 0, 0) + struct.pack("<I", 0) + b"extra", "0 entries"),
    (b"LLMDRI2\0\0" + struct.pack("<HI", 0, 5) + PACKS[0], "5 pack ids do not fit"),
    (b"LLMDRI2\0\0" + struct.pack("<HI", 0, 1) + PACKS[0], "entry count does not fit"),
    (b"LLMDRX2\0\0" + struct.pack("<HII", 0, 0, 0), "starts with"),
])
def test_well_hashed_but_malformed_objects_are_refused(body, complaint):
    with pytest.raises(IntegrityError, match=complaint) as err:
        IndexFile.from_bytes(rehashed(body), where="r2:index/def")
    assert "r2:index/def" in str(err.value) and "llmdr repair index" in str(err.value)


def test_an_empty_index_round_trips():
    raw = IndexFile(()).to_bytes()
    assert IndexFile.from_bytes(raw, where="x") == IndexFile(())


# --- merge -----------------------------------------------------------------------------------------------------

files_st = st.lists(file_st, min_size=1, max_size=5)


@FAST
@given(files_st, st.randoms(use_true_random=False))
def test_merge_is_order_independent(files, rnd):
    pairs = [named(f) for f in files]
    shuffled = pairs[:]
    rnd.shuffle(shuffled)
    assert merge(shuffled).to_bytes() == merge(pairs).to_bytes()


@FAST
@given(files_st)
def test_merge_is_idempotent_and_associative_on_the_entry_set(files):
    pairs = [named(f) for f in files]
    once = merge(pairs)
    assert set(merge(pairs + pairs).entries) == set(once.entries)
    assert set(merge([named(once)]).entries) == set(once.entries)
    left = merge(pairs[:1])
    assert set(merge([named(left), *pairs[1:]]).entries) == set(once.entries)
    assert set(merge([named(once), *pairs]).entries) == set(once.entries)
    assert set(once.supersedes) == {bytes.fromhex(i) for i, _ in pairs}


@FAST
@given(files_st)
def test_merge_keeps_every_chunk_pack_pair_once(files):
    pairs = [named(f) for f in files]
    out = merge(pairs)
    want = {(e.chunk, e.pack) for f in files for e in f.entries}
    assert [(e.chunk, e.pack) for e in out.entries] == sorted(want)


@FAST
@given(files_st, st.sets(st.sampled_from(PACKS)))
def test_merge_drops_only_the_named_packs(files, drop):
    out = merge([named(f) for f in files], drop_packs=drop)
    assert not out.packs & drop
    assert {(e.chunk, e.pack) for e in out.entries} == {
        (e.chunk, e.pack) for f in files for e in f.entries if e.pack not in drop}


def test_merge_refuses_a_malformed_id():
    with pytest.raises(ValueError, match="64 hex"):
        merge([("index/abc", IndexFile(()))])


@FAST
@given(files_st, st.sets(st.sampled_from(PACKS)), st.integers(0, 99))
def test_a_merge_beside_its_inputs_reads_like_the_inputs(files, avoid, seed):
    # inputs that supersede nothing, so "the inputs alone" are all live
    files = [IndexFile(f.entries) for f in files]
    pairs = [named(f) for f in files]
    merged = named(merge(pairs))
    alone = master_of(pairs, seed)
    beside = master_of([*pairs, merged], seed)
    assert beside.live_ids() == {merged[0]}
    assert view(beside, frozenset(avoid)) == view(alone, frozenset(avoid))


# --- master index: superseding ---------------------------------------------------------------------------------


@st.composite
def histories(draw):
    """Index objects where later ones may supersede earlier ones (ids are real hashes, so only backwards) or ids
    that are not present at all."""
    pairs: list[tuple[str, IndexFile]] = []
    for _ in range(draw(st.integers(1, 6))):
        earlier = draw(st.lists(st.sampled_from(pairs), max_size=3)) if pairs else []
        ghosts = draw(st.lists(raw_id_st, max_size=1))
        entries = draw(st.lists(entry_st, max_size=8))
        f = IndexFile(tuple(entries), supersedes=tuple(bytes.fromhex(i) for i, _ in earlier) + tuple(ghosts))
        pairs.append(named(f))
    return pairs


@FAST
@given(histories(), st.integers(0, 99), st.integers(0, 99))
def test_supersedes_hides_exactly_the_superseded_files(pairs, seed_a, seed_b):
    hidden = {s.hex() for _, f in pairs for s in f.supersedes}
    live = [(i, f) for i, f in pairs if i not in hidden]
    best: dict[tuple[bytes, bytes], IndexEntry] = {}
    for _, f in live:
        for e in f.entries:
            k = (e.chunk, e.pack)
            if k not in best or key(e) < key(best[k]):
                best[k] = e
    m = master_of(pairs, seed_a)
    assert m.live_ids() == {i for i, _ in live}
    assert len(m) == len({c for c, _ in best}) and m.chunks() == {c for c, _ in best}
    assert m.packs() == {p for _, p in best}
    assert {e for p in PACKS for e in m.entries_of_pack(p)} == set(best.values())
    for c in CHUNKS:
        mine = sorted((e for e in best.values() if e.chunk == c), key=key)
        assert m.lookup(c) == (mine[0] if mine else None)
        assert m.has(c) == bool(mine)
    # the order of adding does not matter
    assert view(master_of(pairs, seed_b), frozenset(PACKS[:1])) == view(m, frozenset(PACKS[:1]))


def test_a_superseding_index_hides_one_added_before_it_and_keeps_the_others():
    old = named(IndexFile((IndexEntry(CHUNKS[0], PACKS[0], 0, 5, 5),)))
    other = named(IndexFile((IndexEntry(CHUNKS[1], PACKS[1], 0, 5, 5),)))
    new = named(IndexFile((IndexEntry(CHUNKS[2], PACKS[2], 0, 5, 5),), supersedes=(bytes.fromhex(old[0]),)))
    m = MasterIndex()
    m.add(*old)
    m.add(*other)
    assert m.has(CHUNKS[0]) and m.entries_of_pack(PACKS[0])
    m.add(*new)
    m.add(*old)  # seen again: nothing changes
    assert m.live_ids() == {other[0], new[0]}
    assert not m.has(CHUNKS[0]) and m.lookup(CHUNKS[0]) is None and m.entries_of_pack(PACKS[0]) == []
    assert m.has(CHUNKS[1]) and m.has(CHUNKS[2]) and len(m) == 2
    assert m.packs() == {PACKS[1], PACKS[2]}


def test_lookup_with_avoid_prefers_the_other_pack():
    in_a = IndexEntry(CHUNKS[0], PACKS[0], 0, 10, 10)
    in_b = IndexEntry(CHUNKS[0], PACKS[1], 99, 10, 10)
    m = MasterIndex()
    m.add(*named(IndexFile((in_b,))))
    m.add(*named(IndexFile((in_a,))))
    assert m.lookup(CHUNKS[0]) == in_a
    assert m.lookup(CHUNKS[0], avoid={PACKS[0]}) == in_b
    assert m.lookup(CHUNKS[0], avoid={PACKS[1]}) == in_a
    # every holder avoided: still found (a blob is verified on read), but not "had"
    assert m.lookup(CHUNKS[0], avoid={PACKS[0], PACKS[1]}) in (in_a, in_b)
    assert m.has(CHUNKS[0], avoid={PACKS[0]}) and not m.has(CHUNKS[0], avoid={PACKS[0], PACKS[1]})
    assert m.lookup(CHUNKS[5]) is None and not m.has(CHUNKS[5])
    assert len(m) == 1 and m.entries_of_pack(PACKS[1]) == [in_b]
