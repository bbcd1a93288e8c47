import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmdr.errors import IntegrityError, UnsafePathError
from llmdr.repo.chunking import DEFAULT_CHUNKER
from llmdr.repo.ids import is_hex_digest
from llmdr.repo.layout import key_to_pack, pack_key, record_key, tree_key
from llmdr.repo.manifest import FileEntry, Manifest, check_relpath, manifest_id
from llmdr.repo.tree import build_tree, load_tree, manifest_of, parse_record, record_bytes

hexdigests = st.binary(min_size=32, max_size=32).map(lambda b: b.hex())
seg = st.text(alphabet=st.characters(blacklist_characters="/\\\x00", blacklist_categories=("Cs",)), min_size=1,
              max_size=12).filter(lambda s: s not in (".", ".."))
relpaths = st.lists(seg, min_size=1, max_size=4).map("/".join).filter(lambda p: not (p[:1].isalpha() and p[1:2] == ":"))


@pytest.mark.parametrize("bad", ["", "abc", "G" * 64, "A" * 64, "0" * 63, "0" * 65])
def test_is_hex_digest_rejects(bad):
    assert not is_hex_digest(bad)


@given(hexdigests)
def test_is_hex_digest_accepts(h):
    assert is_hex_digest(h)


@given(hexdigests)
def test_pack_key_round_trip(h):
    assert key_to_pack(pack_key(h)) == h
    assert pack_key(h) == f"packs/{h[:2]}/{h}"


def test_key_to_pack_rejects_other_keys():
    h = "ab" + "0" * 62
    assert key_to_pack(f"packs/cd/{h}") is None  # wrong shard
    assert key_to_pack(f"packs/ab/{h}.tmp") is None
    assert key_to_pack(f"packs/{h}") is None
    assert key_to_pack(f"chunks/ab/{h}") is None  # a v1 chunk key
    assert key_to_pack(f"snapshots/{h}.json") is None
    assert key_to_pack(tree_key(h)) is None and key_to_pack(record_key(h)) is None


@st.composite
def manifests(draw):
    paths = draw(st.lists(relpaths, min_size=0, max_size=6, unique=True))
    files = []
    for p in paths:
        chunks = tuple(draw(st.lists(st.tuples(hexdigests, st.integers(0, 2**40)), max_size=4)))
        files.append(FileEntry(p, sum(n for _, n in chunks), draw(st.integers(0, 0o7777)),
                               draw(st.integers(0, 2**62)), chunks))
    return Manifest(bundle="b", source="/src", host="h", started="2026-01-01T00:00:00.000000Z",
                    created="2026-01-01T00:00:01.000000Z", tool_version="0.1.0", chunker=DEFAULT_CHUNKER,
                    files=tuple(files), parent=draw(st.none() | hexdigests),
                    tags=draw(st.dictionaries(seg, seg, max_size=3)), stats={"files": len(files)})


@given(manifests())
def test_manifest_serialise_parse_round_trip(m):
    data = m.to_bytes()
    back = Manifest.from_bytes(data, expect_id=manifest_id(data))
    assert back.to_bytes() == data
    assert back.files == tuple(sorted(m.files, key=lambda f: f.path))


@given(manifests())
def test_manifest_bytes_are_deterministic_whatever_the_file_order(m):
    reversed_m = Manifest(**{**{k: getattr(m, k) for k in m.__dataclass_fields__}, "files": tuple(reversed(m.files))})
    assert reversed_m.to_bytes() == m.to_bytes()
    json.loads(m.to_bytes())  # plain JSON


def test_manifest_tamper_detected():
    m = Manifest(bundle="b", source="/s", host="h", started="2026-01-01T00:00:00.000000Z",
                 created="2026-01-01T00:00:00.000000Z", tool_version="x", chunker=DEFAULT_CHUNKER, files=())
    data = m.to_bytes()
    sid = manifest_id(data)
    with pytest.raises(IntegrityError, match="damaged"):
        Manifest.from_bytes(data.replace(b'"b"', b'"c"'), expect_id=sid)


def test_manifest_rejects_sizes_that_do_not_add_up():
    m = Manifest(bundle="b", source="/s", host="h", started="2026-01-01T00:00:00.000000Z",
                 created="2026-01-01T00:00:00.000000Z", tool_version="x", chunker=DEFAULT_CHUNKER,
                 files=(FileEntry("a", 5, 0o644, 0, (("0" * 64, 4),)),))
    with pytest.raises(IntegrityError, match="do not add up"):
        Manifest.from_bytes(m.to_bytes())


_SAME = ("bundle", "source", "host", "started", "created", "tool_version", "chunker", "parent", "kind", "stats",
         "tags", "components", "hash")


@given(manifests())
def test_record_and_tree_round_trip(m):
    """v2 stores a snapshot as a record naming a tree: both come back to the same snapshot, and the id (the record's
    SHA-256) does not depend on the order the files were listed in."""
    tree = build_tree(m.files)
    data = record_bytes(m, tree.root)
    sid = hashlib.sha256(data).hexdigest()
    record = parse_record(data, expect_id=sid, where="t")
    back = manifest_of(record, load_tree(record["tree"], tree.objects.__getitem__, where="t"))
    assert back.files == tuple(sorted(m.files, key=lambda f: f.path))
    assert all(getattr(back, k) == getattr(m, k) for k in _SAME)
    rev = build_tree(reversed(m.files))
    assert rev == tree and record_bytes(m, rev.root) == data


def test_record_tamper_detected():
    m = Manifest(bundle="b", source="/s", host="h", started="2026-01-01T00:00:00.000000Z",
                 created="2026-01-01T00:00:00.000000Z", tool_version="x", chunker=DEFAULT_CHUNKER, files=())
    data = record_bytes(m, build_tree(()).root)
    sid = hashlib.sha256(data).hexdigest()
    with pytest.raises(IntegrityError, match=f"record {sid[:12]} is damaged"):
        parse_record(data.replace(b'"b"', b'"c"'), expect_id=sid, where="t")
    v1 = m.to_bytes()  # a v1 manifest is not a record, even under its own hash
    with pytest.raises(IntegrityError, match="this llmdr reads format 2"):
        parse_record(v1, expect_id=manifest_id(v1), where="t")


def test_large_tree_is_split_and_leaves_out_of_order_are_refused(monkeypatch):
    from llmdr.repo import tree as tree_mod

    monkeypatch.setattr(tree_mod, "LEAF_FILES", 16)
    files = [FileEntry(f"d/{i:05d}.bin", 1, 0o644, 0, ((hashlib.sha256(str(i).encode()).hexdigest(), 1),))
             for i in range(600)]
    t = build_tree(files)
    root = json.loads(t.objects[t.root])
    leaves = root["subtrees"]
    assert len(leaves) >= 2 and set(t.objects) == {t.root, *leaves}
    assert load_tree(t.root, t.objects.__getitem__, where="t") == tuple(files)
    swapped = json.dumps({"subtrees": leaves[::-1]}).encode()
    with pytest.raises(IntegrityError, match="out of order"):
        load_tree("f" * 64, {**t.objects, "f" * 64: swapped}.__getitem__, where="t")


@pytest.mark.parametrize("bad", ["/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "", "a\\b", "C:/x",
                                 "a\x00b", "a/"])
def test_unsafe_paths_refused(bad):
    with pytest.raises(UnsafePathError):
        check_relpath(bad)


@given(relpaths)
def test_plain_relative_paths_accepted(p):
    assert check_relpath(p) == p


def test_file_digest_depends_on_content_and_order():
    a, b = hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()
    f1 = FileEntry("x", 2, 0o644, 0, ((a, 1), (b, 1)))
    f2 = FileEntry("x", 2, 0o644, 0, ((b, 1), (a, 1)))
    assert f1.digest != f2.digest
