import time

import pytest

from llmdr.errors import (
    AccessDenied,
    Conflict,
    IntegrityError,
    ReadOnlyStoreError,
    TransientStorageError,
    is_retriable,
)
from llmdr.storage.crypto import EncryptingStore, ManifestSigner, SigningStore
from llmdr.storage.memory import MemoryStore
from llmdr.storage.readonly import ReadOnlyStore
from llmdr.storage.retrying import RetryingStore
from llmdr.testing.faulty import FaultyStore


def make(attempts=4):
    inner = FaultyStore(MemoryStore())
    sleeps = []
    return inner, RetryingStore(inner, attempts=attempts, sleep=sleeps.append), sleeps


def test_is_retriable_only_for_transient():
    assert is_retriable(TransientStorageError("x"))
    assert not is_retriable(AccessDenied("x"))
    assert not is_retriable(IntegrityError("x"))
    assert not is_retriable(ValueError("x"))


def test_transient_put_is_retried_with_backoff():
    inner, store, sleeps = make()
    inner.fail("put", lambda: TransientStorageError("reset"), times=2)
    store.put("k", b"v")
    inner.assert_all_fired()
    assert store.get("k") == b"v"
    assert len(sleeps) == 2 and sleeps[1] > sleeps[0] * 0.9


def test_gives_up_after_attempts():
    inner, store, sleeps = make(attempts=3)
    inner.fail("get", lambda: TransientStorageError("down"), times=5)
    inner.inner.put("k", b"v")
    with pytest.raises(TransientStorageError):
        store.get("k")
    assert inner.calls["get"] == 3


@pytest.mark.parametrize("exc", [AccessDenied, IntegrityError])
def test_final_errors_not_retried(exc):
    inner, store, sleeps = make()
    inner.fail("put", lambda: exc("no"), times=1)
    with pytest.raises(exc):
        store.put("k", b"v")
    inner.assert_all_fired()
    assert inner.calls["put"] == 1 and sleeps == []


def test_list_resumes_without_repeating_keys():
    class FlakyList(MemoryStore):
        failed = False

        def list(self, prefix="", *, start_after=None):
            for i, info in enumerate(super().list(prefix, start_after=start_after)):
                if i == 3 and not self.failed:
                    self.failed = True
                    raise TransientStorageError("connection reset mid-listing")
                yield info

    inner = FlakyList()
    for i in range(10):
        inner.put(f"k/{i}", b"x")
    store = RetryingStore(inner, sleep=lambda s: None)
    assert [i.key for i in store.list("k/")] == [f"k/{i}" for i in range(10)]
    assert inner.failed


def test_read_only_refuses_writes_but_reads():
    inner = MemoryStore()
    inner.put("k", b"v")
    ro = ReadOnlyStore(inner)
    assert ro.get("k") == b"v"
    with pytest.raises(ReadOnlyStoreError):
        ro.put("k", b"w")
    with pytest.raises(ReadOnlyStoreError):
        ro.delete("k")
    assert inner.get("k") == b"v"


def test_faulty_store_reports_unfired_faults():
    inner = FaultyStore(MemoryStore())
    inner.fail("delete", lambda: TransientStorageError("x"))
    with pytest.raises(AssertionError, match="never fired"):
        inner.assert_all_fired()


def test_is_retriable_never_for_conflict():
    assert not is_retriable(Conflict("taken"))


def test_list_resumes_after_start_after_and_last_key():
    inner, store, sleeps = make()
    for i in range(10):
        inner.inner.put(f"k/{i}", b"x")
    inner.drop("list")  # half the keys, then the connection drops
    assert [i.key for i in store.list("k/", start_after="k/2")] == [f"k/{i}" for i in range(3, 10)]
    inner.assert_all_fired()
    assert store.retries == {"list": 1}


def test_retried_create_that_had_landed_is_a_success():
    """The first attempt reached the store, then the answer was lost: the retry meets Conflict, reads the key
    back, finds the bytes it sent and reports success."""
    inner, store, sleeps = make()
    inner.drop("put")
    store.put("catalog/b/e/1", b"mine", if_absent=True)
    inner.assert_all_fired()
    assert inner.calls["put"] == 2 and inner.calls["get"] == 1
    assert inner.inner.get("catalog/b/e/1") == b"mine"


def test_retried_create_that_lost_to_another_writer_raises_conflict():
    """The first attempt failed before it reached the store and another writer took the key meanwhile: the retry's
    Conflict stands, and the other writer's value is untouched."""
    inner, store, sleeps = make()

    def other_writer_wins() -> TransientStorageError:
        inner.inner.put("catalog/b/e/1", b"theirs")
        return TransientStorageError("reset")

    inner.fail("put", other_writer_wins)
    with pytest.raises(Conflict):
        store.put("catalog/b/e/1", b"mine", if_absent=True)
    inner.assert_all_fired()
    assert inner.inner.get("catalog/b/e/1") == b"theirs"


def test_first_create_conflict_is_not_retried_nor_read_back():
    inner, store, sleeps = make()
    inner.inner.put("e/1", b"mine")
    with pytest.raises(Conflict):
        store.put("e/1", b"mine", if_absent=True)  # same bytes, but no earlier attempt of ours: someone else's
    assert inner.calls == {"put": 1} and sleeps == []


def test_server_time_is_retried_and_forwarded():
    inner, store, sleeps = make()
    inner.inner.clock_skew = -7200.0
    inner.fail("server_time", lambda: TransientStorageError("timeout"))
    t = store.server_time()
    inner.assert_all_fired()
    assert abs(t - (time.time() - 7200)) < 2 and store.retries == {"server_time": 1}
    assert abs(ReadOnlyStore(inner.inner).server_time() - t) < 2


def test_wrappers_pass_retain_and_if_absent_down():
    class Recording(MemoryStore):
        seen: list = []

        def put(self, key, data, *, sha256=None, if_absent=False, retain=True):
            self.seen.append((key, if_absent, retain))
            super().put(key, data, sha256=sha256, if_absent=if_absent, retain=retain)

    rec = Recording()
    signer = ManifestSigner("hmac", hmac_key=bytes(32))
    store = RetryingStore(EncryptingStore(SigningStore(FaultyStore(rec), signer), bytes(32)), sleep=lambda s: None)
    store.put("locks/a.json", b"{}", retain=False)
    store.put("snapshots/x", b"m", if_absent=True)
    assert rec.seen == [("locks/a.json", False, False), ("snapshots/x", True, True)]
    with pytest.raises(Conflict):
        store.put("snapshots/x", b"m", if_absent=True)
    assert [i.key for i in store.list("", start_after="locks/a.json")] == ["snapshots/x"]
    assert abs(store.server_time() - time.time()) < 2
    with pytest.raises(ReadOnlyStoreError):
        ReadOnlyStore(store).put("locks/b.json", b"{}", if_absent=True, retain=False)


def test_list_versions_resumes_without_repeating_versions():
    class FlakyVersions(MemoryStore):
        failed = False

        def list_versions(self, prefix=""):
            for i, v in enumerate(super().list_versions(prefix)):
                if i == 2 and not self.failed:
                    self.failed = True
                    raise TransientStorageError("connection reset mid-listing")
                yield v

    inner = FlakyVersions(versioned=True)
    for i in range(3):
        inner.put(f"k/{i}", b"a")
        inner.put(f"k/{i}", b"bb")
    store = RetryingStore(inner, sleep=lambda s: None)
    listed = [(v.key, v.size) for v in store.list_versions("k/")]
    assert listed == [(f"k/{i}", n) for i in range(3) for n in (2, 1)]
    assert inner.failed and store.retries == {"list_versions": 1}


def test_delete_version_is_scriptable_and_retried():
    inner, store, sleeps = make()
    inner.inner = MemoryStore(versioned=True)
    inner.inner.put("k", b"v")
    inner.inner.delete("k")
    marker = next(iter(inner.inner.list_versions("k")))
    inner.fail("delete_version", lambda: TransientStorageError("503"))
    store.delete_version("k", marker.version_id)
    inner.assert_all_fired()
    assert store.get("k") == b"v" and store.retries == {"delete_version": 1}
