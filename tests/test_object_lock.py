"""Object Lock in the DR region, against a real SeaweedFS server: locked copies cannot be deleted (not by llmdr, not
by a direct S3 call), copies and retention extend the locks the kept snapshots rely on (per pack), forgetting works
under lock (a catalog entry), and prune never deletes a locked pack but does delete (every version of) what is no
longer locked and no longer used."""

import random
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from llmdr.config import parse_config
from llmdr.errors import ObjectLocked, ReadOnlyStoreError, TransientStorageError
from llmdr.repo.chunking import ChunkerParams
from llmdr.repo.layout import RepoConfig, record_key
from llmdr.repo.locks import Locker
from llmdr.repo.prune import prune
from llmdr.repo.replicate import replicate_snapshot
from llmdr.repo.repository import Repository
from llmdr.repo.restore import restore_snapshot
from llmdr.repo.retention import Policy, apply_retention
from llmdr.repo.snapshot import take_snapshot
from llmdr.storage.credentials import resolve_keys
from llmdr.storage.factory import adapter, open_region
from llmdr.storage.retrying import RetryingStore
from llmdr.testing.faulty import FaultyStore
from tests.support.config import two_regions
from tests.support.damage import chunk_pack
from tests.support.trees import read_tree, write_tree

SMALL = ChunkerParams(avg_size=4096, min_size=1024, max_size=16384)

def locked_config(stack, tmp_path, *, period="60s", mode="COMPLIANCE"):
    cfg = two_regions(stack, tmp_path, secondary_bucket=f"llmdr-lock-{uuid.uuid4().hex[:10]}", secondary_prefix="",
                      secondary=f"    object_lock: {{mode: {mode}, period: {period}}}")
    assert adapter(cfg, cfg.secondaries[0]).ensure_bucket(object_lock=True) is True
    return cfg


def raw_key(region, key):
    """The object's name in the bucket (under the region's prefix), for direct S3 calls."""
    prefix = region.prefix.strip("/")
    return f"{prefix}/{key}" if prefix else key


def raw_client(cfg, region):
    import boto3
    from botocore.config import Config

    k = resolve_keys(cfg, region)
    return boto3.client("s3", endpoint_url=region.endpoint, aws_access_key_id=k.access_key_id,
                        aws_secret_access_key=k.secret_access_key, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}))


def protect_one(cfg, src, seed, size=50_000):
    write_tree(src, {"weights.bin": random.Random(seed).randbytes(size), "config.json": b'{"n": %d}' % seed})
    p = Repository(open_region(cfg, cfg.primary))
    p.ensure_config(RepoConfig(chunker=SMALL))
    snap = take_snapshot(p, src, bundle="testbundle")
    dr = Repository(open_region(cfg, cfg.secondaries[0]))
    res = replicate_snapshot(p, dr, snap.snapshot_id, workers=4)
    return snap, dr, res


def test_stack_up_creates_the_dr_bucket_with_object_lock_and_versioning(stack, tmp_path):
    cfg = locked_config(stack, tmp_path)
    prot = open_region(cfg, cfg.secondaries[0], read_only=True).bucket_protection()  # through every wrapper
    assert prot["object_lock"] is True and prot["versioning"] == "Enabled"
    plain = open_region(cfg, cfg.primary).bucket_protection()
    assert plain["object_lock"] is False


def test_start_region_creates_a_locked_bucket_for_a_region_with_object_lock(stack, tmp_path):
    from llmdr.devstack.regions import start_region

    cfg = locked_config(stack, tmp_path)
    text = cfg.source_file.read_text().replace(cfg.secondaries[0].bucket, f"llmdr-new-{uuid.uuid4().hex[:8]}")
    cfg2 = parse_config(text, source=cfg.source_file)
    st = start_region(cfg2, cfg2.secondaries[0])  # the server runs already: only the bucket is made
    assert st.healthy
    assert open_region(cfg2, cfg2.secondaries[0]).bucket_protection()["object_lock"] is True


def test_an_existing_bucket_without_lock_gets_versioning_and_lock(stack, tmp_path):
    from llmdr.storage.s3 import S3Store

    cfg = locked_config(stack, tmp_path)
    dr = cfg.secondaries[0]
    k = resolve_keys(cfg, dr)
    plain = S3Store(bucket=f"llmdr-plain-{uuid.uuid4().hex[:8]}", endpoint_url=dr.endpoint,
                    access_key_id=k.access_key_id, secret_access_key=k.secret_access_key)
    assert plain.ensure_bucket() is True
    assert plain.bucket_protection() == {"bucket": plain.bucket, "versioning": "Disabled", "object_lock": False,
                                         "default_retention": None}
    assert plain.ensure_bucket(object_lock=True) is False  # existed; SeaweedFS, like AWS, adds the lock once versioned
    prot = plain.bucket_protection()
    assert prot["object_lock"] is True and prot["versioning"] == "Enabled"


def test_a_locked_snapshot_cannot_be_deleted(stack, tmp_path):
    cfg = locked_config(stack, tmp_path)
    snap, dr, _ = protect_one(cfg, tmp_path / "src", 1)
    sid = snap.snapshot_id
    locker = Locker.of(dr.store)
    lock = locker.locked(record_key(sid))
    assert lock is not None and lock.mode == "COMPLIANCE"
    assert 50 < lock.until - time.time() <= 61
    for d in snap.manifest.chunk_set():  # every pack holding a chunk is locked at least as long as the record
        assert locker.chunk_lock(dr, d).until >= lock.until - 1

    # llmdr refuses, naming the lock
    with pytest.raises(ObjectLocked, match="COMPLIANCE Object Lock until"):
        dr.store.delete(record_key(sid))
    with pytest.raises(ObjectLocked, match="COMPLIANCE Object Lock until"):
        dr.store.delete(chunk_pack(dr, next(iter(snap.manifest.chunk_set()))))
    # so does the server to anyone deleting the version directly
    from botocore.exceptions import ClientError

    s3 = raw_client(cfg, cfg.secondaries[0])
    key = raw_key(cfg.secondaries[0], record_key(sid))
    vid = s3.head_object(Bucket=cfg.secondaries[0].bucket, Key=key)["VersionId"]
    with pytest.raises(ClientError, match="AccessDenied"):
        s3.delete_object(Bucket=cfg.secondaries[0].bucket, Key=key, VersionId=vid)
    assert dr.snapshot_ids() == [sid]
    restore_snapshot(dr, sid, tmp_path / "out")
    assert read_tree(tmp_path / "out") == read_tree(tmp_path / "src")


def test_copies_extend_the_locks_of_reused_chunks_only_when_needed(stack, tmp_path):
    cfg = locked_config(stack, tmp_path, period="8s")  # slack: a quarter period, 2 s
    src = tmp_path / "src"
    snap1, dr, _ = protect_one(cfg, src, 2, size=80_000)
    locker = Locker.of(dr.store)
    before = {d: locker.chunk_lock(dr, d).until for d in snap1.manifest.chunk_set()}
    p = Repository(open_region(cfg, cfg.primary))

    def next_snapshot(text):
        (src / "config.json").write_bytes(text)  # weights unchanged: their chunks are reused
        snap = take_snapshot(p, src, bundle="testbundle")
        return snap, replicate_snapshot(p, dr, snap.snapshot_id, workers=4)

    # a protect right after the last: the previous snapshot's fresh lock covers the reused chunks, nothing re-locked
    snap2, res2 = next_snapshot(b'{"v": 2}')
    reused = set(snap1.manifest.chunk_set()) & set(snap2.manifest.chunk_set())
    assert reused and res2.chunks_copied < res2.chunks_total and res2.locks_extended == 0
    time.sleep(2.3)  # more than the slack: the packs of reused chunks are re-locked as long as the new snapshot
    snap3, res3 = next_snapshot(b'{"v": 3}')
    reused3 = set(snap3.manifest.chunk_set()) & set(snap2.manifest.chunk_set())
    assert res3.locks_extended == len({chunk_pack(dr, d) for d in reused3}) > 0  # one extension per pack
    m3 = locker.snapshot_lock(snap3.snapshot_id).until
    for d in reused & reused3:
        assert locker.chunk_lock(dr, d).until > before[d] + 1
    for d in snap3.manifest.chunk_set():  # the rule readiness checks: packs locked >= record - slack
        assert locker.chunk_lock(dr, d).until >= m3 - locker.slack_s - 1


def test_retention_forgets_locked_snapshots_and_frees_their_packs_once_unlocked(stack, tmp_path):
    cfg = locked_config(stack, tmp_path, period="4s")
    src = tmp_path / "src"
    snap1, dr, _ = protect_one(cfg, src, 3)
    snap2, dr, _ = protect_one(cfg, src, 4)  # (a fresh view of the region, with both snapshots' indexes)
    only1 = set(snap1.manifest.chunk_set()) - set(snap2.manifest.chunk_set())
    packs1 = {chunk_pack(dr, d) for d in only1}
    assert only1 and packs1.isdisjoint({chunk_pack(dr, d) for d in snap2.manifest.chunk_set()})

    # forgetting is a catalog entry: it works under Object Lock; the locked objects stay
    res = apply_retention(dr, "testbundle", Policy(keep_last=1), grace_s=0)
    assert res.forgotten == [snap1.snapshot_id] and snap1.snapshot_id in res.locked
    assert res.chunks_locked == len(packs1) and res.chunks_deleted == 0 and res.prune["planned"] == 0
    assert dr.snapshot_ids() == [snap2.snapshot_id]
    assert all(dr.store.head(k) for k in packs1) and dr.store.head(record_key(snap1.snapshot_id))

    time.sleep(4.5)  # both locks have ended; the kept snapshot gets fresh ones, the forgotten one's packs are planned
    res = apply_retention(dr, "testbundle", Policy(keep_last=1), grace_s=0)
    assert res.forgotten == [] and res.locked == {}
    assert res.prune["planned"] == len(packs1) and res.chunks_deleted == 0
    assert res.locks_extended >= len({chunk_pack(dr, d) for d in snap2.manifest.chunk_set()}) + 1
    assert Locker.of(dr.store).locked(record_key(snap2.snapshot_id)) is not None
    p = prune(dr, safety_s=0)  # phase two
    assert p.chunks_deleted == len(only1) and len(p.deleted) == len(packs1) and p.records_deleted == 1
    # deleted for real: no version and no delete marker is left behind to keep paying for
    s3 = raw_client(cfg, cfg.secondaries[0])
    for key in [record_key(snap1.snapshot_id), *packs1]:
        v = s3.list_object_versions(Bucket=cfg.secondaries[0].bucket, Prefix=raw_key(cfg.secondaries[0], key))
        assert not v.get("Versions") and not v.get("DeleteMarkers"), key
    assert dr.snapshot_ids() == [snap2.snapshot_id]
    restore_snapshot(Repository(dr.store), snap2.snapshot_id, tmp_path / "out")
    assert read_tree(tmp_path / "out") == read_tree(src)


def test_prune_skips_unreferenced_packs_that_are_still_locked(stack, tmp_path):
    import hashlib

    cfg = locked_config(stack, tmp_path, period="60s")
    snap, dr, _ = protect_one(cfg, tmp_path / "src", 5)
    orphan = random.Random(9).randbytes(3000)  # a chunk of an upload that crashed before its record
    hexd = hashlib.sha256(orphan).hexdigest()
    dr.save_chunk(hexd, orphan)
    key = chunk_pack(dr, hexd)
    res = apply_retention(dr, "testbundle", Policy(keep_last=1), grace_s=0)
    assert res.chunks_locked == 1 and res.chunks_deleted == 0 and res.prune["planned"] == 0
    assert prune(dr, safety_s=0).deleted == []
    assert Repository(dr.store).load_chunk(hexd) == orphan
    # and COMPLIANCE cannot be shortened to get around it, not even by the bucket owner
    from botocore.exceptions import ClientError

    s3 = raw_client(cfg, cfg.secondaries[0])
    with pytest.raises(ClientError, match="AccessDenied"):
        s3.put_object_retention(Bucket=cfg.secondaries[0].bucket, Key=raw_key(cfg.secondaries[0], key),
                                Retention={"Mode": "COMPLIANCE", "RetainUntilDate": datetime.now(timezone.utc)
                                                                          + timedelta(seconds=5)})


def test_governance_mode_locks_too(stack, tmp_path):
    cfg = locked_config(stack, tmp_path, mode="GOVERNANCE")
    snap, dr, _ = protect_one(cfg, tmp_path / "src", 7)
    lock = Locker.of(dr.store).locked(record_key(snap.snapshot_id))
    assert lock.mode == "GOVERNANCE"
    with pytest.raises(ObjectLocked, match="GOVERNANCE"):
        dr.store.delete(record_key(snap.snapshot_id))


def test_a_read_only_store_reads_locks_but_cannot_extend_them(stack, tmp_path):
    cfg = locked_config(stack, tmp_path)
    snap, _, _ = protect_one(cfg, tmp_path / "src", 8)
    ro = Locker.of(open_region(cfg, cfg.secondaries[0], read_only=True))
    key = record_key(snap.snapshot_id)
    lock = ro.locked(key)
    assert lock is not None and lock.mode == "COMPLIANCE"
    with pytest.raises(ReadOnlyStoreError, match="extend lock of"):
        ro.extend([key], until=lock.until + 60)
    assert ro.retention(key).until == lock.until
    assert Locker.of(open_region(cfg, cfg.primary)) is None  # no object_lock: puts are not locked


def test_lock_calls_go_through_the_retry_layer(stack, tmp_path):
    """Retention reads and extensions are storage calls like the others: a transient fault is retried and counted."""
    cfg = locked_config(stack, tmp_path)
    snap, _, _ = protect_one(cfg, tmp_path / "src", 10)
    faulty = FaultyStore(adapter(cfg, cfg.secondaries[0]))
    store = RetryingStore(faulty, sleep=lambda s: None)
    faulty.fail("retention", lambda: TransientStorageError("injected"), times=2)
    faulty.fail("extend_lock", lambda: TransientStorageError("injected"), times=1)
    locker = Locker.of(store)
    key = record_key(snap.snapshot_id)
    before = locker.retention(key).until
    assert locker.extend([key], until=before + 30) == 1
    faulty.assert_all_fired()
    assert store.retries == {"extend": 1, "retention": 2}
    assert locker.retention(key).until >= before + 29


def test_a_copy_slower_than_the_slack_relocks_its_early_chunks(stack, tmp_path):
    """Chunks are locked when put, the manifest when published: a long copy would leave its first chunks locked
    shorter than the rule (>= manifest - period/4) allows, so they are extended before publishing."""
    cfg = locked_config(stack, tmp_path, period="4s")  # slack 1 s
    src = tmp_path / "src"
    write_tree(src, {"weights.bin": random.Random(11).randbytes(60_000)})
    p = Repository(open_region(cfg, cfg.primary))
    p.ensure_config(RepoConfig(chunker=SMALL))
    snap = take_snapshot(p, src, bundle="testbundle")
    slow = FaultyStore(p.store)
    slow.delay("get", 1.6, times=None, key_prefix="packs/")  # the copy reads by pack range: each GET takes 1.6 s
    dr = Repository(open_region(cfg, cfg.secondaries[0]))
    res = replicate_snapshot(Repository(slow), dr, snap.snapshot_id, workers=1)
    locker = Locker.of(dr.store)
    packs = {chunk_pack(dr, d) for d in snap.manifest.chunk_set()}
    assert res.duration_s > 1.5 and res.locks_extended == len(packs)  # every pack it wrote, re-locked
    m = locker.snapshot_lock(snap.snapshot_id).until
    for d in snap.manifest.chunk_set():
        assert locker.chunk_lock(dr, d).until >= m - locker.slack_s - 1
