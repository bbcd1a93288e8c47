"""Golden sets versioned with the model (issue #19 item 1), end to end with real parts: the session's two SeaweedFS
regions, a real replica per region (`llmdr serve` processes), a Caddy router and the session's Prefect server.

A legitimate model update (new weights → new answers) is protected by the real protect-bundle flow: the snapshot
gets a golden set recorded from that exact snapshot, sealed with the manifest key (HMAC) and stored in both
regions; the warm standby moves onto it and passes it. The primary is cut, and the failover lands on the new model,
judged by ITS set. A second standby, on a new model version with no set of its own, is refused with a message
that names `llmdr golden record --snapshot`."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import pytest

from flows.failover import failover
from flows.protect_bundle import protect_bundle
from llmdr.failover import steps as fo
from llmdr.failover.router import open_router
from llmdr.repo import goldens, ops
from llmdr.serving import golden
from llmdr.serving.endpoint import check_set
from llmdr.serving.replica import replica_status, start_replica, stop_replica
from llmdr.serving.snapgolden import NoGoldenSet, for_snapshot
from llmdr.serving.tinymodel import TinyConfig, _weights, load_safetensors, save_safetensors, write_demo_bundle
from tests.support.config import make_served_config
from tests.support.served import env_secret, protect_demo, serve_with_golden, stopped_afterwards

pytestmark = pytest.mark.s3

KEY_ENV = "LLMDR_T_GOLDV_MKEY"
LLMDR = [sys.executable, "-m", "llmdr.cli"]


def new_weights(folder, seed: int) -> None:
    """A legitimate model update: every weight tensor of the demo bundle drawn again from another seed (same shapes,
    same shards, same tokenizer and configs), so the greedy answers change."""
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    fresh = _weights(replace(TinyConfig(vocab_size=vocab), seed=seed))
    for shard in sorted(folder.glob("model-*.safetensors")):
        names = load_safetensors(shard).keys()
        save_safetensors(shard, {k: fresh[k] for k in names})


@pytest.fixture(scope="module")
def served(stack, tmp_path_factory):
    """Traffic on the primary, a warm standby in the secondary, signed records; the project's golden.jsonl recorded
    once from the primary (the way golden sets were kept before)."""
    with env_secret(KEY_ENV, "v" * 40):
        cfg = make_served_config(stack, tmp_path_factory.mktemp("goldv"), warm=True,
                                 extra=f"manifest_signing: {{method: hmac, hmac_key_env: {KEY_ENV}}}")
        with stopped_afterwards(cfg):
            sid0 = protect_demo(cfg)  # a snapshot from before per-snapshot sets (untagged)
            serve_with_golden(cfg)
            yield cfg, sid0


def _protect(cfg) -> dict:
    return protect_bundle(config_path=str(cfg.source_file))


def test_a_model_update_is_protected_with_its_own_set_and_the_failover_lands_on_it(prefect_harness, served):
    cfg, sid0 = served
    secondary = cfg.region("secondary")
    assert replica_status(cfg, secondary).snapshot == sid0
    # before: the old snapshot has no set of its own, so the project's file judges it, and says so
    old = fo.golden_check(cfg, secondary.serving.url)
    assert old.ok and old.basis["source"] == "project file" and "predates" in old.basis["note"]

    # protect of the unchanged bundle: a set recorded from that snapshot (its content had none stored)
    first = _protect(cfg)
    sid1 = first["snapshot"]["snapshot_id"]
    assert first["golden"]["state"] == "recorded" and first["golden"]["warning"] is None, first["golden"]
    assert first["golden"]["regions"] == {"primary": "ok", "secondary": "ok"}

    # the legitimate update: new weights, new answers
    new_weights(cfg.bundle_path, seed=777)
    out = _protect(cfg)
    sid2 = out["snapshot"]["snapshot_id"]
    g = out["golden"]
    assert sid2 != sid1 and g["state"] == "recorded" and g["warning"] is None, g
    assert g["answer_digest"] != first["golden"]["answer_digest"]

    # stored in both regions, sealed with the manifest key; the set answers differently from the old one
    sets = {}
    for region in cfg.regions:
        repo = ops.open_repo(cfg, region, read_only=True)
        raw = json.loads(repo.load_golden(cfg.bundle.name, g["answer_digest"]))
        assert raw["llmdr_signature"]["method"] == "hmac" and raw["snapshot"] == sid2 and raw["how"] == "recorded"
        sets[region.name] = for_snapshot(cfg, repo, sid2)
        assert sets[region.name].source == "snapshot" and sets[region.name].snapshot == sid2
    new_set, old_set = sets["secondary"].golden, golden.GoldenSet.load(cfg.golden_path)
    assert [c.messages for c in new_set.cases] == [c.messages for c in old_set.cases], "same prompts"
    changed = sum(a.expected != b.expected for a, b in zip(new_set.cases, old_set.cases, strict=True))
    assert changed >= 4, "new weights give new answers"

    # the standby moved onto the new model and passes ITS snapshot's set; the old set would have failed it
    [standby] = out["standbys"]
    assert standby["refreshed"] and standby["snapshot"] == sid2, standby
    assert standby["golden"]["ok"] and standby["golden"]["golden_set"]["snapshot"] == sid2, standby["golden"]
    assert not check_set(old_set, secondary.serving.url).ok, "the project's old file would fail the new standby"

    # cut the primary; the failover lands on the new model with its own set passing, directly and through the router
    stop_replica(cfg, cfg.primary)
    res = failover(config_path=str(cfg.source_file), to="secondary", trigger="manual", reason="primary cut")
    assert res["ok"] and open_router(cfg).active() == "secondary"
    for report in (res["golden_direct"], res["golden_router"]):
        assert report["ok"] and report["golden_set"]["source"] == "snapshot", report
        assert report["golden_set"]["snapshot"] == sid2 and report["passed"] == report["total"] == 6
    assert [c["actual"] for c in res["golden_router"]["cases"]] == [c.expected for c in new_set.cases]

    # protecting the same content again carries the set over (nothing recorded)
    again = _protect(cfg)
    assert again["golden"]["state"] == "carried_over" and again["golden"]["answer_digest"] == g["answer_digest"]

    # a set edited in the primary's store is never carried over: protect records it again and replaces it everywhere
    primary = ops.open_repo(cfg, cfg.primary)
    raw = json.loads(primary.load_golden(cfg.bundle.name, g["answer_digest"]))
    primary.save_golden(cfg.bundle.name, g["answer_digest"], json.dumps(raw | {"how": "manual"}).encode())
    healed = _protect(cfg)["golden"]
    assert healed["state"] == "recorded" and "the stored set was refused" in healed["detail"], healed
    for region in cfg.regions:
        fixed = goldens.read_golden(cfg, ops.open_repo(cfg, region, read_only=True), g["answer_digest"])
        assert fixed.how == "recorded" and fixed.text.splitlines()[1:] == new_set.to_text().splitlines()[1:]


def test_a_standby_on_a_new_version_without_a_set_is_refused(prefect_harness, served, tmp_path):
    cfg, _ = served
    secondary = cfg.region("secondary")
    folder = tmp_path / "model-v3"
    write_demo_bundle(folder)
    new_weights(folder, seed=4242)
    # a new model version snapshotted by a protect-era llmdr (tagged), whose set was never recorded
    sid = ops.snapshot_bundle(cfg, region="secondary", path=folder, tags=goldens.versioned_tags()).snapshot_id
    st = start_replica(cfg, secondary, ref=sid)
    assert st.healthy and st.snapshot == sid
    open_router(cfg).switch("primary", reason="test reset")
    start_replica(cfg, cfg.primary)

    with pytest.raises(NoGoldenSet, match=r"has no golden set of its own.*llmdr golden record --snapshot "
                                          + sid[:12]):
        failover(config_path=str(cfg.source_file), to="secondary", trigger="manual", reason="no set")
    assert open_router(cfg).active() == "primary", "traffic stayed"
    rec = fo.history(cfg)[-1]
    assert not rec.ok and [(s.name, s.ok) for s in rec.steps][-1] == ("golden-check", False)
    assert "llmdr golden record --snapshot" in rec.steps[-1].detail


def _cli(cfg, *args: str):
    import subprocess

    return subprocess.run([*LLMDR, "--config", str(cfg.source_file), *args], capture_output=True, text=True,
                          timeout=300)


def test_readiness_and_the_drill_precheck_fail_until_golden_record_fills_the_set(served):
    from llmdr.drill.readiness import run_checks
    from llmdr.drill.readiness.golden import standby_problem

    cfg, _ = served
    secondary = cfg.region("secondary")
    sid = replica_status(cfg, secondary).snapshot  # the set-less new version the last test left on the standby
    assert sid and for_snapshot_missing(cfg, sid)

    rep = run_checks(cfg, only={"golden"})
    got = {c.id: c for c in rep.checks}
    assert set(got) == {"golden/secondary", "golden/standby-secondary"}, got
    assert got["golden/secondary"].status == "FAIL" and "NO golden set" in got["golden/secondary"].summary
    assert f"llmdr golden record --snapshot {sid[:12]}" in got["golden/secondary"].action
    assert got["golden/standby-secondary"].status == "FAIL" and "would NOT pass" in \
        got["golden/standby-secondary"].summary
    assert "golden record --snapshot" in (standby_problem(cfg) or "")
    from llmdr.drill.evidence import prechecks

    pre = prechecks(cfg, {"name": "failover-automation", "enabled": True})
    assert any("would not pass its golden check" in p and "golden record --snapshot" in p for p in pre["problems"]), \
        pre["problems"]

    # a URL that does not serve that snapshot is refused: its answers would not be this snapshot's
    wrong = _cli(cfg, "golden", "record", "--snapshot", sid[:12], "--region", "secondary",
                 "--url", cfg.primary.serving.url)
    assert wrong.returncode == 2 and f"not snapshot {sid[:12]}" in wrong.stderr, wrong.stderr

    done = _cli(cfg, "golden", "record", "--snapshot", sid[:12], "--region", "secondary", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["snapshot"] == sid and out["regions"] == {"primary": "ok", "secondary": "ok"} and out["cases"] == 6

    rep = run_checks(cfg, only={"golden"})
    assert [(c.id, c.status) for c in rep.checks] == [("golden/secondary", "PASS"),
                                                       ("golden/standby-secondary", "PASS")], rep.checks
    assert "has its own golden set (6 cases, manual" in rep.checks[0].summary
    assert standby_problem(cfg) is None
    assert not any("golden" in p for p in prechecks(cfg, {"name": "a", "enabled": True})["problems"])

    # golden check: the replica against its snapshot's set (exit 0); against the project's old file (exit 5)
    ok = _cli(cfg, "golden", "check", "--region", "secondary", "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)["golden_set"]["snapshot"] == sid
    stale = _cli(cfg, "golden", "check", "--url", secondary.serving.url, "--golden", str(cfg.golden_path))
    assert stale.returncode == 5 and "golden answers match (exact gate, 6 needed)" in stale.stdout

    # a set edited in the store is refused on read: readiness fails and names the fix
    repo = ops.open_repo(cfg, secondary)
    digest = goldens.answer_digest(repo.load_manifest(sid))
    raw = json.loads(repo.load_golden(cfg.bundle.name, digest))
    raw["golden"] = raw["golden"].replace('"expected": "', '"expected": "x', 1)
    repo.save_golden(cfg.bundle.name, digest, json.dumps(raw).encode())
    [check, _standby] = run_checks(cfg, only={"golden"}).checks
    assert check.status == "FAIL" and "does not verify" in check.summary, check


def for_snapshot_missing(cfg, sid: str) -> bool:
    try:
        for_snapshot(cfg, ops.open_repo(cfg, "secondary", read_only=True), sid)
    except NoGoldenSet:
        return True
    return False


def test_monitor_spot_checks_judge_each_target_by_its_snapshots_set(served):
    import re

    from llmdr.config import load_config
    from llmdr.failover.watch import Watcher

    cfg, _ = served
    sid = replica_status(cfg, cfg.region("secondary")).snapshot
    # recorded at the standby itself this time: --url is accepted because that replica serves exactly this snapshot
    rec = _cli(cfg, "golden", "record", "--snapshot", sid[:12], "--region", "secondary",
               "--url", cfg.region("secondary").serving.url)
    assert rec.returncode == 0 and "from the replica of secondary" in rec.stdout, rec.stdout + rec.stderr
    path = cfg.source_file
    path.write_text(re.sub(r"golden_every: 0", "golden_every: 1", path.read_text()))
    cfg = load_config(path)
    w = Watcher(cfg, emit=lambda *a, **k: True, notify=lambda n: [])
    project = [c.expected for c in golden.GoldenSet.load(cfg.golden_path).cases]
    by_target = {t.name: [c.expected for c in w._golden_cases(t)] for t in w.targets}
    primary_sid = replica_status(cfg, cfg.primary).snapshot
    for region, snap in (("primary", primary_sid), ("secondary", sid)):
        own = for_snapshot(cfg, ops.open_repo(cfg, region, read_only=True), snap)
        assert own.source == "snapshot" and by_target[region] == [c.expected for c in own.golden.cases]
        assert by_target[region] != project, f"{region} serves a new model: the project's old set would fail it"
    assert by_target["router"] == by_target["primary"], "the router is judged by the region that answers"
    res = w.run_round()
    assert {s.target: s.golden_ok for s in res.samples} == {"primary": True, "secondary": True, "router": True}, \
        [(s.target, s.error) for s in res.samples]
    path.write_text(re.sub(r"golden_every: 1", "golden_every: 0", path.read_text()))


def test_protect_flags_a_new_version_llmdr_cannot_serve_without_failing(served, tmp_path):
    from llmdr.serving.snapgolden import attach_at_protect, golden_markdown

    cfg, _ = served
    folder = tmp_path / "model-llama"
    write_demo_bundle(folder)
    conf = json.loads((folder / "config.json").read_text()) | {"model_type": "llama"}
    (folder / "config.json").write_text(json.dumps(conf))
    sid = ops.snapshot_bundle(cfg, path=folder, tags=goldens.versioned_tags()).snapshot_id
    res = attach_at_protect(cfg, sid)
    assert res.state == "missing" and res.regions == {}, res
    assert f"llmdr golden record --snapshot {sid[:12]}" in res.warning and "'llama' model" in res.warning
    md = golden_markdown(res.to_json())
    assert "**MISSING**" in md and "> **Warning:**" in md
    with pytest.raises(NoGoldenSet):
        for_snapshot(cfg, ops.open_repo(cfg, cfg.primary, read_only=True), sid)
    # copied to the DR region, it is the newest there: the standby is not moved onto a model it cannot be judged by
    from llmdr.failover.standby import NO_GOLDEN_SET, refresh_standby

    secondary = cfg.region("secondary")
    before = replica_status(cfg, secondary).snapshot
    ops.replicate(cfg, sid, to="secondary")
    stay = refresh_standby(cfg, "secondary")
    assert not stay.refreshed and stay.why.startswith(NO_GOLDEN_SET) and "golden record --snapshot" in stay.why
    assert stay.snapshot == before == replica_status(cfg, secondary).snapshot and replica_status(cfg, secondary).healthy
    # the same content protected before per-snapshot sets existed: the project's file, which judged it, is adopted
    old = ops.snapshot_bundle(cfg, path=folder).snapshot_id  # untagged, as an older llmdr took them
    again = ops.snapshot_bundle(cfg, path=folder, tags=goldens.versioned_tags()).snapshot_id
    res = attach_at_protect(cfg, again)
    assert res.state == "carried_over" and old[:12] in res.detail and res.warning is None, res
    assert res.regions == {"primary": "ok", "secondary": "ok"}
    adopted = for_snapshot(cfg, ops.open_repo(cfg, cfg.primary, read_only=True), again)
    assert adopted.source == "snapshot" and adopted.stored.how == "adopted"
    in_dr = goldens.read_golden(cfg, ops.open_repo(cfg, "secondary", read_only=True), res.answer_digest)
    assert in_dr is not None and in_dr.text == adopted.stored.text
    assert [c.expected for c in adopted.golden.cases] == [
        c.expected for c in golden.GoldenSet.load(cfg.golden_path).cases]
