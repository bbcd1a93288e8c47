"""Version calls of the BlobStore (``list_versions``, ``get``/``head`` of a version, ``delete_version``), on a real
SeaweedFS bucket with versioning and Object Lock, through the S3 adapter and each wrapper, and on the memory store
made with ``versioned=True``. The scenario is the one repository format v2 must survive (design §6): a client
deletes a key without a version id, so a delete marker hides a version that Object Lock still protects."""

import time
import uuid
from dataclasses import dataclass

import pytest

from llmdr.errors import ObjectLocked, ObjectNotFound, ReadOnlyStoreError, StorageError
from llmdr.storage.base import BlobStore, VersionInfo
from llmdr.storage.crypto import EncryptingStore, ManifestSigner, SigningStore
from llmdr.storage.memory import MemoryStore
from llmdr.storage.readonly import ReadOnlyStore
from llmdr.storage.retrying import RetryingStore

KEY = bytes(range(32))
KINDS = ["memory", "s3", "retrying", "encrypting", "signing"]


@dataclass
class Case:
    """``store`` under test; ``deleter`` deletes without a version id, as an old client or another tool does (on S3 a
    store without a lock policy: its plain DELETE only adds a marker); ``ns`` prefixes keys (signing signs
    ``snapshots/``); ``locked``: puts carry an Object Lock retention."""

    kind: str
    store: BlobStore
    deleter: BlobStore
    ns: str = ""
    locked: bool = True

    def k(self, key: str) -> str:
        return self.ns + key


def locked_bucket(request) -> tuple:
    """A new bucket with versioning and Object Lock: (store locking every put for 60 s, plain store, same bucket)."""
    from llmdr.storage.credentials import resolve_keys
    from llmdr.storage.s3 import S3Store

    cfg = request.getfixturevalue("region_config")
    keys = resolve_keys(cfg, cfg.primary)
    common = dict(bucket=f"llmdr-ver-{uuid.uuid4().hex[:10]}", endpoint_url=cfg.primary.endpoint,
                  access_key_id=keys.access_key_id, secret_access_key=keys.secret_access_key)
    locking = S3Store(**common, object_lock=("COMPLIANCE", 60))
    assert locking.ensure_bucket(object_lock=True) is True
    assert locking.bucket_protection()["versioning"] == "Enabled"
    return locking, S3Store(**common)


@pytest.fixture(params=[pytest.param(k, marks=() if k == "memory" else pytest.mark.s3) for k in KINDS])
def case(request) -> Case:
    if request.param == "memory":
        m = MemoryStore(versioned=True)
        return Case("memory", m, m, locked=False)
    s3, plain = locked_bucket(request)
    store: BlobStore = {
        "s3": lambda: s3,
        "retrying": lambda: RetryingStore(s3, sleep=lambda _: None),
        "encrypting": lambda: EncryptingStore(s3, KEY),
        "signing": lambda: SigningStore(s3, ManifestSigner("hmac", hmac_key=KEY)),
    }[request.param]()
    return Case(request.param, store, plain, "snapshots/" if request.param == "signing" else "")


def versions(store: BlobStore, prefix: str) -> list[VersionInfo]:
    return list(store.list_versions(prefix))


def test_delete_marker_hides_a_locked_version_that_stays_readable(case):
    key = case.k("catalog/b/e/000000000001")
    case.store.put(key, b"entry one")
    case.deleter.delete(key)  # no version id: a delete marker on top
    with pytest.raises(ObjectNotFound):
        case.store.get(key)
    with pytest.raises(ObjectNotFound):
        case.store.head(key)
    assert [i.key for i in case.store.list(case.k("catalog/"))] == []

    marker, kept = versions(case.store, case.k("catalog/"))
    assert (marker.key, marker.is_delete_marker, marker.is_latest, marker.size) == (key, True, True, 0)
    assert (kept.key, kept.is_delete_marker, kept.is_latest) == (key, False, False)
    assert kept.size == len(b"entry one")  # the size a read returns, whatever the wrapper adds below
    assert kept.modified is not None and abs(kept.modified - time.time()) < 120

    assert case.store.get(key, version_id=kept.version_id) == b"entry one"
    assert case.store.get(key, version_id=kept.version_id, start=6, length=3) == b"one"
    assert case.store.head(key, version_id=kept.version_id).size == len(b"entry one")
    with pytest.raises(ObjectNotFound):
        case.store.get(key, version_id=marker.version_id)  # a marker has no bytes

    if case.locked:
        lock = case.store.retention(key, version_id=kept.version_id)
        assert lock is not None and lock.until > time.time()
        with pytest.raises(ObjectLocked, match=kept.version_id):
            case.store.delete_version(key, kept.version_id)
        assert case.store.get(key, version_id=kept.version_id) == b"entry one"  # nothing locked was removed

    case.store.delete_version(key, marker.version_id)  # removing the marker brings the key back
    assert case.store.get(key) == b"entry one"
    [only] = versions(case.store, case.k("catalog/"))
    assert (only.version_id, only.is_latest, only.is_delete_marker) == (kept.version_id, True, False)


def test_versions_are_listed_in_key_order_newest_first(case):
    case.store.put(case.k("v/a"), b"1", retain=False)
    case.store.put(case.k("v/b"), b"22", retain=False)
    case.store.put(case.k("v/a"), b"333", retain=False)
    case.store.put(case.k("w/x"), b"outside the prefix")
    listed = versions(case.store, case.k("v/"))
    assert [(v.key, v.size, v.is_latest) for v in listed] == [
        (case.k("v/a"), 3, True), (case.k("v/a"), 1, False), (case.k("v/b"), 2, True)]
    assert len({v.version_id for v in listed}) == 3


def test_versions_after_a_key_are_the_tail_only(case):
    """``start_after``: a reader of a long history (a locked catalog) lists only the versions of newer keys."""
    for name in ("a", "b", "c"):
        case.store.put(case.k(f"t/{name}"), name.encode(), retain=False)
    case.store.put(case.k("t/b"), b"bb", retain=False)
    case.deleter.delete(case.k("t/c"))  # a delete marker on top of c's version (kept: locked or not)
    tail = list(case.store.list_versions(case.k("t/"), start_after=case.k("t/a")))
    assert {v.key for v in tail} == {case.k("t/b"), case.k("t/c")}
    assert [v.key for v in tail] == sorted(v.key for v in tail)
    assert [v.size for v in tail if v.key == case.k("t/b")] == [2, 1]
    assert any(v.is_delete_marker for v in tail if v.key == case.k("t/c"))
    assert list(case.store.list_versions(case.k("t/"), start_after=case.k("t/c"))) == []


def test_delete_version_removes_exactly_that_version(case):
    """Unlocked versions (``retain=False``, as locks and prune plans are written) can be removed one by one;
    removing the newest makes the one below it current again."""
    key = case.k("locks/l.json")
    case.store.put(key, b"old", retain=False)
    case.store.put(key, b"new", retain=False)
    newest, older = versions(case.store, key)
    case.store.delete_version(key, newest.version_id)
    assert case.store.get(key) == b"old"
    assert [(v.version_id, v.is_latest) for v in versions(case.store, key)] == [(older.version_id, True)]
    case.store.delete_version(key, older.version_id)
    assert versions(case.store, key) == []
    with pytest.raises(ObjectNotFound):
        case.store.head(key)


def test_read_only_store_reads_versions_and_refuses_delete_version():
    m = MemoryStore(versioned=True)
    m.put("k", b"v")
    m.delete("k")
    ro = ReadOnlyStore(m)
    marker, kept = ro.list_versions()
    assert ro.get("k", version_id=kept.version_id) == b"v"
    with pytest.raises(ReadOnlyStoreError, match="read-only"):
        ro.delete_version("k", marker.version_id)
    assert len(list(m.list_versions())) == 2


def test_unversioned_memory_store_says_so():
    m = MemoryStore()
    m.put("k", b"v")
    for call in (lambda: list(m.list_versions()), lambda: m.get("k", version_id="x"),
                 lambda: m.delete_version("k", "x")):
        with pytest.raises(StorageError, match="is not versioned"):
            call()


def test_versioned_memory_store_counts_usage_like_s3():
    m = MemoryStore(versioned=True)
    m.put("a", b"12")
    m.put("a", b"345")
    m.put("b", b"6")
    m.delete("b")
    assert m.usage() == {"current_bytes": 3, "current_objects": 1, "noncurrent_bytes": 3, "noncurrent_objects": 2,
                         "delete_markers": 1}
    assert m.bucket_protection()["versioning"] == "Enabled"


@pytest.mark.s3
def test_delete_in_a_locked_bucket_removes_every_unlocked_version_and_refuses_a_locked_one(request):
    """The S3 adapter's ``delete`` with a lock policy removes all versions (no marker left behind) and stops at a
    locked one, leaving the key readable."""
    s3, _ = locked_bucket(request)
    s3.put("prune/p.json", b"1", retain=False)
    s3.put("prune/p.json", b"2", retain=False)
    s3.delete("prune/p.json")
    assert versions(s3, "prune/") == []
    s3.put("snaps/s", b"record")
    with pytest.raises(ObjectLocked, match="COMPLIANCE"):
        s3.delete("snaps/s")
    assert s3.get("snaps/s") == b"record"
    assert [v.is_delete_marker for v in versions(s3, "snaps/")] == [False]
