"""The whole failover chain, for real: two SeaweedFS regions, a replica per region restored from its own store, a
Caddy router, a Prefect server + worker with the deployments and the automation, the monitor-endpoints flow.

The primary region (its S3 server and its replica) is killed while a client sends requests through the router. The
monitor emits llmdr.endpoint.down, the automation runs the failover deployment, the router switches, the client's
answers are golden-correct again, the RTO is in the history and the artifact, a webhook receives the notice; then
failback returns traffic to the primary."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request

import pytest

from llmdr.config import load_config
from llmdr.devstack import orchestration
from llmdr.devstack.regions import start_region, stop_region
from llmdr.devstack.serving import start_router, start_serving, stop_serving
from llmdr.failover import steps as fo
from llmdr.failover.router import open_router
from llmdr.failover.standby import same_content
from llmdr.repo import ops
from llmdr.serving import golden
from llmdr.serving.endpoint import OpenAIEndpoint
from llmdr.serving.tinymodel import write_demo_bundle
from tests.support.config import two_region_yaml
from tests.support.loopback import Receiver
from tests.support.ports import free_base_port, port_picker, region_ports
from tests.support.waiting import wait_for

EXTRA = """\
router: {{kind: caddy, listen: "http://127.0.0.1:{rl}", admin: "http://127.0.0.1:{ra}"}}
monitor: {{interval: 1s, timeout: 1s, down_after: 2, recent_window: 5, baseline_window: 20, golden_every: 5}}
failover: {{confirm_probes: 2, confirm_interval: 0.2}}
notifications: {{webhook_url: "http://127.0.0.1:{wh}/hook"}}
golden: golden.jsonl
"""


class Client(threading.Thread):
    """Sends a golden chat request through the router every 0.2 s; records time, success, answering region, and
    whether the answer is the golden one."""

    def __init__(self, url: str, case: golden.GoldenCase) -> None:
        super().__init__(daemon=True)
        self.url, self.case = url, case
        self.log: list[tuple[float, bool, str | None, bool]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        body = json.dumps({"messages": self.case.messages, "temperature": 0, "max_tokens": self.case.max_tokens,
                           "prompt": self.case.prompt}).encode()
        path = "/v1/chat/completions" if self.case.messages is not None else "/v1/completions"
        while not self.stop.is_set():
            t = time.time()
            try:
                req = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=3) as r:  # noqa: S310
                    out = json.loads(r.read())
                    region = r.headers.get("X-Llmdr-Region")
                choice = out["choices"][0]
                text = choice["message"]["content"] if "message" in choice else choice["text"]
                self.log.append((t, True, region, text == self.case.expected))
            except Exception:  # noqa: BLE001 - a failed request is what we record
                self.log.append((t, False, None, False))
            time.sleep(0.2)


def _api(port: int, path: str, body: dict):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.mark.s3
@pytest.mark.slow
def test_primary_region_outage_fails_over_by_automation_and_fails_back(tmp_path):
    p = free_base_port()
    s = free_base_port()
    while abs(s - p) < 10 or abs(s - p) == 10000:
        s = free_base_port()
    port = port_picker(region_ports(p) | region_ports(s))

    wh = port()
    ps, ss = port(), port()
    text = two_region_yaml(p, s, keys=("E2E_P", "E2E_S"), local=True, bundle="{name: e2ebot, path: model}",
                           primary_lines=f'    serving: {{url: "http://127.0.0.1:{ps}"}}',
                           secondary_lines=f'    serving: {{url: "http://127.0.0.1:{ss}", warm: true}}',
                           extra=EXTRA.format(rl=port(), ra=port(), wh=wh))
    (tmp_path / "llmdr.yaml").write_text(text)
    write_demo_bundle(tmp_path / "model")
    cfg = load_config(tmp_path / "llmdr.yaml")
    receiver = Receiver(wh)
    client = None
    api_port = port()
    try:
        for r in cfg.regions:
            start_region(cfg, r)
        snap = ops.snapshot_bundle(cfg)
        ops.replicate(cfg, snap.snapshot_id, to="secondary")
        notes = start_serving(cfg)
        assert [n.started for n in notes] == [True, True], notes
        start_router(cfg)
        primary_url = cfg.primary.serving.url
        gs = golden.record(golden.default_cases(), OpenAIEndpoint(primary_url).answer)
        gs.save(cfg.golden_path)
        # the standby was restored from the secondary's store, not copied from the primary's folder
        sec_state = json.loads((cfg.state_path / "replicas" / "secondary" / "replica.json").read_text())
        assert sec_state["snapshot"] == snap.snapshot_id and "/replicas/secondary/" in sec_state["model_dir"]

        orchestration.start(cfg, api_port, start_monitor=False)
        autos = _api(api_port, "/automations/filter", {})
        assert any(a["name"] == "llmdr-failover-when-active-region-down" and a["enabled"] for a in autos)
        env = orchestration.env(cfg, api_port)
        run = subprocess.run([orchestration._prefect(), "deployment", "run", "monitor-endpoints/monitor-endpoints",
                              "-p", "duration_s=240"], env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        status_file = cfg.state_path / "monitor" / "status.json"
        wait_for("the monitor to judge the primary healthy", lambda: status_file.exists() and json.loads(
            status_file.read_text()).get("primary", {}).get("status") == "healthy", 120, 0.5)

        client = Client(cfg.router.url, gs.cases[0])
        client.start()
        time.sleep(2)
        assert client.log and all(ok and region == "primary" and right for _, ok, region, right in client.log)

        # --- the outage: the primary region's store and replica die ---
        t_outage = time.time()
        stop_serving(cfg, [cfg.primary])
        stop_region(cfg, cfg.primary)

        router = open_router(cfg)
        wait_for("the router to switch to secondary", lambda: router.active() == "secondary", 120)
        rec = wait_for("the failover record", lambda: next((h for h in fo.history(cfg) if h.kind == "failover"), None),
                    30)
        assert rec.ok and rec.trigger == "automation" and rec.confirmed is True, rec.to_json()
        assert rec.first_failure_ts is not None and t_outage - 0.5 <= rec.first_failure_ts <= rec.verified_ts
        assert 0 < rec.rto_s == pytest.approx(rec.verified_ts - rec.first_failure_ts, abs=0.01)
        assert not rec.replica["cold"], "the warm standby should have been used"
        time.sleep(2)
        after = [e for e in client.log if e[0] > rec.verified_ts]
        assert len(after) >= 5 and all(ok and region == "secondary" and right for _, ok, region, right in after)
        during = [e for e in client.log if t_outage <= e[0] <= rec.switched_ts]
        print(f"\nRTO {rec.rto_s:.2f}s {rec.rto_breakdown()}; client requests during the outage: {len(during)}, "
              f"failed: {sum(not e[1] for e in during)}")
        assert rec.detected_ts is not None and rec.first_failure_ts < rec.detected_ts < rec.started_ts

        arts = _api(api_port, "/artifacts/filter", {"artifacts": {"key": {"any_": ["failover-e2ebot"]}}})
        assert arts and f"RTO **{rec.rto_s:.1f} s**" in arts[0]["data"]
        # the notice is the flow's last step, after its record and artifact
        notices = wait_for("the failover notice", lambda: [n for n in receiver.bodies if n.get("kind") == "failover"], 60)
        assert "secondary" in notices[0]["title"]

        # --- failback once the primary's store is back ---
        start_region(cfg, cfg.primary)
        fb = subprocess.run([orchestration._prefect(), "deployment", "run", "failback/failback", "--watch",
                             "--watch-timeout", "180"], env=env, capture_output=True, text=True, timeout=240)
        assert fb.returncode == 0 and "Completed" in fb.stdout, fb.stdout[-2000:] + fb.stderr[-2000:]
        assert router.active() == "primary"
        back = [h for h in fo.history(cfg) if h.kind == "failback"][-1]
        # the primary's replica runs the protected content: this snapshot, or one protect-bundle's schedule (derived
        # from the RPO, every 150 s here) took of the same bundle meanwhile
        assert back.ok and same_content(ops.open_repo(cfg, "primary", read_only=True, cache=False),
                                        back.replica["snapshot"], snap.snapshot_id), back.replica
        time.sleep(1.5)
        tail = [e for e in client.log if e[0] > back.verified_ts]
        assert tail and all(ok and region == "primary" and right for _, ok, region, right in tail)
    finally:
        if client is not None:
            client.stop.set()
            client.join(5)
        orchestration.stop(cfg)
        stop_serving(cfg, router=True)
        for r in cfg.regions:
            stop_region(cfg, r)
        receiver.close()
