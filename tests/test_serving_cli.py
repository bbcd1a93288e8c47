"""The serving commands as a user runs them (`python -m llmdr.cli --config ...` in a subprocess), against real
replicas and a real Caddy router on the session's regions: status, monitor, replica, stack up.

`llmdr stack down` is not run here: it would stop the session's shared S3 servers."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from llmdr.config import Config, parse_config
from llmdr.devstack.regions import region_dir, region_pid
from llmdr.devstack.serving import start_router, start_serving, stop_serving
from llmdr.failover import watch
from llmdr.failover.router.caddy import Caddy
from llmdr.repo import ops
from llmdr.serving.replica import replica_dir, replica_status, start_replica, stop_replica
from llmdr.serving.tinymodel import write_demo_bundle
from tests.support.config import make_served_config

LLMDR = [sys.executable, "-m", "llmdr.cli"]


def run(cfg: Config, *args: str, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    """``llmdr --config <cfg> ARGS`` in a subprocess; ``env`` sets (or, with None, removes) variables."""
    full = {**os.environ, "LLMDR_CONFIG": ""}
    for k, v in (env or {}).items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = v
    return subprocess.run([*LLMDR, "--config", str(cfg.source_file), *args], cwd=cfg.base_dir, capture_output=True,
                          text=True, timeout=120, env=full)


def row(text: str, first: str) -> list[str]:
    """The whitespace-split line of a table that starts with ``first``."""
    (line,) = [ln for ln in text.splitlines() if ln.split()[:1] == [first]]
    return line.split()


@pytest.fixture(scope="module")
def deployment(stack, tmp_path_factory):
    """Both replicas and the Caddy router running for the module; one snapshot, replicated."""
    cfg = make_served_config(stack, tmp_path_factory.mktemp("servecli"))
    write_demo_bundle(cfg.bundle_path)
    sid = ops.snapshot_bundle(cfg).snapshot_id
    ops.replicate(cfg, sid, to="secondary")
    try:
        assert all(n.started for n in start_serving(cfg))
        start_router(cfg)
        yield SimpleNamespace(cfg=cfg, sid=sid)
    finally:
        stop_serving(cfg, router=True)


@pytest.fixture
def cfg(deployment):
    """Both replicas running (restarted if a test stopped one)."""
    for r in deployment.cfg.regions:
        start_replica(deployment.cfg, r)
    return deployment.cfg


def test_status_shows_the_active_region_and_healthy_replicas(cfg, deployment):
    r = run(cfg, "status")
    assert r.returncode == 0, r.stderr
    sid = deployment.sid[:12]
    assert r.stdout.startswith(f"router   caddy {cfg.router.url} -> primary")
    assert row(r.stdout, "primary") == ["primary", "primary", "ACTIVE", "healthy", "healthy", sid, "-"]
    assert row(r.stdout, "secondary") == ["secondary", "secondary", "healthy", "healthy", sid, "-"]


def test_status_json(cfg):
    r = run(cfg, "status", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["router"]["active"] == "primary" and out["router"]["kind"] == "caddy"
    assert out["router"]["url"] == cfg.router.url and out["router"]["error"] is None
    assert out["router"]["recorded"]["active"] == "primary"
    regions = {x["region"]: x for x in out["regions"]}
    assert [regions["primary"]["active"], regions["secondary"]["active"]] == [True, False]
    for name in ("primary", "secondary"):
        assert regions[name]["store"] == "healthy"
        rep = regions[name]["replica"]
        assert rep["healthy"] and rep["pid"] == replica_status(cfg, cfg.region(name)).pid


def test_status_exits_3_when_the_active_replica_is_down(cfg):
    stop_replica(cfg, cfg.primary)
    r = run(cfg, "status")
    assert r.returncode == 3, r.stdout + r.stderr
    assert row(r.stdout, "primary")[:5] == ["primary", "primary", "ACTIVE", "healthy", "down"]
    assert row(r.stdout, "secondary")[3] == "healthy"
    # a secondary down while the primary serves is not an outage of the service
    start_replica(cfg, cfg.primary)
    stop_replica(cfg, cfg.secondaries[0])
    r = run(cfg, "status")
    assert r.returncode == 0, r.stdout + r.stderr
    assert row(r.stdout, "secondary")[3] == "down"


def test_status_exits_3_when_the_router_is_down(cfg):
    Caddy(cfg).stop()
    try:
        r = run(cfg, "status")
        assert r.returncode == 3, r.stdout + r.stderr
        assert r.stdout.startswith(f"router   caddy {cfg.router.url} -> UNREACHABLE (the caddy router is not running")
        assert "ACTIVE" not in r.stdout
    finally:
        start_router(cfg)
    assert run(cfg, "status").returncode == 0


def test_monitor_once_prints_one_line_per_target(cfg):
    shutil.rmtree(watch.store_path(cfg).parent, ignore_errors=True)
    r = run(cfg, "monitor", "--once")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3
    pattern = re.compile(r"^\d\d:\d\d:\d\d (?P<mark>[* ])(?P<target>\S+)\s+(?P<status>\S+)\s+[\d.]+ ms")
    seen = {m["target"]: (m["mark"], m["status"]) for m in map(pattern.match, lines) if m}
    # one sample so far: not enough to judge, and the active region is marked
    assert seen == {"primary": ("*", "unknown"), "secondary": (" ", "unknown"), "router": (" ", "unknown")}
    r = run(cfg, "monitor", "--once", "--json")
    assert r.returncode == 0, r.stderr
    (doc,) = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert doc["active"] == "primary"
    assert sorted(s["target"] for s in doc["samples"]) == ["primary", "router", "secondary"]
    assert all(s["ok"] for s in doc["samples"])
    assert watch.read_status(cfg)["primary"]["status"] == "unknown"  # the CLI's rounds were kept


def test_monitor_exits_3_when_the_active_region_is_down(cfg, monkeypatch):
    # in-process (typer's CliRunner), with Prefect's event bus replaced by a list: without a Prefect API, Prefect
    # would start a throw-away ephemeral server for the event (~15 s)
    from typer.testing import CliRunner

    from llmdr.cli import app

    sent = []
    monkeypatch.setattr(watch, "Watcher", functools.partial(
        watch.Watcher, emit=lambda event, resource, payload: sent.append((event, resource)) or True))
    for var in ("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "PREFECT_SERVER_ANALYTICS_ENABLED"):  # set if unset
        monkeypatch.setenv(var, os.environ.get(var, "WARNING" if var.endswith("LEVEL") else "false"))
    shutil.rmtree(watch.store_path(cfg).parent, ignore_errors=True)
    stop_replica(cfg, cfg.primary)
    runner = CliRunner()
    r = runner.invoke(app, ["--config", str(cfg.source_file), "monitor", "--once"])
    assert r.exit_code == 0, r.output  # one failed probe: not down yet
    assert re.search(r"\*primary +unknown", r.output) and sent == []
    r = runner.invoke(app, ["--config", str(cfg.source_file), "monitor", "--once"])
    assert r.exit_code == 3, r.output
    assert re.search(r"\*primary +down .*connection refused", r.output)
    assert re.search(r"event llmdr.endpoint.down \(primary\)$", r.output, re.M)
    assert [(e, res["llmdr.region"], res.get("llmdr.active")) for e, res in sent] == [
        ("llmdr.endpoint.down", "primary", "true"), ("llmdr.endpoint.down", "router", None)]


def test_replica_status_lists_both(cfg):
    r = run(cfg, "replica", "status")
    assert r.returncode == 0, r.stderr
    for reg in cfg.regions:
        cols = row(r.stdout, reg.name)
        st = replica_status(cfg, reg)
        assert cols[:4] == [reg.name, "healthy", str(st.pid), reg.serving.url]
    r = run(cfg, "replica", "status", "--json")
    rows = json.loads(r.stdout)
    assert [(x["region"], x["healthy"], x["running"]) for x in rows] == [("primary", True, True),
                                                                         ("secondary", True, True)]


def test_replica_stop_and_start(cfg, deployment):
    sec = cfg.secondaries[0]
    old = replica_status(cfg, sec).pid
    r = run(cfg, "replica", "stop", "secondary")
    assert r.returncode == 0 and r.stdout.strip() == "replica secondary: stopped"
    assert not replica_status(cfg, sec).healthy
    r = run(cfg, "replica", "start", "secondary")
    assert r.returncode == 0, r.stderr
    st = replica_status(cfg, sec)
    assert st.healthy and st.pid != old
    assert r.stdout.startswith(f"replica secondary: {sec.serving.url} serving {deployment.sid[:12]} "
                               f"(pid {st.pid};")


def test_replica_commands_name_unknown_regions_and_regions_without_serving(cfg, region_config):
    r = run(cfg, "replica", "start", "mars")
    assert r.returncode == 2 and "no region named 'mars'" in r.stderr and "primary, secondary" in r.stderr
    assert "Traceback" not in r.stderr
    r = run(cfg, "replica", "stop", "mars")
    assert r.returncode == 2 and "no region named 'mars'" in r.stderr
    # region_config: the session regions without serving: sections
    r = run(region_config, "replica", "start", "secondary")
    assert r.returncode == 2 and "region 'secondary' has no serving: section" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (replica_dir(region_config, region_config.secondaries[0])).exists()


def on_session_servers(stack: Config, cfg: Config) -> Config:
    """``cfg`` with each local region's data_dir set to the session server's folder: `stack up` then finds the
    running servers by their PID files instead of trying to start second ones."""
    raw = yaml.safe_load(cfg.source_file.read_text())
    for r in raw["regions"]:
        r["local"] = {"data_dir": str(region_dir(stack, stack.region(r["name"])))}
    text = yaml.safe_dump(raw, sort_keys=False)
    cfg.source_file.write_text(text)
    return parse_config(text, source=cfg.source_file)


def test_stack_up_refuses_ports_of_servers_it_did_not_start(stack, tmp_path):
    # served configs live in their own state folder: the session's servers are not theirs
    cfg = make_served_config(stack, tmp_path)
    r = run(cfg, "stack", "up", "--no-serving")
    assert r.returncode == 1 and "region 'primary': port" in r.stderr and "already in use" in r.stderr
    assert not (region_dir(cfg, cfg.primary) / "weed.pid").exists()


def test_stack_up_without_and_with_serving(stack, tmp_path):
    from llmdr.metrics import service as metrics_service

    cfg = on_session_servers(stack, make_served_config(stack, tmp_path))
    write_demo_bundle(cfg.bundle_path)
    sid = ops.snapshot_bundle(cfg).snapshot_id
    ops.replicate(cfg, sid, to="secondary")
    weeds = {r.name: region_pid(stack, r) for r in stack.regions}
    try:
        r = run(cfg, "stack", "up", "--no-serving", "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert "serving" not in out
        assert {x["region"]: (x["pid"], x["healthy"]) for x in out["regions"]} == {
            name: (pid, True) for name, pid in weeds.items()}
        assert not Path(cfg.state_path / "replicas").exists()
        assert not any(replica_status(cfg, reg).healthy for reg in cfg.regions)
        assert Caddy(cfg).pid() is None

        r = run(cfg, "stack", "up", "--json")
        assert r.returncode == 0, r.stderr
        notes = {n["region"]: n for n in json.loads(r.stdout)["serving"]}
        assert all(notes[n]["started"] for n in ("primary", "secondary", "router"))
        for reg in cfg.regions:
            st = replica_status(cfg, reg)
            assert st.healthy and st.snapshot == sid and f"pid {st.pid}" in notes[reg.name]["detail"]
        assert Caddy(cfg).active() == "primary"
        assert {r.name: region_pid(stack, r) for r in stack.regions} == weeds  # the same S3 servers
    finally:
        stop_serving(cfg, router=True)
        metrics_service.stop(cfg)  # the exporter `stack up` started (the session's S3 servers keep it alive)
