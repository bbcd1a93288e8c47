"""Schedules derived from the objectives on a real Prefect server (#20 item 6): prefect.yaml deployed with `prefect
deploy --all` to the session's test server, then deployments/configure.py: protect-bundle's interval is the derived
one (and follows the measured copy time), protect-checkpoints is removed without `checkpoints:`, the drill runs every
drill_interval - margin, an explicit schedule that cannot meet the RPO is refused with nothing changed, and each
bundle's copy gets its own bundle's interval. The arithmetic itself: tests/test_schedules.py."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from llmdr.config.schedules import DERIVED_SLUG, derive
from llmdr.errors import ConfigError
from tests.support.config import OFFLINE_CONFIG, write_config

ROOT = Path(__file__).resolve().parent.parent
BUNDLES = """\
bundles:
  - {name: sched-a, path: a, objectives: {rpo: 1h}}
  - {name: sched-b, path: b, objectives: {rpo: 10m}, serving: {secondary: {url: "http://127.0.0.1:29502"}}}
"""
SERVED = OFFLINE_CONFIG.replace("bucket: llmdr-secondary,", 'bucket: llmdr-secondary, serving: {url: "http://127.0.0.1:29501"},')


def _configure():
    spec = importlib.util.spec_from_file_location("llmdr_deploy_configure_sd", ROOT / "deployments" / "configure.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _deploy(api_url: str, cfg, tmp_path: Path) -> None:
    """`prefect deploy --all` of this checkout's prefect.yaml, as deployments/deploy.sh runs it."""
    from llmdr.config.pools import deploy_env

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_API_URL": api_url, "PREFECT_HOME": str(tmp_path / "prefect-home"), "LLMDR_CODE": str(ROOT),
            "PYTHONPATH": str(ROOT), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **deploy_env(cfg)}
    prefect = Path(sys.executable).parent / "prefect"
    r = subprocess.run([str(prefect), "--no-prompt", "deploy", "--all"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def _schedules(client, name: str) -> list:
    return list(client.read_deployment_by_name(name).schedules or [])


def test_deployed_schedules_are_derived_from_the_objectives(prefect_harness, tmp_path, monkeypatch, capsys):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import IntervalSchedule
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL
    from prefect.states import Completed, Running

    conf = _configure()
    # rpo 5m, drill_interval 90d, no checkpoints:, a serving endpoint in the DR region (never started: names only)
    cfg = write_config(tmp_path / "llmdr.yaml", SERVED)
    names = [d["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]]
    conf.ensure_pools(cfg)
    _deploy(PREFECT_API_URL.value(), cfg, tmp_path)
    try:
        with get_client(sync_client=True) as client:
            # as deployed: the placeholders, inactive; protect-checkpoints exists (prefect.yaml has it)
            [placeholder] = _schedules(client, "protect-bundle/protect-bundle")
            assert placeholder.slug == DERIVED_SLUG and not placeholder.active
            client.read_deployment_by_name("protect-checkpoints/protect-checkpoints")

            lines = conf.apply(cfg)
            [ps] = _schedules(client, "protect-bundle/protect-bundle")
            assert ps.active and ps.slug == DERIVED_SLUG
            assert ps.schedule.interval == timedelta(seconds=derive(cfg, "protect-bundle").interval_s) \
                == timedelta(seconds=150)
            assert any(x.startswith("protect-checkpoints/protect-checkpoints: deleted (") and "no checkpoints:" in x
                       for x in lines), lines
            with pytest.raises(ObjectNotFound):
                client.read_deployment_by_name("protect-checkpoints/protect-checkpoints")
            [ds] = _schedules(client, "dr-drill/dr-drill-quarterly")
            assert ds.active and ds.schedule.interval == timedelta(days=76)
            assert ds.schedule.anchor_date.hour == 6 and ds.schedule.anchor_date.utcoffset() == timedelta(0)
            assert _schedules(client, "dr-drill/dr-drill-on-demand") == []
            [vs] = _schedules(client, "verify-replicas/verify-replicas-daily")
            assert vs.schedule.cron == "30 2 * * *" and vs.active  # explicit, meets the 7-day read-back
            # the scheduler makes runs from the derived schedule: a future protect-bundle run exists soon after
            # (not asserted: the harness's scheduler loop timing); a second configure changes nothing
            again = conf.apply(cfg)
            assert any(x.startswith("protect-bundle/protect-bundle:") and x.endswith("[kept]") for x in again)
            assert [s.id for s in _schedules(client, "protect-bundle/protect-bundle")] == [ps.id]

            # a measured copy time longer than RPO/2 (a run held Running for 9 s, RPO 16 s): interval = RPO - the
            # longest recent run's time, as the server measured it
            fast = write_config(tmp_path / "fast.yaml", SERVED.replace("rpo: 5m", "rpo: 16s"))
            dep = client.read_deployment_by_name("protect-bundle/protect-bundle")
            run = client.create_flow_run_from_deployment(dep.id)
            client.set_flow_run_state(run.id, Running(), force=True)
            time.sleep(9)
            client.set_flow_run_state(run.id, Completed(), force=True)
            done = client.read_flow_run(run.id)
            # from its scheduled time to its end (worker wait + run), the server's own timestamps
            took = (done.end_time - done.expected_start_time).total_seconds()
            assert 9 <= took < 16, took  # < 16: else no interval meets it (a warning)
            assert took >= done.total_run_time.total_seconds()
            conf.apply(fast)
            [ps2] = _schedules(client, "protect-bundle/protect-bundle")
            assert ps2.schedule.interval == timedelta(seconds=derive(fast, "protect-bundle", copy_s=took).interval_s)
            assert ps2.schedule.interval < timedelta(seconds=8)  # less than RPO/2: the measured time counts

            # an explicit schedule every 300 s (the old prefect.yaml's): refused with the arithmetic, nothing changed
            client.create_deployment_schedules(dep.id, [DeploymentScheduleCreate(
                schedule=IntervalSchedule(interval=timedelta(seconds=300)), active=True)])
            other = write_config(tmp_path / "other.yaml", SERVED.replace("name: b,", "name: renamed,"))
            with pytest.raises(ConfigError) as e:
                conf.apply(other)
            assert "protect-bundle every 300 s (5m) cannot keep the DR copy within objectives.rpo 300 s (5m)" in \
                str(e.value) and f"copy time {math.ceil(took)} s" in str(e.value)
            assert "bundle:b" in client.read_deployment(dep.id).tags  # the renamed bundle's tags were not written
            monkeypatch.setenv("LLMDR_CONFIG", str(other.source_file))
            assert conf.main([]) == 2
            err = capsys.readouterr().err
            assert "refused: 1 schedule(s)" in err and "nothing was changed" in err
            [explicit] = [s for s in _schedules(client, "protect-bundle/protect-bundle") if s.slug != DERIVED_SLUG]
            client.delete_deployment_schedule(dep.id, explicit.id)

            # several bundles: each copy of protect-bundle gets its own bundle's RPO / 2; the base is paused
            multi = write_config(tmp_path / "multi.yaml", SERVED.replace(
                ' serving: {url: "http://127.0.0.1:29501"},', "").replace(
                'bundle: {name: b, path: model, components: {tokenizer: {paths: ["tokenizer.json"]}}}\n', BUNDLES))
            conf.apply(multi)
            for b, every in (("sched-a", 1800), ("sched-b", 300)):
                [s] = _schedules(client, f"protect-bundle/protect-bundle-{b}")
                assert s.active and s.schedule.interval == timedelta(seconds=every), b
            assert client.read_deployment_by_name("protect-bundle/protect-bundle").paused
            with pytest.raises(ObjectNotFound):
                client.read_deployment_by_name("protect-checkpoints/protect-checkpoints-sched-a")
            # the monitor only for the bundle with an endpoint to watch
            client.read_deployment_by_name("monitor-endpoints/monitor-endpoints-sched-b")
            with pytest.raises(ObjectNotFound):
                client.read_deployment_by_name("monitor-endpoints/monitor-endpoints-sched-a")

            # back to one bundle, now without any serving endpoint: the copies go, and the monitor with them
            lines = conf.apply(write_config(tmp_path / "plain.yaml", OFFLINE_CONFIG))
            assert any(x.startswith("monitor-endpoints/monitor-endpoints: deleted (") and "no serving endpoint" in x
                       for x in lines), lines
            with pytest.raises(ObjectNotFound):
                client.read_deployment_by_name("monitor-endpoints/monitor-endpoints")
            [ps3] = _schedules(client, "protect-bundle/protect-bundle")
            assert ps3.active and ps3.schedule.interval == timedelta(seconds=150)
    finally:
        with get_client(sync_client=True) as client:
            for name in [*names, *(f"{n}-{b}" for n in names for b in ("sched-a", "sched-b"))]:
                for d in client.read_deployments():
                    if d.name == name:
                        client.delete_deployment(d.id)
