"""MLflow tracking of DR drills against the real session regions (SeaweedFS) and a real sqlite tracking store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmdr.drill.record import Control, DrillRecord
from llmdr.lineage import drills, tracking
from llmdr.repo.ops import open_repo
from llmdr.storage.credentials import resolve_keys
from tests.support.config import make_config
from tests.support.ports import free_port
from tests.support.trees import read_tree, write_tree

REPORT = {
    "evidence.json": b'{"drill": "evidence", "rto_s": 2.4}\n',
    "report.html": b"<html><body><h1>DR drill</h1></body></html>\n",
    "report.pdf": b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n",
    "timeline.png": b"\x89PNG\r\n\x1a\n" + os.urandom(3000),
    "SIGNATURE.json": b'{"method": "ed25519", "signature": "c2lnbmF0dXJl"}\n',
}


def sample_record(bundle: str = "testbundle", *, passed: bool = True, rpo: float | None = 41.5) -> dict:
    """A finished drill record shaped like the dr-drill flow's (``DrillRecord.to_json()``)."""
    t0 = time.time() - 120
    rec = DrillRecord(
        bundle=bundle, started_ts=t0, tool_version="llmdr 0.1.0",
        started_by={"kind": "cli", "who": "auditor", "flow_run_id": "0f9c3a52-5f1e-4d7c-9a57-3c1d2e4f5a6b",
                    "deployment": None},
        scope={"bundle": bundle,
               "regions": [{"name": "primary", "role": "primary", "endpoint": "http://127.0.0.1:1", "bucket": "b1"},
                           {"name": "secondary", "role": "secondary", "endpoint": "http://127.0.0.1:2",
                            "bucket": "b2"}],
               "objectives": {"rpo_s": 300.0, "rto_s": 900.0, "drill_interval_s": 7776000.0},
               "router": {"kind": "caddy", "url": "http://127.0.0.1:3"}, "outage_action": "local"})
    rec.outage = {"region": "primary", "action": "stopped S3 server and replica", "started_utc": "x"}
    rec.measurements = {"rto_s": 2.4, "rpo_s": rpo, "detection_s": 1.012, "dispatch_s": 0.61, "recovery_s": 0.778,
                        "rto_detail": "outage → first golden-correct answer"}
    rec.evidence = {"prefect_flow_run_id": "0f9c3a52-5f1e-4d7c-9a57-3c1d2e4f5a6b",
                    "snapshots": {"primary": {"id": "a" * 64, "created": "2026-11-27T10:00:00Z"},
                                  "secondary": {"id": "b" * 64, "created": "2026-11-27T10:00:00Z"}},
                    "model_version": None}
    rec.controls = [Control("rto", "RTO within objective", True, "2.4 s", "<= 15m")]
    rec.mark("outage", "primary region down", ts=t0 + 10)
    rec.ended_ts = t0 + 95
    rec.passed = passed
    if not passed:
        rec.fail("RPO within objective: no snapshot in the DR region (objective <= 5m)")
    return rec.to_json()


def report_folder(root: Path) -> Path:
    folder = root / "report"
    write_tree(folder, REPORT)
    return folder


def secrets_of(cfg) -> list[str]:
    out = []
    for r in cfg.regions:
        k = resolve_keys(cfg, r)
        out += [k.access_key_id, k.secret_access_key]
    return out


def db_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


def offline_config(stack, tmp_path: Path):
    """The session regions with the secondary's endpoint on a closed loopback port, and a state folder of its own
    (the regions' keys copied in)."""
    state = tmp_path / ".llmdr"
    state.mkdir()
    shutil.copy(stack.state_path / "local.env", state / "local.env")
    taken = set(stack.primary.local_ports)
    while True:
        closed = free_port()
        if not {*range(closed, closed + 9), closed + 10008} & taken:
            break
    return make_config(tmp_path, stack.primary.port, closed, state, prefix="t-offline")


def test_drill_run_with_artifacts_in_the_dr_region(region_config, tmp_path):
    cfg = region_config
    db = tmp_path / "mlflow.db"
    target = tracking.target_for(cfg, tracking_uri=f"sqlite:///{db}")
    assert target.region == "secondary"
    assert target.artifact_location == f"s3://llmdr-secondary/{cfg.secondaries[0].prefix}/mlflow"
    s3_vars = ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    env_before = {k: os.environ.get(k) for k in s3_vars}
    record = sample_record(rpo=None)
    begun = drills.begin_drill(target, record)  # at the drill's start, so the signed report can name its run
    assert tracking.open_client(target).get_run(begun).info.status == "RUNNING"
    run_id = drills.log_drill(target, record, report_folder(tmp_path), experiment="dr-drills")
    assert run_id == begun
    assert {k: os.environ.get(k) for k in s3_vars} == env_before  # the S3 variables were set only for the call

    client = tracking.open_client(target)
    run = client.get_run(run_id)
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "dr-drills"
    assert exp.artifact_location == target.experiment_location("dr-drills")
    assert run.info.run_name == f"drill {record['id']}"
    assert run.info.status == "FINISHED"
    assert abs(run.info.start_time - record["started_ts"] * 1000) < 1
    m = run.data.metrics
    assert m["rto_seconds"] == 2.4 and m["passed"] == 1.0 and m["failed_over_at_end"] == 0.0
    assert m["detection_seconds"] == 1.012 and m["dispatch_seconds"] == 0.61 and m["recovery_seconds"] == 0.778
    assert "rpo_seconds" not in m  # a measurement that is None is left out, not logged as 0
    p = run.data.params
    assert p["bundle"] == "testbundle" and p["drill_id"] == record["id"]
    assert p["rto_objective_seconds"] == "900.0" and p["rpo_objective_seconds"] == "300.0"
    assert p["regions"] == "primary (primary), secondary (secondary)"
    assert p["started_by"] == "cli" and p["tool_version"] == "llmdr 0.1.0"
    t = run.data.tags
    assert t["llmdr.bundle"] == "testbundle" and t["llmdr.drill_id"] == record["id"] and t["llmdr.result"] == "PASS"
    assert t["llmdr.prefect_flow_run_id"] == "0f9c3a52-5f1e-4d7c-9a57-3c1d2e4f5a6b"
    assert t["llmdr.snapshot.primary"] == "a" * 64 and t["llmdr.snapshot.secondary"] == "b" * 64
    assert tracking.TAG_ARTIFACT_URI not in t

    # the artifacts are in the DR region's bucket (under the config's prefix), not in the primary's
    prefix = f"mlflow/dr-drills/{run_id}/artifacts/"
    keys = {b.key for b in open_repo(cfg, "secondary").store.list("mlflow/")}
    assert keys == {prefix + name for name in REPORT}
    assert list(open_repo(cfg, "primary").store.list("mlflow/")) == []
    got = tracking.download_artifacts(target, run.info.artifact_uri, tmp_path / "down")
    assert read_tree(got) == REPORT

    # logging the same drill again completes the same run; drill_runs lists it, filtered by bundle
    assert drills.log_drill(target, record, report_folder(tmp_path)) == run_id
    other = sample_record("otherbundle", passed=False)
    other_id = drills.log_drill(target, other, report_folder(tmp_path))
    runs = drills.drill_runs(target, bundle="testbundle")
    assert [r["id"] for r in runs] == [run_id]
    assert runs[0]["metrics"]["rto_seconds"] == 2.4 and runs[0]["params"]["drill_id"] == record["id"]
    assert runs[0]["tags"]["llmdr.result"] == "PASS" and runs[0]["start"] == record["started_utc"]
    assert runs[0]["artifact_uri"] == run.info.artifact_uri
    failed = drills.drill_runs(target, bundle="otherbundle")
    assert [(r["id"], r["tags"]["llmdr.result"], r["metrics"]["passed"]) for r in failed] == [(other_id, "FAIL", 0.0)]
    assert "no snapshot in the DR region" in failed[0]["tags"]["mlflow.note.content"]
    assert {r["id"] for r in drills.drill_runs(target)} == {run_id, other_id}

    # no secret anywhere: tracking database, artifacts, listings, the target's repr
    secrets = secrets_of(cfg)
    stored = db_bytes(db) + b"".join(read_tree(got).values())
    listed = json.dumps(drills.drill_runs(target)) + repr(target)
    for s in secrets:
        assert s.encode() not in stored and s not in listed


def test_unreachable_region_is_a_clear_error_then_local_artifacts_complete_the_run(stack, tmp_path):
    cfg = offline_config(stack, tmp_path)
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    folder = report_folder(tmp_path)
    record = sample_record()
    target = tracking.target_for(cfg, tracking_uri=uri)
    with pytest.raises(tracking.ArtifactUploadError) as err:
        drills.log_drill(target, record, folder)
    msg = str(err.value)
    assert "region 'secondary' is unreachable" in msg and cfg.secondaries[0].endpoint in msg
    assert "local_artifacts=True" in msg and err.value.run_id in msg
    client = tracking.open_client(target)
    assert client.get_run(err.value.run_id).info.status == "FAILED"

    # the fallback: same drill, artifacts on local disk, the same run completed and pointing at them
    local = tracking.target_for(cfg, tracking_uri=uri, local_artifacts=True)
    assert local.s3_env == {} and local.artifact_location == (cfg.state_path / "mlflow" / "artifacts").as_uri()
    run_id = drills.log_drill(local, record, folder)
    assert run_id == err.value.run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    where = run.data.tags[tracking.TAG_ARTIFACT_URI]
    assert where == f"{local.experiment_location('dr-drills')}/{run_id}/artifacts"
    assert read_tree(cfg.state_path / "mlflow" / "artifacts" / "dr-drills" / run_id / "artifacts") == REPORT
    [listed] = drills.drill_runs(local, bundle="testbundle")
    assert listed["artifact_uri"] == where
    assert read_tree(tracking.download_artifacts(local, where, tmp_path / "down")) == REPORT
    for s in secrets_of(cfg):
        assert s.encode() not in db_bytes(db)


def test_local_artifacts_offline_with_the_default_store_under_the_state_folder(stack, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = offline_config(stack, tmp_path)
    target = tracking.target_for(cfg, local_artifacts=True)
    db = (cfg.state_path / "mlflow" / "mlflow.db").resolve()
    assert target.tracking_uri == f"sqlite:///{db}"
    assert drills.drill_runs(target) == [] and not db.exists()  # listing creates nothing
    run_id = drills.log_drill(target, sample_record(), report_folder(tmp_path))
    exp = tracking.open_client(target).get_experiment_by_name("dr-drills")
    assert exp.artifact_location == f"{target.artifact_location}/dr-drills"
    [run] = drills.drill_runs(target)
    assert run["id"] == run_id and run["artifact_uri"] == f"{exp.artifact_location}/{run_id}/artifacts"
    assert read_tree(Path(db.parent / "artifacts" / "dr-drills" / run_id / "artifacts")) == REPORT


def test_target_resolution_and_env_scope(region_config, monkeypatch):
    cfg = region_config
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.target_for(cfg).tracking_uri == "http://127.0.0.1:5999"
    assert tracking.target_for(cfg, tracking_uri="sqlite:////x/y.db").tracking_uri == "sqlite:////x/y.db"
    t = tracking.target_for(cfg, region="primary")
    keys = resolve_keys(cfg, cfg.primary)
    assert t.region == "primary" and t.artifact_location.startswith("s3://llmdr-primary/t-")
    assert t.s3_env["MLFLOW_S3_ENDPOINT_URL"] == cfg.primary.endpoint
    assert t.s3_env["AWS_SECRET_ACCESS_KEY"] == keys.secret_access_key
    assert keys.secret_access_key not in repr(t) and keys.access_key_id not in repr(t)
    # inside the scope: the region's variables, and a stray session token from outside removed; restored after
    monkeypatch.setenv("AWS_SESSION_TOKEN", "outer-token")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with tracking.artifact_env(t):
        assert os.environ["AWS_SECRET_ACCESS_KEY"] == keys.secret_access_key
        assert os.environ["MLFLOW_S3_ENDPOINT_URL"] == cfg.primary.endpoint
        assert "AWS_SESSION_TOKEN" not in os.environ
    assert os.environ["AWS_SESSION_TOKEN"] == "outer-token" and "AWS_SECRET_ACCESS_KEY" not in os.environ


def test_drill_mapping_leaves_out_missing_values_and_carries_no_secrets():
    rec = sample_record(passed=False, rpo=None)
    rec["measurements"]["rto_s"] = None
    rec["failed_over_at_end"] = True
    rec["evidence"]["snapshots"]["secondary"] = {"id": None, "created": None}
    m = drills.drill_metrics(rec)
    assert "rto_seconds" not in m and "rpo_seconds" not in m
    assert m["passed"] == 0.0 and m["failed_over_at_end"] == 1.0 and m["drill_duration_seconds"] == 95.0
    tags = drills.drill_tags(rec)
    assert tags["llmdr.result"] == "FAIL" and tags["llmdr.failed_over_at_end"] == "true"
    assert "llmdr.snapshot.secondary" not in tags and tags["llmdr.snapshot.primary"] == "a" * 64
    assert all(isinstance(v, str) and v for v in [*tags.values(), *drills.drill_params(rec).values()])


def test_importing_llmdr_tracking_does_not_import_mlflow():
    code = ("import sys, llmdr.lineage.tracking, llmdr.lineage.drills, llmdr.lineage.query; "
            "assert 'mlflow' not in sys.modules and 'botocore' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def test_missing_bucket_is_a_clear_error(region_config, tmp_path):
    cfg = region_config.model_copy(deep=True)
    cfg.regions[1].bucket = "llmdr-no-such-bucket"
    target = tracking.target_for(cfg, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(tracking.ArtifactUploadError) as err:
        drills.log_drill(target, sample_record(), report_folder(tmp_path))
    assert "the bucket does not exist" in str(err.value) and "s3://llmdr-no-such-bucket/" in str(err.value)
