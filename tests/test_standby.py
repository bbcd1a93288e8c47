"""protect-bundle keeps the warm standby on the newest content of its own region: a new snapshot of unchanged
files leaves it alone, changed files move it (past a junk object in the region's catalog), and the replica that
serves traffic is never restarted."""

from __future__ import annotations

import json

from llmdr.devstack.serving import start_router, start_serving
from llmdr.failover.router import open_router
from llmdr.failover.steps import arm_fallback, rearm_fallback, standby_stale
from llmdr.repo import ops
from llmdr.repo.catalog import entry_key
from llmdr.serving import golden
from llmdr.serving.endpoint import OpenAIEndpoint
from llmdr.serving.replica import replica_status
from llmdr.serving.tinymodel import write_demo_bundle


def test_refresh_standby_follows_content_not_snapshot_ids(prefect_harness, served_config):
    from tasks.protect import refresh_standby

    cfg = served_config
    path = str(cfg.source_file)
    write_demo_bundle(cfg.bundle_path)
    v1 = ops.snapshot_bundle(cfg).snapshot_id
    ops.replicate(cfg, v1, to="secondary")
    start_serving(cfg)
    start_router(cfg)
    sec = cfg.region("secondary")
    before = replica_status(cfg, sec)
    assert before.snapshot == v1
    router = open_router(cfg)
    assert router.fallback() is None  # no golden set yet: the standby cannot be verified, so it is no fallback
    golden.record(golden.default_cases(), OpenAIEndpoint(cfg.primary.serving.url).answer).save(cfg.golden_path)
    assert rearm_fallback(cfg)["fallback"] == "secondary" and router.fallback() == "secondary"

    # same files, new snapshot id: nothing to do
    v2 = ops.snapshot_bundle(cfg, tags={"run": "2"}).snapshot_id
    ops.replicate(cfg, v2, to="secondary")
    assert v2 != v1
    out = refresh_standby(path, "secondary")
    assert out["refreshed"] is False and out["why"] == "already serves this content"
    assert replica_status(cfg, sec).pid == before.pid
    assert standby_stale(cfg, sec, v1) is None and router.fallback() == "secondary"

    # junk in the DR region's catalog (a damaged or forged entry) is skipped: it holds the standby on nothing
    dr = ops.open_repo(cfg, "secondary")
    junk = entry_key(cfg.bundle.name, dr.view(cfg.bundle.name).next_seq)
    dr.store.put(junk, b"not a catalog entry")

    # changed generation settings: the standby moves to the new content, restored from its own store
    gen = cfg.bundle_path / "generation_config.json"
    data = json.loads(gen.read_text())
    data["max_new_tokens"] = 5
    gen.write_text(json.dumps(data))
    v3 = ops.snapshot_bundle(cfg).snapshot_id
    ops.replicate(cfg, v3, to="secondary")
    armed = arm_fallback(cfg)  # the standby still serves v1's content: stale, so no fallback
    assert armed["fallback"] is None and v3[:12] in armed["why"] and router.fallback() is None
    out = refresh_standby(path, "secondary")
    after = replica_status(cfg, sec)
    assert out["refreshed"] is True and after.snapshot == v3 and after.pid != before.pid and after.healthy
    # re-checked on the new content: its answers differ from the golden set recorded on v1's, so it stays out
    assert out["fallback"]["fallback"] is None and "golden set" in out["fallback"]["why"]
    assert router.fallback() is None
    listed = ops.open_repo(cfg, "secondary", read_only=True, cache=False)
    assert listed.snapshot_ids() == [v1, v2, v3] and list(listed.unreadable) == [junk]

    # the replica that serves traffic is never restarted
    data["max_new_tokens"] = 7
    gen.write_text(json.dumps(data))
    v4 = ops.snapshot_bundle(cfg).snapshot_id
    ops.replicate(cfg, v4, to="secondary")
    open_router(cfg).switch("secondary", reason="test")
    out = refresh_standby(path, "secondary")
    assert out["refreshed"] is False and "traffic" in out["why"]
    assert replica_status(cfg, sec).pid == after.pid
