"""Readiness checks against the real local stack: each check's PASS and FAIL path (wrong and expiring credentials,
STS through moto, a stale DR copy, a pack missing, a junk catalog entry (also under COMPLIANCE lock) that blocks no
other snapshot, a future-dated snapshot, a missing component, no recent drill, regions not apart, no Object Lock, a
slow link through a bandwidth-limited proxy), the CLI's exit code and the readiness-check flow's artifact."""

import json
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from llmdr.config import parse_config
from llmdr.drill import readiness as rd
from llmdr.drill.record import DrillRecord
from llmdr.errors import ObjectLocked
from llmdr.repo.catalog import entry_key
from llmdr.repo.chunking import ChunkerParams
from llmdr.repo.layout import RepoConfig
from llmdr.repo.replicate import replicate_snapshot
from llmdr.repo.repository import Repository
from llmdr.repo.snapshot import take_snapshot
from llmdr.storage.credentials import clear_cache
from llmdr.storage.factory import adapter, open_region
from tests.support.config import two_region_yaml, two_regions
from tests.support.damage import chunks_in_same_pack, remove_chunk

SMALL = ChunkerParams(avg_size=16384, min_size=4096, max_size=65536)

BUNDLE = """
  name: testbundle
  path: bundle
  components:
    weights: {paths: ["*.safetensors", "model.safetensors.index.json"]}
    tokenizer: {paths: ["tokenizer.json"]}"""


def cfg_for(stack, tmp_path, *, s_endpoint=None, s_bucket="llmdr-secondary", s_extra="", rpo="5m", rto="15m",
            start="1s", pexp="", prefix=None):
    return two_regions(
        stack, tmp_path, bundle=BUNDLE, prefix=prefix, primary_creds=pexp, primary="    price_per_gb_month: 0.023",
        secondary_endpoint=s_endpoint, secondary_bucket=s_bucket, secondary=s_extra,
        extra=f"objectives: {{rpo: {rpo}, rto: {rto}, drill_interval: 90d}}\n"
              f"readiness: {{probe_mb: 1, start_estimate: {start}, credential_warning: 2h}}\n"
              f"drill: {{reports_dir: {tmp_path / 'reports'}}}")


def make_bundle(root, *, tokenizer=True):
    """The tiny real model (~1.7 MB): safetensors shards, tokenizer, configs."""
    from llmdr.serving.tinymodel import write_demo_bundle

    write_demo_bundle(root)
    if not tokenizer:
        (root / "tokenizer.json").unlink()


def protect(cfg, src, *, components=True):
    from llmdr.repo.bundle import specs_from_config

    p = Repository(open_region(cfg, cfg.primary))
    p.ensure_config(RepoConfig(chunker=SMALL))
    specs = specs_from_config(cfg.bundle.components) if components else None
    snap = take_snapshot(p, src, bundle=cfg.bundle.name, components=specs)
    dr = Repository(open_region(cfg, cfg.secondaries[0]))
    replicate_snapshot(p, dr, snap.snapshot_id, workers=4)
    return snap, dr


def one(rep, cid):
    hits = [c for c in rep.checks if c.id == cid]
    assert len(hits) == 1, [c.id for c in rep.checks]
    return hits[0]


@pytest.fixture
def protected(stack, tmp_path):
    cfg = cfg_for(stack, tmp_path)
    make_bundle(tmp_path / "bundle")
    snap, dr = protect(cfg, tmp_path / "bundle")
    return cfg, snap, dr


# --- credentials -------------------------------------------------------------------------------------------------------
def test_credentials_pass_with_working_keys(protected):
    cfg, _, _ = protected
    rep = rd.run_checks(cfg, only={"credentials"})
    assert [c.status for c in rep.checks] == ["PASS", "PASS"]
    assert "signed S3 call accepted" in rep.checks[0].summary
    assert rep.checks[0].data["signed_call"] == "s3:ListObjectsV2"


def test_wrong_secret_fails_with_the_region_named_and_no_secret_shown(protected, monkeypatch):
    cfg, _, _ = protected
    monkeypatch.setenv("LLMDR_TEST_S_SK", "definitely-wrong-secret-value")
    rep = rd.run_checks(cfg, only={"credentials"})
    bad = one(rep, "credentials/secondary")
    assert bad.status == "FAIL" and "access denied" in bad.summary
    assert "credentials" in bad.action
    assert one(rep, "credentials/primary").status == "PASS"
    assert "definitely-wrong-secret-value" not in json.dumps(rep.to_json())
    assert not rep.ok


@pytest.mark.parametrize("expires_in, status, words", [
    (timedelta(hours=-1), "FAIL", "EXPIRED"),
    (timedelta(minutes=5), "FAIL", "sooner than the RTO"),
    (timedelta(hours=1), "WARN", "expire in 59m"),
    (timedelta(days=3), "PASS", "valid for 2d23h59m"),
])
def test_expiry_of_session_credentials(stack, tmp_path, monkeypatch, expires_in, status, words):
    when = (datetime.now(timezone.utc) + expires_in).isoformat()
    monkeypatch.setenv("LLMDR_TEST_P_EXP", when)
    cfg = cfg_for(stack, tmp_path, pexp=", expiration_env: LLMDR_TEST_P_EXP")
    c = one(rd.run_checks(cfg, only={"credentials"}), "credentials/primary")
    assert c.status == status and words in c.summary, c.summary
    assert "expires_utc" in c.data


def test_assumed_role_expiry_read_from_sts_moto(tmp_path, monkeypatch):
    """A region whose keys come from STS AssumeRole (moto server on loopback, serving S3 too): the signed call works
    and the session's expiry is judged against the RTO."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        monkeypatch.setenv("LLMDR_M_AK", "AKIAEXAMPLEBASEKEY01")
        monkeypatch.setenv("LLMDR_M_SK", "base-secret")
        monkeypatch.setenv("LLMDR_M2_AK", "AKIAEXAMPLEBASEKEY02")
        monkeypatch.setenv("LLMDR_M2_SK", "base-secret-2")
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="a",
                          aws_secret_access_key="b")
        for b in ("llmdr-m1", "llmdr-m2"):
            s3.create_bucket(Bucket=b)
        role = "arn:aws:iam::123456789012:role/llmdr"

        def cfg(rto: str, duration: str):
            text = two_region_yaml(
                url, url, keys=("LLMDR_M", "LLMDR_M2"), primary_bucket="llmdr-m1", secondary_bucket="llmdr-m2",
                primary_creds=f', role_arn: "{role}", sts_endpoint: "{url}", session_duration: {duration}',
                bundle="{name: b, path: bundle}",
                extra=f"objectives: {{rto: {rto}}}\nreadiness: {{credential_warning: 30m}}",
                state_dir=tmp_path / "state")
            return parse_config(text, source=tmp_path / "llmdr.yaml")

        clear_cache()
        ok = one(rd.run_checks(cfg("15m", "1h"), only={"credentials"}), "credentials/primary")
        assert ok.status == "PASS" and "role arn:aws:iam::123456789012:role/llmdr" in ok.summary
        assert 3500 < ok.data["expires_in_s"] <= 3601  # moto writes the expiry rounded up to the second
        clear_cache()
        short = one(rd.run_checks(cfg("2h", "1h"), only={"credentials"}), "credentials/primary")
        assert short.status == "FAIL" and "sooner than the RTO 2h" in short.summary
        clear_cache()
        warn = one(rd.run_checks(cfg("5m", "15m"), only={"credentials"}), "credentials/primary")
        assert warn.status == "WARN"
    finally:
        clear_cache()
        server.stop()


# --- RPO and components --------------------------------------------------------------------------------------------
def test_rpo_pass_then_fail_when_the_dr_copy_is_stale(protected):
    cfg, snap, _ = protected
    fresh = one(rd.run_checks(cfg, only={"rpo"}), "rpo/secondary")
    assert fresh.status == "PASS" and snap.snapshot_id[:12] in fresh.summary
    later = time.time() + cfg.objectives.rpo.total_seconds() + 60  # six minutes from now, nothing new protected
    stale = one(rd.run_checks(cfg, only={"rpo"}, now=later), "rpo/secondary")
    assert stale.status == "FAIL" and "> RPO 5m" in stale.summary and "llmdr protect" in stale.action


def test_rpo_fails_when_a_chunk_of_the_newest_dr_snapshot_is_missing(protected):
    cfg, snap, dr = protected
    need = snap.manifest.chunk_set()
    gone = sorted(need)[0]
    lost = chunks_in_same_pack(dr, gone) & set(need)  # its pack goes, and every chunk packed with it
    pack = remove_chunk(dr, gone)
    c = one(rd.run_checks(cfg, only={"rpo"}), "rpo/secondary")
    assert c.status == "FAIL" and f"{len(lost)} of its {len(need)} chunks are missing" in c.summary, c.summary
    assert pack in c.summary and "--repair" in c.action  # the object to look at is named
    assert c.data["chunks_missing"] == len(lost)


def junk_entry(repo: Repository, bundle: str) -> str:
    """Junk bytes at the next seq of ``bundle``'s catalog in ``repo`` (a damaged or forged entry); returns its key."""
    key = entry_key(bundle, repo.view(bundle).next_seq)
    repo.store.put(key, b'{"kind": "snapshot", "forged": true}')
    return key


def assert_junk_blocks_nothing(cfg, tmp_path, old: str, junk: str, change: bytes) -> None:
    """With ``junk`` in the DR catalog, readiness names it; a new snapshot is still copied past it, verifies, is what
    `latest` names (the standby's choice, ``failover.standby``) and lists with the one before it."""
    from llmdr.repo import ops

    c = one(rd.run_checks(cfg, only={"rpo"}), "rpo/secondary")
    assert c.status == "FAIL" and junk in c.summary and c.data["unreadable"] == [junk], c.summary
    (tmp_path / "bundle" / "config.json").write_bytes(change)
    new = protect(cfg, tmp_path / "bundle")[0].snapshot_id
    dr = ops.open_repo(cfg, "secondary", read_only=True, cache=False)
    assert dr.snapshot_ids(bundle=cfg.bundle.name) == [old, new] and list(dr.unreadable) == [junk]
    assert dr.resolve("latest", bundle=cfg.bundle.name) == new
    for sid in (old, new):
        check = ops.verify(cfg, sid, region="secondary")
        assert check.ok and check.chunks_read == check.chunks_total > 0
    assert one(rd.run_checks(cfg, only={"components"}), "components/secondary").status == "PASS"
    again = one(rd.run_checks(cfg, only={"rpo"}), "rpo/secondary")
    assert again.status == "FAIL" and junk in again.summary  # named until someone removes it


def test_a_junk_catalog_entry_is_named_and_blocks_no_other_snapshot(protected, tmp_path):
    cfg, snap, dr = protected
    assert_junk_blocks_nothing(cfg, tmp_path, snap.snapshot_id, junk_entry(dr, cfg.bundle.name), b'{"v": 2}')


def test_a_locked_junk_catalog_entry_is_named_and_blocks_no_other_snapshot(stack, tmp_path):
    bucket = f"llmdr-lock-{uuid.uuid4().hex[:8]}"
    cfg = cfg_for(stack, tmp_path, s_bucket=bucket, s_extra="    object_lock: {mode: COMPLIANCE, period: 30s}")
    assert adapter(cfg, cfg.secondaries[0]).ensure_bucket(object_lock=True) is True
    make_bundle(tmp_path / "bundle")
    snap, dr = protect(cfg, tmp_path / "bundle")
    junk = junk_entry(dr, cfg.bundle.name)
    with pytest.raises(ObjectLocked):
        dr.store.delete(junk)  # COMPLIANCE: nobody can remove it before its lock ends
    assert_junk_blocks_nothing(cfg, tmp_path, snap.snapshot_id, junk, b'{"v": 2}')


def test_a_future_dated_snapshot_is_named(protected, tmp_path, monkeypatch):
    from llmdr.repo import snapshot as snapshot_module

    cfg, snap, _ = protected
    ahead = (datetime.now(timezone.utc) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with monkeypatch.context() as m:
        m.setattr(snapshot_module, "utc_now", lambda: ahead)  # the writer's clock runs two hours ahead
        (tmp_path / "bundle" / "config.json").write_bytes(b'{"v": 3}')
        ahead_snap, _ = protect(cfg, tmp_path / "bundle")
    sid = ahead_snap.snapshot_id
    assert ahead_snap.manifest.created == ahead
    c = one(rd.run_checks(cfg, only={"rpo"}), "rpo/secondary")
    assert c.status == "FAIL" and sid[:12] in c.summary and "dated after the store received them" in c.summary
    assert c.data["future_dated"] == [sid] and c.data["snapshot"] == sid
    assert 0 <= c.data["age_s"] < 600  # aged by the store's time, not by the two hours it claims


def test_no_dr_snapshot_at_all_fails(stack, tmp_path):
    cfg = cfg_for(stack, tmp_path)
    rep = rd.run_checks(cfg, only={"rpo", "components", "bandwidth"})
    assert [c.status for c in rep.checks] == ["FAIL", "FAIL", "FAIL"]


def test_components_pass_and_fail_when_the_dr_copy_lacks_one(protected, stack, tmp_path):
    cfg, _, _ = protected
    c = one(rd.run_checks(cfg, only={"components"}), "components/secondary")
    assert c.status == "PASS" and "tokenizer" in c.summary and "weights" in c.summary
    # a snapshot taken without the completeness check (an older llmdr, a hand-made copy) lacking the tokenizer
    cfg2 = cfg_for(stack, tmp_path)
    make_bundle(tmp_path / "b2", tokenizer=False)
    protect(cfg2, tmp_path / "b2", components=False)
    bad = one(rd.run_checks(cfg2, only={"components"}), "components/secondary")
    assert bad.status == "FAIL" and "tokenizer" in bad.summary and "weights" in bad.summary


# --- drills --------------------------------------------------------------------------------------------------------
def write_drill(cfg, started: float, passed: bool):
    rec = DrillRecord(bundle=cfg.bundle.name, started_ts=started, started_by={"kind": "cli"}, tool_version="t",
                      scope={}, passed=passed, ended_ts=started + 60,
                      failure_reasons=[] if passed else ["RTO 20m > 15m"])
    folder = cfg.reports_path / "drills" / rec.id
    folder.mkdir(parents=True)
    (folder / "evidence.json").write_text(json.dumps(rec.to_json()))
    return rec


def test_drill_check_paths(stack, tmp_path):
    cfg = cfg_for(stack, tmp_path)
    none = one(rd.run_checks(cfg, only={"drill"}), "drill")
    assert none.status == "FAIL" and "no DR drill on record" in none.summary
    old = write_drill(cfg, time.time() - 120 * 86400, True)
    stale = one(rd.run_checks(cfg, only={"drill"}), "drill")
    assert stale.status == "FAIL" and old.id in stale.summary and "> drill interval 90d" in stale.summary
    write_drill(cfg, time.time() - 10 * 86400, True)
    ok = one(rd.run_checks(cfg, only={"drill"}), "drill")
    assert ok.status == "PASS" and "passed 10d" in ok.summary
    failed = write_drill(cfg, time.time() - 3600, False)
    warn = one(rd.run_checks(cfg, only={"drill"}), "drill")
    assert warn.status == "WARN" and failed.id in warn.summary and "RTO 20m" in warn.summary


# --- separation ----------------------------------------------------------------------------------------------------
def test_separation_warns_on_one_machine_and_fails_on_one_endpoint(stack, tmp_path):
    cfg = cfg_for(stack, tmp_path)
    c = one(rd.run_checks(cfg, only={"separation"}), "separation/secondary")
    assert c.status == "WARN" and "both stores run on host 127.0.0.1" in c.summary
    same = cfg_for(stack, tmp_path, s_endpoint=stack.primary.endpoint, s_bucket="llmdr-other")
    c = one(rd.run_checks(same, only={"separation"}), "separation/secondary")
    assert c.status == "FAIL" and "same endpoint" in c.summary
    aws = parse_config("""
version: 1
bundle: {name: b, path: bundle}
regions:
  - {name: use1, role: primary, s3_region: us-east-1, bucket: llmdr-a, credentials: {access_key_env: A, secret_key_env: B}}
  - {name: euw1, role: secondary, s3_region: eu-west-1, bucket: llmdr-b, credentials: {access_key_env: A, secret_key_env: B}}
""", source=tmp_path / "aws.yaml")
    c = rd.check_separation(aws)[0]
    assert c.status == "PASS" and "us-east-1" in c.summary and "eu-west-1" in c.summary


# --- immutability --------------------------------------------------------------------------------------------------
def test_immutability_fails_without_object_lock(protected):
    cfg, _, _ = protected
    c = one(rd.run_checks(cfg, only={"immutability"}), "immutability/secondary")
    assert c.status == "FAIL" and "versioning is Disabled" in c.summary and "Object Lock is not enabled" in c.summary


def test_immutability_passes_with_locked_copies_and_fails_when_locks_ran_out(stack, tmp_path):
    bucket = f"llmdr-lock-{uuid.uuid4().hex[:8]}"
    cfg = cfg_for(stack, tmp_path, s_bucket=bucket, s_extra="    object_lock: {mode: COMPLIANCE, period: 3s}")
    assert adapter(cfg, cfg.secondaries[0]).ensure_bucket(object_lock=True) is True
    make_bundle(tmp_path / "bundle")
    protect(cfg, tmp_path / "bundle")
    c = one(rd.run_checks(cfg, only={"immutability"}), "immutability/secondary")
    assert c.status in ("PASS", "WARN") and "all 1 snapshot(s) locked" in c.summary, c.summary
    time.sleep(3.5)  # no retention ran to extend them
    c = one(rd.run_checks(cfg, only={"immutability"}), "immutability/secondary")
    assert c.status == "FAIL" and "not locked now" in c.summary and "retention" in c.action


# --- bandwidth vs RTO ------------------------------------------------------------------------------------------------
def test_bandwidth_passes_direct_and_fails_over_a_slow_link(protected, stack, tmp_path):
    from netproxy import NetProxy

    cfg, snap, _ = protected
    fast = one(rd.run_checks(cfg, only={"bandwidth"}), "bandwidth/secondary")
    assert fast.status == "PASS" and "vs RTO 15 min" in fast.summary
    size = sum(snap.manifest.chunk_set().values())
    with NetProxy("127.0.0.1", stack.secondaries[0].port, rate_bps=400_000) as px:  # 3.2 Mbit/s
        slow_cfg = cfg_for(stack, tmp_path, s_endpoint=px.url, rto="2s", start="1s",
                           prefix=cfg.secondaries[0].prefix)
        slow = one(rd.run_checks(slow_cfg, only={"bandwidth"}), "bandwidth/secondary")
        assert px.stats["bytes_down"] >= 1 << 20  # the probe (probe_mb: 1) really went through the slow link
    assert slow.status == "FAIL", slow.summary
    m = slow.data["probe"]
    assert 250_000 < m["bytes_per_s"] < 550_000  # what the limit allows, measured
    assert slow.data["restore_s"] > 2 and "vs RTO 2.0 s" in slow.summary and "needs ≥" in slow.action
    assert abs(slow.data["restore_s"] - (size / m["bytes_per_s"] + 1)) < 0.2  # the arithmetic shown adds up


def test_slow_link_with_a_warm_standby_is_a_warning(protected, stack, tmp_path):
    from netproxy import NetProxy

    cfg, _, _ = protected
    with NetProxy("127.0.0.1", stack.secondaries[0].port, rate_bps=400_000) as px:
        warm = cfg_for(stack, tmp_path, s_endpoint=px.url, rto="2s", prefix=cfg.secondaries[0].prefix,
                       s_extra='    serving: {url: "http://127.0.0.1:9", warm: true}')
        c = one(rd.run_checks(warm, only={"bandwidth"}), "bandwidth/secondary")
    assert c.status == "WARN" and "warm standby" in c.summary


# --- footprint -----------------------------------------------------------------------------------------------------
def test_footprint_reports_dedup_and_cost(protected, tmp_path):
    cfg, snap, _ = protected
    (tmp_path / "bundle" / "config.json").write_bytes(b'{"v": 2}')  # a second snapshot sharing the weights
    snap2, _ = protect(cfg, tmp_path / "bundle")
    rep = rd.run_checks(cfg, only={"footprint"})
    p = one(rep, "footprint/primary")
    assert p.status == "PASS"
    d = p.data
    assert d["snapshots"] == 2 and d["logical_bytes"] == snap.manifest.total_size + snap2.manifest.total_size
    assert d["dedup_ratio"] > 1.5 and d["stored_bytes"] >= d["unique_chunk_bytes"]
    assert d["monthly_cost"] == round(d["stored_bytes"] / 1e9 * 0.023, 2)
    assert "/month at 0.023/GB-month" in p.summary
    s = one(rep, "footprint/secondary")
    assert "no price_per_gb_month set" in s.summary


# --- the whole thing: CLI exit code, flow, artifact ----------------------------------------------------------------
def test_cli_exit_code_gates_a_pipeline(protected, stack, tmp_path):
    import subprocess
    import sys

    cfg, _, _ = protected

    def llmdr(*args):
        return subprocess.run([sys.executable, "-m", "llmdr.cli", "--config", str(cfg.source_file), *args],
                              capture_output=True, text=True, timeout=120)

    bad = llmdr("readiness", "--json")
    assert bad.returncode == rd.EXIT_FAIL, bad.stderr
    doc = json.loads(bad.stdout)
    assert doc["verdict"] == "FAIL" and {c["id"] for c in doc["checks"]} >= {
        "credentials/primary", "rpo/secondary", "components/secondary", "drill", "separation/secondary",
        "immutability/secondary", "bandwidth/secondary", "footprint/secondary"}
    write_drill(cfg, time.time() - 86400, True)
    ok = llmdr("readiness", "--only", "credentials,rpo,components,drill,bandwidth", "--markdown", str(tmp_path / "r.md"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASS, score 100/100" in ok.stdout
    assert "| Recent passing DR drill | ✅ PASS |" in (tmp_path / "r.md").read_text()
    typo = llmdr("readiness", "--only", "credentails")
    assert typo.returncode == 2 and "unknown readiness check" in typo.stderr


def test_readiness_flow_publishes_the_artifact_and_fails_the_run(protected, prefect_harness):
    import asyncio

    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.readiness_check import readiness_check

    cfg, _, _ = protected
    with pytest.raises(rd.ReadinessFailed, match="readiness FAIL"):
        readiness_check(str(cfg.source_file), notify=False)

    async def read():
        async with get_client() as c:
            return await c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
                any_=["readiness-testbundle", "readiness-testbundle-table"])))

    arts = asyncio.run(read())
    assert {a.key for a in arts} == {"readiness-testbundle", "readiness-testbundle-table"}
    md = next(a for a in arts if a.key == "readiness-testbundle").data
    assert "Recent passing DR drill" in md and "❌ FAIL" in md
    out = readiness_check(str(cfg.source_file), only=["credentials", "rpo"], notify=False)
    assert out["verdict"] == "PASS" and out["score"] == 100


def test_plan_and_runbook_commands(protected, tmp_path):
    import subprocess
    import sys

    cfg, _, _ = protected

    def llmdr(*args):
        return subprocess.run([sys.executable, "-m", "llmdr.cli", "--config", str(cfg.source_file), *args],
                              capture_output=True, text=True, timeout=120)

    given = llmdr("plan", "--size", "200GB", "--bandwidth", "1Gbps", "--rto", "30m")
    assert given.returncode == 0, given.stderr
    assert "DOES NOT MEET the RTO" in given.stdout and "200.0 GB × 8 = 1600.0 Gbit" in given.stdout
    measured = llmdr("plan", "--region", "secondary", "--json")
    assert measured.returncode == 0, measured.stderr
    doc = json.loads(measured.stdout)
    assert doc["source"].startswith("measured from secondary") and doc["meets"] is True
    assert doc["size_bytes"] == sum(protected[1].manifest.chunk_set().values())
    bad = llmdr("plan", "--size", "lots", "--bandwidth", "1Gbps")
    assert bad.returncode == 2 and "'lots' is not a size" in bad.stderr, bad.stderr
    out = llmdr("runbook", "--out", str(tmp_path / "RB.md"))
    assert out.returncode == 0 and str(tmp_path / "RB.md") in out.stdout
    text = (tmp_path / "RB.md").read_text()
    assert "runbook` (llmdr" in text and "LLMDR_TEST_S_SK" in text
    assert f"llmdr --config {cfg.source_file.name} failover --to secondary" in text
