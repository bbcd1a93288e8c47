"""Version-aware reads (design §6): a plain DELETE in a locked DR region only puts a delete marker over bytes Object
Lock keeps, so restore reads the locked version (with a warning), verify and readiness name the hidden keys,
``llmdr undelete`` removes the markers; ``--as-of`` reads a region as it was. Against real SeaweedFS with versioning
and COMPLIANCE Object Lock; the as-of view also against the versioned memory store, with Hypothesis."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmdr.drill import readiness as rd
from llmdr.errors import ObjectNotFound, ReadOnlyStoreError, SnapshotNotFound, StorageError
from llmdr.repo import ops
from llmdr.repo.layout import record_key
from llmdr.repo.undelete import hidden_objects, undelete
from llmdr.storage.credentials import resolve_keys
from llmdr.storage.factory import adapter, open_region
from llmdr.storage.memory import MemoryStore
from llmdr.storage.s3 import S3Store
from llmdr.storage.versioned import AsOfStore, HiddenVersionStore
from tests.support.config import two_regions
from tests.support.damage import pack_keys
from tests.support.trees import read_tree, write_tree

LLMDR = [sys.executable, "-m", "llmdr.cli"]
LOCK = "    object_lock: {mode: COMPLIANCE, period: 60s}"


# --- the as-of view on the versioned memory store ----------------------------------------------------------------------
def _at(m: MemoryStore, when: float) -> None:
    m.clock_skew = when - time.time()  # the store stamps the next writes with `when`


def test_as_of_reads_each_key_as_it_was_and_refuses_writes():
    m = MemoryStore(versioned=True)
    t0 = time.time() - 1000
    _at(m, t0)
    m.put("a", b"a1")
    m.put("b", b"b1")
    _at(m, t0 + 100)
    m.put("a", b"a2")
    m.delete("b")
    m.put("c", b"c1")
    m.clock_skew = 0.0

    early = AsOfStore(m, t0 + 50)
    assert (early.get("a"), early.get("b"), early.get("a", start=1, length=1)) == (b"a1", b"b1", b"1")
    assert [(i.key, i.size) for i in early.list()] == [("a", 2), ("b", 2)]
    with pytest.raises(ObjectNotFound, match="did not exist"):
        early.get("c")
    assert early.head("b").size == 2
    late = AsOfStore(m, t0 + 150)
    assert [i.key for i in late.list()] == ["a", "c"] and late.get("a") == b"a2"
    with pytest.raises(ObjectNotFound):
        late.head("b")  # deleted by then
    assert [i.key for i in late.list(start_after="a")] == ["c"]
    assert list(AsOfStore(m, t0 - 1).list()) == []  # before anything was written
    for write in (lambda: early.put("d", b"x"), lambda: early.delete("a"), lambda: early.extend_lock("a", 1.0),
                  lambda: early.delete_version("a", "v")):
        with pytest.raises(ReadOnlyStoreError, match="--as-of view is read-only"):
            write()
    assert m.get("a") == b"a2" and [i.key for i in m.list()] == ["a", "c"]  # the region itself is untouched


def test_as_of_refuses_a_store_that_keeps_no_versions():
    m = MemoryStore()
    m.put("a", b"1")
    with pytest.raises(StorageError, match="versioning is Disabled"):
        AsOfStore(m, time.time()).get("a")


OPS = st.lists(st.tuples(st.sampled_from(["put", "delete"]), st.sampled_from(["k/a", "k/b", "k/c", "l"]),
                         st.binary(max_size=8)), min_size=1, max_size=24)


@settings(max_examples=60, deadline=None)
@given(OPS)
def test_as_of_equals_what_a_plain_reader_saw_at_that_time(ops_list):
    """After each step (one second apart in store time) record what a plain reader sees; the as-of view of every step
    shows exactly that, listing and reads."""
    m = MemoryStore(versioned=True)
    t0 = time.time() - 10_000
    seen = []
    for i, (op, key, data) in enumerate(ops_list):
        _at(m, t0 + i)
        m.put(key, data) if op == "put" else m.delete(key)
        seen.append({info.key: m.get(info.key) for info in m.list()})
    for i, state in enumerate(seen):
        view = AsOfStore(m, t0 + i + 0.5)
        assert {info.key: view.get(info.key) for info in view.list()} == state
        assert [info.key for info in view.list("k/")] == sorted(k for k in state if k.startswith("k/"))


def test_as_of_times_are_utc_or_a_duration_ago():
    from llmdr.cli.root import parse_as_of
    from llmdr.errors import UsageError

    utc = datetime(2026, 12, 3, 8, 0, tzinfo=timezone.utc).timestamp()
    assert parse_as_of("2026-12-03T08:00:00Z") == parse_as_of("2026-12-03T08:00:00") == utc
    assert parse_as_of("2026-12-03T10:00:00+02:00") == utc
    assert parse_as_of("2h", now=utc) == utc - 7200 and parse_as_of("1d1h", now=utc) == utc - 90000
    with pytest.raises(UsageError, match="--as-of 'soon'"):
        parse_as_of("soon")


def test_hidden_reads_pass_through_a_store_without_object_lock():
    """No lock, nothing protected: a deleted key stays deleted (only locked versions are read through a marker)."""
    m = MemoryStore(versioned=True)
    m.put("a", b"1")
    m.delete("a")
    h = HiddenVersionStore(m)
    with pytest.raises(ObjectNotFound):
        h.get("a")
    assert list(h.list()) == [] and h.hidden == {} and hidden_objects(m) == []


# --- a locked DR region on SeaweedFS -----------------------------------------------------------------------------------
def locked_config(stack, tmp_path):
    cfg = two_regions(stack, tmp_path, secondary_bucket=f"llmdr-dm-{uuid.uuid4().hex[:10]}", secondary_prefix="",
                      secondary=LOCK, extra="transfer: {workers: 4, fsync: false}")
    assert adapter(cfg, cfg.secondaries[0]).ensure_bucket(object_lock=True) is True
    return cfg


def plain_deleter(cfg) -> S3Store:
    """The DR region's own keys through a bare S3 client without a lock policy: its DELETE carries no version id, as
    an old client or another tool sends it, so the server only puts a delete marker on top."""
    r = cfg.secondaries[0]
    k = resolve_keys(cfg, r)
    return S3Store(bucket=r.bucket, endpoint_url=r.endpoint, access_key_id=k.access_key_id,
                   secret_access_key=k.secret_access_key, prefix=r.prefix)


def protect(cfg, seed: int) -> str:
    """Write the bundle, snapshot it into the primary and copy it to the locked DR region; the snapshot id."""
    write_tree(cfg.bundle_path, {"weights.bin": random.Random(seed).randbytes(300_000),
                                 "config.json": b'{"seed": %d}' % seed})
    sid = ops.snapshot_bundle(cfg).snapshot_id
    ops.replicate(cfg, sid, to="secondary")
    return sid


def llmdr(cfg, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LLMDR, "--config", str(cfg.source_file), *args], capture_output=True, text=True,
                          timeout=180, env={**os.environ, "LLMDR_CONFIG": ""})


def immutability(cfg) -> rd.Check:
    [c] = [c for c in rd.run_checks(cfg, only={"immutability"}).checks if c.id == "immutability/secondary"]
    return c


def test_plain_delete_of_a_locked_record_and_pack_is_read_through_reported_and_undone(stack, tmp_path):
    cfg = locked_config(stack, tmp_path)
    sid = protect(cfg, 1)
    dr = ops.open_repo(cfg, "secondary", read_only=True, cache=False)
    [pack] = pack_keys(dr)  # a small bundle: one pack holds every chunk
    deleter = plain_deleter(cfg)
    for key in (record_key(sid), pack):
        deleter.delete(key)
        with pytest.raises(ObjectNotFound):
            deleter.head(key)
    with pytest.raises(SnapshotNotFound):  # a plain reader no longer finds the record
        ops.open_repo(cfg, "secondary", read_only=True, cache=False).load_record(sid)
    hidden = {h["key"]: h for h in hidden_objects(open_region(cfg, cfg.secondaries[0], read_only=True))}
    assert set(hidden) == {record_key(sid), pack}
    assert all(h["mode"] == "COMPLIANCE" and h["until"] > time.time() + 30 for h in hidden.values())

    # the catalog entry is intact, so the snapshot is still listed
    r = llmdr(cfg, "snapshots", "--region", "secondary", "--json")
    assert r.returncode == 0, r.stderr
    assert [s["id"] for s in json.loads(r.stdout)] == [sid]

    # restore reads the locked versions, says so, and the files are the bundle's
    r = llmdr(cfg, "restore", sid[:12], "--to", str(tmp_path / "out"), "--region", "secondary", "--json")
    assert r.returncode == 0, r.stderr
    assert {h["key"] for h in json.loads(r.stdout)["hidden"]} == {record_key(sid), pack}
    for key in (record_key(sid), pack):
        assert f"WARNING: {key} hidden by a delete marker, locked until" in r.stderr
    assert "llmdr undelete --region secondary" in r.stderr
    assert read_tree(tmp_path / "out") == read_tree(cfg.bundle_path)

    # verify checks every chunk through the locked versions but fails, naming the keys and the fix
    r = llmdr(cfg, "verify", sid[:12], "--region", "secondary", "--json")
    assert r.returncode == 6, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] is False and out["chunks"]["missing"] == [] and out["chunks"]["corrupt"] == []
    assert {h["key"] for h in out["hidden"]} == {record_key(sid), pack}
    r = llmdr(cfg, "verify", sid[:12], "--region", "secondary")
    assert r.returncode == 6 and f"{pack} hidden by a delete marker, locked until" in r.stdout
    assert "run `llmdr undelete --region secondary`" in r.stdout

    c = immutability(cfg)
    assert c.status == "FAIL" and record_key(sid) in c.summary and pack in c.summary, c.summary
    assert "llmdr undelete --region secondary" in c.action and set(c.data["hidden"]) == {record_key(sid), pack}

    r = llmdr(cfg, "undelete", "--region", "secondary", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    dry = json.loads(r.stdout)
    assert {h["key"] for h in dry["found"]} == {record_key(sid), pack} and dry["restored"] == []
    assert len(hidden_objects(open_region(cfg, cfg.secondaries[0], read_only=True))) == 2  # nothing removed

    r = llmdr(cfg, "undelete", "--region", "secondary")
    assert r.returncode == 0, r.stderr
    assert "removed 2 marker(s)" in r.stdout and record_key(sid) in r.stdout
    assert hidden_objects(open_region(cfg, cfg.secondaries[0], read_only=True)) == []
    plain = ops.open_repo(cfg, "secondary", read_only=True, cache=False)
    assert plain.load_record(sid)["bundle"] == "testbundle" and pack in pack_keys(plain)
    assert immutability(cfg).status in ("PASS", "WARN")
    r = llmdr(cfg, "verify", sid[:12], "--region", "secondary", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["hidden"] == [], r.stdout + r.stderr


def test_plain_delete_of_a_catalog_entry_hides_the_snapshot_until_read_through_or_undeleted(stack, tmp_path):
    cfg = locked_config(stack, tmp_path)
    sid = protect(cfg, 2)
    store = open_region(cfg, cfg.secondaries[0], read_only=True)
    [entry] = [i.key for i in store.list("catalog/") if "/e/" in i.key]
    plain_deleter(cfg).delete(entry)
    assert ops.open_repo(cfg, "secondary", read_only=True, cache=False).snapshot_ids() == []  # plain: gone

    r = llmdr(cfg, "snapshots", "--region", "secondary", "--json")  # reads through the marker, and says so
    assert r.returncode == 0, r.stderr
    assert [s["id"] for s in json.loads(r.stdout)] == [sid]
    assert f"WARNING: {entry} hidden by a delete marker" in r.stderr
    found: dict = {}
    res = ops.restore(cfg, "latest", tmp_path / "out", region="secondary", hidden=found)
    assert res.snapshot_id == sid and set(found) == {entry}
    assert read_tree(tmp_path / "out") == read_tree(cfg.bundle_path)
    c = immutability(cfg)
    assert c.status == "FAIL" and entry in c.summary
    # a writer does not take the hidden entry's seq (that would bury the snapshot below a newer version for good):
    # it takes the next one, so the DR copy keeps flowing while the hidden one waits for undelete
    write_tree(cfg.bundle_path, {"weights.bin": random.Random(3).randbytes(300_000)})
    later = ops.snapshot_bundle(cfg).snapshot_id
    ops.replicate(cfg, later, to="secondary")
    assert ops.open_repo(cfg, "secondary", read_only=True, cache=False).snapshot_ids() == [later]
    assert [v.key for v in store.list_versions(entry) if not v.is_delete_marker]  # still there, below its marker

    res = undelete(open_region(cfg, cfg.secondaries[0]))
    assert res.restored == [entry] and res.to_json()["found"][0]["until_utc"].endswith("Z")
    assert ops.open_repo(cfg, "secondary", read_only=True, cache=False).snapshot_ids() == [sid, later]
    assert undelete(open_region(cfg, cfg.secondaries[0])).found == []  # nothing left to do


def test_a_marker_over_an_unlocked_version_stays_deleted(stack, tmp_path):
    """Objects written without retention (locks, prune plans) that were deleted stay deleted: no read-through, no
    undelete."""
    cfg = locked_config(stack, tmp_path)
    store = open_region(cfg, cfg.secondaries[0])
    store.put("locks/aa.json", b"{}", retain=False)
    store.put("evidence/x/kept", b"locked")
    deleter = plain_deleter(cfg)
    deleter.delete("locks/aa.json")
    deleter.delete("evidence/x/kept")
    assert [h["key"] for h in hidden_objects(store)] == ["evidence/x/kept"]
    hv = HiddenVersionStore(adapter(cfg, cfg.secondaries[0]))
    with pytest.raises(ObjectNotFound):
        hv.get("locks/aa.json")
    assert hv.get("evidence/x/kept") == b"locked" and set(hv.hidden) == {"evidence/x/kept"}
    assert [i.key for i in hv.list()] == ["evidence/x/kept"]
    assert undelete(store).restored == ["evidence/x/kept"]
    assert store.get("evidence/x/kept") == b"locked"
    with pytest.raises(ObjectNotFound):
        store.get("locks/aa.json")


def test_as_of_a_time_before_a_later_snapshot_shows_the_older_state(stack, tmp_path):
    cfg = locked_config(stack, tmp_path)
    first = protect(cfg, 3)
    before = read_tree(cfg.bundle_path)
    time.sleep(1.5)  # S3 times are whole seconds: keep both snapshots clear of the moment
    when = int(open_region(cfg, cfg.secondaries[0], read_only=True).server_time())
    time.sleep(1.5)
    second = protect(cfg, 4)
    iso = datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    r = llmdr(cfg, "snapshots", "--region", "secondary", "--json")
    assert [s["id"] for s in json.loads(r.stdout)] == [first, second]
    r = llmdr(cfg, "--as-of", iso, "snapshots", "--region", "secondary", "--json")
    assert r.returncode == 0, r.stderr
    assert [s["id"] for s in json.loads(r.stdout)] == [first]
    r = llmdr(cfg, "--as-of", iso, "show", "latest", "--region", "secondary", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["id"] == first, r.stderr
    r = llmdr(cfg, "--as-of", iso, "restore", "latest", "--to", str(tmp_path / "old"), "--region", "secondary",
              "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["snapshot_id"] == first, r.stderr
    assert read_tree(tmp_path / "old") == before != read_tree(cfg.bundle_path)
    r = llmdr(cfg, "--as-of", iso, "verify", "latest", "--region", "secondary", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["chunks"]["snapshot_id"] == first, r.stdout + r.stderr

    for argv in (("snapshot",), ("verify", "latest", "--region", "secondary", "--repair"),
                 ("undelete", "--region", "secondary")):
        r = llmdr(cfg, "--as-of", iso, *argv)
        assert r.returncode == 2 and "--as-of reads a region as it was" in r.stderr, (argv, r.stderr)
    assert ops.open_repo(cfg, "secondary", read_only=True).snapshot_ids() == [first, second]  # nothing written

    r = llmdr(cfg, "--as-of", "2h", "snapshots", "--region", "secondary", "--json")  # before the bucket held anything
    assert r.returncode == 0 and json.loads(r.stdout) == [], r.stderr
    r = llmdr(cfg, "--as-of", "yesterday", "snapshots")
    assert r.returncode == 2 and "--as-of 'yesterday'" in r.stderr


def test_hidden_and_as_of_reads_sit_below_encryption_and_signing(stack, tmp_path, monkeypatch):
    """In an encrypted, signed DR region a version read returns the stored (sealed) bytes; the wrappers sit below
    encryption and signing, so what is read through a marker or as of a past time is opened and proven as usual."""
    monkeypatch.setenv("LLMDR_T_KEY_S", "22" * 32)
    monkeypatch.setenv("LLMDR_T_SIGN", "manifest-signing-key-0123456789abcdef")
    cfg = two_regions(stack, tmp_path, secondary_bucket=f"llmdr-dm-{uuid.uuid4().hex[:10]}", secondary_prefix="",
                      secondary=LOCK + "\n    encryption: {key_env: LLMDR_T_KEY_S}",
                      extra="manifest_signing: {method: hmac, hmac_key_env: LLMDR_T_SIGN}\n"
                            "transfer: {workers: 4, fsync: false}")
    assert adapter(cfg, cfg.secondaries[0]).ensure_bucket(object_lock=True) is True
    first = protect(cfg, 5)
    old = read_tree(cfg.bundle_path)
    time.sleep(1.5)
    when = int(open_region(cfg, cfg.secondaries[0], read_only=True).server_time())
    time.sleep(1.5)
    second = protect(cfg, 6)

    deleter = plain_deleter(cfg)
    gone = [record_key(second)] + [i.key for p in ("packs/", "index/") for i in deleter.list(p)]
    assert len(gone) >= 3
    for key in gone:
        deleter.delete(key)
    found: dict = {}
    res = ops.restore(cfg, "latest", tmp_path / "new", region="secondary", hidden=found)
    assert res.snapshot_id == second and read_tree(tmp_path / "new") == read_tree(cfg.bundle_path)
    assert record_key(second) in found and set(found) <= set(gone)  # what the restore needed, and only that
    assert any(k.startswith("packs/") for k in found) and any(k.startswith("index/") for k in found)
    assert all(h["mode"] == "COMPLIANCE" for h in found.values())
    res = ops.restore(cfg, "latest", tmp_path / "old", region="secondary", as_of=float(when))
    assert res.snapshot_id == first and read_tree(tmp_path / "old") == old
    with pytest.raises(SnapshotNotFound):  # without either, the region lacks what was deleted
        ops.open_repo(cfg, "secondary", read_only=True, cache=False).load_record(second)
