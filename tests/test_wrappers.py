import hashlib
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmdr.errors import (
    AccessDenied,
    Conflict,
    IntegrityError,
    ReadOnlyStoreError,
    TransientStorageError,
    is_retriable,
)
from llmdr.storage.crypto import AesGcmBlobCipher, EncryptingStore, ManifestSigner, SigningStore, key_id
from llmdr.storage.memory import MemoryStore
from llmdr.storage.readonly import ReadOnlyStore
from llmdr.storage.retrying import RetryingStore
from llmdr.testing.faulty import FaultyStore

SIGNER = ManifestSigner("hmac", hmac_key=bytes(range(32)))


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

        def list_versions(self, prefix="", **kw):
            for i, v in enumerate(super().list_versions(prefix, **kw)):
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


# blob cipher (per-blob sealing inside packs) and the packs/ passthrough ---------------------------------------------
AAD = b"llmdr-blob-v2" + bytes(16) + bytes(range(32))


@given(plain=st.binary(max_size=4096), aad=st.binary(max_size=64))
@settings(max_examples=50, deadline=None)
def test_blob_cipher_round_trip(plain, aad):
    cipher = AesGcmBlobCipher(bytes(32))
    stored = cipher.seal(plain, aad)
    assert len(stored) == len(plain) + cipher.overhead == len(plain) + 28
    assert cipher.open(stored, aad, "blob x") == plain
    assert cipher.open(memoryview(stored), aad, "blob x") == plain
    assert cipher.seal(plain, aad) != stored  # a fresh nonce each time


def test_blob_cipher_refuses_wrong_aad_key_flip_and_short_input():
    cipher = AesGcmBlobCipher(bytes(32))
    other = AesGcmBlobCipher(bytes(31) + b"\1")
    stored = cipher.seal(b"chunk bytes", AAD)
    flipped = bytearray(stored)
    flipped[20] ^= 1
    cases = [(stored, AAD[:-1] + b"\0", cipher), (stored, AAD, other), (bytes(flipped), AAD, cipher),
             (stored[:-1], AAD, cipher), (stored[:27], AAD, cipher), (b"", AAD, cipher)]
    for data, aad, c in cases:
        with pytest.raises(IntegrityError, match="pack P blob 3") as err:
            c.open(data, aad, "pack P blob 3")
        assert "verify --repair" in str(err.value)
    assert cipher.key_id == key_id(bytes(32)) and len(cipher.key_id) == 8 and other.key_id != cipher.key_id


def test_encrypting_store_passes_packs_through_unsealed_and_seals_the_rest():
    inner = MemoryStore(versioned=True)
    enc = EncryptingStore(inner, bytes(32))
    cipher = enc.blob_cipher()
    assert cipher is not None and cipher.key_id == enc.key_id
    pack = b"LLMDRP2\0" + bytes(8) + cipher.seal(b"one blob", AAD) + b"trailer"
    enc.put("packs/ab/pack1", pack, sha256=hashlib.sha256(pack).digest())
    assert inner.get("packs/ab/pack1") == pack  # stored exactly as given
    assert enc.get("packs/ab/pack1") == pack
    blob = enc.get("packs/ab/pack1", start=16, length=len(b"one blob") + 28)  # one ranged GET, one blob
    assert cipher.open(blob, AAD, "packs/ab/pack1 blob 0") == b"one blob"
    assert enc.head("packs/ab/pack1").size == len(pack)
    enc.put("index/i", b"index bytes")
    assert inner.get("index/i") != b"index bytes" and enc.get("index/i") == b"index bytes"  # sealed whole
    assert {i.key: i.size for i in enc.list("")} == {"index/i": 11, "packs/ab/pack1": len(pack)}
    [v] = enc.list_versions("packs/")
    assert v.size == len(pack) and enc.get("packs/ab/pack1", version_id=v.version_id) == pack
    with pytest.raises(IntegrityError):
        enc.put("packs/ab/pack2", pack, sha256=bytes(32))  # a verified put is still verified


def test_blob_cipher_is_forwarded_by_every_wrapper_and_none_without_encryption():
    m = MemoryStore()
    assert m.blob_cipher() is None
    for plain in (RetryingStore(m), ReadOnlyStore(m), FaultyStore(m), SigningStore(m, SIGNER)):
        assert plain.blob_cipher() is None
    enc = EncryptingStore(m, bytes(32))
    for wrapped in (RetryingStore(enc), ReadOnlyStore(enc), FaultyStore(enc), SigningStore(enc, SIGNER)):
        assert wrapped.blob_cipher() is enc.blob_cipher()


@pytest.mark.parametrize("key", ["snapshots/m", "snaps/abc", "catalog/0123/e/000000000001",
                                 "catalog/0123/seg/000000000001-000000000256-ff"])
def test_signing_store_signs_records_catalog_entries_and_segments(key):
    inner = MemoryStore()
    store = SigningStore(inner, SIGNER)
    store.put(key, b'{"seq": 1}')
    assert b"llmdr-signature v1 hmac" in inner.get(key)
    assert store.get(key) == b'{"seq": 1}' and store.head(key).size == 10
    inner.corrupt(key, inner.get(key).replace(b"1", b"2", 1))
    with pytest.raises(IntegrityError, match="signature"):
        store.get(key)


@pytest.mark.parametrize("key", ["index/ab", "trees/ab/cd", "packs/ab/cd", "locks/x.json", "config.json"])
def test_signing_store_leaves_other_objects_unsigned(key):
    inner = MemoryStore()
    SigningStore(inner, SIGNER).put(key, b"plain")
    assert inner.get(key) == b"plain"
