"""The command line as people read it (#17): flags shown as flags in every `--help`, one exit-code table (in
`llmdr --help` and docs/reference/exit-codes.md, from llmdr/cli/exitcodes.py), one unit system (decimal MB) for sizes
and rates, progress as periodic lines when stderr is not a terminal (a real snapshot and restore on the session's
regions), `llmdr stack down` naming every process it stopped, and `llmdr init` writing a retention policy and
ignoring the state folder in git."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from llmdr.cli import app
from llmdr.cli.exitcodes import EXIT_CODES
from llmdr.common.process import alive
from llmdr.common.progress import LineProgress
from llmdr.common.units import human_rate, human_size
from llmdr.config import parse_config
from tests.support.config import make_config, two_region_yaml
from tests.support.ports import free_base_ports

ROOT = Path(__file__).resolve().parent.parent
LLMDR = [sys.executable, "-m", "llmdr.cli"]


def run(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`llmdr ARGS` in a subprocess, stdout and stderr pipes (not terminals)."""
    return subprocess.run([*LLMDR, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "LLMDR_CONFIG": "", **(env or {})})


def _commands(cmd, path):
    yield path, cmd
    for name, sub in sorted((getattr(cmd, "commands", None) or {}).items()):
        if not getattr(sub, "hidden", False):
            yield from _commands(sub, [*path, name])


# flags --------------------------------------------------------------------------------------------------------------
def test_no_help_shows_a_type_after_a_flag(capsys):
    root = typer.main.get_command(app)  # built once: the help of each command is rendered from it
    flags_seen = 0
    for path, cmd in _commands(root, []):
        assert root.main(args=[*path, "--help"], prog_name="llmdr", standalone_mode=False) in (0, None)
        out = capsys.readouterr().out
        assert "Usage: llmdr" in out, path
        for p in cmd.params:
            if getattr(p, "is_flag", False) and not p.hidden:
                line = next(ln for ln in out.splitlines() if p.opts[0] in ln)
                flags_seen += 1
                assert "<bool>" not in line, f"`llmdr {' '.join(path)} --help`: {line.strip()}"
        assert "<bool>" not in out, f"`llmdr {' '.join(path)} --help` shows <bool>"
    assert flags_seen > 40  # --json and friends, in every command that has them


# exit codes ---------------------------------------------------------------------------------------------------------
def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "scripts" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_exit_code_table_in_help_and_docs():
    r = run("--help", env={"COLUMNS": "120"})
    assert r.returncode == 0, r.stderr
    text = r.stdout[r.stdout.index("Exit codes"):]
    in_help = {int(m[1]): m[2] for m in re.finditer(r"^\s*(\d+)  (\S.*?)\s*$", text, re.MULTILINE)}
    doc = (ROOT / "docs" / "reference" / "exit-codes.md").read_text()
    first_table = doc[doc.index("| exit | meaning |"):doc.index("## Errors")]
    in_docs = {int(m[1]): m[2] for m in re.finditer(r"^\| (\d+) \| (.+) \|$", first_table, re.MULTILINE)}
    assert in_help == in_docs == EXIT_CODES
    used = _generator().exit_codes_used()
    assert {1, 2, 3, 6, 10, 130} <= set(used)  # classes, commands and main() all counted
    assert set(used) <= set(EXIT_CODES), f"codes used but not in the table: {sorted(set(used) - set(EXIT_CODES))}"


# units --------------------------------------------------------------------------------------------------------------
def test_sizes_are_decimal_mb():
    assert [human_size(n) for n in (0, 999, 1000, 1_500_000, 512e6, 2.1e9, 999_960_000)] == \
        ["0 B", "999 B", "1.0 kB", "1.5 MB", "512 MB", "2.1 GB", "1.0 GB"]
    assert human_rate(210e6) == "210 MB/s"


# progress -----------------------------------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_line_progress_every_interval_and_quiet_when_fast():
    lines: list[str] = []
    clock = Clock()
    p = LineProgress(lines.append, 10.0, clock)
    p.start("restore 3fa2c0ffee12", 2_100_000_000)
    p.advance(500_000_000)  # 24 %, but no time has passed: a fast operation stays quiet
    p.finish()
    assert lines == []
    p.start("restore 3fa2c0ffee12", 2_100_000_000)
    clock.t += 0.5
    p.advance(100_000_000)  # 5 %, no step yet: nothing
    clock.t += 2.0
    p.advance(412_000_000)  # 24 %: two steps crossed, 2.5 s since the start (at least 1 s): a line
    clock.t += 10.0
    p.advance(10_000_000)  # no new step, but 10 s since the last line: a line
    clock.t += 1.0
    p.finish()  # stopped before the end (an error): says so
    assert lines == ["restore 3fa2c0ffee12: 512 MB of 2.1 GB (24 %), 205 MB/s",
                     "restore 3fa2c0ffee12: 522 MB of 2.1 GB (25 %), 41.8 MB/s",
                     "restore 3fa2c0ffee12: stopped at 522 MB of 2.1 GB (25 %), 38.7 MB/s"]


@pytest.fixture
def project(stack, tmp_path):
    """A config on the session's regions (fresh prefix, own state folder) and a 3.6 MB bundle of 12 files."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for i in range(12):
        (bundle / f"shard-{i:02d}.bin").write_bytes(os.urandom(300_000))
    state = tmp_path / ".llmdr"
    state.mkdir()
    (state / "local.env").write_bytes((stack.state_path / "local.env").read_bytes())
    config = tmp_path / "llmdr.yaml"
    config.write_text(two_region_yaml(stack.primary.port, stack.secondaries[0].port, prefix=f"polish-{os.urandom(5).hex()}",
                                      bundle=f"{{name: polish, path: {bundle}}}", extra="transfer: {fsync: false}",
                                      state_dir=state))
    return config


LINE = re.compile(r"^(\w+) (\S+): (\d+(?:\.\d)?) (B|kB|MB) of 3\.6 MB \((\d+) %\), \d+(?:\.\d)? (?:B|kB|MB|GB)/s$")


def _progress(stderr: str, verb: str) -> list[int]:
    """The percentages of the progress lines of VERB; every line of stderr must be a progress line."""
    assert "\r" not in stderr and "\x1b" not in stderr  # no bar, no terminal codes in a log
    lines = stderr.splitlines()
    assert lines, "no progress lines"
    *steps, last = lines
    for ln in steps:
        m = LINE.match(ln)
        assert m and m[1] == verb, ln
    assert re.match(rf"^{verb} \S+: 3\.6 MB in \d+\.\d s, \d+(?:\.\d)? (?:kB|MB|GB)/s$", last), last
    return [int(LINE.match(ln)[5]) for ln in steps]


def test_progress_lines_off_a_terminal(project, tmp_path):
    every_step = {"LLMDR_PROGRESS_INTERVAL": "0"}
    r = run("--config", str(project), "snapshot", env=every_step)
    assert r.returncode == 0, r.stderr
    assert " MB" in r.stdout and "MiB" not in r.stdout, r.stdout
    pct = _progress(r.stderr, "snapshot")
    assert pct == sorted(pct) and len(pct) >= 5, r.stderr
    r = run("--config", str(project), "restore", "latest", "--to", str(tmp_path / "out"), env=every_step)
    assert r.returncode == 0, r.stderr
    assert "3.6 MB" in r.stdout and "MiB" not in r.stdout, r.stdout
    pct = _progress(r.stderr, "restore")
    assert pct == sorted(pct) and len(pct) >= 5, r.stderr
    r = run("--config", str(project), "restore", "latest", "--to", str(tmp_path / "out2"), "--json", env=every_step)
    assert r.returncode == 0 and r.stderr == "" and json.loads(r.stdout)["files"] == 12, r.stderr  # --json: silent


def test_bad_progress_interval_is_refused(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "w.bin").write_bytes(b"x")
    assert run("init", "b", cwd=tmp_path).returncode == 0
    for bad in ("soon", "-1", "nan"):
        r = run("restore", "latest", "--to", "out", cwd=tmp_path, env={"LLMDR_PROGRESS_INTERVAL": bad})
        assert r.returncode == 2 and "LLMDR_PROGRESS_INTERVAL" in r.stderr and "seconds" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


# stack down ---------------------------------------------------------------------------------------------------------
@pytest.mark.s3  # starts a region of its own: stopping the session's would break the other tests
def test_stack_down_names_what_it_stopped_and_what_was_already_stopped(tmp_path):
    from llmdr.devstack.regions import region_pid, start_region, stop_region

    p, s = free_base_ports()
    cfg = make_config(tmp_path, p, s, tmp_path / ".llmdr")
    try:
        assert start_region(cfg, cfg.primary).healthy
        pid = region_pid(cfg, cfg.primary)
        r = run("--config", str(cfg.source_file), "stack", "down", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert f"stopped         primary S3 server (SeaweedFS) (pid {pid})" in lines, r.stdout
        assert "already stopped secondary S3 server (SeaweedFS)" in lines, r.stdout
        assert {"already stopped Prefect server", "already stopped MLflow UI"} <= set(lines), r.stdout
        assert not alive(pid)
        r = run("--config", str(cfg.source_file), "stack", "down", "primary", "--json", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["processes"] == [
            {"what": "S3 server (SeaweedFS)", "region": "primary", "pid": None, "state": "already stopped"}]
    finally:
        for region in cfg.regions:
            stop_region(cfg, region)



def processes() -> list[tuple[int, str]]:
    """(pid, command line) of every process this user can see."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            out.append((int(d.name), (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")))
        except (ValueError, OSError):  # not a process, or gone meanwhile
            pass
    return out


@pytest.mark.s3  # starts regions of its own
def test_two_stack_ups_at_once_start_one_stack(tmp_path):
    """The second waits for the first (the project's stack lock) and then finds every server up: one SeaweedFS process
    per region, the one its pid file names. Without the lock both started servers and one failed on the ports, or
    left a server no pid file named."""
    from llmdr.devstack.regions import region_pid, stop_region

    p, s = free_base_ports()
    cfg = make_config(tmp_path, p, s, tmp_path / ".llmdr")
    with open(cfg.source_file, "a") as f:
        f.write("\nmetrics: {with_stack: false}\n")
    try:
        cmd = LLMDR + ["--config", str(cfg.source_file), "stack", "up", "--no-serving"]
        procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outs = [proc.communicate(timeout=180) for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0], outs
        assert sum("waiting for `llmdr stack up` (pid" in err for _, err in outs) == 1, outs
        for region in cfg.regions:
            pid = region_pid(cfg, region)
            assert pid and alive(pid)
            data = str(tmp_path / ".llmdr" / "stack" / region.name)
            running = [pid for pid, cmdline in processes() if f"-config_dir={data} " in cmdline + " "]
            assert running == [pid], f"{region.name}: processes {running}, pid file {pid}"
    finally:
        for region in cfg.regions:
            stop_region(cfg, region)


# init ---------------------------------------------------------------------------------------------------------------
def init(folder: Path, *args: str):
    (folder / "model").mkdir(exist_ok=True)
    r = CliRunner().invoke(app, ["init", str(folder / "model"), "--config", str(folder / "llmdr.yaml"), *args])
    return r


def test_init_writes_a_retention_policy(tmp_path):
    r = init(tmp_path)
    assert r.exit_code == 0, r.output
    text = (tmp_path / "llmdr.yaml").read_text()
    cfg = parse_config(text, source=tmp_path / "llmdr.yaml")
    assert cfg.retention is not None and cfg.retention.keep_last == 576 and cfg.retention.prune
    assert yaml.safe_load(text)["retention"] == {"keep_last": 576, "prune": True, "grace": "6h"}
    assert not (tmp_path / ".gitignore").exists()  # not a git repository: nothing to ignore
    assert ".gitignore" not in r.output


def test_init_ignores_the_state_folder_in_git(tmp_path):
    (tmp_path / ".git").mkdir()  # a repository as git sees it; git itself is never run
    r = init(tmp_path)
    assert r.exit_code == 0, r.output
    gi = tmp_path / ".gitignore"
    assert gi.read_text().splitlines()[-1] == ".llmdr/" and "to " + str(gi) in r.output
    assert init(tmp_path, "--force").exit_code == 0
    assert gi.read_text().count(".llmdr/") == 1  # not twice
    gi.write_bytes(b"*.pyc\n/.llmdr\n\xff binary junk")  # already ignored, in another spelling, not UTF-8
    assert init(tmp_path, "--force").exit_code == 0 and gi.read_bytes() == b"*.pyc\n/.llmdr\n\xff binary junk"


def test_init_adds_to_an_existing_gitignore_in_a_subfolder_of_the_repository(tmp_path):
    (tmp_path / ".git").write_text("gitdir: /elsewhere\n")  # a worktree's .git is a file
    sub = tmp_path / "deploy"
    sub.mkdir()
    (sub / ".gitignore").write_text("build")  # no newline at the end
    os.chmod(sub / ".gitignore", 0o640)
    assert init(sub).exit_code == 0
    assert (sub / ".gitignore").read_text() == "build\n# llmdr state: keys, caches, the local stack's data\n.llmdr/\n"
    assert (sub / ".gitignore").stat().st_mode & 0o777 == 0o640


def test_init_leaves_a_gitignore_link_alone(tmp_path):
    (tmp_path / ".git").mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (tmp_path / ".gitignore").symlink_to(victim)
    r = init(tmp_path)
    assert r.exit_code == 0, r.output
    assert "WARNING" in r.output and ".llmdr/" in r.output
    assert (tmp_path / ".gitignore").is_symlink() and victim.read_text() == "keep me\n"
