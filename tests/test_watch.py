"""The monitoring loop against real replicas and a real Caddy router: status transitions become events (down once,
re-announced only for the active region, recovered), the last status survives a new watcher, `watch` counts rounds.

Replicas are stopped and started to make real outages; the monitor's samples and status are cleared before each
test. Settings (served_config): interval 0.2 s, timeout 1 s, down_after 2, recent_window 5."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from llmdr.devstack.serving import start_router, start_serving, stop_serving
from llmdr.failover import events, watch
from llmdr.failover.watch import Watcher, read_status
from llmdr.repo import ops
from llmdr.serving.replica import start_replica, stop_replica
from llmdr.serving.tinymodel import write_demo_bundle
from tests.support.config import make_served_config


class Capture:
    """Stands in for Prefect's event bus: keeps every (event, resource, payload) the watcher emits."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict, dict]] = []

    def __call__(self, event: str, resource: dict, payload: dict) -> bool:
        self.events.append((event, resource, payload))
        return True

    def of(self, target: str, event: str | None = None) -> list[tuple[str, dict, dict]]:
        return [e for e in self.events if e[1]["llmdr.region"] == target and (event is None or e[0] == event)]


@pytest.fixture(scope="module")
def deployment(stack, tmp_path_factory):
    """Both replicas (each from its own region's copy of one snapshot) and the Caddy router, for the module."""
    cfg = make_served_config(stack, tmp_path_factory.mktemp("watch"))
    write_demo_bundle(cfg.bundle_path)
    sid = ops.snapshot_bundle(cfg).snapshot_id
    ops.replicate(cfg, sid, to="secondary")
    try:
        assert all(n.started for n in start_serving(cfg))
        start_router(cfg)
        yield cfg
    finally:
        stop_serving(cfg, router=True)


@pytest.fixture
def cfg(deployment):
    """Both replicas running, no monitor history."""
    for r in deployment.regions:
        start_replica(deployment, r)
    shutil.rmtree(watch.store_path(deployment).parent, ignore_errors=True)
    return deployment


@pytest.fixture
def watchers(cfg):
    """Make watchers that emit into a Capture; their sample stores are closed after the test."""
    made = []

    def make(capture: Capture) -> Watcher:
        w = Watcher(cfg, emit=capture)
        made.append(w)
        return w

    yield make
    for w in made:
        w.store.close()


def rounds(w: Watcher, n: int):
    return [w.run_round() for _ in range(n)][-1]


def test_healthy_after_enough_rounds_and_no_events(cfg, watchers):
    cap = Capture()
    w = watchers(cap)
    first = w.run_round()
    assert {t: a.status for t, a in first.assessments.items()} == dict.fromkeys(("primary", "secondary", "router"),
                                                                                "unknown")
    last = rounds(w, cfg.monitor.recent_window - 1)
    assert {t: a.status for t, a in last.assessments.items()} == dict.fromkeys(("primary", "secondary", "router"),
                                                                               "healthy")
    assert last.active == "primary"
    router_sample = next(s for s in last.samples if s.target == "router")
    assert router_sample.ok and router_sample.region == "primary"  # Caddy's X-Llmdr-Region header
    assert cap.events == []
    st = read_status(cfg)
    assert {t: (e["status"], e["active"]) for t, e in st.items()} == {
        "primary": ("healthy", True), "secondary": ("healthy", False), "router": ("healthy", None)}


def test_active_region_down_is_announced_once(cfg, watchers):
    cap = Capture()
    w = watchers(cap)
    rounds(w, cfg.monitor.recent_window)
    t_stop = time.time()
    stop_replica(cfg, cfg.primary)
    for _ in range(cfg.monitor.down_after - 1):
        w.run_round()
    assert cap.of("primary", events.ENDPOINT_DOWN) == []
    res = w.run_round()
    assert res.assessments["primary"].status == "down"
    (event, resource, payload), = cap.of("primary", events.ENDPOINT_DOWN)
    assert resource["llmdr.active"] == "true"
    assert resource["prefect.resource.id"] == "llmdr.endpoint.testbundle.primary"
    assert resource["llmdr.url"] == cfg.primary.serving.url
    ev = payload["evidence"]
    assert t_stop <= ev["first_failure_ts"] <= time.time()
    assert ev["consecutive_failures"] == cfg.monitor.down_after
    assert ev["last_error"] == "connection refused"
    assert payload["active"] is True and payload["active_region"] == "primary"
    assert "probes failed" in payload["reason"] and "connection refused" in payload["reason"]
    assert {"event": event, "target": "primary", "sent": True, "reason": payload["reason"]} in res.emitted
    # the router answers 502 without an upstream: down too, but it is not a region (no llmdr.active label)
    (_, router_res, _), = cap.of("router", events.ENDPOINT_DOWN)
    assert "llmdr.active" not in router_res
    # still down: no second announcement within REANNOUNCE_S
    rounds(w, 5)
    assert len(cap.of("primary", events.ENDPOINT_DOWN)) == 1
    assert cap.of("secondary") == []


def test_down_active_region_is_reannounced(cfg, watchers, monkeypatch):
    monkeypatch.setattr(watch, "REANNOUNCE_S", 1.0)
    cap = Capture()
    w = watchers(cap)
    rounds(w, cfg.monitor.recent_window)
    stop_replica(cfg, cfg.primary)
    rounds(w, cfg.monitor.down_after)
    assert len(cap.of("primary", events.ENDPOINT_DOWN)) == 1
    first_emitted = read_status(cfg)["primary"]["emitted"]
    w.run_round()
    assert len(cap.of("primary", events.ENDPOINT_DOWN)) == 1  # not yet: less than REANNOUNCE_S since
    time.sleep(1.0)
    w.run_round()
    downs = cap.of("primary", events.ENDPOINT_DOWN)
    assert len(downs) == 2 and downs[1][1]["llmdr.active"] == "true"
    assert read_status(cfg)["primary"]["emitted"] > first_emitted
    # the first failure of the outage is still where it started
    assert downs[1][2]["evidence"]["first_failure_ts"] == downs[0][2]["evidence"]["first_failure_ts"]
    assert len(cap.of("router", events.ENDPOINT_DOWN)) == 1  # the router is not a region: never re-announced


def test_restarted_region_recovers(cfg, watchers):
    cap = Capture()
    w = watchers(cap)
    rounds(w, cfg.monitor.recent_window)
    stop_replica(cfg, cfg.primary)
    rounds(w, cfg.monitor.down_after)
    assert len(cap.of("primary", events.ENDPOINT_DOWN)) == 1
    start_replica(cfg, cfg.primary)
    # healthy again once the failures have left the recent window (until then: degraded, not announced)
    for _ in range(cfg.monitor.recent_window - 1):
        w.run_round()
        assert cap.of("primary", events.ENDPOINT_RECOVERED) == []
    res = w.run_round()
    assert res.assessments["primary"].status == "healthy"
    (_, resource, payload), = cap.of("primary", events.ENDPOINT_RECOVERED)
    assert resource["llmdr.active"] == "true" and payload["reason"] == "healthy"
    assert len(cap.of("router", events.ENDPOINT_RECOVERED)) == 1
    assert [e[0] for e in cap.of("primary")].count(events.ENDPOINT_DOWN) == 1
    assert read_status(cfg)["primary"]["status"] == "healthy"


def test_down_secondary_is_announced_as_not_active_and_not_reannounced(cfg, watchers, monkeypatch):
    monkeypatch.setattr(watch, "REANNOUNCE_S", 0.0)
    cap = Capture()
    w = watchers(cap)
    rounds(w, cfg.monitor.recent_window)
    stop_replica(cfg, cfg.secondaries[0])
    rounds(w, cfg.monitor.down_after + 3)
    (_, resource, payload), = cap.of("secondary", events.ENDPOINT_DOWN)
    assert resource["llmdr.active"] == "false" and payload["active"] is False
    assert payload["active_region"] == "primary"
    # traffic still reaches the primary: neither it nor the router is affected
    assert cap.of("primary") == [] and cap.of("router") == []


def test_status_survives_a_new_watcher(cfg, watchers):
    cap = Capture()
    w = watchers(cap)
    rounds(w, cfg.monitor.recent_window)
    stop_replica(cfg, cfg.primary)
    rounds(w, cfg.monitor.down_after)
    assert len(cap.of("primary", events.ENDPOINT_DOWN)) == 1
    saved = json.loads((watch.store_path(cfg).parent / "status.json").read_text())
    assert saved["primary"]["status"] == "down" and saved["primary"]["emitted"] > 0
    # a new monitor run (e.g. the next scheduled flow run) sees the same outage: nothing new to announce
    cap2 = Capture()
    w2 = watchers(cap2)
    assert w2.status == saved
    res = rounds(w2, 3)
    assert res.assessments["primary"].status == "down" and cap2.events == []
    assert read_status(cfg)["primary"]["since"] == saved["primary"]["since"]


def test_watch_runs_the_requested_rounds(cfg, watchers):
    seen = []
    summary = watch.watch(cfg, rounds=3, on_round=seen.append)
    assert summary.rounds == 3 and len(seen) == 3 and summary.last is seen[-1]
    assert summary.emitted == []
    assert set(summary.last.assessments) == {"primary", "secondary", "router"}
    w = watchers(Capture())
    frame = w.store.frame()
    assert frame.groupby("target").size().to_dict() == {"primary": 3, "secondary": 3, "router": 3}
    assert frame["ok"].all()
    assert summary.to_json()["rounds"] == 3
