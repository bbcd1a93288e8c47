"""Warnings that reach people (#19 item 3): a degraded endpoint is announced with its evidence to a real webhook
receiver on loopback, rate-limited per endpoint; and the pre-warm of the DR standby on degraded of the active region
(the decision, the automation spec).

The latency creep is a real one: a small OpenAI-compatible server on loopback answers fast for a baseline, then
slowly; the watcher probes it for real and judges it with the real SampleStore and assess."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from llmdr.config import parse_config
from llmdr.failover.watch import Watcher, notice_due, read_status
from tests.support.loopback import Loopback, Quiet, Receiver


class Endpoint(Loopback):
    """A tiny OpenAI-compatible completions server whose answer delay can be changed while it runs."""

    def __init__(self) -> None:
        self.delay = 0.0
        outer = self

        class Handler(Quiet):
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

        super().__init__(Handler)


@pytest.fixture
def servers():
    made = [Endpoint(), Endpoint(), Receiver()]
    yield made
    for s in made:
        s.close()


def _config(tmp_path: Path, primary: str, secondary: str, webhook: str, cooldown: str = "30m", bundle: str = "warnbot"):
    text = f"""version: 1
bundle: {{name: {bundle}, path: bundle}}
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


# -- pre-warm the DR standby on degraded ---------------------------------------------------------------------------


@pytest.mark.parametrize("degraded, target, active, enabled, answers, startable, why", [
    ("primary", "secondary", "primary", True, False, True, None),              # start it
    ("primary", "secondary", None, True, False, True, None),                   # router cannot say: harmless, start
    ("primary", "secondary", "primary", False, False, True, "prewarm_on_degraded is false"),
    ("primary", "secondary", "secondary", True, False, True, "does not serve the traffic now"),  # already failed over
    ("secondary", "secondary", "secondary", True, False, True, "is the degraded region itself"),
    ("primary", "secondary", "primary", True, True, True, "already warm"),     # a no-op
    ("primary", "secondary", "primary", True, True, False, "already warm"),    # someone else's server that answers
    ("primary", "secondary", "primary", True, False, False, "cannot start a replica in secondary"),
])
def test_why_not_prewarm(degraded, target, active, enabled, answers, startable, why):
    from llmdr.failover.standby import why_not_prewarm

    got = why_not_prewarm(degraded, target, active=active, enabled=enabled, answers=answers, startable=startable)
    assert (got is None) if why is None else (why in got)


def _automations():
    import importlib.util

    import yaml

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("llmdr_deploy_automations_w", root / "deployments" / "automations.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, yaml.safe_load((root / "deployments" / "automations.yaml").read_text())


def _matches(s: dict, event: str, resource: dict) -> bool:
    from fnmatch import fnmatchcase

    return event in s["trigger"]["expect"] and all(fnmatchcase(resource.get(k, ""), v)
                                                   for k, v in s["trigger"]["match"].items())


def test_the_prewarm_automation_runs_on_degraded_of_the_active_region_only():
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate

    from flows.prewarm_standby import prewarm_standby
    from llmdr.failover.events import ENDPOINT_DEGRADED, ENDPOINT_DOWN, endpoint_resource

    auto, spec = _automations()
    specs = {s["name"]: s for s in auto.automation_specs(spec, None, True, True)}
    failover, prewarm = specs[auto.FAILOVER], specs[auto.PREWARM]
    assert prewarm["enabled"] and failover["enabled"]
    active = endpoint_resource("bot", "primary", active=True, url="http://127.0.0.1:1")
    standby = endpoint_resource("bot", "secondary", active=False, url="http://127.0.0.1:2")
    assert _matches(prewarm, ENDPOINT_DEGRADED, active) and not _matches(prewarm, ENDPOINT_DEGRADED, standby)
    assert not _matches(prewarm, ENDPOINT_DOWN, active) and not _matches(failover, ENDPOINT_DEGRADED, active)
    [act] = prewarm["actions"]
    assert act["deployment"] == "prewarm-standby/prewarm-standby"
    # what the automation passes is what the flow accepts (the templates render to text)
    validate({k: "x" for k in act["parameters"]}, parameter_schema(prewarm_standby.fn).model_dump_for_openapi(),
             raise_on_error=True)
    assert act["parameters"]["region"]["template"] == "{{ event.resource.get('llmdr.region') }}"
    # failover.prewarm_on_degraded: false turns this one off and leaves the failover one alone, and the reverse
    off = {s["name"]: s for s in auto.automation_specs(spec, None, True, False)}
    assert not off[auto.PREWARM]["enabled"] and off[auto.FAILOVER]["enabled"]
    off = {s["name"]: s for s in auto.automation_specs(spec, None, False, True)}
    assert off[auto.PREWARM]["enabled"] and not off[auto.FAILOVER]["enabled"]


def test_each_bundle_gets_its_own_prewarm_automation():
    from llmdr.failover.events import ENDPOINT_DEGRADED, endpoint_resource

    auto, spec = _automations()
    specs = {s["name"]: s for s in auto.automation_specs(spec, {"alpha": True, "beta": True}, True,
                                                         {"alpha": True, "beta": False})}
    a, b = specs[f"{auto.PREWARM}-alpha"], specs[f"{auto.PREWARM}-beta"]
    assert a["enabled"] and not b["enabled"]
    assert specs[f"{auto.FAILOVER}-beta"]["enabled"]  # beta's failover is its own setting
    [act] = a["actions"]
    assert act["deployment"] == "prewarm-standby/prewarm-standby-alpha" and act["parameters"]["bundle"] == "alpha"
    a_deg = endpoint_resource("alpha", "primary", active=True, url="http://127.0.0.1:1")
    b_deg = endpoint_resource("beta", "primary", active=True, url="http://127.0.0.1:2")
    assert _matches(a, ENDPOINT_DEGRADED, a_deg) and not _matches(a, ENDPOINT_DEGRADED, b_deg)
    # a removed bundle's pre-warm automation, and the single one after a switch to bundles:, are deleted
    assert auto.stale_failover_automations([auto.PREWARM, f"{auto.PREWARM}-gamma", f"{auto.PREWARM}-alpha",
                                            "someone-elses"], list(specs)) == [auto.PREWARM, f"{auto.PREWARM}-gamma"]


def test_prewarm_starts_the_standby_from_its_own_store_once(prefect_harness, served_config):
    """The flow for real: the standby (not running) is restored from the secondary's store and started, and
    answers; a second run is a no-op; a degraded standby region, or the setting off, starts nothing."""
    from flows.prewarm_standby import prewarm_standby
    from llmdr.devstack.serving import start_router
    from llmdr.failover.standby import prewarm_standby as core
    from llmdr.repo import ops
    from llmdr.serving.replica import replica_status, start_replica
    from llmdr.serving.tinymodel import write_demo_bundle

    cfg = served_config
    write_demo_bundle(cfg.bundle_path)
    sid = ops.snapshot_bundle(cfg).snapshot_id
    ops.replicate(cfg, sid, to="secondary")
    start_replica(cfg, cfg.primary)
    start_router(cfg)
    sec = cfg.region("secondary")
    assert not replica_status(cfg, sec).healthy

    out = prewarm_standby(region="primary", reason="latency creep", trigger="automation",
                          config_path=str(cfg.source_file))
    st = replica_status(cfg, sec)
    assert out["started"] and out["answers"] and out["snapshot"] == sid and st.healthy and st.snapshot == sid
    assert "/replicas/secondary/" in json.loads((cfg.state_path / "replicas" / "secondary" / "replica.json")
                                                .read_text())["model_dir"]
    again = core(cfg, "primary")
    assert not again.started and again.why == "already warm: it answers" and again.answers
    assert replica_status(cfg, sec).pid == st.pid
    assert "does not serve the traffic now" in core(cfg, "secondary").why
    # a cold standby started by the pre-warm and by a failover at once (degraded comes one probe before down):
    # the two starts run one after the other, and the second finds the first's replica answering
    from concurrent.futures import ThreadPoolExecutor

    from llmdr.serving.replica import ensure_replica, stop_replica

    stop_replica(cfg, sec)
    shutil.rmtree(cfg.state_path / "replicas" / "secondary", ignore_errors=True)  # cold: restore again
    with ThreadPoolExecutor(2) as pool:
        warmed = pool.submit(core, cfg, "primary")
        failover = pool.submit(ensure_replica, cfg, sec)
        pre, fo = warmed.result(), failover.result()
    st = replica_status(cfg, sec)
    assert pre.answers and fo.healthy and st.healthy and fo.pid == st.pid, (pre, fo, st)
    cfg.failover.prewarm_on_degraded = False
    assert core(cfg, "primary").why == "failover.prewarm_on_degraded is false"


def _on_server(client, wanted: dict):
    """The pre-warm automation WANTED (an automation_specs entry) on the harness's Prefect server, with the
    deployment it runs on the DR region's pool (no worker: the run's creation is what is tested); returns
    (deployment id, automation)."""
    from prefect.automations import Automation
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    try:
        client.create_work_pool(WorkPoolCreate(name="llmdr-secondary", type="process"))
    except ObjectAlreadyExists:
        pass
    flow_name, dep_name = wanted["actions"][0]["deployment"].split("/")
    dep_id = client.create_deployment(client.create_flow_from_name(flow_name), dep_name,
                                      work_pool_name="llmdr-secondary",
                                      entrypoint="flows/prewarm_standby.py:prewarm_standby")
    action = {k: v for k, v in wanted["actions"][0].items() if k != "deployment"} | {"deployment_id": str(dep_id)}
    return dep_id, Automation.model_validate(wanted | {"actions": [action]}).create()


def test_a_latency_creep_runs_the_prewarm_deployment_through_a_real_prefect_server(tmp_path, servers,
                                                                                    prefect_harness):
    """The whole chain on the harness's Prefect server: a real latency creep of the active region → the watcher's
    llmdr.endpoint.degraded event → the pre-warm automation of automations.yaml (this bundle's copy) → a run of the
    prewarm-standby deployment with the region and the reason (no worker here: the run itself is tested above)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    primary, secondary, receiver = servers
    bundle = f"warn{tmp_path.name[-12:].replace('_', '').lower()}"  # its own events only: the server is shared
    cfg = _config(tmp_path, primary.url, secondary.url, receiver.url, bundle=bundle)
    auto, spec = _automations()
    [wanted] = [s for s in auto.automation_specs(spec, {bundle: True}, True, {bundle: True})
                if s["name"] == f"{auto.PREWARM}-{bundle}"]
    with get_client(sync_client=True) as client:
        dep_id, made = _on_server(client, wanted)
        w = Watcher(cfg)  # events go to the harness's server for real
        try:
            _rounds(w, 14)
            primary.delay = 0.25
            done = _rounds(w, 3)
            assert done[-1].assessments["primary"].status == "degraded"
            assert [(e["event"], e["sent"]) for r in done for e in r.emitted] == [("llmdr.endpoint.degraded", True)]
            runs = []
            for _ in range(240):
                runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id])))
                if runs:
                    break
                time.sleep(0.25)
            [run] = runs
            assert run.parameters["region"] == "primary" and run.parameters["bundle"] == bundle
            assert run.parameters["trigger"] == "automation" and "latency median" in run.parameters["reason"]
            # the secondary degrading (not the active region) does not pre-warm anything
            secondary.delay = 0.25
            done = _rounds(w, 4)
            assert [(e["event"], e["target"], e["sent"]) for r in done for e in r.emitted] == [
                ("llmdr.endpoint.degraded", "secondary", True)]
            time.sleep(2)  # an automation acts 0.4-0.6 s after the event here (PLATFORM.md): 2 s is ample
            assert len(client.read_flow_runs(deployment_filter=DeploymentFilter(
                id=DeploymentFilterId(any_=[dep_id])))) == 1
        finally:
            w.store.close()
            client.delete_automation(made.id)


def test_a_gpu_of_the_active_region_degrading_runs_the_prewarm_deployment_through_a_real_prefect_server(
        tmp_path, prefect_harness):
    """llmdr.hardware.degraded of a GPU in the active region (the event the watcher emits, test_hardware.py) → the GPU
    pre-warm automation of automations.yaml (this bundle's copy) → one prewarm-standby run with the region and the
    GPU's reason; a GPU of the standby region, or another bundle's GPU, runs nothing."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from llmdr.failover import events

    bundle = f"gpu{tmp_path.name[-12:].replace('_', '').lower()}"
    auto, spec = _automations()
    specs = {s["name"]: s for s in auto.automation_specs(spec, {bundle: True}, True, {bundle: True})}
    wanted = specs[f"{auto.PREWARM_GPU}-{bundle}"]
    assert wanted["enabled"] and wanted["trigger"]["match"]["prefect.resource.id"] == f"llmdr.hardware.{bundle}.*"
    off = {s["name"]: s for s in auto.automation_specs(spec, {bundle: True}, True, {bundle: False})}
    assert not off[f"{auto.PREWARM_GPU}-{bundle}"]["enabled"]  # failover.prewarm_on_degraded: false
    with get_client(sync_client=True) as client:
        dep_id, made = _on_server(client, wanted)
        try:
            time.sleep(1)  # the automation is loaded by the server's triggers service before the event
            payload = {"region": "primary", "gpu": "GPU-1", "status": "degraded",
                       "reason": "temperature 79 C rising 6 C/h: 82 C in ~30 min"}

            def runs():
                return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id])))

            # not the active region's GPU, and another bundle's GPU: nothing
            assert events.emit(events.HARDWARE_DEGRADED, events.hardware_resource(
                bundle, "secondary", "GPU-2", name=None, index=1, active=False), payload | {"region": "secondary"})
            assert events.emit(events.HARDWARE_DEGRADED, events.hardware_resource(
                bundle + "x", "primary", "GPU-3", name=None, index=0, active=True), payload)
            assert events.emit(events.HARDWARE_DEGRADED, events.hardware_resource(
                bundle, "primary", "GPU-1", name="NVIDIA H100", index=0, active=True), payload)
            found = []
            for _ in range(240):
                if found := runs():
                    break
                time.sleep(0.25)
            time.sleep(2)  # an automation acts 0.4-0.6 s after the event here (PLATFORM.md): 2 s is ample
            [run] = runs()
            assert found and run.parameters["region"] == "primary" and run.parameters["bundle"] == bundle
            assert run.parameters["trigger"] == "automation"
            assert run.parameters["reason"] == "GPU GPU-1: temperature 79 C rising 6 C/h: 82 C in ~30 min"
        finally:
            client.delete_automation(made.id)


# -- drift on real traffic -----------------------------------------------------------------------------------------

VOCAB = [f"w{i}" for i in range(3000)]
ZIPF = [1 / (i + 1) for i in range(3000)]
REFUSAL = "I'm sorry, but I cannot help with that request as it goes against my guidelines."


def _answer(rng, vocab=VOCAB) -> str:
    return " ".join(rng.choices(vocab, ZIPF, k=max(1, int(rng.gauss(20, 5)))))


def _fill(store, target: str, texts: list[str], settings, salt: bytes, t0: float) -> None:
    from llmdr.failover.drift import features

    for i, text in enumerate(texts):
        store.add(t0 + i, target, features(text, settings, salt))


@pytest.mark.parametrize("seed", range(5))
def test_drift_is_quiet_on_the_same_traffic_and_sees_refusals_and_a_new_vocabulary(seed):
    import random

    from llmdr.config import Drift
    from llmdr.failover.drift import assess_drift, features

    rng, s, salt = random.Random(seed), Drift(), b"s" * 16
    base = [features(_answer(rng), s, salt) for _ in range(500)]
    same = assess_drift("primary", base + [features(_answer(rng), s, salt) for _ in range(100)], s)
    assert same.status == "normal" and same.reasons == [], same.evidence
    refusing = assess_drift("primary", base + [features(REFUSAL if rng.random() < 0.3 else _answer(rng), s, salt)
                                               for _ in range(100)], s)
    assert refusing.status == "drift" and any("refusals rose" in r for r in refusing.reasons)
    shifted = VOCAB[50:] + VOCAB[:50]  # another model: the same kind of words, used at other rates
    new = assess_drift("primary", base + [features(_answer(rng, shifted) if rng.random() < 0.5 else _answer(rng),
                                                   s, salt) for _ in range(100)], s)
    assert new.status == "drift" and any("vocabulary shifted" in r for r in new.reasons), new.evidence
    short = assess_drift("primary", base + [features("ok " * 2, s, salt) for _ in range(100)], s)
    assert any("answer length median 2 " in r and "below" in r for r in short.reasons)
    assert assess_drift("primary", base[:250], s).status == "unknown"


def test_what_is_kept_is_counts_not_text(tmp_path):
    from llmdr.config import Drift
    from llmdr.failover.drift import DriftStore, features, load_salt

    salt = load_salt(tmp_path / "drift-salt")
    assert load_salt(tmp_path / "drift-salt") == salt and (tmp_path / "drift-salt").stat().st_mode & 0o777 == 0o600
    store = DriftStore(tmp_path / "drift.sqlite")
    store.add(1.0, "primary", features("The patient's secret diagnosis is Zebrafish syndrome", Drift(), salt))
    store.close()
    raw = (tmp_path / "drift.sqlite").read_bytes()
    for word in (b"patient", b"secret", b"diagnosis", b"Zebrafish", b"zebrafish", b"syndrome"):
        assert word not in raw
    assert features("I'm sorry, I can't do that", Drift(), salt).refusal
    assert not features("Sure: here it is", Drift(), salt).refusal


def test_drift_becomes_an_event_and_one_notice_at_a_real_receiver(tmp_path, servers):
    import random

    from llmdr.config import Drift
    from llmdr.failover.drift import DriftStore, drift_path, load_salt

    primary, secondary, receiver = servers
    cfg = _config(tmp_path, primary.url, secondary.url, receiver.url)
    cfg.monitor.drift = Drift(sample=1.0)
    settings, rng = cfg.monitor.drift, random.Random(7)
    salt = load_salt(drift_path(cfg).parent / "drift-salt")
    store = DriftStore(drift_path(cfg))
    _fill(store, "primary", [_answer(rng) for _ in range(600)], settings, salt, 1000.0)
    emitted: list[tuple] = []
    w = Watcher(cfg, emit=lambda *a: emitted.append(a) or True)
    try:
        res = w.run_round()
        assert res.drift["primary"].status == "normal" and receiver.bodies == [] and emitted == []
        _fill(store, "primary", [REFUSAL if rng.random() < 0.4 else _answer(rng) for _ in range(100)], settings,
              salt, 2000.0)
        res = w.run_round()
        assert res.drift["primary"].status == "drift"
        [(event, resource, payload)] = emitted
        assert event == "llmdr.endpoint.drift" and resource["llmdr.region"] == "primary"
        assert payload["evidence"]["refusals"]["recent_rate"] >= 0.3 and payload["active"] is True
        [notice] = receiver.bodies
        assert notice["kind"] == "endpoint_drift" and notice["data"]["refusals"]["recent_count"] >= 3
        assert "no answer text is kept" in notice["text"]
        _rounds(w, 2)  # still drifting: nothing new
        assert len(emitted) == 1 and len(receiver.bodies) == 1
        _fill(store, "primary", [_answer(rng) for _ in range(100)], settings, salt, 3000.0)
        assert w.run_round().drift["primary"].status == "normal"
        assert [b["kind"] for b in receiver.bodies] == ["endpoint_drift"] * 2
        assert receiver.bodies[1]["severity"] == "info" and len(emitted) == 1
    finally:
        w.store.close()
        store.close()


def test_llmdr_serve_tees_a_share_of_its_answers_as_counts(tmp_path):
    """The tee for real: `llmdr serve` started the way `llmdr replica start` starts it with monitor.drift set
    (command_for), answers through the OpenAI API, and the monitor's drift store holds one row per answer (sample 1),
    without the answers' words."""
    import subprocess
    import urllib.request

    from llmdr.config import Drift
    from llmdr.failover.drift import DriftStore, drift_path
    from llmdr.serving.replica import command_for
    from llmdr.serving.tinymodel import write_demo_bundle
    from tests.support.ports import free_port

    port = free_port()
    cfg = _config(tmp_path, f"http://127.0.0.1:{port}", "http://127.0.0.1:9", "http://127.0.0.1:9/hook")
    text = (tmp_path / "llmdr.yaml").read_text().replace("golden_every: 0,", "golden_every: 0, drift: {sample: 1},")
    text = text.replace("    serving: {url: 'http", "    local: {enabled: true}\n    serving: {url: 'http", 1)  # llmdr serve
    (tmp_path / "llmdr.yaml").write_text(text)
    cfg = parse_config(text, source=tmp_path / "llmdr.yaml")
    assert cfg.monitor.drift == Drift(sample=1)
    write_demo_bundle(tmp_path / "model")
    argv = command_for(cfg, cfg.primary, tmp_path / "model")
    assert argv[-4:] == ["--drift-config", str(tmp_path / "llmdr.yaml"), "--drift-target", "primary"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        answers = []
        for _ in range(60):
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", method="POST", data=json.dumps(
                    {"prompt": "the cat", "max_tokens": 6, "temperature": 0}).encode(),
                    headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=5) as resp:
                    answers.append(json.loads(resp.read())["choices"][0]["text"])
                if len(answers) == 3:
                    break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                time.sleep(0.25)
        assert len(answers) == 3
        # a streamed answer is seen too, once its choice finished
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", method="POST", data=json.dumps(
            {"prompt": "the river", "max_tokens": 6, "temperature": 0, "stream": True}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            events = [ln[6:] for ln in resp.read().decode().splitlines() if ln.startswith("data: ")]
        assert events[-1] == "[DONE]"
        answers.append("".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]))
        store = DriftStore(drift_path(cfg))
        rows = store.newest("primary", 10)
        store.close()
        assert len(rows) == 4 and all(r.length > 0 and r.buckets for r in rows)
        raw = b"".join(p.read_bytes() for p in drift_path(cfg).parent.glob("drift.sqlite*"))
        words = {w for a in answers for w in a.split() if len(w) >= 4}
        assert words and not any(w.encode() in raw for w in words)
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_a_standby_that_does_not_answer_and_cannot_be_started_fails_the_prewarm(tmp_path):
    from llmdr.failover.standby import prewarm_standby

    cfg = _config(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:7", "http://127.0.0.1:9/hook")  # nobody there
    out = prewarm_standby(cfg, "primary")
    assert not out.ok and out.answers is False and "cannot start a replica in secondary" in out.detail
    cfg.failover.prewarm_on_degraded = False  # switched off: nothing to report
    assert prewarm_standby(cfg, "primary").ok
    with pytest.raises(Exception, match="no region named 'nowhere'"):
        prewarm_standby(cfg, "nowhere")
