"""The BlobStore contract, run against every adapter (the S3 one against real SeaweedFS)."""

import hashlib
import threading
import uuid

import pytest

from llmdr.errors import IntegrityError, ObjectNotFound
from llmdr.storage.base import BlobStore
from llmdr.storage.factory import open_region
from llmdr.storage.memory import MemoryStore


@pytest.fixture(params=["memory", "s3"])
def store(request) -> BlobStore:
    if request.param == "memory":
        return MemoryStore()
    cfg = request.getfixturevalue("region_config")
    return open_region(cfg, cfg.primary)


def test_is_a_blobstore(store):
    assert isinstance(store, BlobStore)
    assert "secret" not in store.location.lower()


def test_put_get_head(store):
    store.put("a/b", b"hello")
    assert store.get("a/b") == b"hello"
    assert store.head("a/b").size == 5


def test_overwrite_is_atomic_and_visible(store):
    store.put("k", b"one")
    store.put("k", b"two-two")
    assert store.get("k") == b"two-two"
    assert store.head("k").size == 7


def test_missing_key_is_typed(store):
    with pytest.raises(ObjectNotFound):
        store.get("nope")
    with pytest.raises(ObjectNotFound):
        store.head("nope")


def test_ranged_get(store):
    data = bytes(range(256)) * 4
    store.put("r", data)
    assert store.get("r", start=10, length=20) == data[10:30]
    assert store.get("r", start=1000) == data[1000:]
    assert store.get("r", start=1020, length=100) == data[1020:]
    assert store.get("r", start=5, length=0) == b""


def test_list_sorted_complete_and_prefixed(store):
    keys = [f"p/{i:04d}" for i in range(1050)] + ["q/x"]  # > 1000 to cross an S3 page
    data = b"x"
    if isinstance(store, MemoryStore):
        for k in keys:
            store.put(k, data)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: store.put(k, data), keys))
    listed = [i.key for i in store.list("p/")]
    assert listed == sorted(keys[:-1])
    assert all(i.size == 1 for i in store.list("q/"))


def test_delete_idempotent(store):
    store.put("d", b"1")
    store.delete("d")
    store.delete("d")
    with pytest.raises(ObjectNotFound):
        store.get("d")


def test_verified_put_rejects_wrong_digest_and_writes_nothing(store):
    with pytest.raises(IntegrityError):
        store.put("v", b"payload", sha256=hashlib.sha256(b"other").digest())
    with pytest.raises(ObjectNotFound):
        store.head("v")
    store.put("v", b"payload", sha256=hashlib.sha256(b"payload").digest())
    assert store.get("v") == b"payload"


def test_concurrent_puts(store):
    errors = []

    def work(i):
        try:
            store.put(f"c/{i}", str(i).encode())
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(i.key for i in store.list("c/")) == sorted(f"c/{i}" for i in range(20))


@pytest.mark.parametrize("bad", ["", "/abs", "a/../b", "a//b", "./a"])
def test_bad_keys_refused(store, bad):
    with pytest.raises(ValueError):
        store.put(bad, b"x")


def test_empty_blob(store):
    key = f"e/{uuid.uuid4().hex}"
    store.put(key, b"")
    assert store.get(key) == b""
    assert store.head(key).size == 0


def test_listing_and_head_report_write_time(store):
    import time

    before = time.time() - 120  # generous: server clocks and second granularity
    store.put("mt/a", b"x")
    [info] = list(store.list("mt/"))
    assert info.modified is not None and before <= info.modified <= time.time() + 120
    assert store.head("mt/a").modified is not None
