"""Lineage against the real session regions (SeaweedFS) and a real sqlite MLflow store per test: model versions
tied to snapshot content, drill-verified alias, training runs from checkpoints, and the whole chain."""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path

import pytest

from llmdr.config import parse_config
from llmdr.devstack.samples import write_sample_bundle
from llmdr.drill.record import DrillRecord
from llmdr.errors import SnapshotNotFound, UsageError
from llmdr.lineage import drills, tracking
from llmdr.lineage.host import hardware
from llmdr.lineage.query import lineage
from llmdr.lineage.registry import mark_drill_verified, register_snapshot
from llmdr.lineage.render import render_lineage
from llmdr.lineage.training import flatten_params, record_training_run
from llmdr.repo import ops
from tests.support.ports import free_port

BUNDLE = """\
bundle:
  name: testbundle
  path: bundle
  components:
    weights: {paths: ["*.safetensors", model.safetensors.index.json]}
    tokenizer: {paths: [tokenizer.json, tokenizer_config.json, special_tokens_map.json]}
    model_config: {paths: [config.json]}
    generation_config: {paths: [generation_config.json]}
    prompt_templates: {paths: ["prompts/*"]}
    serving_config: {paths: [serving.json]}
    security_rules: {paths: ["security/*"]}
checkpoints: {path: ckpts}
"""
KINDS = {"weights", "tokenizer", "model_config", "generation_config", "prompt_templates", "serving_config",
         "security_rules"}
MD5 = "3f2c9a0d5b7e41c8a6d2e9f01b4c7d8e"


@pytest.fixture
def cfg(region_config):
    """The session regions (fresh prefix) with the sample bundle's components and a checkpoints folder."""
    text = region_config.source_file.read_text()
    assert "bundle: {name: testbundle, path: bundle}\n" in text
    return parse_config(text.replace("bundle: {name: testbundle, path: bundle}\n", BUNDLE),
                        source=region_config.source_file)


@pytest.fixture
def uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


def datasets_for(cfg) -> list[dict]:
    remotes = {r.name: f"s3://{r.bucket}/{r.prefix}/dvc/files/md5/{MD5[:2]}/{MD5[2:]}" for r in cfg.regions}
    return [{"name": "support-chats", "md5": MD5, "remotes": remotes}]


def protected_snapshot(cfg) -> str:
    """Snapshot the bundle folder into the primary and copy it to the secondary; the snapshot id."""
    sid = ops.snapshot_bundle(cfg).snapshot_id
    ops.replicate(cfg, sid, to="secondary")
    return sid


def both(sid: str) -> dict[str, str]:
    return {"primary": sid, "secondary": sid}


def write_checkpoint(root: Path, step: int = 200) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    history = [{"epoch": 0.25 * i, "learning_rate": 5e-5, "loss": round(2.5 - 0.4 * i, 3), "step": 50 * i}
               for i in range(1, 5)]
    history.append({"epoch": 1.0, "eval_loss": 1.31, "step": 200})
    (folder / "trainer_state.json").write_text(json.dumps({
        "global_step": step, "epoch": 1.0, "max_steps": 200, "num_train_epochs": 1, "train_batch_size": 8,
        "logging_steps": 50, "best_metric": None, "is_world_process_zero": True, "log_history": history}))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 256, "rope_scaling": {"type": "linear", "factor": 2.0},
        "architectures": ["LlamaForCausalLM"], "bad key(!)": 1}))
    head = json.dumps({"w": {"dtype": "U8", "shape": [4096], "data_offsets": [0, 4096]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + os.urandom(4096))  # parses
    return folder


def test_one_model_version_per_snapshot_content(cfg, uri):
    write_sample_bundle(cfg.bundle_path, shard_size=64 * 1024)
    s1 = protected_snapshot(cfg)
    ds = datasets_for(cfg)
    r1 = register_snapshot(cfg, s1, regions=both(s1), datasets=ds, training_run_id="0" * 32, tracking_uri=uri)
    assert (r1["name"], r1["version"], r1["created"], r1["aliases"]) == ("testbundle", "1", True, ["production"])

    client = tracking.open_client(tracking.TrackingTarget(tracking_uri=uri, artifact_location="file:///unused"))
    manifest = ops.open_repo(cfg, "primary", read_only=True).load_manifest(s1)
    v1 = client.get_model_version("testbundle", "1")
    t = v1.tags
    assert t["llmdr.snapshot_id"] == t["llmdr.manifest_digest"] == s1
    assert t["llmdr.snapshot.primary"] == t["llmdr.snapshot.secondary"] == s1
    assert {k.removeprefix("llmdr.component."): v for k, v in t.items() if k.startswith("llmdr.component.")} == \
        {k: c["digest"] for k, c in manifest.components.items()}
    assert set(manifest.components) == KINDS
    assert t["llmdr.dataset.support-chats.md5"] == MD5
    assert t["llmdr.dataset.support-chats.remote.secondary"] == ds[0]["remotes"]["secondary"]
    assert t["llmdr.training_run_id"] == "0" * 32
    assert v1.source == f"s3://llmdr-primary/{cfg.primary.prefix}/snaps/{s1}"  # the snapshot's record

    again = register_snapshot(cfg, s1, regions=both(s1), datasets=ds, tracking_uri=uri)
    assert (again["version"], again["created"], again["updated"]) == ("1", False, False)

    # a new snapshot of unchanged files has a new id (the manifest records its time) but the same content
    s1b = ops.snapshot_bundle(cfg).snapshot_id
    assert s1b != s1
    same = register_snapshot(cfg, s1b, regions={"primary": s1b}, tracking_uri=uri)
    assert (same["version"], same["created"], same["updated"]) == ("1", False, True)
    t = client.get_model_version("testbundle", "1").tags
    assert t["llmdr.snapshot_id"] == t["llmdr.snapshot.primary"] == s1b
    assert "llmdr.snapshot.secondary" not in t  # the newest id is only in the primary so far
    assert t["llmdr.snapshots"] == f",{s1},{s1b},"
    older = register_snapshot(cfg, s1, regions=both(s1), tracking_uri=uri)  # an older id never moves it back
    assert (older["version"], older["created"]) == ("1", False)
    assert client.get_model_version("testbundle", "1").tags["llmdr.snapshot_id"] == s1b

    cfg_json = cfg.bundle_path / "config.json"
    cfg_json.write_text(cfg_json.read_text().replace('"hidden_size": 256', '"hidden_size": 512'))
    s2 = ops.snapshot_bundle(cfg, tags={"dataset.support-chats.md5": MD5}).snapshot_id  # as protect-bundle tags it
    ops.replicate(cfg, s2, to="secondary")
    r2 = register_snapshot(cfg, s2, regions=both(s2), tracking_uri=uri)  # datasets from the snapshot's tags
    assert (r2["version"], r2["created"], r2["aliases"]) == ("2", True, ["production"])
    assert {a: str(v) for a, v in client.get_registered_model("testbundle").aliases.items()} == {"production": "2"}
    t1, t2 = client.get_model_version("testbundle", "1").tags, client.get_model_version("testbundle", "2").tags
    assert t2["llmdr.component.weights"] == t1["llmdr.component.weights"]
    assert t2["llmdr.component.model_config"] != t1["llmdr.component.model_config"]
    assert t2["llmdr.dataset.support-chats.md5"] == MD5
    assert not any(".remote." in k for k in t2)  # the manifest does not say where the remotes are

    # drills: a pass moves drill-verified (found through an older id of version 1), a failure does not
    m = mark_drill_verified(cfg, s1, drill_id="d-1", passed=True, mlflow_run_id="r1", tracking_uri=uri)
    assert (m["version"], m["alias_moved"]) == ("1", True)
    m = mark_drill_verified(cfg, s2, drill_id="d-2", passed=False, mlflow_run_id="r2", tracking_uri=uri)
    assert (m["version"], m["alias_moved"], m["aliases"]) == ("2", False, ["production"])
    aliases = {a: str(v) for a, v in client.get_registered_model("testbundle").aliases.items()}
    assert aliases == {"production": "2", "drill-verified": "1"}
    t2 = client.get_model_version("testbundle", "2").tags
    assert (t2["llmdr.last_drill_id"], t2["llmdr.last_drill_result"], t2["llmdr.last_drill_mlflow_run_id"]) == \
        ("d-2", "FAIL", "r2")
    mark_drill_verified(cfg, s2, drill_id="d-3", passed=True, mlflow_run_id=None, tracking_uri=uri)
    assert str(client.get_registered_model("testbundle").aliases["drill-verified"]) == "2"
    assert mark_drill_verified(cfg, "c" * 64, drill_id="d-4", passed=True, mlflow_run_id=None,
                               tracking_uri=uri) is None
    with pytest.raises(UsageError, match="reserved"):
        register_snapshot(cfg, s2, regions=both(s2), alias="latest", tracking_uri=uri)
    with pytest.raises(UsageError, match="no region named 'elsewhere'"):
        register_snapshot(cfg, s2, regions={"elsewhere": s2}, tracking_uri=uri)


def test_training_run_from_a_checkpoint(cfg, uri):
    folder = write_checkpoint(cfg.base_dir / "ckpts")
    sid = ops.protect_checkpoints(cfg)["new"][0]["snapshot_id"]
    ds = datasets_for(cfg)
    params = {"learning_rate": 5e-5, "optimizer": {"name": "adamw", "betas": [0.9, 0.999]}, "notes": "x" * 7000}
    run_id = record_training_run(cfg, checkpoint=str(folder), snapshot_id=sid, step=None, params=params, datasets=ds,
                                 tracking_uri=uri)

    client = tracking.open_client(tracking.TrackingTarget(tracking_uri=uri, artifact_location="file:///unused"))
    run = client.get_run(run_id)
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "training-runs"
    assert exp.artifact_location == f"s3://llmdr-primary/{cfg.primary.prefix}/mlflow/training-runs"
    assert run.info.status == "FINISHED"
    p = run.data.params
    assert p["trainer_state.global_step"] == "200" and p["trainer_state.train_batch_size"] == "8"
    assert p["step"] == "200"
    assert "trainer_state.log_history" not in p  # the history is metrics, not a param
    assert p["config.hidden_size"] == "256" and p["config.rope_scaling.factor"] == "2.0"
    assert p["config.architectures"] == '["LlamaForCausalLM"]'
    assert p["config.bad key___"] == "1"
    assert p["learning_rate"] == "5e-05" and p["optimizer.name"] == "adamw" and p["optimizer.betas"] == "[0.9,0.999]"
    assert len(p["notes"]) == 6000 and p["notes"].endswith("…")
    hw = hardware()
    assert p["hardware.cpu_model"] == hw["cpu_model"] and p["hardware.cpu_count"] == str(os.cpu_count())
    assert p["hardware.gpu_count"] == str(len(hw["gpus"]))
    loss = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss"))
    assert loss == [(50, 2.1), (100, 1.7), (150, 1.3), (200, 0.9)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "eval_loss")] == [(200, 1.31)]
    t = run.data.tags
    assert t["llmdr.checkpoint"] == "checkpoint-200" and t["llmdr.snapshot_id"] == sid and t["llmdr.step"] == "200"
    assert t["llmdr.dataset.support-chats.md5"] == MD5
    assert t["llmdr.hardware_source"].startswith("recorded on ")
    assert hw["cpu_model"] in t["llmdr.hardware"]
    (inp,) = run.inputs.dataset_inputs
    assert (inp.dataset.name, inp.dataset.digest, inp.dataset.source_type) == ("support-chats", MD5, "dvc")
    assert json.loads(inp.dataset.source) == ds[0]["remotes"]

    again = record_training_run(cfg, checkpoint=str(folder), snapshot_id=sid, step=None, params=params, datasets=ds,
                                tracking_uri=uri)
    assert again == run_id
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`llmdr.snapshot_id` = '{sid}'")
    assert [r.info.run_id for r in runs] == [run_id]
    assert len(client.get_metric_history(run_id, "loss")) == 4  # not logged twice

    # the trainer's machine, when the caller knows it, is recorded as given
    other = write_checkpoint(cfg.base_dir / "elsewhere", step=300)
    gpu = {"name": "NVIDIA H100 80GB HBM3", "memory_total": "81559 MiB", "driver_version": "550.54.15"}
    given = {"cpu_model": "AMD EPYC 9654", "cpu_count": 192, "memory_gib": 1511.5, "gpus": [gpu, gpu], "gpu_count": 2}
    rid = record_training_run(cfg, checkpoint=str(other), snapshot_id="d" * 64, step=300, params={}, datasets=[],
                              hardware=given, tracking_uri=uri)
    r = client.get_run(rid)
    assert r.data.params["hardware.gpus"] == "NVIDIA H100 80GB HBM3 (81559 MiB); NVIDIA H100 80GB HBM3 (81559 MiB)"
    assert r.data.params["hardware.gpu_driver"] == "550.54.15"
    assert r.data.tags["llmdr.hardware_source"] == "given"
    assert "2 x NVIDIA H100 80GB HBM3" in r.data.tags["llmdr.hardware"]


def drill_record(sid: str, *, passed: bool = True) -> dict:
    t0 = time.time() - 60
    rec = DrillRecord(bundle="testbundle", started_ts=t0, tool_version="0.1.0", started_by={"kind": "cli"},
                      scope={"bundle": "testbundle", "objectives": {"rpo_s": 300.0, "rto_s": 900.0}})
    rec.measurements = {"rto_s": 2.5, "rpo_s": 40.0}
    rec.evidence = {"snapshots": {"primary": {"id": sid, "created": "x"}, "secondary": {"id": sid, "created": "x"}}}
    rec.ended_ts = t0 + 50
    rec.passed = passed
    return rec.to_json()


def log_drill(cfg, uri: str, record: dict, folder: Path) -> str:
    folder.mkdir()
    (folder / "evidence.json").write_text(json.dumps(record))
    target = tracking.target_for(cfg, tracking_uri=uri)
    drills.begin_drill(target, record)
    return drills.log_drill(target, record, folder)


def test_lineage_is_complete(cfg, uri, tmp_path):
    write_sample_bundle(cfg.bundle_path, shard_size=64 * 1024)
    folder = write_checkpoint(cfg.base_dir / "ckpts")
    ck = ops.protect_checkpoints(cfg)["new"][0]["snapshot_id"]
    ds = datasets_for(cfg)
    run_id = record_training_run(cfg, checkpoint=str(folder), snapshot_id=ck, step=None,
                                 params={"learning_rate": 5e-5}, datasets=ds, tracking_uri=uri)
    sid = protected_snapshot(cfg)
    register_snapshot(cfg, sid, regions=both(sid), datasets=ds, training_run_id=run_id, tracking_uri=uri)
    record = drill_record(sid)
    drill_run = log_drill(cfg, uri, record, tmp_path / "report")
    log_drill(cfg, uri, drill_record("e" * 64, passed=False), tmp_path / "report2")  # another snapshot's drill
    mark_drill_verified(cfg, sid, drill_id=record["id"], passed=True, mlflow_run_id=drill_run, tracking_uri=uri)

    data = lineage(cfg, "testbundle@production", tracking_uri=uri)
    json.dumps(data)  # --json prints it as is
    manifest = ops.open_repo(cfg, "primary", read_only=True).load_manifest(sid)
    assert data["model"]["name"] == "testbundle" and data["model"]["version"] == "1"
    assert data["model"]["aliases"] == ["drill-verified", "production"]
    snap = data["snapshot"]
    assert snap["id"] == sid and snap["created"] == manifest.created
    assert snap["components"] == {k: c["digest"] for k, c in manifest.components.items()}
    assert set(snap["components"]) == KINDS
    for region in ("primary", "secondary"):
        st = data["regions"][region]
        assert (st["present"], st["snapshot_id"], st["complete"], st["recorded"]) == (True, sid, True, sid)
    assert data["datasets"] == ds
    tr = data["training_run"]
    assert tr["run_id"] == run_id and tr["checkpoint"] == "checkpoint-200" and tr["step"] == "200"
    assert tr["snapshot_id"] == ck
    assert tr["params"]["learning_rate"] == "5e-05" and tr["params"]["config.hidden_size"] == "256"
    assert not any(k.startswith("hardware.") for k in tr["params"])
    assert tr["hardware"]["cpu_model"] == hardware()["cpu_model"]
    assert tr["metrics"]["loss"] == 0.9
    (drill,) = data["drills"]
    assert drill["drill_id"] == record["id"] and drill["passed"] is True
    assert (drill["rto_s"], drill["rpo_s"], drill["mlflow_run_id"]) == (2.5, 40.0, drill_run)
    assert drill["regions"] == ["primary", "secondary"]

    for ref in (sid[:10], sid, "testbundle", "testbundle@1", "testbundle@v1", "testbundle@drill-verified"):
        other = lineage(cfg, ref, tracking_uri=uri)
        assert other["model"]["version"] == "1" and other["snapshot"]["id"] == sid, ref
    ck_data = lineage(cfg, ck[:8], tracking_uri=uri)  # a checkpoint: not a model version, its training run
    assert ck_data["model"] is None and ck_data["snapshot"]["kind"] == "checkpoint"
    assert ck_data["snapshot"]["tags"]["checkpoint"] == "checkpoint-200"
    assert ck_data["training_run"]["run_id"] == run_id and ck_data["datasets"] == ds
    assert ck_data["regions"]["secondary"]["present"] is True
    ck_text = render_lineage(ck_data)
    assert ck_text.startswith(f"checkpoint snapshot {ck} (created ") and f"training run {run_id}" in ck_text

    with pytest.raises(UsageError, match=r"no alias 'staging'.*drill-verified → version 1.*production → version 1"):
        lineage(cfg, "testbundle@staging", tracking_uri=uri)
    with pytest.raises(UsageError, match=r"no version 7; versions: 1"):
        lineage(cfg, "testbundle@7", tracking_uri=uri)
    with pytest.raises(UsageError, match=r"no registered model 'chatbot'.*registered models: testbundle"):
        lineage(cfg, "chatbot", tracking_uri=uri)
    with pytest.raises(SnapshotNotFound, match="neither a registered model nor a snapshot"):
        lineage(cfg, "f" * 16, tracking_uri=uri)

    text = render_lineage(data)
    for piece in ["model testbundle version 1 (drill-verified, production", f"snapshot {sid}",
                  *[f"{k}: {c['digest']}" for k, c in manifest.components.items()],
                  f"primary: present, complete, snapshot {sid[:12]}", "secondary: present, complete",
                  f"support-chats: md5 {MD5}", ds[0]["remotes"]["primary"], ds[0]["remotes"]["secondary"],
                  f"training run {run_id} (checkpoint-200, step 200)", "learning_rate = 5e-05", "final loss 0.9",
                  f"hardware: {hardware()['cpu_model']}",
                  f"drill {record['id']}: PASS, RTO 2.5 s, RPO 40.0 s (MLflow run {drill_run})"]:
        assert piece in text, piece
    lines = text.splitlines()
    order = [next(i for i, ln in enumerate(lines) if key in ln)
             for key in ("model testbundle", "snapshot ", "regions", "datasets", "training run", "drills")]
    assert order == sorted(order)  # the chain in order: model → snapshot → regions → datasets → run → drills

    # the secondary does not answer: its state is unknown, with the reason, and the rest of the chain stands
    text_cfg = cfg.source_file.read_text()
    taken = set(cfg.primary.local_ports) | set(cfg.secondaries[0].local_ports)
    while {*range(closed := free_port(), closed + 9), closed + 10008} & taken:
        pass
    off_path = tmp_path / "offline.yaml"
    off_text = text_cfg.replace(f"127.0.0.1:{cfg.secondaries[0].port}", f"127.0.0.1:{closed}")
    off_text = off_text.replace("bundle: {name: testbundle, path: bundle}\n", BUNDLE)
    off = parse_config(off_text, source=off_path)
    down = lineage(off, "testbundle@production", tracking_uri=uri)
    assert down["regions"]["secondary"]["present"] is None
    assert "unreachable" in down["regions"]["secondary"]["error"]
    assert down["regions"]["primary"]["present"] is True and down["snapshot"]["id"] == sid
    assert "secondary: NOT CHECKED - unreachable" in render_lineage(down)


def test_hardware_describes_this_machine():
    hw = hardware()
    assert hw["cpu_count"] == os.cpu_count()
    assert isinstance(hw["cpu_model"], str) and hw["cpu_model"]
    if Path("/proc/meminfo").exists():
        assert hw["memory_bytes"] > 0 and hw["memory_gib"] > 0
    assert isinstance(hw["gpus"], list) and hw["gpu_count"] == len(hw["gpus"])
    assert hw["python"].count(".") == 2 and hw["platform"]


def test_flatten_params_fits_mlflow_limits():
    long_key = "k" * 300
    out = flatten_params({"a": {"b": {"c": 1}, "empty": {}}, "l": [1, "x"], "flag": True, "none": None,
                          "v": "y" * 7000, long_key: 1, long_key + "2": 2, "odd key:(x)": 3})
    assert out["a.b.c"] == "1" and out["a.empty"] == "{}" and out["l"] == '[1,"x"]'
    assert out["flag"] == "True" and out["none"] == "None"
    assert len(out["v"]) == 6000
    long_keys = [k for k in out if k.startswith("kkk")]
    assert len(long_keys) == 2 and all(len(k) <= 250 for k in long_keys)
    assert out["odd key__x_"] == "3"
