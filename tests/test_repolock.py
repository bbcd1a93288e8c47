"""Repository locks (design §5): who conflicts with whom, staleness judged only by the store's clock, waiting,
refreshing and what a held lock reports when its refresh fails. Logic on the memory store with short timings; the
last tests run the same on real SeaweedFS (store times from S3 ``Date`` and ``Last-Modified``, a locked bucket)."""

import json
import os
import threading
import time
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmdr.errors import RepositoryLocked, TransientStorageError
from llmdr.repo.manifest import canonical_json
from llmdr.repo.repolock import (
    EXCLUSIVE,
    KINDS,
    LOCKS,
    SHARED,
    UNREADABLE,
    acquire,
    hold,
    late_after,
    list_locks,
    remove_stale,
)
from llmdr.storage.memory import MemoryStore

FAST = {"settle_s": 0.05, "refresh_s": 0.2, "stale_s": 1.0}
YEAR = 365 * 86400.0


def rival(store, kind: str, op: str = "prune") -> str:
    """A lock object written by another process (which then never refreshes it: it may have crashed)."""
    key = f"{LOCKS}{uuid.uuid4().hex}.json"
    store.put(key, canonical_json({"kind": kind, "op": op, "host": "other-host", "pid": 4242, "refreshed_seq": 0}),
              retain=False)
    return key


def keys(store) -> list[str]:
    return [i.key for i in store.list(LOCKS)]


def until(cond, timeout: float = 10.0) -> None:
    """Wait for a background thread to do something; fail (not hang) if it never does."""
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.02)


def refused(lock) -> bool:
    """True once ``lock.check()`` raises (the refresher thread has recorded its failure)."""
    try:
        lock.check()
    except RepositoryLocked:
        return True
    return False


class TestStore(MemoryStore):
    """A memory store that records put options and can refuse or stall puts (a store going away)."""

    __test__ = False

    def __init__(self) -> None:
        super().__init__("locktest")
        self.fail_puts = False
        self.put_delay = 0.0
        self.put_failures = 0
        self.retains: list[bool] = []

    def put(self, key, data, **kw):
        if self.put_delay:
            time.sleep(self.put_delay)
        if self.fail_puts:
            self.put_failures += 1
            raise TransientStorageError(f"put {key!r} in {self.location}: refused (test)")
        self.retains.append(kw.get("retain", True))
        super().put(key, data, **kw)


# who conflicts with whom -------------------------------------------------------------------------------------------------
def test_shared_locks_coexist_and_are_listed_live():
    store = MemoryStore()
    a = acquire(store, SHARED, "snapshot", **FAST)
    b = acquire(store, SHARED, "restore", **FAST)
    infos = {i.key: i for i in list_locks(store, stale_s=1.0)}
    assert set(infos) == {a.key, b.key}
    assert {i.op for i in infos.values()} == {"snapshot", "restore"}
    assert all(i.live and i.kind == SHARED and i.host and i.pid > 0 for i in infos.values())
    a.release()
    b.release()
    assert keys(store) == []


@pytest.mark.parametrize("held,wanted", [(SHARED, EXCLUSIVE), (EXCLUSIVE, SHARED), (EXCLUSIVE, EXCLUSIVE)])
def test_conflicting_lock_is_refused_naming_the_holder_and_leaves_nothing(held, wanted):
    store = MemoryStore()
    holder = acquire(store, held, "prune" if held == EXCLUSIVE else "snapshot", **FAST)
    with pytest.raises(RepositoryLocked) as e:
        acquire(store, wanted, "verify", **FAST)
    msg = str(e.value)
    assert holder.key in msg and holder.op in msg and str(holder.store.location) in msg
    assert f"pid {os.getpid()}" in msg and "stale" in msg
    assert "llmdr locks --remove" in msg and e.value.exit_code == 10
    assert keys(store) == [holder.key]  # the refused taker's own lock object is gone
    holder.release()
    acquire(store, wanted, "verify", **FAST).release()  # free once the holder released
    assert keys(store) == []


def test_lock_object_body_and_put_options():
    store = TestStore()
    with hold(store, EXCLUSIVE, "migrate", repo_id="ab" * 16, **FAST) as lock:
        body = json.loads(store.get(lock.key))
        assert lock.key.startswith(LOCKS) and len(lock.key) == len(LOCKS) + 32 + len(".json")
        assert body["kind"] == EXCLUSIVE and body["op"] == "migrate" and body["repo_id"] == "ab" * 16
        assert isinstance(body["host"], str) and isinstance(body["pid"], int) and body["refreshed_seq"] == 0
        assert store.retains and not any(store.retains)  # lock objects never carry Object Lock retention


def test_hold_releases_when_the_block_fails_and_release_is_idempotent():
    store = MemoryStore()
    with pytest.raises(RuntimeError, match="boom"):
        with hold(store, SHARED, "snapshot", **FAST) as lock:
            assert keys(store) == [lock.key]
            raise RuntimeError("boom")
    assert keys(store) == []
    lock.release()
    with pytest.raises(RepositoryLocked, match="released"):
        lock.check()


def test_bad_arguments_are_refused():
    store = MemoryStore()
    with pytest.raises(ValueError, match="kind"):
        acquire(store, "read", "x", **FAST)
    with pytest.raises(ValueError, match="refresh_s"):
        acquire(store, SHARED, "x", settle_s=0.05, refresh_s=0.9, stale_s=1.0)
    assert late_after(1800.0) == 1200.0  # the design's 20 minutes for the default 30
    assert keys(store) == []


@settings(max_examples=40, deadline=None)
@given(held=st.lists(st.tuples(st.sampled_from(KINDS), st.booleans()), max_size=4), kind=st.sampled_from(KINDS))
def test_acquire_succeeds_exactly_when_no_live_lock_conflicts(held, kind):
    store = MemoryStore()
    stale_keys = set()
    for held_kind, stale in held:
        key = rival(store, held_kind)
        if stale:
            store.age(key, 10.0)
            stale_keys.add(key)
    free = not any(not stale and (kind == EXCLUSIVE or k == EXCLUSIVE) for k, stale in held)
    before = set(keys(store))
    try:
        lock = acquire(store, kind, "op", settle_s=0.0, refresh_s=0.2, stale_s=5.0)
    except RepositoryLocked:
        assert not free
        assert set(keys(store)) == before
        return
    assert free
    left = set(keys(store)) - {lock.key}
    assert left == (before - stale_keys if kind == EXCLUSIVE else before)  # exclusive takers remove stale locks
    lock.release()


# a race between two takers (step 3) ------------------------------------------------------------------------------------
class RacingStore(MemoryStore):
    """Another taker passes step 1 with us and PUTs its exclusive lock right after ours."""

    def __init__(self) -> None:
        super().__init__("race")
        self.rival_key: str | None = None

    def put(self, key, data, **kw):
        super().put(key, data, **kw)
        if key.startswith(LOCKS) and self.rival_key is None:
            self.rival_key = "pending"
            self.rival_key = rival(self, EXCLUSIVE)


def test_a_conflict_that_appears_while_settling_makes_the_taker_back_off():
    store = RacingStore()
    with pytest.raises(RepositoryLocked) as e:
        acquire(store, SHARED, "snapshot", **FAST)
    assert store.rival_key in str(e.value)
    assert keys(store) == [store.rival_key]  # ours was deleted, the rival's stays


class ListFailsAfterPut(MemoryStore):
    def __init__(self) -> None:
        super().__init__("listfail")
        self.lists = 0

    def list(self, prefix="", **kw):
        self.lists += 1
        if self.lists == 2:
            raise TransientStorageError(f"list {prefix!r} in {self.location}: refused (test)")
        return super().list(prefix, **kw)


def test_a_failure_after_the_put_removes_the_own_lock_object():
    store = ListFailsAfterPut()
    with pytest.raises(TransientStorageError):
        acquire(store, EXCLUSIVE, "prune", **FAST)
    assert store.lists == 2 and keys(store) == []


# waiting ------------------------------------------------------------------------------------------------------------------
def test_wait_s_waits_for_the_holder_then_succeeds():
    store = MemoryStore()
    holder = acquire(store, EXCLUSIVE, "prune", **FAST)
    with pytest.raises(RepositoryLocked):
        acquire(store, SHARED, "snapshot", **FAST)  # without waiting: refused
    released = threading.Event()

    def later():
        time.sleep(0.3)
        holder.release()
        released.set()

    t = threading.Thread(target=later)
    t.start()
    try:
        lock = acquire(store, SHARED, "snapshot", wait_s=10.0, **FAST)
        assert released.is_set()
        assert keys(store) == [lock.key]
        lock.release()
    finally:
        t.join()


def test_wait_s_runs_out_while_the_holder_stays():
    store = MemoryStore()
    holder = acquire(store, SHARED, "snapshot", **FAST)
    with pytest.raises(RepositoryLocked, match="after waiting 0.3 s") as e:
        acquire(store, EXCLUSIVE, "prune", wait_s=0.3, **FAST)
    assert holder.key in str(e.value) and keys(store) == [holder.key]
    holder.release()


# staleness by store time only -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("skew", [YEAR, -YEAR])
def test_staleness_follows_the_store_clock_whatever_its_offset(skew):
    store = MemoryStore()
    store.clock_skew = skew  # the store's clock is a year off this machine's
    key = rival(store, EXCLUSIVE)
    with pytest.raises(RepositoryLocked, match=key):
        acquire(store, SHARED, "snapshot", **FAST)  # just written by store time: live
    store.clock_skew += 1.5  # the store's clock moves on 1.5 s; the client's does not
    [info] = list_locks(store, stale_s=1.0)
    assert not info.live and 1.4 < info.age_s < 10
    lock = acquire(store, EXCLUSIVE, "prune", **FAST)
    assert keys(store) == [lock.key]  # the stale one was removed by the exclusive taker
    lock.release()


@pytest.mark.parametrize("skew", [YEAR, -YEAR])
def test_a_client_clock_a_year_off_neither_keeps_nor_kills_a_lock(monkeypatch, skew):
    store = MemoryStore()
    store.clock_skew = -skew  # patching time.time moves the memory store too: keep it on true time
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + skew)
    assert abs(time.time() - store.server_time() - skew) < 60  # the client is a year off the store
    key = rival(store, EXCLUSIVE)
    with pytest.raises(RepositoryLocked, match=key):
        acquire(store, SHARED, "snapshot", **FAST)  # not killed by a client clock a year ahead
    store.age(key, 1.5)  # by store time the holder stopped refreshing 1.5 s ago
    lock = acquire(store, SHARED, "snapshot", **FAST)  # not kept alive by a client clock a year behind
    assert [i.key for i in list_locks(store, stale_s=1.0) if i.live] == [lock.key]
    lock.release()
    assert remove_stale(store, stale_s=1.0) == [key] and keys(store) == []


JUNK = [b"not json", b"[]", b'{"kind": "shared"}', b'{"kind": "weird", "op": "x", "host": "h", "pid": 1}',
        b"\xff\xfe", b'{"kind": "shared", "op": "x", "host": "h", "pid": true}',
        canonical_json({"kind": "shared", "op": "x" * 70_000, "host": "h", "pid": 1})]  # too big to be a lock


@pytest.mark.parametrize("junk", JUNK, ids=range(len(JUNK)))
def test_an_unreadable_lock_object_is_a_live_exclusive_lock_until_stale(junk):
    store = MemoryStore()
    key = f"{LOCKS}{'ab' * 16}.json"
    store.put(key, junk)
    [info] = list_locks(store, stale_s=1.0)
    assert (info.kind, info.op, info.live) == (EXCLUSIVE, UNREADABLE, True)
    with pytest.raises(RepositoryLocked) as e:
        acquire(store, SHARED, "snapshot", **FAST)
    assert key in str(e.value) and "unreadable" in str(e.value)
    store.age(key, 1.5)
    lock = acquire(store, EXCLUSIVE, "prune", **FAST)
    assert keys(store) == [lock.key]  # stale now: removed by the exclusive taker
    lock.release()


# refresh ----------------------------------------------------------------------------------------------------------------
def test_refresh_keeps_a_lock_live_past_the_stale_time():
    store = MemoryStore()
    with hold(store, SHARED, "snapshot", **FAST) as lock:
        time.sleep(1.6)  # > stale_s: only refreshes keep it live
        [info] = list_locks(store, stale_s=1.0)
        assert info.key == lock.key and info.live and info.age_s < 1.0
        assert json.loads(store.get(lock.key))["refreshed_seq"] >= 2
        with pytest.raises(RepositoryLocked, match=lock.key):
            acquire(store, EXCLUSIVE, "prune", **FAST)
        lock.check()  # refreshed in time: no complaint
    assert keys(store) == []


def test_a_failed_refresh_makes_check_raise_and_it_stays_failed():
    store = TestStore()
    lock = acquire(store, SHARED, "snapshot", **FAST)
    lock.check()
    store.fail_puts = True
    # the store counts the refused PUT before the refresher records it: wait for the lock to notice, not the store
    until(lambda: store.put_failures >= 1 and refused(lock))
    with pytest.raises(RepositoryLocked, match="could not be refreshed") as e:
        lock.check()
    assert isinstance(e.value.__cause__, TransientStorageError)
    store.fail_puts = False
    seq = json.loads(store.get(lock.key))["refreshed_seq"]
    until(lambda: json.loads(store.get(lock.key))["refreshed_seq"] > seq)  # refreshing again...
    with pytest.raises(RepositoryLocked, match="could not be refreshed"):
        lock.check()  # ...but the gap is remembered: a prune may have acted meanwhile
    lock.release()
    assert keys(store) == []


def test_a_late_refresh_makes_check_raise():
    store = TestStore()
    lock = acquire(store, SHARED, "snapshot", **FAST)  # late after late_after(1.0) = 0.67 s without a refresh
    store.put_delay = 1.5  # the store stalls: the next refresh hangs in its PUT
    time.sleep(1.0)
    with pytest.raises(RepositoryLocked, match="last refreshed"):
        lock.check()
    store.put_delay = 0.0
    lock.release()
    assert keys(store) == []


def test_a_lock_removed_by_someone_else_is_not_recreated_and_check_raises():
    store = MemoryStore()
    lock = acquire(store, SHARED, "snapshot", **FAST)
    store.delete(lock.key)  # `llmdr unlock`, or a prune that judged it stale
    time.sleep(0.5)
    assert keys(store) == []
    with pytest.raises(RepositoryLocked, match="removed by someone else"):
        lock.check()
    lock.release()


# on real S3 (SeaweedFS) ---------------------------------------------------------------------------------------------------
S3_FAST = {"settle_s": 0.1, "refresh_s": 0.5, "stale_s": 3.0}  # S3 times have 1 s resolution


def test_s3_conflicts_refresh_and_store_time_staleness(region_config):
    from llmdr.storage.factory import adapter

    one, two = adapter(region_config, region_config.primary), adapter(region_config, region_config.primary)
    crashed = rival(one, SHARED, "snapshot")  # a holder that never refreshes
    lock = acquire(one, SHARED, "restore", **S3_FAST)
    with pytest.raises(RepositoryLocked) as e:
        acquire(two, EXCLUSIVE, "prune", **S3_FAST)
    assert lock.key in str(e.value) and crashed in str(e.value) and keys(two) == sorted([crashed, lock.key])
    time.sleep(4.5)  # > stale_s by the store's clock: the crashed lock is stale, the refreshed one is not
    infos = {i.key: i for i in list_locks(two, stale_s=3.0)}
    assert not infos[crashed].live and infos[crashed].age_s >= 3.0
    assert infos[lock.key].live
    lock.check()
    with pytest.raises(RepositoryLocked, match=lock.key):
        acquire(two, EXCLUSIVE, "prune", **S3_FAST)
    lock.release()
    mine = acquire(two, EXCLUSIVE, "prune", **S3_FAST)
    assert keys(one) == [mine.key]  # the crashed lock was removed by the exclusive taker
    mine.release()
    assert keys(one) == []


def test_s3_lock_objects_stay_deletable_in_an_object_locked_bucket(stack, tmp_path):
    from llmdr.storage.factory import adapter
    from tests.support.config import two_regions

    cfg = two_regions(stack, tmp_path, secondary_bucket=f"llmdr-lock-{uuid.uuid4().hex[:10]}", secondary_prefix="",
                      secondary="    object_lock: {mode: COMPLIANCE, period: 1d}")
    store = adapter(cfg, cfg.secondaries[0])
    assert store.ensure_bucket(object_lock=True) is True and store.lock_policy() is not None
    with hold(store, EXCLUSIVE, "prune", **S3_FAST) as lock:
        assert store.retention(lock.key) is None  # written with retain=False
        time.sleep(1.0)  # a refresh or two: more versions of the same key
    assert keys(store) == []
    assert store.usage()["noncurrent_objects"] == 0  # every version removed, not hidden behind a delete marker
