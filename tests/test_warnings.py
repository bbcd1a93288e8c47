"""Warnings that reach people (#19 item 3): a degraded endpoint is announced with its evidence to a real webhook
receiver on loopback, rate-limited per endpoint; and the pre-warm of the DR standby on degraded of the active region
(the decision, the automation spec).

The latency creep is a real one: a small OpenAI-compatible server on loopback answers fast for a baseline, then
slowly; the watcher probes it for real and judges it with the real SampleStore and assess."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llmdr.config import parse_config
from llmdr.failover.watch import Watcher, notice_due, read_status


class Endpoint:
    """A tiny OpenAI-compatible completions server whose answer delay can be changed while it runs."""

    def __init__(self) -> None:
        self.delay = 0.0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if outer.delay:
                    time.sleep(outer.delay)
                body = json.dumps({"choices": [{"text": " pong"}], "usage": {"completion_tokens": 2}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Receiver:
    """A webhook receiver on loopback: records every POSTed JSON body."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                outer.bodies.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def servers():
    made = [Endpoint(), Endpoint(), Receiver()]
    yield made
    for s in made:
        s.close()


def _config(tmp_path: Path, primary: str, secondary: str, webhook: str, cooldown: str = "30m"):
    text = f"""version: 1
bundle: {{name: warnbot, path: bundle}}
regions:
  - name: primary
    role: primary
    endpoint: http://127.0.0.1:18555
    bucket: llmdr-primary
    credentials: {{access_key_env: A_AK, secret_key_env: A_SK}}
    serving: {{url: '{primary}', model: tiny}}
  - name: secondary
    role: secondary
    endpoint: http://127.0.0.1:18655
    bucket: llmdr-secondary
    credentials: {{access_key_env: B_AK, secret_key_env: B_SK}}
    serving: {{url: '{secondary}', model: tiny}}
monitor: {{interval: 1s, timeout: 2s, down_after: 2, recent_window: 3, baseline_window: 10, golden_every: 0,
          notify_cooldown: {cooldown}}}
notifications: {{webhook_url: '{webhook}', timeout: 5s}}
state_dir: .llmdr
"""
    (tmp_path / "llmdr.yaml").write_text(text)
    return parse_config(text, source=tmp_path / "llmdr.yaml")


def _rounds(w: Watcher, n: int):
    return [w.run_round() for _ in range(n)]


def test_a_latency_creep_is_announced_once_with_its_evidence_and_its_recovery_once(tmp_path, servers):
    primary, secondary, receiver = servers
    cfg = _config(tmp_path, primary.url, secondary.url, receiver.url)
    emitted: list[tuple] = []
    w = Watcher(cfg, emit=lambda *a: emitted.append(a) or True)
    try:
        res = _rounds(w, 14)[-1]
        assert res.assessments["primary"].status == "healthy" and receiver.bodies == []
        primary.delay = 0.25  # the creep: ~100x the loopback baseline
        res = _rounds(w, 3)[-1]
        a = res.assessments["primary"]
        assert a.status == "degraded" and "latency median" in a.reasons[0]
        assert res.assessments["secondary"].status == "healthy"
        [notice] = receiver.bodies
        assert notice["kind"] == "endpoint_degraded" and notice["severity"] == "warning"
        data = notice["data"]
        assert data["target"] == "primary" and data["status"] == "degraded" and data["previous"] == "healthy"
        assert data["active"] is True and data["latency"]["z"] >= 4 and data["latency"]["recent_n"] == 3
        assert data["settings"]["recent_window"] == 3 and data["settings"]["baseline_window"] == 10
        assert "robust z" in notice["text"] and "latency: recent median" in notice["text"]
        assert "pre-warmed by the prewarm automation" in notice["text"] and "secondary" in notice["text"]
        assert [e[0] for e in emitted] == ["llmdr.endpoint.degraded"]
        # still slow: no second notice, also not from a new monitor run (the status file remembers it)
        _rounds(w, 2)
        w2 = Watcher(cfg, emit=lambda *a: emitted.append(a) or True)
        _rounds(w2, 1)
        w2.store.close()
        assert len(receiver.bodies) == 1
        assert read_status(cfg)["primary"]["notified_status"] == "degraded"
        # back to normal: one recovery notice, then silence
        primary.delay = 0.0
        for _ in range(30):
            if w.run_round().assessments["primary"].status == "healthy":
                break
        assert [b["kind"] for b in receiver.bodies] == ["endpoint_degraded", "endpoint_recovered"]
        assert receiver.bodies[1]["severity"] == "info" and receiver.bodies[1]["data"]["previous"] == "degraded"
        _rounds(w, 2)
        assert len(receiver.bodies) == 2
    finally:
        w.store.close()


def test_a_worse_state_is_announced_at_once_and_the_standby_is_announced_as_not_active(tmp_path, servers):
    primary, secondary, receiver = servers
    cfg = _config(tmp_path, primary.url, secondary.url, receiver.url)
    w = Watcher(cfg, emit=lambda *a: True)
    try:
        _rounds(w, 14)
        secondary.delay = 0.25
        _rounds(w, 3)
        [degraded] = receiver.bodies
        assert degraded["data"]["target"] == "secondary" and degraded["data"]["active"] is False
        assert "a failover to it now could land on a degraded region" in degraded["text"]
        secondary.close()  # now it does not answer at all: down is worse than degraded, so no cooldown
        res = _rounds(w, 2)[-1]
        assert res.assessments["secondary"].status == "down"
        assert [b["kind"] for b in receiver.bodies] == ["endpoint_degraded", "endpoint_down"]
        assert receiver.bodies[1]["data"]["previous"] == "degraded"
        _rounds(w, 2)
        assert len(receiver.bodies) == 2
    finally:
        w.store.close()


@pytest.mark.parametrize("entry, status, now, due", [
    ({}, "degraded", 100, "problem"),                                        # first problem
    ({}, "healthy", 100, None),                                              # nothing was said: nothing to recover
    ({}, "unknown", 100, None),
    ({"notified_status": "degraded", "notified_at": 0}, "degraded", 10_000, None),  # still the same open problem
    ({"notified_status": "degraded", "notified_at": 0}, "down", 1, "problem"),     # worse: at once
    ({"notified_status": "down", "notified_at": 0}, "degraded", 1, None),          # better is not news
    ({"notified_status": "degraded", "notified_at": 0}, "healthy", 1, "recovered"),
    ({"notified_status": "degraded", "notified_at": 0}, "unknown", 1, None),       # stale data says nothing
    # flapping: degraded again within the cooldown after a recovery notice stays quiet ...
    ({"notified_status": "healthy", "notified_at": 0, "notified_problem": "degraded"}, "degraded", 1799, None),
    # ... until the cooldown ends (if it persists), or unless it is worse than the last problem announced
    ({"notified_status": "healthy", "notified_at": 0, "notified_problem": "degraded"}, "degraded", 1800, "problem"),
    ({"notified_status": "healthy", "notified_at": 0, "notified_problem": "degraded"}, "down", 1, "problem"),
    ({"notified_status": "healthy", "notified_at": 0, "notified_problem": "down"}, "down", 1, None),
    ({"notified_status": "healthy", "notified_at": 0, "notified_problem": "degraded"}, "healthy", 1, None),
])
def test_notice_due(entry, status, now, due):
    assert notice_due(entry, status, now, cooldown=1800) == due
