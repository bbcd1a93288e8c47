"""Reliability under faults (issue #9, items 1 and 3).

- The S3 adapter behind the retry layer, through a loopback fault proxy in front of a real SeaweedFS: a 503, a
  connection reset in the middle of a body, a stall longer than the read timeout are retried to success with the
  exact bytes; a wrong-credential 403 is not retried.
- ``FaultyStore``'s modes (scripted transient / permanent / delay / drop-after-the-call, seeded random rate).
- With 10 % of every S3 request failing (``tests/support/faults.py``: a ``FaultyStore`` under each region's retry
  layer, which production cannot switch on), snapshot, cross-region copy, verify and restore still succeed through
  ``llmdr.ops`` and the CLI, byte-identical, and the Prefect flows' artifacts show the retries.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest
from netproxy import NetProxy

from llmdr.errors import AccessDenied, TransientStorageError
from llmdr.storage.credentials import resolve_keys
from llmdr.storage.retrying import RetryingStore
from llmdr.storage.s3 import S3Store
from tests.support.faults import SUMMARY, inject
from tests.support.streams import read_streamed

KiB = 1024
MiB = 1024 * KiB


# S3 adapter + RetryingStore through the fault proxy --------------------------------------------------------------------
# Every scenario uses a fresh S3Store whose first request opens the connection the scripted fault is waiting for
# (the proxy's faults hit new connections; a pooled keep-alive connection would slip past them). After the fault,
# urllib3 drops the broken connection, so the retry opens a new one, which the proxy forwards untouched.

@pytest.fixture
def s3(region_config):
    """(direct store, factory of stores through a proxy) for the primary region, and the proxy."""
    r = region_config.primary
    keys = resolve_keys(region_config, r)

    def store(url: str, **kw) -> S3Store:
        args = dict(bucket=r.bucket, endpoint_url=url, access_key_id=keys.access_key_id,
                    secret_access_key=keys.secret_access_key, session_token=keys.session_token,
                    region_name=r.s3_region, prefix=r.prefix, name=r.name)
        return S3Store(**(args | kw))

    with NetProxy.in_front_of(r.endpoint) as px:
        yield store(r.endpoint), lambda **kw: store(px.url, **kw), px
        px.assert_all_fired()


def retrying(store: S3Store) -> tuple[RetryingStore, list[float]]:
    sleeps: list[float] = []
    return RetryingStore(store, attempts=4, sleep=sleeps.append), sleeps


def test_503_is_retried_then_succeeds(s3):
    direct, via_proxy, px = s3
    data = os.urandom(256 * KiB)
    store, sleeps = retrying(via_proxy())
    px.fail_next(1, 503)
    store.put("faults/put-503", data)
    assert direct.get("faults/put-503") == data
    assert px.stats["failures"] == 1 and store.retries == {"put": 1} and len(sleeps) == 1


def test_reset_mid_body_is_retried_and_the_bytes_are_exact(s3):
    direct, via_proxy, px = s3
    data = random.Random(9).randbytes(2 * MiB)
    direct.put("faults/big", data)
    px.reset_next(1, after_bytes=MiB)  # the response head and ~1 MiB of the body, then a TCP RST
    store, _ = retrying(via_proxy())
    got = store.get("faults/big")
    assert got == data
    assert px.stats["resets"] == 1 and store.retries == {"get": 1}


def test_reset_mid_body_maps_to_a_transient_error(s3):
    """Without the retry layer the adapter must say *transient* (botocore raises ResponseStreamingError on the short
    body), or RetryingStore would give up on a dropped connection."""
    direct, via_proxy, px = s3
    direct.put("faults/cut", os.urandom(MiB))
    px.reset_next(1, after_bytes=300 * KiB)
    with pytest.raises(TransientStorageError, match="connection dropped"):
        via_proxy().get("faults/cut")


def test_streamed_range_cut_mid_body_is_transient_then_resumed_at_the_byte_reached(s3):
    """A restore streams pack ranges into its own buffers: a connection reset part-way must never look like the
    end of the range (a silent short read), and the retry layer opens the rest from the byte it had reached."""
    direct, via_proxy, px = s3
    data = random.Random(11).randbytes(3 * MiB)
    direct.put("faults/stream", data)
    px.reset_next(1, after_bytes=MiB)
    with pytest.raises(TransientStorageError, match="(?i)connection"):
        read_streamed(via_proxy(), "faults/stream", 100, 2 * MiB)
    px.reset_next(1, after_bytes=MiB)
    store, sleeps = retrying(via_proxy())
    assert read_streamed(store, "faults/stream", 100, 2 * MiB) == data[100:100 + 2 * MiB]
    assert px.stats["resets"] == 2 and store.retries == {"get": 1} and len(sleeps) == 1


def test_an_endpoint_that_ignores_ranges_is_refused_not_misread(s3, monkeypatch):
    """An S3 look-alike that answers a ranged GET with the whole object (200, no Content-Range) would hand a
    restore bytes from offset 0 as if they were the range: refused, naming what it did."""
    from llmdr.errors import StorageError
    from tests.support.streams import read_streamed

    direct, _, _ = s3
    data = bytes(range(256)) * 8
    direct.put("faults/norange", data)
    real = direct._client.get_object
    monkeypatch.setattr(direct._client, "get_object", lambda **kw: real(**{k: v for k, v in kw.items() if k != "Range"}))
    with pytest.raises(StorageError, match="does not honour ranged reads"):
        direct.open_range("faults/norange", 10, 20)
    assert read_streamed(direct, "faults/norange", 0, 100) == data[:100]  # from 0: the first bytes, no more


def test_stall_longer_than_the_read_timeout_is_retried(s3):
    direct, via_proxy, px = s3
    direct.put("faults/slow", b"patience")
    px.stall_next(1, seconds=3.0)
    raw = via_proxy(read_timeout=0.5)
    with pytest.raises(TransientStorageError, match="timed out"):
        raw.get("faults/slow")
    px.stall_next(1, seconds=3.0)
    store, _ = retrying(via_proxy(read_timeout=0.5))
    assert store.get("faults/slow") == b"patience"
    assert px.stats["stalls"] == 2 and store.retries == {"get": 1}


def test_wrong_credentials_are_not_retried_through_the_proxy(s3):
    _, via_proxy, px = s3
    store, sleeps = retrying(via_proxy(secret_access_key="not-the-secret"))
    with pytest.raises(AccessDenied):
        store.put("faults/denied", b"x")
    assert sleeps == [] and store.retries == {} and px.stats["connections"] == 1


# FaultyStore's modes (memory store: fast, no network) -----------------------------------------------------------------

def faulty_memory(**kw):
    from llmdr.storage.memory import MemoryStore
    from llmdr.testing.faulty import FaultyStore

    slept: list[float] = []
    return FaultyStore(MemoryStore(), sleep=slept.append, **kw), slept


def test_transient_n_times_then_success_and_a_permanent_fault():
    store, _ = faulty_memory()
    store.fail("put", lambda: TransientStorageError("reset"), times=2, key_prefix="packs/")
    store.put("config.json", b"c")  # another prefix: untouched
    for _ in range(2):
        with pytest.raises(TransientStorageError):
            store.put("packs/a", b"a")
    store.put("packs/a", b"a")
    store.fail("get", lambda: AccessDenied("wrong keys"), times=None)  # permanent: every call, forever
    for _ in range(3):
        with pytest.raises(AccessDenied):
            store.get("packs/a")
    store.assert_all_fired()
    assert store.calls == {"put": 4, "get": 3} and store.injected == {"put": 2, "get": 3}
    assert store.inner.get("packs/a") == b"a"


def test_an_unfired_permanent_fault_is_reported():
    store, _ = faulty_memory()
    store.fail("head", lambda: AccessDenied("x"), times=None)
    with pytest.raises(AssertionError, match="never fired"):
        store.assert_all_fired()


def test_delay_sleeps_then_lets_the_call_through():
    store, slept = faulty_memory()
    store.delay("get", 2.5, after=1)
    store.put("k", b"v")
    assert store.get("k") == b"v" and slept == []
    assert store.get("k") == b"v" and slept == [2.5]
    assert store.get("k") == b"v" and slept == [2.5]
    store.assert_all_fired()
    assert store.injected == {}


def test_drop_reaches_the_store_then_fails():
    """The connection drops after the request reached the store: a put is applied although the caller saw an error;
    a get's body was read but nothing is returned; a listing stops half-way. RetryingStore rides out each one."""
    store, _ = faulty_memory()
    store.drop("put")
    with pytest.raises(TransientStorageError, match="dropped"):
        store.put("k/1", b"one")
    assert store.inner.get("k/1") == b"one"
    for i in range(2, 7):
        store.put(f"k/{i}", b"x")
    store.drop("get", times=2)
    store.drop("list")
    retrying = RetryingStore(store, sleep=lambda s: None)
    assert retrying.get("k/1") == b"one"
    assert [i.key for i in retrying.list("k/")] == [f"k/{i}" for i in range(1, 7)]
    store.assert_all_fired()
    assert retrying.retries == {"get": 2, "list": 1}
    assert retrying.stats.to_json()["requests"] == {"get": 3, "list": 2}


def test_random_mode_is_seeded_and_counted():
    def run(seed):
        store, _ = faulty_memory(rate=0.1, seed=seed)
        outcome = []
        for i in range(2000):
            try:
                store.put(f"k/{i}", b"x")
                outcome.append(True)
            except TransientStorageError:
                outcome.append(False)
        return store, outcome

    a, first = run(1)
    _, again = run(1)
    _, other = run(2)
    assert first == again and first != other
    assert a.calls == {"put": 2000} and a.injected == {"put": first.count(False)}
    assert 120 < a.injected_total < 280  # Binomial(2000, 0.1): mean 200, sd 13.4
    # about half the injected faults were drops: the put reached the store although the caller saw an error
    stored = len(list(a.inner.list("k/")))
    assert first.count(True) < stored < 2000
    with pytest.raises(ValueError):
        faulty_memory(rate=1.0)


def test_retry_counts_go_to_the_block_the_store_was_opened_in():
    import threading

    from llmdr.storage.memory import MemoryStore
    from llmdr.storage.retrying import count_retries

    def flaky(n):
        store, _ = faulty_memory()
        store.fail("get", lambda: TransientStorageError("x"), times=n)
        store.inner.put("k", b"v")
        return store

    with count_retries() as outer:
        with count_retries() as inner:
            a = RetryingStore(flaky(2), sleep=lambda s: None, name="primary")
        b = RetryingStore(flaky(1), sleep=lambda s: None, name="secondary")
    c = RetryingStore(flaky(3), sleep=lambda s: None)  # opened outside: counts only in its own stats
    threads = [threading.Thread(target=s.get, args=("k",)) for s in (a, b, c)]  # requests from other threads
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert inner.to_json() == {"total": 2, "ops": {"get": 2}, "regions": {"primary": 2}, "requests": {"get": 3},
                               "gave_up": {}}
    assert outer.to_json()["regions"] == {"primary": 2, "secondary": 1} and outer.total == 3
    assert c.retries == {"get": 3} and c.retries_total == 3
    with count_retries() as quiet:
        RetryingStore(MemoryStore()).put("k", b"v")
    assert quiet.to_json() == {"total": 0, "ops": {}, "regions": {}, "requests": {"put": 1}, "gave_up": {}}


# 10 % of every S3 request failing: the whole procedure still succeeds --------------------------------------------------
# support.faults.inject puts a random-mode FaultyStore between each region's S3 adapter and its retry layer. Small
# chunks in small packs make a few MB into hundreds of requests per step; the injection raises the retry attempts to 8 at this
# rate, so a request fails for good with probability 0.1 ** 8 = 1e-8 (with the default 4 attempts, 1e-4: about one
# run in ten of these ~1,500 requests would lose one).

FAULT_RATE = 0.1


def _small_chunk_repo(cfg) -> None:
    """Create both regions' repositories with ~16 KiB chunks in ~64 KiB packs: a few MB become hundreds of requests
    per step (with the default 32 MiB packs a step is a few dozen requests, too few to measure a 10 % rate)."""
    from llmdr.repo import ops
    from llmdr.repo.chunking import ChunkerParams
    from llmdr.repo.layout import RepoConfig
    from llmdr.repo.repository import Repository

    small = RepoConfig(chunker=ChunkerParams(avg_size=16 * KiB, min_size=4 * KiB, max_size=64 * KiB))
    for region in ("primary", "secondary"):
        repo = Repository(ops.open_repo(cfg, region).store, pack_target=64 * KiB)
        assert repo.ensure_config(small).pack_target == 64 * KiB


def _no_request_lost(retries: dict) -> None:
    assert retries["total"] > 0, retries
    assert retries["gave_up"] == {}, retries


def test_snapshot_copy_verify_restore_ride_out_10_percent_faults(region_config, tmp_path):
    import logging

    from llmdr.devstack.samples import write_sample_bundle
    from llmdr.repo import ops
    from llmdr.storage.retrying import count_retries
    from tests.support.trees import read_tree

    cfg = region_config
    write_sample_bundle(cfg.bundle_path, shards=2, shard_size=2 * MiB)
    _small_chunk_repo(cfg)
    steps: dict[str, dict] = {}

    with inject(FAULT_RATE, seed=1) as faults:
        with count_retries() as r:
            snap = ops.snapshot_bundle(cfg)
        steps["snapshot"] = r.to_json()
        sid = snap.snapshot_id
        with count_retries() as r:
            [copy] = ops.replicate(cfg, sid, to="secondary")
        steps["copy"] = r.to_json()
        assert copy.chunks_copied == copy.chunks_total > 200
        for region in ("primary", "secondary"):
            with count_retries() as r:
                check = ops.verify(cfg, sid, region=region)  # every chunk read back and hashed
            steps[f"verify {region}"] = r.to_json()
            assert check.ok and check.chunks_read == check.chunks_total
        with count_retries() as r:
            res = ops.restore(cfg, sid, tmp_path / "restored", region="secondary")
        steps["restore"] = r.to_json()
    assert faults.injected == sum(s["total"] for s in steps.values())  # every injected fault was retried
    assert res.snapshot_id == sid
    assert read_tree(tmp_path / "restored") == read_tree(cfg.bundle_path)

    for name, retries in steps.items():
        _no_request_lost(retries)
        requests = sum(retries["requests"].values())
        assert 0.04 < retries["total"] / requests < 0.2, (name, retries)  # ~10 % of the requests, retried
        logging.getLogger(__name__).info("%s: %d requests %s, %d retried %s", name, requests, retries["requests"],
                                         retries["total"], retries["ops"])
    assert set(steps["copy"]["regions"]) == {"primary", "secondary"}  # reads from one, writes to the other


def test_cli_snapshot_replicate_verify_restore_with_10_percent_faults(region_config, tmp_path):
    import os
    import subprocess
    import sys

    from llmdr.devstack.samples import write_sample_bundle
    from tests.support.trees import read_tree

    cfg = region_config
    write_sample_bundle(cfg.bundle_path, shards=1, shard_size=MiB)
    _small_chunk_repo(cfg)
    root = Path(__file__).resolve().parent.parent  # `tests.support.faults` is imported from the repository root
    env = {**os.environ, "LLMDR_CONFIG": "", "PYTHONPATH": os.pathsep.join(
        p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)}
    seeds = iter(range(7, 100))

    def llmdr(*args: str) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, "-m", "tests.support.faults", "--rate", str(FAULT_RATE), "--seed",
                            str(next(seeds)), "--", "--config", str(cfg.source_file), *args], env=env, cwd=root,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        assert "FAULT INJECTION ACTIVE" in r.stderr  # loud, so nobody mistakes it for a normal run
        injected = re.search(rf"{SUMMARY} (\d+) faults injected in (\d+) requests", r.stderr)
        assert injected and int(injected[1]) > 0, r.stderr  # faults fired, and the command still succeeded
        return r

    llmdr("snapshot")
    llmdr("replicate", "latest", "--to", "secondary")
    assert "ok" in llmdr("verify", "latest", "--region", "secondary").stdout
    llmdr("restore", "latest", "--to", str(tmp_path / "restored"), "--region", "secondary")
    assert read_tree(tmp_path / "restored") == read_tree(cfg.bundle_path)


def _artifacts_of(state) -> dict[str, object]:
    """The artifacts one flow run published, by key."""
    import asyncio

    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read():
        async with get_client() as c:
            return await c.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))

    return {a.key: a.data for a in asyncio.run(read())}


def test_flows_with_10_percent_faults_show_the_retries_in_their_artifacts(prefect_harness, region_config, tmp_path):

    from llmdr.devstack.samples import write_sample_bundle


    cfg = region_config
    path = str(cfg.source_file)
    write_sample_bundle(cfg.bundle_path, shards=1, shard_size=2 * MiB)
    _small_chunk_repo(cfg)
    with inject(FAULT_RATE, seed=3) as faults:
        _flows_under_faults(cfg, path, tmp_path)
    assert faults.injected > 0


def _flows_under_faults(cfg, path: str, tmp_path) -> None:
    import json

    from flows.protect_bundle import protect_bundle
    from flows.restore_bundle import restore_bundle
    from flows.verify_replicas import verify_replicas
    from tests.support.trees import read_tree

    state = protect_bundle(config_path=path, return_state=True)
    out = state.result()
    sid = out["snapshot"]["snapshot_id"]
    for step in (out["snapshot"], *out["copies"]):
        _no_request_lost(step["retries"])
    _no_request_lost(out["retries"])
    arts = _artifacts_of(state)
    md, table = arts["protect-bundle-testbundle"], json.loads(arts["protect-bundle-testbundle-table"])
    snap_retries = out["snapshot"]["retries"]
    assert f"| {snap_retries['total']} (" in md  # the snapshot row's retries column, e.g. "| 21 (get 1, put 20) |"
    assert f"Storage request retries: **{out['retries']['total']}** of" in md
    assert [row["retries"] for row in table] == [snap_retries["total"],
                                                 out["copies"][0]["retries"]["total"]
                                                 + out["verified"][0]["retries"]["total"]]

    state = verify_replicas(config_path=path, snapshot=sid, return_state=True)
    out = state.result()
    assert [c["ok"] for c in out["checks"]] == [True, True]
    for check in out["checks"]:
        _no_request_lost(check["retries"])
    arts = _artifacts_of(state)
    assert f"Storage request retries: **{out['retries']['total']}** of" in arts["verify-replicas-testbundle"]
    assert [row["retries"] for row in json.loads(arts["verify-replicas-testbundle-table"])] == [
        c["retries"]["total"] for c in out["checks"]]

    state = restore_bundle(target=str(tmp_path / "restored"), region="secondary", snapshot=sid, config_path=path,
                           return_state=True)
    res = state.result()
    _no_request_lost(res["retries"])
    assert read_tree(tmp_path / "restored") == read_tree(cfg.bundle_path)
    arts = _artifacts_of(state)
    assert f"Storage request retries: **{res['retries']['total']}** of" in arts["restore-bundle-testbundle"]
    assert json.loads(arts["restore-bundle-testbundle-table"])[0]["retries"] == res["retries"]["total"]


def test_report_lines_for_retries():
    from llmdr.artifacts import retries_line, run_retries, verify_table

    a = {"total": 3, "ops": {"put": 3}, "regions": {"primary": 3}, "requests": {"put": 40}, "gave_up": {}}
    b = {"total": 2, "ops": {"get": 1, "put": 1}, "regions": {"secondary": 2}, "requests": {"get": 9, "put": 11},
         "gave_up": {"get": 1}}
    assert run_retries([{"retries": a}, {"retries": b}, {}]) == {
        "total": 5, "ops": {"get": 1, "put": 4}, "regions": {"primary": 3, "secondary": 2},
        "requests": {"get": 9, "put": 51}, "gave_up": {"get": 1}}
    assert retries_line([{"retries": a}]) == ("Storage request retries: **3** of 40 requests failed transiently and "
                                              "were retried (put 3; by region: primary 3).")
    assert "**1 still failed after the last attempt.**" in retries_line([{"retries": a}, {"retries": b}])
    quiet = {"total": 0, "ops": {}, "regions": {}, "requests": {"get": 7}, "gave_up": {}}
    assert retries_line([{"retries": quiet}]) == "Storage request retries: none (7 requests, no transient fault)."
    assert retries_line([{"region": "x"}]) == "Storage request retries: not recorded."
    check = {"region": "primary", "snapshot_id": "a" * 64, "subset": None, "chunks_read": 1, "bytes_read": 1,
             "duration_s": 1.0, "corrupt": [], "missing": [], "repaired": {}, "ok": True}
    assert verify_table([check], [])[0]["retries"] is None  # a result without counts: unknown, not zero
    assert verify_table([check | {"retries": a}], [{"region": "primary", "ok": True, "retries": b}])[0]["retries"] == 5
