"""Serving replicas for real: `llmdr serve` processes restored from each region's own SeaweedFS store, started,
replaced and stopped by PID (never a process llmdr did not start); custom start commands; cold starts on failover.

One config per module holds snapshot v1 in both regions and v2 (a changed serving.json) in the primary only, so a
replica that read the wrong region's store would serve the wrong snapshot."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from llmdr.common.process import alive
from llmdr.config import Config, parse_config
from llmdr.devstack.serving import start_serving, stop_serving
from llmdr.errors import SnapshotNotFound, StackError, UsageError
from llmdr.repo import ops
from llmdr.serving.replica import ensure_replica, ready_marker, replica_dir, replica_status, start_replica, stop_replica
from llmdr.serving.tinymodel import write_demo_bundle
from tests.support.config import make_served_config
from tests.support.trees import read_tree


def reconfigure(cfg: Config, region: str, name: str = "llmdr-2.yaml", **serving) -> Config:
    """The same deployment (same folder, state, ports) with ``region``'s serving section changed."""
    raw = yaml.safe_load(cfg.source_file.read_text())
    next(r for r in raw["regions"] if r["name"] == region)["serving"].update(serving)
    path = cfg.source_file.with_name(name)
    text = yaml.safe_dump(raw, sort_keys=False)
    path.write_text(text)
    return parse_config(text, source=path)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - loopback
        return json.loads(r.read())


def served_tree(model_dir: str | Path) -> dict[str, bytes]:
    """The files a replica serves (llmdr's restore marker sits next to the folder, not in it)."""
    return read_tree(Path(model_dir))


def cmdline(pid: int) -> list[str]:
    return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]


@pytest.fixture(scope="module")
def deployment(stack, tmp_path_factory):
    """v1 in primary and secondary; v2 (model renamed in serving.json) in the primary only. No replica runs."""
    cfg = make_served_config(stack, tmp_path_factory.mktemp("replica"))
    write_demo_bundle(cfg.bundle_path)
    tree1 = read_tree(cfg.bundle_path)
    v1 = ops.snapshot_bundle(cfg).snapshot_id
    ops.replicate(cfg, v1, to="secondary")
    sj = cfg.bundle_path / "serving.json"
    sj.write_text(json.dumps(json.loads(sj.read_text()) | {"model_name": "llmdr-tiny-v2"}))
    tree2 = read_tree(cfg.bundle_path)
    v2 = ops.snapshot_bundle(cfg).snapshot_id
    assert v1 != v2
    try:
        yield SimpleNamespace(cfg=cfg, v1=v1, v2=v2, tree1=tree1, tree2=tree2, primary=cfg.primary,
                              secondary=cfg.secondaries[0])
    finally:
        stop_serving(cfg)


@pytest.fixture
def d(deployment):
    """The module's deployment, with every replica stopped after the test."""
    try:
        yield deployment
    finally:
        stop_serving(deployment.cfg)


def test_each_replica_is_restored_from_its_own_region(d):
    p = start_replica(d.cfg, d.primary)
    s = start_replica(d.cfg, d.secondary)
    # the secondary's store has only v1: its replica serves v1 although the primary's newest is v2
    assert (p.snapshot, s.snapshot) == (d.v2, d.v1)
    assert p.healthy and s.healthy and p.pid != s.pid
    for st, region, tree, model in ((p, d.primary, d.tree2, "llmdr-tiny-v2"), (s, d.secondary, d.tree1, "llmdr-tiny")):
        root = d.cfg.state_path / "replicas" / region.name
        assert Path(st.model_dir) == root / f"model-{st.snapshot[:12]}"
        assert served_tree(st.model_dir) == tree
        marker = json.loads(ready_marker(Path(st.model_dir)).read_text())
        assert marker == {"snapshot": st.snapshot, "region": region.name}
        recorded = json.loads((root / "replica.json").read_text())
        assert recorded["pid"] == st.pid and recorded["snapshot"] == st.snapshot
        assert recorded["model_dir"] == st.model_dir and recorded["cold"] is True
        assert cmdline(st.pid)[-len(recorded["argv"]) + 1:] == recorded["argv"][1:]
        assert recorded["argv"][-4:] == ["--host", "127.0.0.1", "--port", str(region.serving.port)]
        # the process answering on the region's url is the one llmdr recorded, serving that folder
        assert get_json(region.serving.url + "/health")["bundle"] == st.model_dir
        assert [m["id"] for m in get_json(region.serving.url + "/v1/models")["data"]] == [model]
    with pytest.raises(SnapshotNotFound, match=rf"no snapshot '{d.v2}' in .*llmdr-secondary"):
        start_replica(d.cfg, d.secondary, ref=d.v2)
    assert replica_status(d.cfg, d.secondary).pid == s.pid  # the failed start left the running replica alone


def test_second_start_is_idempotent(d):
    first = start_replica(d.cfg, d.primary)
    again = start_replica(d.cfg, d.primary)
    assert again.pid == first.pid and again.started == first.started
    assert again.restore_s == first.restore_s and again.healthy
    assert alive(first.pid)


def test_new_snapshot_replaces_the_process_and_drops_the_old_model(d):
    old = start_replica(d.cfg, d.primary, ref=d.v1)
    assert old.snapshot == d.v1 and Path(old.model_dir).is_dir()
    new = start_replica(d.cfg, d.primary)  # latest: v2
    assert new.snapshot == d.v2 and new.pid != old.pid and new.healthy
    assert not alive(old.pid)
    assert not Path(old.model_dir).exists()
    assert sorted(p.name for p in replica_dir(d.cfg, d.primary).glob("model-*")) == [
        f"model-{d.v2[:12]}", f"model-{d.v2[:12]}.ready.json"]
    assert served_tree(new.model_dir) == d.tree2
    assert get_json(d.primary.serving.url + "/health")["bundle"] == new.model_dir


class _Foreign:
    """Some other server on a port: answers every GET with ``status``."""

    def __init__(self, port: int, status: int = 200) -> None:
        class H(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), H)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def test_start_refuses_a_foreign_server_on_the_serving_port(d):
    foreign = _Foreign(d.secondary.serving.port)
    try:
        with pytest.raises(StackError, match=r"something not started by llmdr already answers on "
                                             rf"{d.secondary.serving.url}"):
            start_replica(d.cfg, d.secondary)
        st = replica_status(d.cfg, d.secondary)
        assert st.pid is None and not st.running and st.healthy  # it answers, but it is not ours
    finally:
        foreign.close()


def test_a_replica_that_cannot_bind_reports_its_log(d):
    foreign = _Foreign(d.secondary.serving.port, status=404)  # holds the port, but /health is not 2xx
    try:
        with pytest.raises(StackError, match=r"exited with code 1 while starting:[\s\S]*cannot listen on "
                                             rf"127.0.0.1:{d.secondary.serving.port}"):
            start_replica(d.cfg, d.secondary)
    finally:
        foreign.close()


def test_stop_stops_only_our_process(d):
    st = start_replica(d.cfg, d.primary)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        after = stop_replica(d.cfg, d.primary)
        assert not alive(st.pid) and not after.running and not after.healthy and after.pid is None
        # a PID file that points at an unrelated live process (PID reuse, or a hand-edited file)
        state = replica_dir(d.cfg, d.primary) / "replica.json"
        recorded = json.loads(state.read_text())
        state.write_text(json.dumps(recorded | {"pid": sleeper.pid}))
        assert replica_status(d.cfg, d.primary).pid is None
        stop_replica(d.cfg, d.primary)
        assert sleeper.poll() is None
        # the same with a one-word start command (a wrapper script): nothing to compare but the program itself
        state.write_text(json.dumps(recorded | {"pid": sleeper.pid, "argv": ["/opt/llm/start-server"]}))
        assert replica_status(d.cfg, d.primary).pid is None
        stop_replica(d.cfg, d.primary)
        assert sleeper.poll() is None
        # a start over that stale record starts a new replica and still leaves the unrelated process alone
        new = start_replica(d.cfg, d.primary)
        assert new.healthy and new.pid not in (sleeper.pid, st.pid)
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_custom_command_with_placeholders(d):
    cmd = [sys.executable, "-m", "llmdr.cli", "serve", "{model_dir}", "--host", "{host}", "--port", "{port}"]
    cfg = reconfigure(d.cfg, "secondary", command=cmd)
    sec = cfg.secondaries[0]
    st = start_replica(cfg, sec)
    assert st.healthy and st.snapshot == d.v1
    argv = json.loads((replica_dir(cfg, sec) / "replica.json").read_text())["argv"]
    assert argv == [sys.executable, "-m", "llmdr.cli", "serve", st.model_dir, "--host", "127.0.0.1", "--port",
                    str(sec.serving.port)]
    assert cmdline(st.pid) == argv
    assert stop_replica(cfg, sec).running is False and not alive(st.pid)


def test_custom_command_as_one_string(d):
    cmd = f"'{sys.executable}' -m llmdr.cli serve {{model_dir}} --port {{port}} --host {{host}}"
    cfg = reconfigure(d.cfg, "secondary", command=cmd)
    st = start_replica(cfg, cfg.secondaries[0])
    assert st.healthy and cmdline(st.pid)[-4:] == ["--port", str(cfg.secondaries[0].serving.port), "--host",
                                                   "127.0.0.1"]


def test_one_word_command_is_started_and_stopped(d, tmp_path):
    # a wrapper script without arguments (it finds the model in its working folder, the replica folder)
    script = tmp_path / "start-server"
    script.write_text(f"#!{sys.executable}\nimport glob, sys\nfrom llmdr.cli import main\n"
                      f"sys.argv = ['llmdr', 'serve', glob.glob('model-*/')[0], '--port', "
                      f"'{d.secondary.serving.port}']\nmain()\n")
    script.chmod(0o755)
    cfg = reconfigure(d.cfg, "secondary", command=[str(script)])
    st = start_replica(cfg, cfg.secondaries[0])
    assert st.healthy and st.pid and cmdline(st.pid) == [sys.executable, str(script)]
    assert start_replica(cfg, cfg.secondaries[0]).pid == st.pid
    assert not stop_replica(cfg, cfg.secondaries[0]).healthy and not alive(st.pid)


def test_unknown_placeholder_is_a_usage_error(d):
    cfg = reconfigure(d.cfg, "secondary", command="vllm serve {model_path} --port {port}")
    with pytest.raises(UsageError, match=r"unknown placeholder.*model_path.*\{model_dir\}, \{host\} and \{port\}"):
        start_replica(cfg, cfg.secondaries[0])
    assert replica_status(cfg, cfg.secondaries[0]).pid is None


def test_replica_that_exits_at_start_reports_the_log_tail(d):
    crash = [sys.executable, "-c", "import sys; print('CUDA out of memory on device 0'); sys.exit(3)"]
    cfg = reconfigure(d.cfg, "secondary", command=crash)
    with pytest.raises(StackError, match=r"'secondary': the replica exited with code 3 while starting:\n"
                                         r"[\s\S]*CUDA out of memory on device 0"):
        start_replica(cfg, cfg.secondaries[0])
    st = replica_status(cfg, cfg.secondaries[0])
    assert not st.running and not st.healthy


def test_region_without_a_snapshot_is_a_clear_error(served_config):
    # served_config: a fresh, empty key prefix in both regions
    with pytest.raises(SnapshotNotFound, match=r"no snapshot of bundle 'testbundle' in .*llmdr-secondary.*"
                                               r"llmdr snapshot"):
        start_replica(served_config, served_config.secondaries[0])
    assert not (replica_dir(served_config, served_config.secondaries[0]) / "replica.json").exists()


@pytest.fixture
def cold(stack, tmp_path):
    """A deployment whose secondary is not a warm standby (serving.warm: false); empty key prefix."""
    cfg = make_served_config(stack, tmp_path, warm=False)
    write_demo_bundle(cfg.bundle_path)
    try:
        yield cfg
    finally:
        stop_serving(cfg, router=True)


def test_start_serving_skips_cold_standby_and_regions_without_snapshots_then_failover_cold_starts(cold):
    primary, secondary = cold.primary, cold.secondaries[0]
    notes = {n.region: n for n in start_serving(cold)}
    assert not notes["primary"].started and "no snapshot of testbundle in primary" in notes["primary"].detail
    assert not notes["secondary"].started and "warm standby off" in notes["secondary"].detail
    assert not any(replica_status(cold, r).running for r in cold.regions)

    sid = ops.snapshot_bundle(cold).snapshot_id  # the primary only, for now
    warm = reconfigure(cold, "secondary", name="warm.yaml", warm=True)
    notes = {n.region: n for n in start_serving(warm)}
    assert notes["primary"].started and sid[:12] in notes["primary"].detail
    # a warm secondary is restored from its own store, which has no snapshot yet: the primary's is not used
    assert not notes["secondary"].started and "no snapshot of testbundle in secondary" in notes["secondary"].detail
    assert not replica_status(warm, secondary).running

    ops.replicate(cold, sid, to="secondary")
    notes = {n.region: n for n in start_serving(cold)}
    assert notes["primary"].started and "warm standby off" in notes["secondary"].detail
    assert not replica_status(cold, secondary).running

    st = ensure_replica(cold, secondary)  # what failover does for a cold target
    assert st.healthy and st.cold is True and st.snapshot == sid and st.restore_s > 0
    assert served_tree(st.model_dir) == read_tree(cold.bundle_path)
    again = ensure_replica(cold, secondary)
    assert again.cold is False and again.pid == st.pid
    warm_primary = ensure_replica(cold, primary)
    assert warm_primary.cold is False and warm_primary.pid == replica_status(cold, primary).pid
