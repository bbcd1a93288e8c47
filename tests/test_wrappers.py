import pytest

from llmdr.errors import AccessDenied, IntegrityError, ReadOnlyStoreError, TransientStorageError, is_retriable
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

        def list(self, prefix=""):
            for i, info in enumerate(super().list(prefix)):
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
