"""The failover and failback flows run in-process against real parts: the session's two SeaweedFS regions, a serving
replica per region restored from its own store, a Caddy router, a webhook receiver on loopback and the session's
Prefect server (artifacts). The whole automation chain (monitor -> event -> automation -> worker) is covered by
test_failover_e2e.py; here each decision of the flows is driven directly.

A "wrong" DR replica is a real one: a second bundle with other generation settings, snapshotted into the secondary
only and started there, so its answers really differ from the golden set. A DR replica that dies during the switch
is a real SIGKILL of its process, sent the moment the router's selection flips."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from prefect import flow
from prefect.transactions import transaction

from flows.failover import failback, failover
from llmdr.artifacts import failover_markdown, failover_table
from llmdr.errors import UsageError
from llmdr.failover import steps as fo
from llmdr.failover.router import open_router, router_log
from llmdr.repo import ops
from llmdr.serving import golden
from llmdr.serving.endpoint import OpenAIEndpoint
from llmdr.serving.replica import ready_marker, replica_status, start_replica, stop_replica
from llmdr.serving.tinymodel import write_demo_bundle
from tasks.failover import switch_router
from tests.support.config import make_config, make_served_config
from tests.support.loopback import Receiver
from tests.support.served import protect_demo, serve_with_golden, stopped_afterwards

pytestmark = pytest.mark.s3


# --- real parts -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def _served(stack, tmp: Path, receiver: Receiver, *, warm: bool = True):
    return make_served_config(stack, tmp, warm=warm,
                              extra=f'notifications: {{webhook_url: "{receiver.url}"}}')


@pytest.fixture(scope="module")
def shared(stack, tmp_path_factory, receiver):
    """One served stack for the tests that leave it as they found it: (config, snapshot id)."""
    cfg = _served(stack, tmp_path_factory.mktemp("failover"), receiver)
    with stopped_afterwards(cfg):
        sid = protect_demo(cfg)
        serve_with_golden(cfg)
        yield cfg, sid


@pytest.fixture
def served(shared):
    """The shared stack with traffic on the primary and both replicas up on the protected snapshot."""
    cfg, sid = shared
    for region in cfg.regions:
        start_replica(cfg, region, ref=sid)  # a no-op when it already runs that snapshot and answers
    open_router(cfg).switch("primary", reason="test reset")
    return cfg, sid


def _run(flow_fn, cfg, **kw) -> dict:
    return flow_fn(config_path=str(cfg.source_file), **kw)


def _last_record(cfg) -> fo.FailoverRecord:
    return fo.history(cfg)[-1]


def _artifacts(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    return asyncio.run(read())


def _artifact_of_run(key: str, flow_run_id: str) -> str:
    found = [a for a in _artifacts(key) if str(a.flow_run_id) == flow_run_id]
    assert found, f"no artifact {key} from flow run {flow_run_id}"
    return str(found[0].data)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- failover -----------------------------------------------------------------------------------------------------


def test_manual_failover_moves_traffic_to_the_verified_standby(prefect_harness, served, receiver):
    cfg, sid = served
    router = open_router(cfg)
    mark = len(receiver.requests)
    switches = len(router_log(cfg).history())

    out = _run(failover, cfg, to="secondary", trigger="manual", reason="planned switchover")

    assert out["ok"] and not out["noop"] and out["error"] is None, out
    assert (out["from_region"], out["to_region"], out["trigger"]) == ("primary", "secondary", "manual")
    assert out["confirmed"] is None, "a manual switchover does not probe for an outage"
    assert [s["name"] for s in out["steps"]] == ["ensure-replica", "golden-check", "switch-router",
                                                 "verify-through-router"]
    assert all(s["ok"] for s in out["steps"])
    assert "run start" in out["rto_basis"]
    assert out["rto_s"] == pytest.approx(out["verified_ts"] - out["started_ts"], abs=0.01)
    assert out["started_ts"] < out["switched_ts"] <= out["verified_ts"]
    assert out["replica"]["cold"] is False and out["replica"]["snapshot"] == sid
    assert out["golden_direct"]["ok"] and out["golden_router"]["ok"]
    assert out["golden_router"]["region"] == "secondary"

    assert router.active() == "secondary"
    assert fo.answering_region(router.url) == "secondary"
    [case] = golden.GoldenSet.load(cfg.golden_path).cases[:1]
    assert OpenAIEndpoint(router.url).answer(case) == case.expected
    [switch] = router_log(cfg).history()[switches:]
    assert (switch["previous"], switch["active"], switch["reason"]) == ("primary", "secondary", "planned switchover")

    assert receiver.kinds_since(mark) == ["failover"]
    notice = receiver.bodies[mark]
    assert notice["data"]["ok"] is True and notice["data"]["to_region"] == "secondary"
    assert notice["bundle"] == "testbundle" and notice["severity"] == "warning"

    rec = _last_record(cfg)
    assert rec.id == out["id"] and rec.ok and rec.kind == "failover"
    md = _artifact_of_run("failover-testbundle", out["flow_run_id"])
    assert "failover completed" in md and out["id"] in md and "verify-through-router" in md
    table = _artifacts("failover-testbundle-table")
    assert any(out["id"] in str(a.data) for a in table)

    # a second failover to the region that already has the traffic changes nothing
    again = _run(failover, cfg, to="secondary", trigger="manual")
    assert again["noop"] and again["ok"] and [s["name"] for s in again["steps"]] == ["already-active"]
    assert router.active() == "secondary"
    assert len(router_log(cfg).history()) == switches + 1
    assert receiver.kinds_since(mark) == ["failover"], "a no-op sends no notice"
    assert _last_record(cfg).id == again["id"] and _last_record(cfg).noop
    assert "No failover needed" in _artifact_of_run("failover-testbundle", again["flow_run_id"])


def test_automation_failover_needs_a_confirmed_outage(prefect_harness, served, receiver):
    cfg, _ = served
    router = open_router(cfg)
    mark = len(receiver.requests)
    switches = len(router_log(cfg).history())

    out = _run(failover, cfg, trigger="automation", reason="llmdr.endpoint.down (a blip)",
               first_failure_ts=time.time() - 2)

    assert out["noop"] and out["confirmed"] is False, out
    assert "primary answered" in out["error"]
    assert [(s["name"], s["ok"]) for s in out["steps"]] == [("confirm-outage", False)]
    assert out["switched_ts"] is None and out["rto_s"] is None and out["replica"] is None
    assert router.active() == "primary" and len(router_log(cfg).history()) == switches
    assert receiver.kinds_since(mark) == []
    assert _last_record(cfg).id == out["id"]


def test_automation_failover_on_a_real_outage_measures_rto_from_the_first_failed_probe(prefect_harness, served,
                                                                                      receiver):
    cfg, _ = served
    router = open_router(cfg)
    stop_replica(cfg, cfg.primary)
    assert not replica_status(cfg, cfg.primary).healthy
    first_failure = time.time() - 2
    detected = first_failure + 1

    out = _run(failover, cfg, trigger="automation", reason="llmdr.endpoint.down", first_failure_ts=first_failure,
               detected_at=_iso(detected))

    assert out["ok"] and not out["noop"] and out["confirmed"] is True, out
    assert [s["name"] for s in out["steps"]] == ["confirm-outage", "ensure-replica", "golden-check", "switch-router",
                                                 "verify-through-router"]
    assert router.active() == "secondary" and fo.answering_region(router.url) == "secondary"
    assert out["first_failure_ts"] == first_failure
    assert out["rto_s"] == pytest.approx(out["verified_ts"] - first_failure, abs=0.002)
    assert out["rto_s"] > 2
    assert "first failed probe" in out["rto_basis"]
    b = out["rto_breakdown"]
    assert set(b) == {"detection_s", "dispatch_s", "recovery_s", "automation_s", "pickup_s"}
    assert b["detection_s"] == pytest.approx(1.0, abs=0.002)
    assert b["dispatch_s"] == pytest.approx(out["started_ts"] - detected, abs=0.002)
    assert b["detection_s"] + b["dispatch_s"] + b["recovery_s"] == pytest.approx(out["rto_s"], abs=0.005)
    # dispatch splits into the run being scheduled and it starting (here the flow was called directly)
    assert b["automation_s"] + b["pickup_s"] == pytest.approx(b["dispatch_s"], abs=0.005)
    assert receiver.bodies[-1]["kind"] == "failover" and receiver.bodies[-1]["data"]["rto_s"] == out["rto_s"]
    md = _artifact_of_run("failover-testbundle", out["flow_run_id"])
    assert "detection 1.0 s" in md and "First failed probe" in md


def test_failover_refuses_a_standby_that_gives_wrong_answers(prefect_harness, served, receiver, tmp_path):
    """The DR copy is of the wrong model (other generation settings): traffic must not move."""
    cfg, sid = served
    secondary = cfg.region("secondary")
    router = open_router(cfg)
    wrong = tmp_path / "wrong-model"
    write_demo_bundle(wrong)
    gen = json.loads((wrong / "generation_config.json").read_text())
    gen["max_new_tokens"] = 3
    (wrong / "generation_config.json").write_text(json.dumps(gen))
    wrong_sid = ops.snapshot_bundle(cfg, region="secondary", path=wrong).snapshot_id
    mark = len(receiver.requests)
    switches = len(router_log(cfg).history())
    try:
        st = start_replica(cfg, secondary, ref=wrong_sid)
        assert st.healthy and st.snapshot == wrong_sid
        assert not fo.golden_check(cfg, secondary.serving.url).ok, "the wrong model must really answer differently"

        with pytest.raises(fo.FailoverError, match="wrong answers"):
            _run(failover, cfg, to="secondary", trigger="manual")

        assert router.active() == "primary" and fo.answering_region(router.url) == "primary"
        assert len(router_log(cfg).history()) == switches, "the router was never touched"
        rec = _last_record(cfg)
        assert rec.kind == "failover" and not rec.ok and not rec.noop and rec.switched_ts is None
        assert [(s.name, s.ok) for s in rec.steps] == [("ensure-replica", True), ("golden-check", False)]
        assert "wrong answers" in rec.error
        assert receiver.kinds_since(mark) == ["failover", "verification_failed"]
        assert receiver.bodies[mark]["data"]["ok"] is False and receiver.bodies[mark]["severity"] == "critical"
        assert receiver.bodies[mark + 1]["data"]["region"] == "secondary"
        md = _artifact_of_run("failover-testbundle", rec.flow_run_id)
        assert "failover FAILED" in md and "golden-check" in md
    finally:
        start_replica(cfg, secondary, ref=sid)


@flow(name="test-switch-then-fail")
def _switch_then_fail(config_path: str) -> None:
    """What _switch_and_verify does when the check through the router fails: switch inside a transaction, raise."""
    with transaction():
        switch_router(config_path, "secondary", "test switch", "primary")
        raise fo.FailoverError("verification through the router failed (test)")


def test_transaction_rollback_switches_the_router_back(prefect_harness, served):
    cfg, _ = served
    switches = len(router_log(cfg).history())

    with pytest.raises(fo.FailoverError, match="test"):
        _switch_then_fail(str(cfg.source_file))

    assert open_router(cfg).active() == "primary"
    assert fo.answering_region(cfg.router.url) == "primary"
    moves = [(h["previous"], h["active"]) for h in router_log(cfg).history()[switches:]]
    reasons = [h["reason"] for h in router_log(cfg).history()[switches:]]
    assert moves == [("primary", "secondary"), ("secondary", "primary")]
    assert reasons[0] == "test switch" and "rollback" in reasons[1]


def test_failover_rolls_back_when_the_standby_dies_during_the_switch(prefect_harness, served, receiver):
    """The standby passes the direct golden check, then crashes (SIGKILL) the moment the router points at it: the
    check through the router fails, and the transaction's rollback hook switches traffic back to the primary."""
    cfg, sid = served
    secondary = cfg.region("secondary")
    router = open_router(cfg)
    pid = replica_status(cfg, secondary).pid
    assert pid is not None
    selection = router.selection_path
    stop = threading.Event()
    killed: list[float] = []

    def kill_on_switch() -> None:
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                if selection.read_text().strip() == "secondary":
                    os.kill(pid, signal.SIGKILL)
                    killed.append(time.time())
                    return
            time.sleep(0.001)

    watcher = threading.Thread(target=kill_on_switch, daemon=True)
    switches = len(router_log(cfg).history())
    mark = len(receiver.requests)
    watcher.start()
    try:
        with pytest.raises(fo.FailoverError, match="not golden-correct"):
            _run(failover, cfg, to="secondary", trigger="manual")
    finally:
        stop.set()
        watcher.join(timeout=5)
    try:
        assert killed, "the standby was never killed: the router did not switch"
        assert router.active() == "primary" and fo.answering_region(router.url) == "primary"
        history = router_log(cfg).history()[switches:]
        assert [(h["previous"], h["active"]) for h in history] == [("primary", "secondary"), ("secondary", "primary")]
        assert "rollback" in history[1]["reason"]
        rec = _last_record(cfg)
        assert not rec.ok and rec.rolled_back and rec.switched_ts is not None and rec.verified_ts is None
        assert [(s.name, s.ok) for s in rec.steps] == [("ensure-replica", True), ("golden-check", True),
                                                       ("switch-router", True), ("verify-through-router", False)]
        assert receiver.kinds_since(mark)[:1] == ["failover"] and receiver.bodies[mark]["data"]["ok"] is False
        assert "verify-through-router FAILED" in receiver.bodies[mark]["data"]["details"]["steps"]
        md = _artifact_of_run("failover-testbundle", rec.flow_run_id)
        assert "failover FAILED" in md and "rolled back" in md
    finally:
        start_replica(cfg, secondary, ref=sid)


def test_failover_cold_starts_the_standby_from_the_dr_store(prefect_harness, stack, tmp_path, receiver):
    cfg = _served(stack, tmp_path, receiver, warm=False)
    with stopped_afterwards(cfg):
        dr_sid = protect_demo(cfg)
        # a newer snapshot in the primary only: a cold start that read the primary would run this one
        (cfg.bundle_path / "README.md").write_text("release notes\n")
        primary_sid = ops.snapshot_bundle(cfg).snapshot_id
        assert primary_sid != dr_sid
        serve_with_golden(cfg)
        secondary = cfg.region("secondary")
        assert not replica_status(cfg, secondary).healthy, "warm: false must leave the standby stopped"
        assert replica_status(cfg, cfg.primary).snapshot == primary_sid

        out = _run(failover, cfg, to="secondary", trigger="manual")

        assert out["ok"], out
        rep = out["replica"]
        assert rep["cold"] is True and rep["restore_s"] > 0 and rep["healthy"]
        assert rep["snapshot"] == dr_sid
        newest_in_dr = ops.open_repo(cfg, "secondary", read_only=True).snapshots(bundle="testbundle")[-1].id
        assert rep["snapshot"] == newest_in_dr
        model_dir = Path(rep["model_dir"])
        assert model_dir.parent == cfg.state_path / "replicas" / "secondary"
        marker = json.loads(ready_marker(model_dir).read_text())
        assert marker == {"snapshot": dr_sid, "region": "secondary"}
        assert not (model_dir / "README.md").exists()
        assert open_router(cfg).active() == "secondary"
        assert fo.answering_region(cfg.router.url) == "secondary"
        assert "cold start" in out["steps"][0]["detail"]
        md = _artifact_of_run("failover-testbundle", out["flow_run_id"])
        assert "cold start from the region's store" in md


# --- failback -----------------------------------------------------------------------------------------------------


def test_failback_copies_snapshots_taken_in_the_dr_region_back_first(prefect_harness, stack, tmp_path, receiver):
    cfg = _served(stack, tmp_path, receiver)
    with stopped_afterwards(cfg):
        protect_demo(cfg)
        serve_with_golden(cfg)
        assert _run(failover, cfg, to="secondary", trigger="manual")["ok"]
        # protected while failed over: the new snapshot lands in the secondary only
        (cfg.bundle_path / "README.md").write_text("changed while failed over\n")
        new_sid = ops.snapshot_bundle(cfg, region="secondary").snapshot_id
        before = fo.primary_data_current(cfg, source="secondary")
        assert not before["current"] and before["missing_in_primary"] == [new_sid]
        mark = len(receiver.requests)

        out = _run(failback, cfg, reason="primary repaired")

        assert out["ok"] and not out["noop"] and out["kind"] == "failback", out
        assert (out["from_region"], out["to_region"]) == ("secondary", "primary")
        assert [s["name"] for s in out["steps"]] == ["primary-data-current", "ensure-replica", "golden-check",
                                                     "switch-router", "verify-through-router"]
        assert "1 snapshot(s) copied back" in out["steps"][0]["detail"]
        assert out["replica"]["snapshot"] == new_sid
        assert (Path(out["replica"]["model_dir"]) / "README.md").read_text() == "changed while failed over\n"
        assert replica_status(cfg, cfg.primary).snapshot == new_sid
        after = fo.primary_data_current(cfg, source="secondary")
        assert after["current"] and after["primary_newest"] == new_sid
        assert open_router(cfg).active() == "primary" and fo.answering_region(cfg.router.url) == "primary"
        assert receiver.kinds_since(mark) == ["failback"] and receiver.bodies[mark]["data"]["ok"] is True
        assert [r.kind for r in fo.history(cfg)] == ["failover", "failback"]
        md = _artifact_of_run("failback-testbundle", out["flow_run_id"])
        assert "failback completed" in md

        again = _run(failback, cfg)
        assert again["noop"] and [s["name"] for s in again["steps"]] == ["already-active"]


# --- pure ---------------------------------------------------------------------------------------------------------


def _record(**kw) -> fo.FailoverRecord:
    rec = fo.FailoverRecord(kind="failover", bundle="bot", from_region="primary", to_region="secondary",
                            trigger="automation", reason="llmdr.endpoint.down", started_ts=1_700_000_010.0,
                            first_failure_ts=1_700_000_000.0, detected_ts=1_700_000_004.5, **kw)
    rec.step("confirm-outage", True, "2 direct probe(s) of primary")
    rec.step("ensure-replica", True, "warm standby on abcdef012345")
    return rec


def test_record_round_trips_through_json():
    rec = _record(replica={"cold": False, "snapshot": "ab" * 32}, confirmed=True)
    rec.switched_ts = 1_700_000_011.0
    rec.finish(1_700_000_012.25)
    data = json.loads(json.dumps(rec.to_json()))
    assert fo.FailoverRecord.from_json(data) == rec
    assert data["first_failure_utc"] == "2023-11-14T22:13:20.000Z" and data["rto_breakdown"] is not None


def test_rto_breakdown_sums_to_the_rto():
    rec = _record()
    assert rec.rto_breakdown() is None, "no breakdown before the run is verified"
    rec.finish(1_700_000_012.25)
    b = rec.rto_breakdown()
    assert b == {"detection_s": 4.5, "dispatch_s": 5.5, "recovery_s": 2.25}
    assert rec.rto_s == 12.25 == pytest.approx(sum(b.values()))
    assert "first failed probe" in rec.rto_basis

    manual = fo.FailoverRecord(kind="failover", bundle="bot", from_region="primary", to_region="secondary",
                               trigger="manual", reason="drill", started_ts=100.0)
    manual.finish(101.5)
    assert manual.rto_s == 1.5 and "run start" in manual.rto_basis and manual.rto_breakdown() is None


def test_failover_markdown_headlines():
    ok = _record()
    ok.finish(1_700_000_012.5)
    md = failover_markdown(ok.to_json())
    assert "**failover completed**: primary → **secondary**, RTO **12.5 s**" in md
    assert "detection 4.5 s" in md and "| confirm-outage |" in md

    failed = _record()
    failed.step("golden-check", False, "3/6 | cases pass")
    failed.error = "the replica in 'secondary' gives wrong answers"
    md = failover_markdown(failed.to_json())
    assert "**failover FAILED**: primary → secondary: the replica in 'secondary' gives wrong answers" in md
    assert "rolled back" not in md and "**FAILED** | 3/6 \\| cases pass |" in md
    failed.rolled_back = True
    assert "The router switch was rolled back." in failover_markdown(failed.to_json())

    noop = _record(noop=True, error="primary answered a direct probe: not an outage, traffic stays")
    assert "No failover needed: primary answered a direct probe" in failover_markdown(noop.to_json())
    rows = failover_table([ok.to_json(), failed.to_json(), noop.to_json()])
    assert [(r["ok"], r["noop"], r["rto_s"], r["rolled_back"]) for r in rows] == [
        (True, False, 12.5, False), (False, False, None, True), (False, True, None, False)]


def test_pick_target(tmp_path):
    bare = make_config(tmp_path, 9000, 9010, tmp_path / ".llmdr")  # regions without serving: sections
    with pytest.raises(UsageError, match="no serving: section"):
        fo.pick_target(bare, "secondary", "primary")
    with pytest.raises(UsageError, match="no secondary region with a serving"):
        fo.pick_target(bare, None, "primary")
    (tmp_path / "served").mkdir()
    served = make_served_config(bare, tmp_path / "served")  # only reads the regions' ports
    assert fo.pick_target(served, None, "primary").name == "secondary"
    assert fo.pick_target(served, "primary", "secondary").name == "primary"
    with pytest.raises(UsageError, match="no region named 'tertiary'"):
        fo.pick_target(served, "tertiary", "primary")
