"""CLI behaviour that needs no server: errors are one clear message and a non-zero exit, never a traceback."""

import json
import os
import subprocess
import sys

LLMDR = [sys.executable, "-m", "llmdr.cli"]


def run(args, cwd):
    return subprocess.run(LLMDR + args, cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "LLMDR_CONFIG": ""})


def test_missing_config(tmp_path):
    r = run(["snapshots"], tmp_path)
    assert r.returncode == 2
    assert "llmdr.yaml: no such file" in r.stderr and "llmdr init" in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_config_names_key_and_line(tmp_path):
    (tmp_path / "b").mkdir()
    assert run(["init", "b"], tmp_path).returncode == 0
    text = (tmp_path / "llmdr.yaml").read_text().replace("rto: 15m", "rto: whenever")
    (tmp_path / "llmdr.yaml").write_text(text)
    r = run(["snapshots"], tmp_path)
    assert r.returncode == 2
    assert "objectives.rto (line" in r.stderr and "not a duration" in r.stderr
    assert "Traceback" not in r.stderr


def test_init_refuses_to_overwrite(tmp_path):
    (tmp_path / "b").mkdir()
    assert run(["init", "b"], tmp_path).returncode == 0
    r = run(["init", "b"], tmp_path)
    assert r.returncode != 0 and "--force" in r.stderr


def test_unknown_region(tmp_path):
    (tmp_path / "b").mkdir()
    run(["init", "b"], tmp_path)
    r = run(["snapshots", "--region", "mars"], tmp_path)
    assert r.returncode == 2 and "no region named 'mars'" in r.stderr and "primary, secondary" in r.stderr


def test_missing_credentials_are_explained(tmp_path):
    (tmp_path / "b").mkdir()
    run(["init", "b"], tmp_path)
    r = run(["snapshots"], tmp_path)
    assert r.returncode != 0
    assert "LLMDR_PRIMARY_ACCESS_KEY_ID" in r.stderr and "llmdr stack up" in r.stderr


def test_usage_error_exit_code(tmp_path):
    r = run(["restore"], tmp_path)
    assert r.returncode == 2 and "name what to restore: a SNAPSHOT" in r.stderr and "Traceback" not in r.stderr
    r = run(["restore", "latest"], tmp_path)
    assert r.returncode == 2 and "restore needs --to FOLDER" in r.stderr


def test_version():
    r = subprocess.run(LLMDR + ["--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("llmdr ")


def test_sample_bundle(tmp_path):
    r = run(["sample-bundle", "s", "--shards", "1", "--shard-mb", "1"], tmp_path)
    assert r.returncode == 0
    files = {p.name for p in (tmp_path / "s").rglob("*") if p.is_file()}
    assert {"model-00001-of-00001.safetensors", "tokenizer.json", "config.json", "chat_template.jinja"} <= files
    idx = json.loads((tmp_path / "s" / "model.safetensors.index.json").read_text())
    assert set(idx["weight_map"].values()) == {"model-00001-of-00001.safetensors"}


def test_stack_up_without_local_regions(tmp_path):
    (tmp_path / "b").mkdir()
    run(["init", "b"], tmp_path)
    cfg = tmp_path / "llmdr.yaml"
    cfg.write_text(cfg.read_text().replace("    local: {}", "").replace("    local: {}", ""))
    r = run(["stack", "up"], tmp_path)
    assert r.returncode == 2 and "nothing for `llmdr stack` to start" in r.stderr


def test_check_command(tmp_path):
    assert run(["sample-bundle", "b", "--shards", "1", "--shard-mb", "1"], tmp_path).returncode == 0
    assert run(["init", "b"], tmp_path).returncode == 0
    r = run(["check"], tmp_path)
    assert r.returncode == 0 and "complete" in r.stdout
    (tmp_path / "b" / "tokenizer.json").unlink()
    r = run(["check", "--json"], tmp_path)
    assert r.returncode == 4
    report = json.loads(r.stdout)
    assert report["complete"] is False
    tok = next(c for c in report["components"] if c["kind"] == "tokenizer")
    assert tok["problems"] == ["tokenizer: missing: tokenizer.json is not there"]
