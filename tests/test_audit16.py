"""The #16 review of every place llmdr writes or executes: what it found open and fixed, each tested against the
real part. A dataset pull never writes through a link planted at its temporary name and restores any name the
filesystem allows (real DVC, real SeaweedFS regions); the drill's outage/restore commands and the MLflow UI get the
allow-listed environment, never llmdr's keys (real child processes); the bundle check memo is checked, not trusted
(an entry edited to match a broken template, or a FIFO planted at its name, changes nothing)."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import pytest

from llmdr.config import parse_config
from llmdr.config.values import ComponentKind
from llmdr.drill.record import end_outage, simulate_outage
from llmdr.lineage.datasets import md5_file, pull, push_all, version
from llmdr.repo.bundle import CheckMemo, IncompleteBundle, check_bundle
from llmdr.repo.repository import Repository
from llmdr.repo.snapshot import take_snapshot
from llmdr.storage.memory import MemoryStore
from tests.support.config import two_region_yaml
from tests.support.ports import free_base_port
from tests.test_bundle import sample
from tests.test_datasets import ds, dvc_site_cache, project, template_repo  # noqa: F401 - fixtures

SECRET = "s3cr3t-value-that-must-not-leak-0123456789"


# --- datasets: temporary files -----------------------------------------------------------------------------------------
@pytest.mark.s3
def test_dataset_pull_never_writes_through_a_link_at_its_temporary_name(project, tmp_path):  # noqa: F811
    train = ds(project)
    ver = version(project, train)
    push_all(project, train)
    out = tmp_path / "restored" / "train.csv"
    out.parent.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for name in (f".{out.name}.llmdr-tmp", ".llmdr-tmp", ".llmdr-old"):  # llmdr's old names and its prefixes
        (out.parent / name).symlink_to(victim)

    assert pull(project, train, "primary", target=out).md5 == ver.md5
    assert victim.read_text() == "keep me"
    assert not out.is_symlink() and md5_file(out) == ver.md5
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        [out.name, f".{out.name}.llmdr-tmp", ".llmdr-tmp", ".llmdr-old"])  # no temporary file left behind


@pytest.mark.s3
def test_dataset_pull_restores_a_255_byte_name(project, tmp_path):  # noqa: F811
    train = ds(project)
    ver = version(project, train)
    push_all(project, train)
    out = tmp_path / "restored" / ("n" * 251 + ".csv")
    assert len(out.name.encode()) == 255
    assert pull(project, train, "secondary", target=out).md5 == ver.md5
    assert md5_file(out) == ver.md5
    assert [p.name for p in out.parent.iterdir()] == [out.name]


# --- children's environment ----------------------------------------------------------------------------------------------
def _dump_env_argv(out: Path) -> list[str]:
    return [sys.executable, "-c", f"import json, os; open({str(out)!r}, 'a').write(json.dumps(dict(os.environ)) + '\\n')"]


def test_drill_commands_get_the_allow_listed_environment_only(tmp_path, monkeypatch):
    dump = tmp_path / "env.jsonl"
    argv = json.dumps(_dump_env_argv(dump))
    extra = f"drill:\n  outage: command\n  outage_command: {argv}\n  restore_command: {argv}\n  pass_env: [AWS_PROFILE]\n"
    cfg = parse_config(two_region_yaml(free_base_port(), free_base_port(), extra=extra, state_dir=tmp_path / "s"),
                       source=tmp_path / "llmdr.yaml")
    for name in ("LLMDR_TEST_P_SK", "LLMDR_TEST_S_SK", "LLMDR_ENCRYPTION_KEY", "LLMDR_MANIFEST_HMAC_KEY",
                 "AWS_SECRET_ACCESS_KEY", "SOME_TOKEN"):
        monkeypatch.setenv(name, SECRET)
    monkeypatch.setenv("AWS_PROFILE", "dr-drill")

    assert simulate_outage(cfg, "primary")["returncode"] == 0
    assert end_outage(cfg, "primary")["returncode"] == 0
    envs = [json.loads(line) for line in dump.read_text().splitlines()]
    assert len(envs) == 2
    for env in envs:
        assert SECRET not in json.dumps(env), sorted(k for k, v in env.items() if v == SECRET)
        assert env["AWS_PROFILE"] == "dr-drill" and env["PATH"] == os.environ["PATH"]


def test_drill_pass_env_must_name_variables(tmp_path):
    from llmdr.errors import ConfigError

    extra = "drill:\n  outage: command\n  outage_command: [a]\n  restore_command: [b]\n  pass_env: ['AKIA0123456789ABCDEF=x']\n"
    with pytest.raises(ConfigError, match="drill.pass_env must be the name of an environment variable") as err:
        parse_config(two_region_yaml(18000, 18100, extra=extra), source=tmp_path / "llmdr.yaml")
    assert "AKIA0123456789ABCDEF" not in str(err.value)


FAKE_MLFLOW = """#!{python}
import http.server, json, os, sys
open({dump!r}, "w").write(json.dumps(dict(os.environ)))
port = int(sys.argv[sys.argv.index("--port") + 1])

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"OK")
    def log_message(self, *a):
        pass

http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def test_mlflow_ui_gets_the_dr_regions_keys_and_nothing_else(tmp_path, monkeypatch):
    """A stand-in `mlflow` beside this Python (the UI is started from there) records the environment it got."""
    from llmdr.devstack import mlflowui

    bindir = tmp_path / "venv" / "bin"
    bindir.mkdir(parents=True)
    dump = tmp_path / "ui-env.json"
    exe = bindir / "mlflow"
    exe.write_text(FAKE_MLFLOW.format(python=sys.executable, dump=str(dump)))
    exe.chmod(0o755)
    monkeypatch.setattr(mlflowui.sys, "executable", str(bindir / "python"))
    cfg = parse_config(two_region_yaml(free_base_port(), free_base_port(), state_dir=tmp_path / "s"),
                       source=tmp_path / "llmdr.yaml")
    monkeypatch.setenv("LLMDR_TEST_P_AK", "primary-ak")
    monkeypatch.setenv("LLMDR_TEST_P_SK", SECRET)  # the primary's key: the UI reads the DR region only
    monkeypatch.setenv("LLMDR_TEST_S_AK", "secondary-ak")
    monkeypatch.setenv("LLMDR_TEST_S_SK", "secondary-sk")
    monkeypatch.setenv("LLMDR_ENCRYPTION_KEY", SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    port = free_base_port()
    try:
        mlflowui.start(cfg, port=port, timeout=30)
    finally:
        mlflowui.stop(cfg)
    env = json.loads(dump.read_text())
    assert SECRET not in json.dumps(env)
    assert not any(k.startswith("LLMDR_") for k in env)
    assert env["AWS_ACCESS_KEY_ID"] == "secondary-ak" and env["AWS_SECRET_ACCESS_KEY"] == "secondary-sk"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == cfg.region("secondary").endpoint


# --- the bundle check memo -------------------------------------------------------------------------------------------------
def _forge(memo: Path, old: list[int], new: list[int]) -> int:
    """Every entry of ``memo`` recording the stat ``old`` made to record ``new`` (what an edit by hand does)."""
    raw = json.loads(memo.read_text())
    count = 0

    def walk(node):  # noqa: ANN001, ANN202
        nonlocal count
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list) and node[:4] == old:
            node[:4] = new
            count += 1

    walk(raw)
    memo.write_text(json.dumps(raw))
    return count


def _sig(p: Path) -> list[int]:
    st = p.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def test_a_memo_edited_to_match_a_broken_template_does_not_let_it_pass(tmp_path):
    root, specs = sample(tmp_path)
    repo = Repository(MemoryStore())
    cache = tmp_path / "cache" / "stat-x.json"
    take_snapshot(repo, root, bundle="b", components=specs, stat_cache=cache)
    memo = tmp_path / "cache" / "checks-x.json"
    template = root / "prompts" / "chat_template.jinja"
    before = _sig(template)
    template.write_text(template.read_text()[:-2] + "{{")  # same size, no longer valid
    assert _forge(memo, before, _sig(template)) == 1

    with pytest.raises(IncompleteBundle, match="chat_template.jinja: is not a valid Jinja template"):
        take_snapshot(repo, root, bundle="b", components=specs, stat_cache=cache)


def test_a_memo_from_another_bundle_folder_or_malformed_is_ignored(tmp_path):
    root, specs = sample(tmp_path)
    memo_path = tmp_path / "cache" / "checks-x.json"
    memo = CheckMemo(memo_path, source=str(root))
    assert check_bundle(root, specs, memo=memo).complete
    memo.save()
    assert (tmp_path / "cache" / "checks-x.key").stat().st_mode & 0o777 == 0o600
    template = root / "prompts" / "chat_template.jinja"
    kind = ComponentKind.prompt_templates
    assert CheckMemo(memo_path, source=str(root)).passed(kind, "prompts/chat_template.jinja", template.stat())
    assert not CheckMemo(memo_path, source="/elsewhere").passed(kind, "prompts/chat_template.jinja", template.stat())
    for junk in ("[]", '{"format": 3, "files": []}', '{"format": 3, "source": "%s", "files": {"x": "y"}}' % root,
                 "\0\1"):
        memo_path.write_text(junk)
        m = CheckMemo(memo_path, source=str(root))
        assert not m.passed(kind, "prompts/chat_template.jinja", template.stat())


def test_a_fifo_at_the_memo_name_does_not_hang_the_snapshot(tmp_path):
    root, specs = sample(tmp_path)
    repo = Repository(MemoryStore())
    cache = tmp_path / "cache" / "stat-x.json"
    take_snapshot(repo, root, bundle="b", components=specs, stat_cache=cache)
    memo_path = tmp_path / "cache" / "checks-x.json"
    memo_path.unlink()
    os.mkfifo(memo_path)
    done: list[object] = []
    t = threading.Thread(target=lambda: done.append(
        take_snapshot(repo, root, bundle="b", components=specs, stat_cache=cache)), daemon=True)
    t.start()
    t.join(20)
    hung = t.is_alive()
    if hung:  # let the blocked open() return so the thread can end
        os.close(os.open(memo_path, os.O_WRONLY | os.O_NONBLOCK))
        t.join(20)
    assert not hung, "the snapshot blocked opening a FIFO planted at the check memo's name"
    assert len(done) == 1
    assert memo_path.is_file()  # the FIFO was replaced by a memo, never written through


# --- state and shared files written without following a planted link ----------------------------------------------------
def _planted(path: Path, victim: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    victim.write_text("keep me")
    path.symlink_to(victim)


def test_failover_history_is_private_and_never_written_through_a_link(tmp_path):
    from llmdr.errors import LlmdrError
    from llmdr.failover import steps as fo

    cfg = parse_config(two_region_yaml(18000, 18100, state_dir=tmp_path / "s"), source=tmp_path / "llmdr.yaml")
    rec = fo.FailoverRecord(kind="failover", bundle="b", from_region="primary", to_region="secondary",
                            trigger="manual", reason="test", started_ts=1_700_000_000.0)
    old = os.umask(0o022)
    try:
        fo.append_history(cfg, rec)
    finally:
        os.umask(old)
    path = fo.history_path(cfg)
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert [r.id for r in fo.history(cfg)] == [rec.id]

    path.unlink()
    victim = tmp_path / "victim.txt"
    _planted(path, victim)
    with pytest.raises(LlmdrError, match="never a symbolic link"):
        fo.append_history(cfg, rec)
    assert victim.read_text() == "keep me"


def test_init_and_golden_files_are_never_written_through_a_link(tmp_path):
    from typer.testing import CliRunner

    from llmdr.cli import app
    from llmdr.devstack.samples import write_sample_bundle
    from llmdr.serving.golden import GoldenCase, GoldenSet

    write_sample_bundle(tmp_path / "bundle", shards=1, shard_size=1024)
    victim = tmp_path / "victim.txt"
    _planted(tmp_path / ".llmdr.yaml.tmp", victim)  # the temporary name `llmdr init` used
    res = CliRunner().invoke(app, ["init", str(tmp_path / "bundle"), "--config", str(tmp_path / "llmdr.yaml")])
    assert res.exit_code == 0, res.output
    assert victim.read_text() == "keep me" and "regions:" in (tmp_path / "llmdr.yaml").read_text()

    g = tmp_path / "g.jsonl"
    (tmp_path / ".g.jsonl.tmp").symlink_to(victim)
    GoldenSet([GoldenCase(id="1", expected="x", prompt="p")]).save(g)
    assert victim.read_text() == "keep me" and GoldenSet.load(g).cases[0].expected == "x"
    assert g.stat().st_mode & 0o777 == 0o644


def test_an_ed25519_public_key_is_never_written_through_a_link(tmp_path):
    from llmdr.storage.crypto import load_ed25519

    priv, pub = tmp_path / "keys" / "m.key", tmp_path / "keys" / "m.pub"
    pub.parent.mkdir()
    outside = tmp_path / "elsewhere" / "planted.pem"
    outside.parent.mkdir()
    pub.symlink_to(outside)  # dangling: the public key counts as missing and is made
    load_ed25519(priv, pub, create=True)
    assert b"PUBLIC KEY" in pub.read_bytes() and not pub.is_symlink()
    assert not outside.exists()


# --- git in a dataset repository runs nothing the repository names, and gets no keys ---------------------------------------
def test_git_in_a_dataset_repository_runs_no_fsmonitor_and_gets_no_keys(tmp_path, monkeypatch):
    import subprocess

    from llmdr.lineage.dvcrepo import git_commit

    root = tmp_path / "repo"
    root.mkdir()
    ran = tmp_path / "fsmonitor-ran.json"
    hook = tmp_path / "hook.py"
    hook.write_text(f"#!{sys.executable}\nimport json, os\nopen({str(ran)!r}, 'w').write(json.dumps(dict(os.environ)))\n")
    hook.chmod(0o755)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e"}
    for args in (["init", "-q"], ["config", "core.fsmonitor", str(hook)]):
        subprocess.run(["git", *args], cwd=root, check=True, env=env)
    (root / "d.dvc").write_text("outs: []\n")
    subprocess.run(["git", "-c", "core.fsmonitor=false", "add", "d.dvc"], cwd=root, check=True, env=env)
    subprocess.run(["git", "-c", "core.fsmonitor=false", "commit", "-qm", "x"], cwd=root, check=True, env=env)
    assert not ran.exists()
    monkeypatch.setenv("LLMDR_TEST_P_SK", SECRET)

    head = subprocess.run(["git", "-c", "core.fsmonitor=false", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                          text=True, env=env).stdout.strip()
    assert git_commit(root, root / "d.dvc") == head
    assert not ran.exists(), "git ran the repository's core.fsmonitor command (with llmdr's environment)"
