"""Prefect layer: the retry policy on real task runs, and the protect/restore flows run for real against the stack."""

import hashlib
import json
import struct

import pytest
from prefect import flow, task

from llmdr.devstack.samples import MiB, write_sample_bundle
from llmdr.errors import AccessDenied, IntegrityError, TransientStorageError
from tasks.retry import retry_if_transient
from tests.support.trees import read_tree


def newest(artifacts):
    """Other tests publish under the same key (same bundle name): the run under test is the newest."""
    return max(artifacts, key=lambda a: a.created)


def _flaky(exc_type, failures):
    calls = []

    @task(retries=3, retry_delay_seconds=0, retry_condition_fn=retry_if_transient)
    def step():
        calls.append(1)
        if len(calls) <= failures:
            raise exc_type("boom")
        return "done"

    @flow
    def run():
        state = step(return_state=True)
        return {"failed": state.is_failed(), "result": None if state.is_failed() else state.result()}

    return run, calls


def test_transient_fault_is_retried(prefect_harness):
    run, calls = _flaky(TransientStorageError, 2)
    out = run()
    assert out == {"failed": False, "result": "done"}
    assert len(calls) == 3


@pytest.mark.parametrize("exc", [AccessDenied, IntegrityError, ValueError])
def test_final_errors_are_not_retried(prefect_harness, exc):
    run, calls = _flaky(exc, 1)
    assert run()["failed"]
    assert len(calls) == 1


def test_protect_then_restore_flows(prefect_harness, region_config, tmp_path):
    from flows.protect_bundle import protect_bundle
    from flows.restore_bundle import restore_bundle

    cfg_path = region_config.source_file
    bundle = cfg_path.parent / "bundle"
    write_sample_bundle(bundle, shards=2, shard_size=2 * MiB)
    out = protect_bundle(config_path=str(cfg_path))
    sid = out["snapshot"]["snapshot_id"]
    assert [c["region"] for c in out["copies"]] == ["secondary"]
    assert out["copies"][0]["snapshot_id"] == sid and out["copies"][0]["chunks_copied"] > 0
    assert [v["ok"] for v in out["verified"]] == [True]
    assert [r["skipped"] for r in out["retention"]] == [True, True]  # no retention: configured
    [rpo] = out["rpo"]
    assert rpo["region"] == "secondary" and rpo["newest"] == sid and rpo["ok"] and rpo["age_s"] < 300
    from llmdr.common.runs import read_marks  # the run record behind llmdr_protect_last_success_timestamp_seconds

    assert {m.operation: m.detail.get("snapshot") for m in read_marks(region_config.state_path)}["protect"] == sid
    res = restore_bundle(target=str(tmp_path / "restored"), region="secondary", snapshot=sid[:8],
                         config_path=str(cfg_path))
    assert res["snapshot_id"] == sid
    assert read_tree(tmp_path / "restored") == read_tree(bundle)

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["protect-bundle-testbundle"])))

    import asyncio

    arts = asyncio.run(artifacts())
    assert arts and sid[:12] in newest(arts).data and "RPO clock, secondary" in newest(arts).data

    async def restore_artifacts():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["restore-bundle-testbundle"])))

    art = newest(asyncio.run(restore_artifacts()))
    assert sid[:12] in art.data and "secondary" in art.data


def test_prefect_yaml_entrypoints_are_flows():
    import importlib
    from pathlib import Path

    import yaml
    from prefect import Flow

    spec = yaml.safe_load((Path(__file__).parent.parent / "prefect.yaml").read_text())
    names = set()
    for dep in spec["deployments"]:
        module, _, attr = dep["entrypoint"].partition(":")
        obj = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), attr)
        assert isinstance(obj, Flow), dep["entrypoint"]
        # prefect.yaml binds by role (llmdr.config.pools: the rule); configure.py checks it against llmdr.yaml
        from llmdr.config.pools import PRIMARY_FLOWS, pool_queue

        want = "{{ $LLMDR_PRIMARY_POOL }}" if obj.name in PRIMARY_FLOWS else "{{ $LLMDR_DR_POOL }}"
        assert dep["work_pool"]["name"] == want, dep["name"]
        assert dep["work_pool"]["work_queue_name"] == pool_queue(obj.name), dep["name"]
        names.add(obj.name)
    assert {"protect-bundle", "restore-bundle", "verify-replicas", "protect-checkpoints", "monitor-endpoints",
            "failover", "failback"} <= names


def test_credentials_from_a_prefect_secret_block(prefect_harness, tmp_path):
    from prefect.blocks.system import Secret

    from llmdr.errors import AccessDenied, ConfigError
    from llmdr.storage.credentials import resolve_keys
    from tests.support.config import make_config

    Secret(value={"access_key_id": "AKIDBLOCK", "secret_access_key": "s3cr3t"}).save("llmdr-test-keys", overwrite=True)
    Secret(value="just-a-string").save("llmdr-test-bad", overwrite=True)
    cfg = make_config(tmp_path, 1000, 2000, tmp_path / "state")
    text = cfg.source_file.read_text().replace(
        "credentials: {access_key_env: LLMDR_TEST_P_AK, secret_key_env: LLMDR_TEST_P_SK}",
        "credentials: {prefect_secret_block: llmdr-test-keys}")
    from llmdr.config import parse_config

    cfg = parse_config(text, source=cfg.source_file)
    keys = resolve_keys(cfg, cfg.primary)
    assert (keys.access_key_id, keys.secret_access_key) == ("AKIDBLOCK", "s3cr3t")
    assert "s3cr3t" not in repr(keys)
    bad = parse_config(text.replace("llmdr-test-keys", "llmdr-test-bad"), source=cfg.source_file)
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        resolve_keys(bad, bad.primary)
    missing = parse_config(text.replace("llmdr-test-keys", "no-such-block"), source=cfg.source_file)
    with pytest.raises(AccessDenied, match="cannot load Prefect Secret block 'no-such-block'"):
        resolve_keys(missing, missing.primary)


def test_verify_replicas_repairs_a_corrupt_chunk(prefect_harness, region_config):
    from flows.protect_bundle import protect_bundle
    from flows.verify_replicas import verify_replicas
    from llmdr.repo.ops import open_repo
    from tests.support.damage import corrupt_chunk

    cfg_path = region_config.source_file
    write_sample_bundle(cfg_path.parent / "bundle", shards=1, shard_size=2 * MiB)
    sid = protect_bundle(config_path=str(cfg_path))["snapshot"]["snapshot_id"]
    primary = open_repo(region_config, "primary")
    victim = sorted(primary.load_manifest(sid).chunk_set())[0]
    corrupt_chunk(primary, victim)  # one byte of its blob inside its pack flipped: the other chunks there are intact
    out = verify_replicas(config_path=str(cfg_path))
    by_region = {c["region"]: c for c in out["checks"]}
    assert by_region["primary"]["repaired"] == {victim: "secondary"} and by_region["primary"]["ok"]
    assert by_region["secondary"]["corrupt"] == [] and by_region["secondary"]["ok"]
    healed = open_repo(region_config, "primary", cache=False).load_chunk(victim)  # raises if still corrupt
    assert hashlib.sha256(healed).hexdigest() == victim

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["verify-replicas-testbundle"])))

    import asyncio

    arts = asyncio.run(artifacts())
    assert arts and f"{victim[:12]} from secondary" in newest(arts).data


def test_protect_applies_retention_in_every_region(prefect_harness, region_config):
    from flows.protect_bundle import protect_bundle
    from llmdr.config import parse_config
    from llmdr.repo.ops import open_repo

    path = region_config.source_file
    path.write_text(path.read_text() + "retention: {keep_last: 1, grace: 0s}\n")
    cfg = parse_config(path.read_text(), source=path)
    for seed in range(2):
        write_sample_bundle(path.parent / "bundle", shards=1, shard_size=MiB, seed=seed)
        out = protect_bundle(config_path=str(path))
    sid = out["snapshot"]["snapshot_id"]
    assert all(not r["skipped"] and r["kept"] == [sid] for r in out["retention"])
    for region in ("primary", "secondary"):
        assert open_repo(cfg, region).snapshot_ids() == [sid]


def test_protect_checkpoints_incremental_with_retention(prefect_harness, region_config):
    import random

    from flows.protect_checkpoints import protect_checkpoints
    from llmdr.repo.ops import open_repo

    path = region_config.source_file
    path.write_text(path.read_text() + "checkpoints: {path: ckpts, retention: {keep_last: 2, grace: 0s}}\n")
    base = random.Random(1).randbytes(6 * MiB)

    def checkpoint(step: int) -> None:
        d = path.parent / "ckpts" / f"checkpoint-{step}"
        d.mkdir(parents=True)
        data = base + random.Random(step).randbytes(MiB)  # mostly shared
        head = json.dumps({"w": {"dtype": "U8", "shape": [len(data)], "data_offsets": [0, len(data)]}}).encode()
        (d / "model.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + data)  # complete: it parses
        (d / "trainer_state.json").write_text(f'{{"global_step": {step}}}')

    for step in (100, 200):
        checkpoint(step)
    first = protect_checkpoints(config_path=str(path))
    assert [n["checkpoint"] for n in first["new"]] == ["checkpoint-100", "checkpoint-200"]
    assert first["new"][1]["bytes_deduplicated"] > 0  # the second reuses the first one's shared bytes
    assert protect_checkpoints(config_path=str(path))["new"] == []  # nothing new: nothing taken
    checkpoint(300)
    third = protect_checkpoints(config_path=str(path))
    assert [n["checkpoint"] for n in third["new"]] == ["checkpoint-300"]
    for region in ("primary", "secondary"):
        snaps = open_repo(region_config, region).snapshots(bundle="testbundle-checkpoints")
        assert [s.manifest.tags["checkpoint"] for s in snaps] == ["checkpoint-200", "checkpoint-300"]


def test_run_golden_check_task(tmp_path):
    from llmdr.serving import golden
    from llmdr.serving.endpoint import OpenAIEndpoint
    from llmdr.serving.tinymodel import write_demo_bundle
    from tasks.verify import run_golden_check
    from tests.support.serving import serving

    write_demo_bundle(tmp_path / "m")
    with serving(tmp_path / "m") as url:
        golden.record(golden.default_cases(["name three colors"]), OpenAIEndpoint(url).answer).save(tmp_path / "g.jsonl")
        assert run_golden_check.fn(url, str(tmp_path / "g.jsonl"))["ok"] is True
        g = golden.GoldenSet.load(tmp_path / "g.jsonl")
        g.cases[0].expected = "something else"
        g.save(tmp_path / "g.jsonl")
        out = run_golden_check.fn(url, str(tmp_path / "g.jsonl"))
        assert out["ok"] is False and out["cases"][0]["actual"] != "something else"
