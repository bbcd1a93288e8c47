"""The BlobStore contract (``llmdr/storage/base.py``), run against every store: the memory store, the raw S3 adapter
on real SeaweedFS, and each wrapper over it — retrying, encrypting, signing (its manifests, under ``snapshots/``)
and, for the read checks, read-only. As Kopia's ``blobtesting.VerifyStorage``: one set of checks, every
implementation, so a wrapper cannot quietly break a guarantee (sizes, ranges, verified puts, typed errors) that the
layers above rely on."""

import hashlib
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from llmdr.errors import Conflict, IntegrityError, ObjectNotFound, ReadOnlyStoreError, StorageError
from llmdr.storage.base import BlobStore
from llmdr.storage.crypto import EncryptingStore, ManifestSigner, SigningStore
from llmdr.storage.factory import adapter
from llmdr.storage.memory import MemoryStore
from llmdr.storage.readonly import ReadOnlyStore
from llmdr.storage.retrying import RetryingStore
from tests.support.streams import read_streamed

KINDS = ["memory", "s3", "retrying", "encrypting", "signing"]


def _params(kinds: list[str]) -> list:
    """Every kind but memory runs on the session's SeaweedFS: marked s3 (conftest fails it otherwise)."""
    return [pytest.param(k, marks=() if k == "memory" else pytest.mark.s3) for k in kinds]
KEY = bytes(range(32))


@dataclass
class Case:
    """A store under test. ``ns`` prefixes every key the checks use (the signing store signs what is under
    ``snapshots/`` and passes the rest through, so its checks run there); ``writer`` is what the checks put through
    (the store itself, except for the read-only store: the store below it)."""

    kind: str
    store: BlobStore
    writer: BlobStore
    ns: str = ""

    def k(self, key: str) -> str:
        return self.ns + key


def make(kind: str, request) -> Case:
    if kind == "memory":
        m = MemoryStore()
        return Case(kind, m, m)
    cfg = request.getfixturevalue("region_config")  # a fresh key prefix on the session's SeaweedFS
    s3 = adapter(cfg, cfg.primary)
    store: BlobStore = {
        "s3": lambda: s3,
        "retrying": lambda: RetryingStore(s3, sleep=lambda _: None),
        "encrypting": lambda: EncryptingStore(s3, KEY),
        "signing": lambda: SigningStore(s3, ManifestSigner("hmac", hmac_key=KEY)),
        "read-only": lambda: ReadOnlyStore(s3),
    }[kind]()
    return Case(kind, store, s3 if kind == "read-only" else store, "snapshots/" if kind == "signing" else "")


@pytest.fixture(params=_params(KINDS))
def case(request) -> Case:
    return make(request.param, request)


@pytest.fixture(params=_params([*KINDS, "read-only"]))
def reading(request) -> Case:
    """Every store, the read-only one included: for the checks that only read what ``writer`` put."""
    return make(request.param, request)


# reads ---------------------------------------------------------------------------------------------------------------
def test_is_a_blobstore(reading):
    assert isinstance(reading.store, BlobStore)
    assert "secret" not in reading.store.location.lower()


def test_put_get_head(reading):
    c = reading
    c.writer.put(c.k("a/b"), b"hello")
    assert c.store.get(c.k("a/b")) == b"hello"
    assert c.store.head(c.k("a/b")).size == 5


def test_missing_key_is_typed(reading):
    c = reading
    with pytest.raises(ObjectNotFound):
        c.store.get(c.k("nope"))
    with pytest.raises(ObjectNotFound):
        c.store.head(c.k("nope"))


def test_ranged_get(reading):
    c = reading
    data = bytes(range(256)) * 4
    c.writer.put(c.k("r"), data)
    assert c.store.get(c.k("r"), start=10, length=20) == data[10:30]
    assert c.store.get(c.k("r"), start=1000) == data[1000:]
    assert c.store.get(c.k("r"), start=1020, length=100) == data[1020:]
    assert c.store.get(c.k("r"), start=5, length=0) == b""


@pytest.mark.parametrize("where", ["", "packs/"])
def test_streamed_range_is_the_ranged_get(reading, where):
    """``open_range`` streams exactly what ``get`` returns for the same range, in pieces of any size (packs pass
    through the encrypting store as stored; anything else is opened whole first)."""
    c = reading
    key = c.k(where + "s")
    data = bytes(range(256)) * 40
    c.writer.put(key, data)
    for start, length, piece in ((0, len(data), 4096), (10, 2000, 7), (10_000, 500, 1000), (3, 0, 16)):
        assert read_streamed(c.store, key, start, length, piece) == c.store.get(key, start=start, length=length)
    assert read_streamed(c.store, key, len(data) - 5, 100, 64) == data[-5:]  # shorter only at the end
    with pytest.raises(ObjectNotFound):
        c.store.open_range(c.k(where + "nope"), 0, 10)


def test_list_sorted_complete_prefixed_and_sized(reading):
    c = reading
    keys = [c.k(f"p/{i:04d}") for i in range(1050)]  # > 1000 to cross an S3 page
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: c.writer.put(k, b"x"), [*keys, c.k("q/x")]))
    listed = list(c.store.list(c.k("p/")))
    assert [i.key for i in listed] == keys
    assert {i.size for i in listed} == {1}  # the size ``get`` returns, whatever the wrapper adds below
    assert [(i.key, i.size) for i in c.store.list(c.k("q/"))] == [(c.k("q/x"), 1)]
    # start_after on a listing longer than one S3 page: strictly after, in order, across the page boundary
    assert [i.key for i in c.store.list(c.k("p/"), start_after=keys[20])] == keys[21:]
    assert [i.key for i in c.store.list(c.k("p/"), start_after=keys[-2])] == keys[-1:]


def test_list_start_after_is_strict_and_relative(reading):
    c = reading
    keys = [c.k(f"s/{n}") for n in ("a", "b", "bb", "c")]
    for k in keys:
        c.writer.put(k, b"x")
    c.writer.put(c.k("t/a"), b"x")  # outside the prefix: never listed
    listed = lambda after: [i.key for i in c.store.list(c.k("s/"), start_after=after)]  # noqa: E731
    assert listed(None) == keys
    assert listed(c.k("s/b")) == [c.k("s/bb"), c.k("s/c")]  # the key itself is excluded
    assert listed(c.k("s/ba")) == [c.k("s/bb"), c.k("s/c")]  # a key that does not exist works as a bound
    assert listed(c.k("s/c")) == []
    assert listed(c.k("r")) == keys  # a bound before the prefix: everything under it
    assert listed(c.k("s/")) == keys


def test_server_time_is_the_stores_clock(reading):
    """On the local servers the store's clock is this machine's: within a few seconds (Date has 1 s resolution),
    and a write's ``modified`` is on the same clock."""
    c = reading
    t = c.store.server_time()
    assert abs(t - time.time()) < 5
    c.writer.put(c.k("clock"), b"x")
    modified = c.store.head(c.k("clock")).modified
    assert modified is not None and abs(c.store.server_time() - modified) < 5


def test_empty_blob(reading):
    c = reading
    key = c.k(f"e/{uuid.uuid4().hex}")
    c.writer.put(key, b"")
    assert c.store.get(key) == b""
    assert c.store.head(key).size == 0


def test_listing_and_head_report_write_time(reading):
    c = reading
    before = time.time() - 120  # generous: server clocks and second granularity
    c.writer.put(c.k("mt/a"), b"x")
    [info] = list(c.store.list(c.k("mt/")))
    assert info.modified is not None and before <= info.modified <= time.time() + 120
    assert c.store.head(c.k("mt/a")).modified is not None


def test_object_lock_state_of_an_unlocked_store(reading):
    """No object_lock configured: puts are not locked, a key has no retention, the bucket reports its protection
    and usage through every wrapper."""
    c = reading
    c.writer.put(c.k("l"), b"abc")
    assert c.store.lock_policy() is None
    assert c.store.retention(c.k("l")) is None
    with pytest.raises(ObjectNotFound):
        c.store.retention(c.k("missing"))
    prot: dict[str, Any] = c.store.bucket_protection()
    assert prot["object_lock"] is False and prot["versioning"] in ("Disabled", "Suspended")
    usage = c.store.usage()
    assert usage["current_objects"] >= 1 and usage["current_bytes"] >= 3


def test_extend_lock_without_a_lock_policy_is_refused(reading):
    c = reading
    c.writer.put(c.k("l"), b"abc")
    expected = ReadOnlyStoreError if c.kind == "read-only" else StorageError
    with pytest.raises(expected, match="read-only" if c.kind == "read-only" else "no object_lock"):
        c.store.extend_lock(c.k("l"), time.time() + 60)


# writes ----------------------------------------------------------------------------------------------------------------
def test_overwrite_is_atomic_and_visible(case):
    case.store.put(case.k("k"), b"one")
    case.store.put(case.k("k"), b"two-two")
    assert case.store.get(case.k("k")) == b"two-two"
    assert case.store.head(case.k("k")).size == 7


def test_delete_idempotent(case):
    case.store.put(case.k("d"), b"1")
    case.store.delete(case.k("d"))
    case.store.delete(case.k("d"))
    with pytest.raises(ObjectNotFound):
        case.store.get(case.k("d"))


def test_verified_put_rejects_wrong_digest_and_writes_nothing(case):
    key = case.k("v")
    with pytest.raises(IntegrityError):
        case.store.put(key, b"payload", sha256=hashlib.sha256(b"other").digest())
    with pytest.raises(ObjectNotFound):
        case.store.head(key)
    case.store.put(key, b"payload", sha256=hashlib.sha256(b"payload").digest())
    assert case.store.get(key) == b"payload"


def test_concurrent_puts(case):
    errors = []

    def work(i):
        try:
            case.store.put(case.k(f"c/{i}"), str(i).encode())
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(i.key for i in case.store.list(case.k("c/"))) == sorted(case.k(f"c/{i}") for i in range(20))


def test_create_only_put(case):
    """``if_absent``: the first create wins, a second one raises Conflict and leaves the value as it was."""
    key = case.k(f"e/{uuid.uuid4().hex}")
    case.store.put(key, b"first", if_absent=True)
    with pytest.raises(Conflict, match="exists already"):
        case.store.put(key, b"second", if_absent=True)
    with pytest.raises(Conflict):
        case.store.put(key, b"first", if_absent=True)  # even the same bytes: a create is a create
    assert case.store.get(key) == b"first"
    case.store.put(key, b"third")  # a plain put still overwrites
    assert case.store.get(key) == b"third"


def test_create_only_put_race_has_one_winner(case):
    key = case.k(f"race/{uuid.uuid4().hex}")
    won, lost = [], []

    def create(i: int) -> None:
        try:
            case.store.put(key, str(i).encode(), if_absent=True)
            won.append(i)
        except Conflict:
            lost.append(i)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 7
    assert case.store.get(key) == str(won[0]).encode()


def test_memory_store_clock_skew_moves_server_time_and_modified():
    m = MemoryStore()
    m.clock_skew = 3600.0
    assert abs(m.server_time() - (time.time() + 3600)) < 2
    m.put("k", b"v")
    [info] = list(m.list())
    assert info.modified is not None and abs(info.modified - (time.time() + 3600)) < 2
    assert m.head("k").modified == info.modified


@pytest.mark.s3
def test_retain_false_writes_no_retention_in_a_locked_bucket(request):
    """Locks and prune plans must stay deletable in a region whose puts are locked: ``retain=False`` sends no
    retention, while an ordinary put in the same bucket is locked. Create-only puts work in the versioned bucket."""
    from llmdr.storage.credentials import resolve_keys
    from llmdr.storage.s3 import S3Store

    cfg = request.getfixturevalue("region_config")
    keys = resolve_keys(cfg, cfg.primary)
    store = S3Store(bucket=f"llmdr-retain-{uuid.uuid4().hex[:10]}", endpoint_url=cfg.primary.endpoint,
                    access_key_id=keys.access_key_id, secret_access_key=keys.secret_access_key,
                    object_lock=("COMPLIANCE", 60))
    assert store.ensure_bucket(object_lock=True) is True
    store.put("packs/ab/x", b"pack")
    lock = store.retention("packs/ab/x")
    assert lock is not None and lock.until > time.time() + 30
    store.put("locks/l.json", b"{}", retain=False)
    assert store.retention("locks/l.json") is None
    store.delete("locks/l.json")  # every version goes: nothing holds it
    with pytest.raises(ObjectNotFound):
        store.head("locks/l.json")
    assert not [v for v in store.list("locks/")]
    store.put("catalog/b/e/000000000001", b"1", if_absent=True)
    with pytest.raises(Conflict):
        store.put("catalog/b/e/000000000001", b"2", if_absent=True)
    assert store.get("catalog/b/e/000000000001") == b"1"


@pytest.mark.parametrize("bad", ["", "/abs", "a/../b", "a//b", "./a"])
def test_bad_keys_refused(case, bad):
    with pytest.raises(ValueError):
        case.store.put(bad, b"x")


@pytest.mark.s3  # the read-only store over the raw S3 adapter
def test_read_only_refuses_every_write(request):
    c = make("read-only", request)
    c.writer.put("w", b"1")
    for write in (lambda: c.store.put("w", b"2"), lambda: c.store.delete("w"),
                  lambda: c.store.extend_lock("w", time.time() + 60)):
        with pytest.raises(ReadOnlyStoreError, match="read-only"):
            write()
    assert c.store.get("w") == b"1"
