"""The Caddy router's fallback to the verified standby, for real: Caddy on loopback in front of two `llmdr serve`
processes (the tiny model), clients sending completions through it while the primary's replica dies.

- armed (``steps.arm_fallback``: the standby answers and passes the golden set directly): a primary that stops or is
  killed costs clients nothing, its dial errors are retried on the standby, whose answers say so in X-Llmdr-Region;
- not armed (a standby whose answers fail the golden set, one that does not answer, or none checked since the last
  switch): clients get errors, never the unverified model's answers;
- a request the primary accepted but never answered (it stopped or crashed) is replayed on the standby
  (``router.replay_unanswered``, the default); without it only failed dials are.
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from llmdr.errors import UsageError
from llmdr.failover import steps as fo
from llmdr.failover.router.caddy import Caddy
from llmdr.serving import golden
from llmdr.serving.endpoint import OpenAIEndpoint
from llmdr.serving.tinymodel import write_demo_bundle
from tests.support.ports import free_port
from tests.support.serving import start_serve, stop_serve
from tests.test_router import write_config

BODY = json.dumps({"prompt": "how do I restore a snapshot ?", "max_tokens": 8, "temperature": 0}).encode()


def post(url: str, timeout: float = 10) -> tuple[int, str | None, str]:
    """One completion through ``url`` on a fresh connection: (status, X-Llmdr-Region, body); status 0: no answer."""
    req = urllib.request.Request(url + "/v1/completions", data=BODY, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - loopback
            return r.status, r.headers.get("X-Llmdr-Region"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("X-Llmdr-Region"), e.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as e:  # a response cut by the crash is an IncompleteRead
        return 0, None, f"{type(e).__name__}: {e}"


class Load(threading.Thread):
    """Completions through the router back to back, ``keepalive``: on one persistent connection (re-opened after an
    error), else a fresh connection each; every result is kept."""

    def __init__(self, url: str, *, keepalive: bool = False):
        super().__init__(daemon=True)
        self.url, self.keepalive = url, keepalive
        self.results: list[tuple[int, str | None, str]] = []
        self.stop = threading.Event()

    def _keepalive_post(self, conn: http.client.HTTPConnection) -> tuple[int, str | None, str]:
        conn.request("POST", "/v1/completions", body=BODY, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.getheader("X-Llmdr-Region"), r.read().decode(errors="replace")

    def run(self) -> None:
        host, port = self.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        while not self.stop.is_set():
            if not self.keepalive:
                self.results.append(post(self.url))
                continue
            try:
                self.results.append(self._keepalive_post(conn))
            except (OSError, http.client.HTTPException) as e:
                self.results.append((0, None, str(e)))
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.close()

    def failures(self) -> list[tuple[int, str | None, str]]:
        return [r for r in self.results if r[0] != 200]


def wrong_bundle(path: Path) -> Path:
    """The demo model with a generation limit of 3 tokens: it answers, but not the golden answers."""
    write_demo_bundle(path)
    gen = json.loads((path / "generation_config.json").read_text())
    (path / "generation_config.json").write_text(json.dumps(gen | {"max_new_tokens": 3}))
    return path


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    good = root / "good"
    write_demo_bundle(good)
    return {"good": good, "wrong": wrong_bundle(root / "wrong")}


@pytest.fixture
def make_stack(tmp_path, bundles):
    """``make_stack(standby="good"|"wrong")``: a primary and a secondary `llmdr serve`, Caddy sending traffic to
    the primary, the golden set recorded from the primary. Returns (config, router, {region: process})."""
    procs: dict[str, object] = {}
    routers: list[Caddy] = []

    def make(standby: str = "good"):
        procs["primary"], purl = start_serve(bundles["good"])
        procs["secondary"], surl = start_serve(bundles[standby])
        ports = {name: int(url.rsplit(":", 1)[1]) for name, url in (("primary", purl), ("secondary", surl))}
        cfg = write_config(tmp_path, router=f"{{kind: caddy, listen: 'http://127.0.0.1:{free_port()}', "
                                            f"admin: 'http://127.0.0.1:{free_port()}'}}", serving=ports)
        golden.record(golden.default_cases(), OpenAIEndpoint(purl).answer).save(cfg.golden_path)
        router = Caddy(cfg)
        routers.append(router)
        router.start("primary")
        return cfg, router, procs

    try:
        yield make
    finally:
        for r in routers:
            r.stop()
        for p in procs.values():
            stop_serve(p)


def kill(proc, sig: int) -> None:
    proc.send_signal(sig)
    proc.wait(timeout=15)


def run_load_through_outage(router: Caddy, proc, sig: int, *, keepalive: bool, before: float = 0.5,
                            after: float = 1.5) -> Load:
    load = Load(router.url, keepalive=keepalive)
    load.start()
    time.sleep(before)
    kill(proc, sig)
    time.sleep(after)
    load.stop.set()
    load.join(timeout=20)
    return load


@pytest.mark.parametrize("sig,keepalive", [(signal.SIGTERM, False), (signal.SIGKILL, False),
                                           (signal.SIGKILL, True)], ids=["stop", "kill", "kill-keepalive"])
def test_verified_standby_takes_failed_dials_without_client_errors(make_stack, sig, keepalive):
    cfg, router, procs = make_stack()
    armed = fo.arm_fallback(cfg)
    assert armed == {"fallback": "secondary", "region": "secondary", "why": None}
    assert router.fallback() == "secondary" and router.state().fallback == "secondary"
    assert router.fallback_record()["evidence"]["golden"]["passed"] == router.fallback_record()["evidence"][
        "golden"]["total"]
    load = run_load_through_outage(router, procs["primary"], sig, keepalive=keepalive)
    regions = [r[1] for r in load.results if r[0] == 200]
    # requests refused, reset or left unanswered by the primary were all answered by the standby: no 502. A crash
    # can still cut the one response it had begun sending (headers out, body not: nothing can be retried then)
    cut = [f for f in load.failures() if f[0] == 0 and "IncompleteRead" in f[2]]
    assert load.failures() == cut and len(cut) <= (0 if sig == signal.SIGTERM else 1), load.failures()[:3]
    assert "primary" in regions and "secondary" in regions, regions  # it moved, and says where answers come from
    # the record is unchanged: the router still selects the primary (the failover makes the switch formal)
    assert router.active() == "primary"


def test_an_unverified_standby_is_never_in_the_route(make_stack):
    cfg, router, procs = make_stack(standby="wrong")
    armed = fo.arm_fallback(cfg)
    assert armed["fallback"] is None and "fail the golden set" in armed["why"]
    assert router.fallback() is None and "not a verified standby" in router.fallback_record()["reason"]
    load = run_load_through_outage(router, procs["primary"], signal.SIGKILL, keepalive=False, after=1.0)
    after = load.results[-3:]
    assert all(r[0] == 502 for r in after), after  # errors, never the wrong model's answers
    assert not any(r[1] == "secondary" for r in load.results)


def test_a_fallback_written_by_hand_for_the_wrong_pair_is_not_used_and_a_switch_removes_it(make_stack):
    cfg, router, procs = make_stack()
    assert fo.arm_fallback(cfg)["fallback"] == "secondary"
    router.switch("secondary", reason="test")
    assert router.fallback() is None  # the switch removed it: the next standby must be verified again
    assert "switch primary -> secondary" in router.fallback_record()["reason"]
    router.fallback_path.write_text("secondary")  # the active region itself: no (secondary, secondary) branch
    assert router.fallback() is None
    router.fallback_path.write_text("tertiary")  # no serving: no branch either
    assert router.fallback() is None
    with pytest.raises(UsageError, match="receives the traffic now"):
        router.set_fallback("secondary", reason="test")
    with pytest.raises(UsageError, match="no serving"):
        router.set_fallback("tertiary", reason="test")
    router.switch("primary", reason="test")
    assert fo.arm_fallback(cfg)["fallback"] == "secondary"


def test_a_standby_that_does_not_answer_is_not_armed_and_its_fallback_is_removed(make_stack):
    cfg, router, procs = make_stack()
    assert fo.arm_fallback(cfg)["fallback"] == "secondary"
    kill(procs["secondary"], signal.SIGTERM)
    assert router.fallback() == "secondary"  # the router does not watch it: the next check removes it
    armed = fo.arm_fallback(cfg)
    assert armed["fallback"] is None and "does not answer" in armed["why"]
    assert router.fallback() is None


def test_a_primary_whose_dials_hang_is_given_up_for_the_standby(make_stack):
    """The primary's port accepts nothing (its accept queue is full: SYNs are dropped, a dial hangs, as when packets
    to a lost host are dropped): after the dial timeout the same request goes to the standby."""
    import socket

    cfg, router, procs = make_stack()
    assert fo.arm_fallback(cfg)["fallback"] == "secondary"
    port = cfg.region("primary").serving.url.rsplit(":", 1)[1]
    kill(procs["primary"], signal.SIGKILL)
    hung = socket.socket()
    hung.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the dead primary's connections linger in TIME_WAIT
    hung.bind(("127.0.0.1", int(port)))
    hung.listen(0)
    filler = socket.create_connection(("127.0.0.1", int(port)), timeout=5)  # fills the queue: next SYNs are dropped
    try:
        probe = socket.socket()
        probe.settimeout(0.5)
        with pytest.raises(TimeoutError):
            probe.connect(("127.0.0.1", int(port)))  # the premise: a dial to the primary hangs
        probe.close()
        results = [post(router.url, timeout=15) for _ in range(3)]
    finally:
        filler.close()
        hung.close()
    assert [(r[0], r[1]) for r in results] == [(200, "secondary")] * 3, results


def test_replay_unanswered_false_moves_only_failed_dials(tmp_path):
    """The config Caddy gets: with ``replay_unanswered: false`` a POST is retried only when its dial failed (Caddy's
    default, GET only for the rest) and no body is buffered."""
    ports = {"primary": free_port(), "secondary": free_port()}

    def pair_proxy(extra: str) -> dict:
        cfg = write_config(tmp_path, router=f"{{kind: caddy, listen: 'http://127.0.0.1:{free_port()}', admin: "
                                            f"'http://127.0.0.1:{free_port()}'{extra}}}", serving=ports)
        branches = Caddy(cfg)._route()["handle"][1]["routes"]
        pair = next(b for b in branches if b.get("@id") == "llmdr-region-primary+secondary")
        return next(h for h in pair["handle"] if h["handler"] == "reverse_proxy")

    on, off = pair_proxy(""), pair_proxy(", replay_unanswered: false")
    assert on["load_balancing"]["retry_match"] == [{"method": ["GET", "HEAD", "POST"]}] and on["request_buffers"] > 0
    assert "retry_match" not in off["load_balancing"] and "request_buffers" not in off
    assert [u["dial"] for u in off["upstreams"]] == [u["dial"] for u in on["upstreams"]]
