"""Against real SeaweedFS servers: the data path end to end, and the ways it must fail clearly."""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from llmdr.devstack.regions import region_status, start_region
from llmdr.devstack.samples import MiB, write_sample_bundle
from llmdr.errors import AccessDenied, BucketNotFound, IntegrityError, TransientStorageError
from llmdr.repo.layout import PACKS, RepoConfig
from llmdr.repo.replicate import replicate_snapshot
from llmdr.repo.repository import Repository
from llmdr.repo.restore import restore_snapshot
from llmdr.repo.snapshot import take_snapshot
from llmdr.storage.factory import open_region
from llmdr.storage.s3 import S3Store
from tests.support.config import make_config
from tests.support.damage import corrupt_chunk, pack_keys
from tests.support.trees import read_tree

LLMDR = [sys.executable, "-m", "llmdr.cli"]


def repo_of(cfg, region):
    return Repository(open_region(cfg, region))


def test_snapshot_replicate_restore_from_secondary(region_config, tmp_path):
    cfg = region_config
    bundle = tmp_path / "bundle"
    write_sample_bundle(bundle, shards=2, shard_size=3 * MiB)
    p, s = repo_of(cfg, cfg.primary), repo_of(cfg, cfg.secondaries[0])
    snap = take_snapshot(p, bundle, bundle="b", workers=4)
    rep = replicate_snapshot(p, s, snap.snapshot_id, workers=4)
    assert rep.chunks_copied == len(snap.manifest.chunk_set())
    assert s.snapshot_ids() == [snap.snapshot_id]
    out = tmp_path / "out"
    restore_snapshot(s, snap.snapshot_id, out, durable=True)
    assert read_tree(out) == read_tree(bundle)


def test_stack_is_idempotent_and_enforces_auth(stack):
    r = stack.primary
    before = region_status(stack, r)
    again = start_region(stack, r)
    assert again.healthy and again.pid == before.pid
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{r.endpoint}/llmdr-primary?list-type=2", timeout=5)
    assert e.value.code == 403  # unsigned requests are refused


def test_wrong_credentials_fail_fast_and_clearly(stack):
    r = stack.primary
    store = S3Store(bucket=r.bucket, endpoint_url=r.endpoint, access_key_id="WRONG", secret_access_key="wrong")
    with pytest.raises(AccessDenied, match="access denied.*InvalidAccessKeyId"):
        store.check_access()
    from llmdr.storage.credentials import resolve_keys

    good = resolve_keys(stack, r)
    store = S3Store(bucket=r.bucket, endpoint_url=r.endpoint, access_key_id=good.access_key_id,
                    secret_access_key="not-the-secret")
    with pytest.raises(AccessDenied, match="SignatureDoesNotMatch"):
        store.put("x", b"y")


def test_wrong_credentials_are_not_retried(stack, monkeypatch):
    cfg = stack
    monkeypatch.setenv("LLMDR_TEST_P_SK", "not-the-secret")
    from llmdr.storage import factory

    adapters = []
    real_adapter = factory.adapter
    monkeypatch.setattr(factory, "adapter", lambda *a: adapters.append(real_adapter(*a)) or adapters[-1])
    store = open_region(cfg, cfg.primary)  # the whole stack, retry layer included
    calls = []
    [s3] = adapters
    real = s3._client.list_objects_v2
    monkeypatch.setattr(s3._client, "list_objects_v2", lambda **kw: (calls.append(kw), real(**kw))[1])
    with pytest.raises(AccessDenied):
        list(store.list(PACKS))
    assert len(calls) == 1


def test_unreachable_endpoint(tmp_path, monkeypatch):
    cfg = make_config(tmp_path, 9, 19, tmp_path / "state")  # nothing listens on ports 9 / 19
    monkeypatch.setenv("LLMDR_TEST_P_AK", "a")
    monkeypatch.setenv("LLMDR_TEST_P_SK", "b")
    store = open_region(cfg, cfg.primary, attempts=2)
    with pytest.raises(TransientStorageError, match="cannot connect to http://127.0.0.1:9"):
        store.head("config.json")


def test_missing_bucket(stack):
    from llmdr.storage.credentials import resolve_keys

    r = stack.primary
    k = resolve_keys(stack, r)
    store = S3Store(bucket="no-such-bucket-here", endpoint_url=r.endpoint, access_key_id=k.access_key_id,
                    secret_access_key=k.secret_access_key)
    with pytest.raises(BucketNotFound, match="no-such-bucket-here.*does not exist"):
        store.check_access()
    with pytest.raises(BucketNotFound):
        store.put("k", b"v")  # auto-create is off: a typo never silently makes a new bucket
    with pytest.raises(BucketNotFound):
        store.head("k")


def test_corrupted_chunk_on_server_detected_on_restore(region_config, tmp_path):
    cfg = region_config
    bundle = tmp_path / "bundle"
    write_sample_bundle(bundle, shards=1, shard_size=2 * MiB)
    repo = repo_of(cfg, cfg.primary)
    snap = take_snapshot(repo, bundle, bundle="b")
    entry = next(f for f in snap.manifest.files if f.path.endswith(".safetensors"))
    victim = entry.chunks[0][0]
    key = corrupt_chunk(repo, victim, at=100)  # bit rot on the server, inside the chunk's pack
    out = tmp_path / "out"
    with pytest.raises(IntegrityError, match=rf"chunk {victim[:12]} of {entry.path!r} .* in {key} of "):
        restore_snapshot(repo, snap.snapshot_id, out, durable=False)
    assert not (out / entry.path).exists()


def run(args, cwd, env=None, check=False):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(LLMDR + args, cwd=cwd, env=e, capture_output=True, text=True, timeout=300, check=check)


@pytest.mark.s3  # starts its own regions
@pytest.mark.slow
def test_cli_outage_walkthrough(tmp_path):
    """The README's walk-through: own stack, snapshot, replicate, primary down, restore from the secondary."""
    from tests.support.ports import free_base_port

    p = free_base_port()
    s = free_base_port()
    while abs(p - s) < 10 or abs(p - s) == 10000:
        s = free_base_port()
    cwd = tmp_path
    assert run(["sample-bundle", "bundle", "--shards", "2", "--shard-mb", "2"], cwd).returncode == 0
    r = run(["init", "bundle", "--primary-port", str(p), "--secondary-port", str(s)], cwd)
    assert r.returncode == 0, r.stderr
    try:
        r = run(["stack", "up"], cwd)
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("healthy") == 2
        r = run(["snapshot", "--json"], cwd)
        assert r.returncode == 0, r.stderr
        import json

        sid = json.loads(r.stdout)["snapshot_id"]
        r = run(["replicate", "latest", "--to", "secondary"], cwd)
        assert r.returncode == 0 and "copied to secondary" in r.stdout, r.stderr
        r = run(["stack", "down", "primary"], cwd)
        assert r.returncode == 0 and "stopped" in r.stdout
        r = run(["snapshots", "--region", "primary"], cwd)
        assert r.returncode != 0 and "cannot connect" in r.stderr and "Traceback" not in r.stderr
        r = run(["restore", sid[:10], "--region", "secondary", "--to", "restored"], cwd)
        assert r.returncode == 0, r.stderr
        assert read_tree(cwd / "restored") == read_tree(cwd / "bundle")
        r = run(["restore", "latest", "--region", "secondary", "--to", "restored"], cwd)
        assert r.returncode == 2 and "--force" in r.stderr
        r = run(["stack", "status"], cwd)
        assert r.returncode == 3  # not all healthy: primary is down
    finally:
        run(["stack", "down"], cwd)
    assert not any(b"weed" in Path(f"/proc/{pid}/cmdline").read_bytes()
                   for pid in os.listdir("/proc") if pid.isdigit() and _cmdline_has(pid, str(cwd)))


def _cmdline_has(pid: str, needle: str) -> bool:
    try:
        return needle.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.mark.s3  # starts its own regions
@pytest.mark.slow
def test_replicate_survives_a_real_outage_of_the_destination(tmp_path):
    """Stop the secondary's server in the middle of a copy, start it again, re-run: only the rest is copied and the
    snapshot appears there only at the end."""
    from llmdr.devstack.regions import stop_region
    from llmdr.testing.faulty import FaultyStore
    from tests.support.ports import free_base_port

    p = free_base_port()
    s = free_base_port()
    while abs(p - s) < 10 or abs(p - s) == 10000:
        s = free_base_port()
    cfg = make_config(tmp_path, p, s, tmp_path / ".llmdr")
    sec = cfg.secondaries[0]
    try:
        for r in cfg.regions:
            start_region(cfg, r)
        bundle = tmp_path / "bundle"
        write_sample_bundle(bundle, shards=6, shard_size=3 * MiB)  # six packs or more: the outage comes after 3
        src = repo_of(cfg, cfg.primary)
        src.ensure_config(RepoConfig(pack_target=MiB))  # small packs: the copy puts several
        snap = take_snapshot(src, bundle, bundle="b")
        total = len(snap.manifest.chunk_set())

        # After 3 packs have landed, the secondary region goes down for real.
        dst_store = FaultyStore(open_region(cfg, sec, attempts=2))
        outage = dst_store.fail("put", lambda: _outage(cfg, sec, stop_region), after=3, key_prefix=PACKS)
        dst = Repository(dst_store)
        with pytest.raises(TransientStorageError):
            replicate_snapshot(src, dst, snap.snapshot_id, workers=1)
        assert outage.fired == 1

        start_region(cfg, sec)
        dst = repo_of(cfg, sec)
        assert dst.snapshot_ids() == []  # nothing visible after the failed copy
        assert len(pack_keys(dst)) >= 3 and dst.list_chunks() == {}  # packs landed, but no index names them yet
        res = replicate_snapshot(src, dst, snap.snapshot_id)
        assert res.chunks_copied == total  # one index per copy: the crashed copy's packs count for nothing
        assert dst.snapshot_ids() == [snap.snapshot_id]
        out = tmp_path / "out"
        restore_snapshot(dst, snap.snapshot_id, out)
        assert read_tree(out) == read_tree(bundle)
    finally:
        from llmdr.devstack.regions import stop_region as stop

        for r in cfg.regions:
            stop(cfg, r)


def _outage(cfg, region, stop_region):
    """Stop the region's server, then fail the put the way the client sees a dead server."""
    stop_region(cfg, region)
    from llmdr.storage.credentials import resolve_keys
    from llmdr.storage.s3 import S3Store

    k = resolve_keys(cfg, region)
    store = S3Store(bucket=region.bucket, endpoint_url=region.endpoint, access_key_id=k.access_key_id,
                    secret_access_key=k.secret_access_key)
    try:
        store.put("packs/probe", b"x")
    except TransientStorageError as exc:
        return exc
    raise AssertionError("the stopped server still accepted a put")


def test_cli_restore_test(region_config, tmp_path):
    """`llmdr verify --restore-test` end to end through the CLI: pass, then fail after a template change."""
    from llmdr.repo.bundle import content_digests, detected_specs
    from llmdr.serving import golden
    from llmdr.serving.endpoint import OpenAIEndpoint
    from llmdr.serving.tinymodel import write_demo_bundle
    from tests.support.serving import serving

    cfg_path = region_config.source_file
    cwd = cfg_path.parent
    bundle = cwd / "bundle"
    write_demo_bundle(bundle)
    with serving(bundle) as url:
        golden.record(golden.default_cases(), OpenAIEndpoint(url).answer,
                      {"components": content_digests(bundle, detected_specs(bundle))}).save(cwd / "golden.jsonl")
    assert run(["snapshot"], cwd).returncode == 0
    r = run(["verify", "latest", "--restore-test", "--json"], cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["ok"] is True
    (bundle / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert run(["snapshot"], cwd).returncode == 0
    r = run(["verify", "latest", "--restore-test"], cwd)
    assert r.returncode == 6 and "FAIL" in r.stdout and "prompt_templates" in r.stdout


def test_cli_verify_finds_and_repairs_a_corrupt_chunk(region_config):
    cwd = region_config.source_file.parent
    write_sample_bundle(cwd / "bundle", shards=1, shard_size=2 * MiB)
    assert run(["snapshot"], cwd).returncode == 0
    assert run(["replicate", "latest", "--to", "secondary"], cwd).returncode == 0
    repo = repo_of(region_config, region_config.primary)
    sid = repo.resolve("latest")
    victim = sorted(repo.load_manifest(sid).chunk_set())[0]
    key = corrupt_chunk(repo, victim)
    r = run(["verify", "latest"], cwd)
    assert r.returncode == 6 and f"chunk {victim[:12]} corrupt ({key})" in r.stdout and "--repair" in r.stdout
    r = run(["verify", "latest", "--repair"], cwd)
    assert r.returncode == 0
    assert f"chunk {victim[:12]} corrupt ({key}): repaired from secondary" in r.stdout, r.stdout
    r = run(["verify", "latest", "--sample", "1/1", "--json"], cwd)
    assert r.returncode == 0 and json.loads(r.stdout)["chunks"]["corrupt"] == []


def test_cli_forget_and_prune(region_config):
    cwd = region_config.source_file.parent
    for seed in range(3):
        write_sample_bundle(cwd / "bundle", shards=1, shard_size=MiB, seed=seed)
        assert run(["snapshot"], cwd).returncode == 0
    r = run(["forget", "--keep-last", "1", "--grace", "0s", "--json"], cwd)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    # forgetting deletes nothing; its prune only marks the packs (phase one)
    assert len(out["kept"]) == 1 and len(out["forgotten"]) == 2 and out["chunks_deleted"] == 0
    assert out["prune"]["planned"] >= 2
    repo = repo_of(region_config, region_config.primary)
    assert repo.snapshot_ids() == out["kept"]
    before = len(pack_keys(repo))
    r = run(["prune", "--safety-time", "0s", "--json"], cwd)  # phase two: a plan at least 0 s old
    assert r.returncode == 0, r.stderr
    pruned = json.loads(r.stdout)
    assert pruned["deleted"] >= 2 and pruned["chunks_deleted"] > 0 and pruned["bytes_freed"] > 0
    assert len(pack_keys(repo)) == before - pruned["deleted"]
    from llmdr.repo.integrity import verify_snapshot

    assert verify_snapshot(repo, out["kept"][0]).ok


@pytest.mark.slow
def test_cli_protect_runs_the_flow_without_a_server(region_config):
    cwd = region_config.source_file.parent
    write_sample_bundle(cwd / "bundle", shards=1, shard_size=MiB)
    r = run(["protect", "--json"], cwd)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    sid = out["snapshot"]["snapshot_id"]
    assert [c["region"] for c in out["copies"]] == ["secondary"] and out["verified"][0]["ok"]
    assert repo_of(region_config, region_config.secondaries[0]).snapshot_ids() == [sid]
