"""Readiness check ``automation``: the failover of an outage must not depend on the region that is out.

The judge on hand-made API answers, then the whole check against a real Prefect server (the suite's harness): an
automation, a failover deployment, its pool and queue, and a queue nobody polls (FAIL), then polled (PASS), then the
deployment moved to the primary region's pool (FAIL)."""

from __future__ import annotations

import copy
import time

import pytest

from llmdr.config import parse_config
from llmdr.drill.readiness import automation as ra
from tests.support.config import two_region_yaml


def _cfg(tmp_path, extra: str = ""):
    text = two_region_yaml(19001, 19021, local=True, extra=extra, state_dir=tmp_path / ".llmdr")
    (tmp_path / "llmdr.yaml").write_text(text)
    return parse_config(text, source=tmp_path / "llmdr.yaml")


def _auto(name="llmdr-failover-when-active-region-down", *, enabled=True, match=None, **dep):
    d = {"id": "d1", "name": "failover", "flow": "failover", "paused": False, "bundle": None,
         "pool": "llmdr-secondary", "queue": "failover", "queue_status": "READY", "queue_paused": False,
         "last_polled": 3.0} | dep  # seconds before the judge's "now" (made absolute in the test)
    return {"name": name, "enabled": enabled, "expect": ["llmdr.endpoint.down"],
            "match": match if match is not None else {"prefect.resource.id": "llmdr.endpoint.*", "llmdr.active": "true"},
            "deployments": [d]}


@pytest.mark.parametrize("automations, status, words", [
    ([_auto()], "PASS", "llmdr-secondary/failover, polled 3s ago"),
    ([], "FAIL", "no automation"),
    ([_auto(enabled=False)], "FAIL", "is disabled"),
    ([_auto(queue_status="NOT_READY", last_polled=None)], "FAIL", "nothing serves llmdr-secondary/failover "
                                                                  "(NOT_READY, never polled)"),
    ([_auto(queue_status="NOT_READY", last_polled=600.0)], "FAIL", "last polled 10m"),
    ([_auto(queue_paused=True)], "FAIL", "paused"),
    ([_auto(pool="llmdr-primary")], "FAIL", "the primary region's pool"),
    ([_auto(missing=True)], "FAIL", "no longer exists"),
    ([_auto(paused=True)], "WARN", "(deployment paused)"),
    # another bundle's automation does not count for this one
    ([_auto(match={"prefect.resource.id": "llmdr.endpoint.other.*"})], "FAIL", "no automation"),
    # one working path and one broken: worth a look, not a failure
    ([_auto(), _auto("old", pool="llmdr-primary")], "WARN", "but old"),
], ids=["ok", "missing", "disabled", "never-polled", "polled-long-ago", "queue-paused", "primary-pool",
        "deployment-gone", "deployment-paused", "other-bundle", "one-of-two"])
def test_the_judge(tmp_path, automations, status, words):
    cfg = _cfg(tmp_path)
    now = time.time()
    automations = copy.deepcopy(automations)
    for a in automations:  # the table was built at collection: its poll ages count from now, not from then
        for d in a["deployments"]:
            if d.get("last_polled") is not None:
                d["last_polled"] = now - d["last_polled"]
    c = ra.judge(cfg, automations, now, "http://127.0.0.1:1/api")
    assert c.status == status and words in c.summary, c
    assert (c.action != "") == (status != "PASS")


def test_manual_failover_passes_and_no_api_warns(tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):  # no profile setting either (nor the harness's)
        c = ra.check_automation(_cfg(tmp_path), time.time())
    assert c.status == "WARN" and "not checked" in c.summary and "PREFECT_API_URL" in c.action
    manual = _cfg(tmp_path, "failover: {auto: false}")
    assert ra.check_automation(manual, time.time()).status == "PASS"
    assert ra.judge(manual, [], time.time(), "x").status == "PASS"


def test_an_api_that_does_not_answer_fails(tmp_path, monkeypatch):
    from tests.support.ports import free_port

    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{free_port()}/api")
    c = ra.check_automation(_cfg(tmp_path), time.time())
    assert c.status == "FAIL" and "did not answer" in c.summary and "start the Prefect server" in c.action


def test_against_a_real_prefect_server(tmp_path, prefect_harness):
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate, WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.settings import PREFECT_API_URL

    from llmdr.drill import readiness as rd

    cfg = _cfg(tmp_path)
    api = PREFECT_API_URL.value()
    with get_client(sync_client=True) as client:
        for pool in ("llmdr-primary", "llmdr-secondary"):
            try:
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            except ObjectAlreadyExists:
                pass
        try:
            client.create_work_queue("failover", work_pool_name="llmdr-secondary")
        except ObjectAlreadyExists:
            pass
        flow_id = client.create_flow_from_name("failover")
        dep_id = client.create_deployment(flow_id, f"failover-{tmp_path.name}", work_pool_name="llmdr-secondary",
                                          work_queue_name="failover", entrypoint="flows/failover.py:failover")
        auto = Automation.model_validate({
            "name": f"llmdr-failover-test-{tmp_path.name}", "trigger": {
                "type": "event", "posture": "Reactive", "expect": ["llmdr.endpoint.down"],
                "match": {"prefect.resource.id": "llmdr.endpoint.*", "llmdr.active": "true"},
                "threshold": 1, "within": 0},
            "actions": [{"type": "run-deployment", "source": "selected", "deployment_id": str(dep_id),
                         "parameters": {}}]}).create()
        def judged():  # this test's automation only: the harness server is shared with other tests
            from llmdr.integrations.prefect import failover_paths

            return ra.judge(cfg, [a for a in failover_paths(api) if a["name"] == auto.name], time.time(), api)

        try:
            # the check as readiness runs it reads this server ($PREFECT_API_URL) and finds the automation
            [c] = [c for c in rd.run_checks(cfg, only={"automation"}).checks if c.id == "automation"]
            assert c.data.get("api") == api and auto.name in [a["name"] for a in c.data.get("automations", [])], c
            # nobody has polled the DR pool's failover queue yet: a failover would wait there
            c = judged()
            assert c.status == "FAIL" and "nothing serves llmdr-secondary/failover (NOT_READY, never polled)" in \
                c.summary, c
            # a worker (here: the same API call a worker and the warm runner make) polls it
            client.get_scheduled_flow_runs_for_work_pool("llmdr-secondary", work_queue_names=["failover"])
            c = judged()
            assert c.status == "PASS", c
            assert f"{auto.name} → failover/failover-{tmp_path.name} on llmdr-secondary/failover, polled" in c.summary
            # moved to the primary region's pool (polled too): lost with the region
            client.update_deployment(dep_id, DeploymentUpdate(work_pool_name="llmdr-primary",
                                                              work_queue_name="default"))
            client.get_scheduled_flow_runs_for_work_pool("llmdr-primary", work_queue_names=["default"])
            c = judged()
            assert c.status == "FAIL" and "llmdr-primary, the primary region's pool" in c.summary, c
        finally:
            client.delete_automation(auto.id)
            client.delete_deployment(dep_id)
