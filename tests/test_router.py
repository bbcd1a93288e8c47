"""Routers for real: a Caddy started on loopback in front of two tiny upstream servers, and Route 53 through moto
(Route 53 cannot run here). The switch record (RouterLog) is checked against what the router says."""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llmdr.config import Config, parse_config
from llmdr.errors import ConfigError, LlmdrError, StackError, UsageError
from llmdr.failover.router import RouterLog, RouterState, open_router, upstreams
from llmdr.failover.router.caddy import Caddy
from llmdr.failover.router.route53 import Route53
from tests.support import config as builder
from tests.support.ports import free_port


def write_config(tmp: Path, *, router: str, serving: dict[str, int]) -> Config:
    """Three regions (primary, secondary, tertiary); those named in ``serving`` get a serving url on that port."""
    regions = [builder.region_yaml(name, role, 9000 + i, f"llmdr-{name}", keys="LLMDR_T",
                                   lines=f"    serving: {{url: 'http://127.0.0.1:{serving[name]}'}}"
                                   if name in serving else "")
               for i, (name, role) in enumerate((("primary", "primary"), ("secondary", "secondary"),
                                                 ("tertiary", "secondary")))]
    text = builder.config_yaml(regions, bundle="{name: b, path: bundle}", extra=f"router: {router}",
                               state_dir=tmp / "state")
    return builder.write_config(tmp / "llmdr.yaml", text)


class Upstream:
    """A tiny serving endpoint that answers every GET with its region name; ``/slow`` takes 1.5 s; ``/stream``
    sends a first line, then waits (up to 5 s) for ``release`` before the second, like tokens streaming."""

    def __init__(self, name: str):
        self.name = name
        self.slow_started = threading.Event()
        self.release = threading.Event()
        self.second_sent = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/stream":  # HTTP/1.0, no length: the body ends when the connection closes
                    self.send_response(200)
                    self.send_header("Content-Type", "application/x-ndjson")  # no SSE: caddy flushes those anyway
                    self.end_headers()
                    self.wfile.write(b"data: first\n\n")
                    self.wfile.flush()
                    outer.release.wait(5)
                    outer.second_sent = True
                    self.wfile.write(b"data: second\n\n")
                    return
                if self.path == "/slow":
                    outer.slow_started.set()
                    time.sleep(1.5)
                body = outer.name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def servers():
    ups = {name: Upstream(name) for name in ("primary", "secondary")}
    try:
        yield ups
    finally:
        for u in ups.values():
            u.close()


@pytest.fixture
def caddy(tmp_path, servers):
    listen, admin = free_port(), free_port()
    cfg = write_config(tmp_path, router=f"{{kind: caddy, listen: 'http://127.0.0.1:{listen}', "
                                        f"admin: 'http://127.0.0.1:{admin}'}}",
                       serving={n: u.port for n, u in servers.items()})
    router = Caddy(cfg)
    try:
        yield router
    finally:
        pid = router.pid()
        router.stop()
        assert router.pid() is None
        if pid is not None:
            assert not Path(f"/proc/{pid}").exists(), f"caddy still there after stop(): {_proc_state(pid)}"


def get(url: str, path: str = "/v1/models", timeout: float = 10) -> tuple[int, str, str | None]:
    try:
        with urllib.request.urlopen(url + path, timeout=timeout) as resp:
            return resp.status, resp.read().decode(), resp.headers.get("X-Llmdr-Region")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers.get("X-Llmdr-Region")


# --- Caddy ---------------------------------------------------------------------------------------------------------

def test_caddy_switch_moves_traffic_without_restart(caddy):
    pid = caddy.start("primary")
    assert get(caddy.url) == (200, "primary", "primary")
    assert caddy.active() == "primary"

    state = caddy.switch("secondary", reason="failover: primary down (3 failed probes)")
    assert state.active == "secondary" and state.kind == "caddy" and state.url == caddy.url
    assert state.reason == "failover: primary down (3 failed probes)"
    assert state.upstream == f"127.0.0.1:{caddy.cfg.region('secondary').serving.port}"
    assert get(caddy.url) == (200, "secondary", "secondary")
    assert caddy.active() == "secondary"
    assert caddy.pid() == pid, "the switch restarted caddy"

    again = caddy.switch("secondary", reason="repeat")  # idempotent: nothing new happens or is recorded
    assert again.reason == state.reason and again.since == state.since
    caddy.switch("primary", reason="failback: primary healthy")
    assert get(caddy.url) == (200, "primary", "primary")
    assert caddy.pid() == pid

    history = caddy.log.history()
    assert [(h["active"], h["previous"], h["reason"]) for h in history] == [
        ("primary", None, "router started, sending traffic to primary"),
        ("secondary", "primary", "failover: primary down (3 failed probes)"),
        ("primary", "secondary", "failback: primary healthy"),
    ]
    assert caddy.log.current() == history[-1]
    assert all(h["since"].endswith("Z") and "T" in h["since"] for h in history)
    assert [h["since"] for h in history] == sorted(h["since"] for h in history)


def test_caddy_config_binds_only_loopback_and_disables_https(caddy):
    caddy.start("primary")
    live = caddy._admin("GET", "/config/")
    assert live["admin"]["listen"] == f"127.0.0.1:{caddy.admin_port}"
    server = live["apps"]["http"]["servers"]["llmdr"]
    assert server["listen"] == [f"127.0.0.1:{caddy.listen_port}"]
    assert server["automatic_https"] == {"disable": True, "disable_redirects": True}
    assert live["admin"]["config"]["persist"] is False
    # the process listens on exactly the two configured ports (no :80, :443 or :2019)
    pid = caddy.pid()
    sockets = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            sockets.add(target[len("socket:["):-1])
    listening = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:] + \
            Path("/proc/net/tcp6").read_text().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and f[9] in sockets:  # 0A = LISTEN
            listening.add(int(f[1].rsplit(":", 1)[1], 16))
    assert listening == {caddy.listen_port, caddy.admin_port}


def test_caddy_request_in_flight_during_switch_completes(caddy, servers):
    caddy.start("primary")
    result = {}

    def slow():
        result["slow"] = get(caddy.url, "/slow")

    t = threading.Thread(target=slow)
    t.start()
    assert servers["primary"].slow_started.wait(5)
    caddy.switch("secondary", reason="drill")
    assert t.is_alive(), "the slow request finished before the switch; the test proves nothing"
    assert get(caddy.url) == (200, "secondary", "secondary")
    t.join(10)
    assert result["slow"] == (200, "primary", "primary")


def test_caddy_streams_responses_without_buffering(caddy, servers):
    caddy.start("primary")
    conn = http.client.HTTPConnection("127.0.0.1", caddy.listen_port, timeout=10)
    try:
        conn.request("GET", "/stream")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.headers["X-Llmdr-Region"] == "primary"
        assert resp.read(len(b"data: first\n\n")) == b"data: first\n\n"
        assert not servers["primary"].second_sent, "the first event arrived only after the upstream finished"
        servers["primary"].release.set()
        assert resp.read() == b"data: second\n\n"
    finally:
        servers["primary"].release.set()
        conn.close()


def test_caddy_clients_see_no_failures_during_switches(caddy):
    caddy.start("primary")
    stop = threading.Event()
    failures: list[str] = []
    seen: dict[str, set[str]] = {"fresh": set(), "keepalive": set()}

    def fresh_connections():
        while not stop.is_set():
            try:
                status, body, header = get(caddy.url, timeout=5)
                if status != 200 or body != header:
                    failures.append(f"fresh: {status} {body!r} {header!r}")
                seen["fresh"].add(body)
            except OSError as exc:
                failures.append(f"fresh: {exc!r}")

    def keep_alive():
        conn = http.client.HTTPConnection("127.0.0.1", caddy.listen_port, timeout=5)
        while not stop.is_set():
            try:
                conn.request("GET", "/v1/models")
                resp = conn.getresponse()
                body = resp.read().decode()
                if resp.status != 200 or body != resp.headers.get("X-Llmdr-Region"):
                    failures.append(f"keepalive: {resp.status} {body!r}")
                seen["keepalive"].add(body)
            except (OSError, http.client.HTTPException) as exc:
                failures.append(f"keepalive: {exc!r}")
                conn.close()
        conn.close()

    threads = [threading.Thread(target=fresh_connections), threading.Thread(target=keep_alive)]
    for t in threads:
        t.start()
    try:
        for i in range(12):
            time.sleep(0.05)
            caddy.switch("secondary" if i % 2 == 0 else "primary", reason=f"switch {i}")
        time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert failures == []
    assert seen == {"fresh": {"primary", "secondary"}, "keepalive": {"primary", "secondary"}}
    assert len(caddy.log.history()) == 13  # the start + 12 switches


def test_caddy_refuses_unknown_regions_and_regions_without_serving(caddy):
    caddy.start("primary")
    with pytest.raises(UsageError, match=r"no region named 'nowhere'.*primary, secondary"):
        caddy.switch("nowhere", reason="x")
    with pytest.raises(UsageError, match=r"'tertiary' has no serving.*primary, secondary"):
        caddy.switch("tertiary", reason="x")
    with pytest.raises(UsageError, match="nowhere"):
        Caddy(caddy.cfg).start("nowhere")
    assert caddy.active() == "primary"
    assert len(caddy.log.history()) == 1


def test_caddy_not_running(caddy):
    with pytest.raises(StackError, match="llmdr stack up"):
        caddy.switch("secondary", reason="x")
    with pytest.raises(StackError, match="llmdr stack up"):
        caddy.active()
    state = caddy.state()
    assert (state.active, state.upstream) == (None, None)
    assert caddy.log.history() == []


def test_caddy_start_is_idempotent_and_stop_frees_the_ports(caddy):
    pid = caddy.start("primary")
    assert caddy.start("secondary") == pid  # already running: it keeps routing where it routes
    assert caddy.active() == "primary"
    assert Caddy(caddy.cfg).pid() == pid  # found through the PID file by a fresh object
    caddy.stop()
    assert not caddy.running()
    assert not Path(f"/proc/{pid}").exists()
    with pytest.raises(OSError):
        get(caddy.url, timeout=2)
    # a second start after a stop works on the same ports and resumes the recorded region if asked to
    pid2 = caddy.start(caddy.log.current()["active"])
    assert pid2 != pid and get(caddy.url) == (200, "primary", "primary")


def test_caddy_start_refuses_a_busy_port(caddy):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", caddy.listen_port))
        s.listen()
        with pytest.raises(StackError, match=r"router.listen.*already in use"):
            caddy.start("primary")
    assert not caddy.running()


def test_caddy_reports_a_selection_changed_outside_llmdr(caddy):
    caddy.start("primary")
    caddy.selection_path.write_text("secondary")  # what an operator editing the file by hand would do
    assert get(caddy.url) == (200, "secondary", "secondary")
    state = caddy.state()
    assert state.active == "secondary" and state.since is None
    assert state.reason.startswith("unrecorded: the router points at secondary")
    caddy.selection_path.unlink()
    status, body, _ = get(caddy.url)
    assert status == 503 and "no region is selected" in body
    assert caddy.active() is None


def test_caddy_pushes_a_changed_region_list_to_the_running_router(caddy, tmp_path):
    pid = caddy.start("primary")
    third = Upstream("tertiary")
    try:
        text = caddy.cfg.source_file.read_text().replace(
            "llmdr-tertiary\n", f"llmdr-tertiary\n    serving: {{url: 'http://127.0.0.1:{third.port}'}}\n")
        cfg = parse_config(text, source=caddy.cfg.source_file)
        Caddy(cfg).switch("tertiary", reason="new region")
        assert get(caddy.url) == (200, "tertiary", "tertiary")
        assert caddy.pid() == pid
    finally:
        third.close()


# --- the record and the package entry points ----------------------------------------------------------------------

def test_router_log_records_current_and_history(tmp_path):
    log = RouterLog(tmp_path / "router" / "state.json")
    assert log.current() is None and log.history() == []
    first = log.record("primary", reason="start", previous=None)
    second = log.record("secondary", reason="failover", previous="primary")
    assert log.current() == second
    assert log.history() == [first, second]
    assert json.loads((tmp_path / "router" / "state.json").read_text()) == second
    with open(tmp_path / "router" / "history.jsonl", "a") as fh:
        fh.write('{"active": "prim')  # a crash in the middle of an append
    assert log.history() == [first, second]


def test_open_router_and_upstreams(tmp_path):
    cfg = write_config(tmp_path, router="null", serving={"primary": 18601, "secondary": 18602})
    with pytest.raises(UsageError, match="no router: section"):
        open_router(cfg)
    assert upstreams(cfg) == {"primary": "http://127.0.0.1:18601", "secondary": "http://127.0.0.1:18602"}
    cfg = write_config(tmp_path, router="{kind: caddy, listen: 'http://127.0.0.1:18603', "
                                        "admin: 'http://127.0.0.1:18604'}", serving={"primary": 18601})
    router = open_router(cfg)
    assert isinstance(router, Caddy) and router.url == "http://127.0.0.1:18603"
    st = RouterState("caddy", router.url, None, None, None, None)
    assert set(st.to_json()) == {"kind", "url", "active", "since", "reason", "upstream", "fallback"}


# --- Route 53 (moto) -----------------------------------------------------------------------------------------------

@pytest.fixture
def r53(monkeypatch):
    from moto import mock_aws

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        import boto3

        client = boto3.client("route53")
        zone = client.create_hosted_zone(Name="example.com", CallerReference="llmdr-test")["HostedZone"]["Id"]
        # neighbours on both sides of the router's records, so listing must stop at the right names
        client.change_resource_record_sets(HostedZoneId=zone, ChangeBatch={"Changes": [
            {"Action": "CREATE", "ResourceRecordSet": {"Name": n, "Type": "A", "TTL": 60,
                                                       "ResourceRecords": [{"Value": "192.0.2.9"}]}}
            for n in ("aaa.example.com", "zzz.example.com")]})
        yield client, zone.rsplit("/", 1)[-1]


def route53_router(tmp_path, client, zone, policy: str, name: str) -> Route53:
    cfg = write_config(tmp_path, router=(
        f"{{kind: route53, hosted_zone_id: {zone}, record_name: {name}, record_type: CNAME, ttl: 30, "
        f"policy: {policy}, values: {{primary: p.example.net, secondary: s.example.net}}, "
        f"url: 'https://{name.rstrip('.')}'}}"), serving={})
    return Route53(cfg, client=client, poll_interval=0.01)


def record_sets(client, zone, name):
    sets = client.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
    return {s["SetIdentifier"]: s for s in sets if s["Name"] == name}


def count_changes(client) -> list:
    calls: list = []
    client.meta.events.register("before-parameter-build.route53.ChangeResourceRecordSets",
                                lambda **kw: calls.append(kw["params"]))
    return calls


def test_route53_weighted(r53, tmp_path):
    client, zone = r53
    router = route53_router(tmp_path, client, zone, "weighted", "api.example.com.")
    changes = count_changes(client)
    assert router.active() is None and router.state().active is None

    st = router.switch("primary", reason="initial")
    assert (st.kind, st.active, st.upstream, st.reason) == ("route53", "primary", "p.example.net", "initial")
    sets = record_sets(client, zone, "api.example.com.")
    assert {k: (v["Weight"], v["ResourceRecords"][0]["Value"]) for k, v in sets.items()} == {
        "primary": (100, "p.example.net"), "secondary": (0, "s.example.net")}

    router.switch("secondary", reason="failover: primary down")
    sets = record_sets(client, zone, "api.example.com.")
    assert {k: v["Weight"] for k, v in sets.items()} == {"primary": 0, "secondary": 100}
    assert router.active() == "secondary"
    assert len(changes) == 2 and all(len(c["ChangeBatch"]["Changes"]) == 2 for c in changes), \
        "each switch must be one batch holding every region's record"

    router.switch("secondary", reason="again")  # idempotent: Route 53 is not called to change anything
    assert len(changes) == 2
    assert [(h["active"], h["previous"], h["reason"]) for h in router.log.history()] == [
        ("primary", None, "initial"), ("secondary", "primary", "failover: primary down")]

    with pytest.raises(UsageError, match=r"'tertiary' has no value in router.values.*primary, secondary"):
        router.switch("tertiary", reason="x")
    with pytest.raises(UsageError, match="is not a region"):
        router.switch("nowhere", reason="x")


def test_route53_failover(r53, tmp_path):
    client, zone = r53
    weighted = route53_router(tmp_path / "w", client, zone, "weighted", "api.example.com.")
    weighted.switch("primary", reason="neighbour records of another policy in the same zone")
    router = route53_router(tmp_path, client, zone, "failover", "dr.example.com.")

    router.switch("primary", reason="initial")
    sets = record_sets(client, zone, "dr.example.com.")
    assert {k: (v["Failover"], v["ResourceRecords"][0]["Value"]) for k, v in sets.items()} == {
        "dr.example.com-primary": ("PRIMARY", "p.example.net"),
        "dr.example.com-secondary": ("SECONDARY", "s.example.net")}

    st = router.switch("secondary", reason="failover")
    sets = record_sets(client, zone, "dr.example.com.")
    assert sets["dr.example.com-primary"]["ResourceRecords"][0]["Value"] == "s.example.net"
    assert sets["dr.example.com-secondary"]["ResourceRecords"][0]["Value"] == "p.example.net"
    assert (st.active, st.upstream) == ("secondary", "s.example.net")
    assert router.active() == "secondary"
    assert weighted.active() == "primary"  # the other record was not touched


def test_route53_change_not_insync_in_time_is_recorded_and_reported(r53, tmp_path):
    client, zone = r53
    router = route53_router(tmp_path, client, zone, "weighted", "api.example.com.")
    router.change_timeout = 0.05

    def still_pending(parsed, **kwargs):  # Route 53 propagating slowly (moto answers INSYNC at once)
        parsed["ChangeInfo"]["Status"] = "PENDING"

    client.meta.events.register("after-call.route53.GetChange", still_pending)
    with pytest.raises(LlmdrError, match=r"accepted the switch .* not INSYNC after .*aws route53 get-change"):
        router.switch("secondary", reason="failover")
    assert router.active() == "secondary"  # Route 53 has the change: the log must say so too
    (entry,) = router.log.history()
    assert entry["active"] == "secondary" and "not INSYNC" in entry["reason"]


def test_route53_missing_zone(r53, tmp_path):
    client, _ = r53
    router = route53_router(tmp_path, client, "Z0000000000NOSUCH", "weighted", "api.example.com.")
    with pytest.raises(ConfigError, match=r"hosted zone Z0000000000NOSUCH does not exist.*list-hosted-zones"):
        router.switch("primary", reason="x")
    with pytest.raises(ConfigError, match="hosted_zone_id"):
        router.active()
    assert router.log.history() == []


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return "gone"
