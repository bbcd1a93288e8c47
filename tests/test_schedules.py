"""Schedules derived from the objectives (#20 item 6): the arithmetic of llmdr.config.schedules, the refusal of an
explicit schedule that cannot meet the objectives, and prefect.yaml checked with `prefect deploy`'s own reading of
its schedules and Prefect's scheduler unrolling them (`deployments/configure.py --check`, no API needed).
The deployments on a real Prefect server: tests/test_schedules_deploy.py."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from llmdr.config.schedules import (
    DERIVED_SLUG,
    check_explicit,
    derive,
    plan_lines,
    plan_schedules,
    refusals,
    training_rpo,
    verify_cycle,
)
from llmdr.errors import ConfigError
from tests.support.config import OFFLINE_CONFIG, write_config

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400


def _cfg(tmp_path, objectives: str = "{rpo: 5m, rto: 15m, drill_interval: 90d}", extra: str = ""):
    text = OFFLINE_CONFIG.replace("objectives: {rpo: 5m, rto: 15m, drill_interval: 90d}", f"objectives: {objectives}")
    return write_config(tmp_path / "llmdr.yaml", text + extra)


def _configure():
    spec = importlib.util.spec_from_file_location("llmdr_deploy_configure_sched", ROOT / "deployments" / "configure.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --- the arithmetic ------------------------------------------------------------------------------------------------
def test_protect_every_half_the_rpo_until_the_copy_time_is_measured(tmp_path):
    cfg = _cfg(tmp_path)
    d = derive(cfg, "protect-bundle")
    assert d.interval_s == 150 and not d.warning
    assert "interval 150 s (2m30s) + copy time 150 s (2m30s) (not measured yet" in d.why
    assert "= 300 s (5m) <= 300 s (5m)" in d.why
    # a measured copy time shorter than RPO/2: still RPO/2 (at most); longer: RPO - copy, so interval + copy = RPO
    assert derive(cfg, "protect-bundle", copy_s=12.2).interval_s == 150
    long = derive(cfg, "protect-bundle", copy_s=200.4)
    assert long.interval_s == 300 - 201 and "copy time 201 s" in long.why and "= 300 s (5m) <= 300 s" in long.why
    # a copy as long as the RPO: nothing can meet it; scheduled at RPO/2 with a warning that says what to do
    slow = derive(cfg, "protect-bundle", copy_s=400)
    assert slow.interval_s == 150 and "no schedule keeps the DR copy within it" in slow.warning
    assert "raise objectives.rpo" in slow.warning


def test_each_bundle_and_each_objective_gets_its_own_interval(tmp_path):
    assert derive(_cfg(tmp_path, "{rpo: 1h}"), "protect-bundle").interval_s == 1800
    assert derive(_cfg(tmp_path, "{rpo: 3s}"), "protect-bundle").interval_s == 1  # 1.5 s, whole seconds down
    tiny = derive(_cfg(tmp_path, "{rpo: 1s}"), "protect-bundle")
    assert tiny.interval_s == 1 and "leaves no time for a run" in tiny.warning  # never 0
    assert "leaves no time" in derive(_cfg(tmp_path, "{rpo: 0s}"), "protect-bundle").warning
    assert check_explicit(_cfg(tmp_path, "{rpo: 0s}"), "protect-bundle", "p", 1, "every 1 s").refused


def test_checkpoints_only_with_a_checkpoints_section_from_the_training_rpo(tmp_path):
    cfg = _cfg(tmp_path)
    assert derive(cfg, "protect-checkpoints") is None
    with_ckpt = _cfg(tmp_path, extra="checkpoints: {path: ckpts}\n")
    assert training_rpo(with_ckpt) == timedelta(hours=24)  # the seed's, without objectives.training
    d = derive(with_ckpt, "protect-checkpoints")
    assert d.interval_s == 12 * 3600 and "training rpo" in d.why
    assert any(x.startswith("protect-checkpoints: not deployed") for x in plan_lines(cfg))


def test_training_rpo_is_read_from_objectives_training_when_the_config_has_it(tmp_path):
    cfg = _cfg(tmp_path, objectives="{rpo: 5m, rto: 15m, drill_interval: 90d, training: {rpo: 6h, rto: 12h}}",
               extra="checkpoints: {path: ckpts}\n")
    d = derive(cfg, "protect-checkpoints")
    assert d.interval_s == 3 * 3600 and "objectives.training.rpo" in d.why


def test_drill_every_interval_minus_readiness_margin_at_six(tmp_path):
    d = derive(_cfg(tmp_path), "dr-drill")
    assert d.interval_s == 76 * DAY and d.anchor_hour == 6  # 90 d - 13.5 d, whole days down
    assert derive(_cfg(tmp_path, "{drill_interval: 365d}"), "dr-drill").interval_s == 351 * DAY  # margin 14 d cap
    short = derive(_cfg(tmp_path, "{drill_interval: 10h}"), "dr-drill")
    assert short.interval_s == int(10 * 3600 * 0.85) and short.anchor_hour is None


# --- explicit schedules --------------------------------------------------------------------------------------------
def test_explicit_protect_every_rpo_is_refused_with_the_arithmetic(tmp_path):
    cfg = _cfg(tmp_path)
    v = check_explicit(cfg, "protect-bundle", "protect-bundle", 300, "every 300 s (5m)")
    assert v.refused
    assert v.message.startswith("protect-bundle every 300 s (5m) cannot keep the DR copy within objectives.rpo "
                                "300 s (5m): the newest DR copy is up to interval 300 s (5m) + copy time 150 s")
    assert "= 450 s (7m30s) old > 300 s (5m)" in v.message and "derives every 150 s" in v.message
    assert not check_explicit(cfg, "protect-bundle", "p", 150, "every 150 s").refused
    # with a measured copy time, what is left of the RPO is the bound
    assert not check_explicit(cfg, "protect-bundle", "p", 280, "x", copy_s=20).refused
    assert check_explicit(cfg, "protect-bundle", "p", 281, "x", copy_s=20).refused


def test_explicit_drill_longer_than_the_interval_is_refused_within_the_margin_warned(tmp_path):
    cfg = _cfg(tmp_path)
    v = check_explicit(cfg, "dr-drill", "dr-drill-quarterly", 92 * DAY, "cron '0 6 1 1,4,7,10 *' (UTC)")
    assert v.refused and "leaves up to 92d between drills > objectives.drill_interval 90d" in v.message
    w = check_explicit(cfg, "dr-drill", "d", 80 * DAY, "every 80d")
    assert not w.refused and "cannot be re-run before readiness FAILs" in w.message
    assert check_explicit(cfg, "dr-drill", "d", 60 * DAY, "every 60d").message == ""


@pytest.mark.parametrize("gap, sample, cycle_days", [
    (DAY, "7", 7), (7 * DAY, None, 7), (2 * DAY, "7", 14), (3600, "7", 7), (DAY, "1/1", 1),
    (7 * DAY, "7", None), (DAY, "2/7", None), (DAY, "x", None),
])
def test_verify_cycle(gap, sample, cycle_days):
    cycle, how = verify_cycle(gap, sample)
    assert (cycle / DAY if cycle is not None else None) == cycle_days
    assert how and ("never" in how) == (cycle_days is None)


def test_verify_refused_only_when_no_verify_deployment_reads_every_chunk_in_time(tmp_path):
    cfg = _cfg(tmp_path)  # drill_interval 90 d: every chunk within min(7 d, 45 d) = 7 d

    def gap(schedules):
        return schedules[0], f"every {schedules[0]} s"

    def plan(name, every, sample=None):
        return plan_schedules(cfg, "verify-replicas", name, [SimpleNamespace(schedule=every, active=True, slug=None)],
                              {"sample": sample} if sample else {}, None, gap)

    daily, weekly, fortnightly = plan("daily", DAY, "7"), plan("weekly", 7 * DAY), plan("every-2w", 14 * DAY)
    assert refusals([daily, fortnightly]) == [] and refusals([weekly]) == []
    refused = refusals([fortnightly, plan("daily-2", 2 * DAY, "7")])
    assert len(refused) == 2 and "only every 14d; every chunk must be read back within 7d" in refused[0]
    assert "every 2 d x sample 7 (today's 1/7) = 14d" in refused[1]
    tight = _cfg(tmp_path, "{drill_interval: 10d}")  # within 5 d now: the weekly one alone is refused
    assert "within 5d" in refusals([plan_schedules(tight, "verify-replicas", "w", [SimpleNamespace(
        schedule=7 * DAY, active=True, slug=None)], {}, None, gap)])[0]


def test_plan_explicit_wins_over_derived_once_it_passes(tmp_path):
    cfg = _cfg(tmp_path)

    def gap(schedules):
        return float(schedules[0]), f"every {schedules[0]} s"

    placeholder = SimpleNamespace(schedule=150, active=False, slug=DERIVED_SLUG)
    p = plan_schedules(cfg, "protect-bundle", "protect-bundle", [placeholder], {}, None, gap)
    assert p.derived.interval_s == 150 and p.active and p.line().startswith("schedule every 150 s")
    own = SimpleNamespace(schedule=60, active=True, slug=None)
    p = plan_schedules(cfg, "protect-bundle", "protect-bundle", [placeholder, own], {}, None, gap)
    assert not p.active and not p.refused and "every 60 s (explicit, meets the objectives)" in p.line()
    # an inactive explicit schedule is not a schedule; no schedule at all on protect: derived, created
    off = SimpleNamespace(schedule=900, active=False, slug=None)
    assert plan_schedules(cfg, "protect-bundle", "p", [off], {}, None, gap).active
    assert plan_schedules(cfg, "protect-bundle", "p", [], {}, None, gap).derived.interval_s == 150
    # other flows are not derived unless prefect.yaml marks their schedule llmdr-derived (the on-demand drill)
    assert plan_schedules(cfg, "dr-drill", "dr-drill-on-demand", [], {}, None, gap).line() == "no schedule"


# --- prefect.yaml, checked before `prefect deploy` ----------------------------------------------------------------
def _check(tmp_path, cfg, prefect_yaml: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "LLMDR_CONFIG": str(cfg.source_file), "PYTHONPATH": str(ROOT),
           "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    return subprocess.run([sys.executable, str(ROOT / "deployments" / "configure.py"), "--check", str(prefect_yaml)],
                          capture_output=True, text=True, env=env, timeout=180)


def test_shipped_prefect_yaml_meets_the_default_objectives_and_the_old_one_is_refused(tmp_path):
    cfg = _cfg(tmp_path)
    conf = _configure()
    lines = conf.check_prefect_yaml(cfg, ROOT / "prefect.yaml")
    assert any(x.startswith("protect-bundle: schedule every 150 s (2m30s) (derived:") for x in lines), lines
    assert any(x.startswith("dr-drill-quarterly: schedule every 76d (derived:") for x in lines), lines
    assert any(x.startswith("protect-checkpoints: not deployed") for x in lines), lines
    assert any(x.startswith("monitor-endpoints: not deployed") and "no serving endpoint" in x for x in lines)
    assert any("verify-replicas-daily: schedule cron '30 2 * * *' (UTC) (explicit, meets" in x for x in lines)
    # the prefect.yaml before #20: protect every 300 s with rpo 300 s, and a quarterly drill (92 days from 1 July)
    old = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    for dep in old["deployments"]:
        if dep["name"] == "protect-bundle":
            dep["schedules"] = [{"interval": 300, "active": True}]
        if dep["name"] == "dr-drill-quarterly":
            dep["schedules"] = [{"cron": "0 6 1 1,4,7,10 *", "timezone": "UTC"}]
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError) as e:
        conf.check_prefect_yaml(cfg, tmp_path / "old.yaml")
    text = str(e.value)
    assert "refused: 2 schedule(s)" in text and "nothing was changed" in text
    assert "protect-bundle every 300 s (5m) cannot keep the DR copy within objectives.rpo 300 s (5m)" in text
    assert "dr-drill-quarterly cron '0 6 1 1,4,7,10 *' (UTC) leaves up to 92d between drills" in text
    # the same through the script, as deploy.sh runs it (`--pools` checks first): exit 2, the arithmetic on stderr
    r = _check(tmp_path, cfg, tmp_path / "old.yaml")
    assert r.returncode == 2 and "= 450 s (7m30s) old > 300 s (5m)" in r.stderr, r.stdout + r.stderr


def test_hostile_prefect_yaml_schedules_are_refused_clearly(tmp_path):
    cfg = _cfg(tmp_path)
    conf = _configure()
    doc = {"deployments": [{"name": "protect-bundle", "entrypoint": "flows/protect_bundle.py:protect_bundle",
                            "schedules": [{"interval": 0}]}]}
    (tmp_path / "zero.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="deployment protect-bundle schedule 1"):
        conf.check_prefect_yaml(cfg, tmp_path / "zero.yaml")
    doc["deployments"][0]["schedules"] = [{"cron": "not a cron"}]
    (tmp_path / "cron.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="schedule 1"):
        conf.check_prefect_yaml(cfg, tmp_path / "cron.yaml")
    (tmp_path / "broken.yaml").write_text("deployments: [\n")
    with pytest.raises(ConfigError, match="cannot be read as YAML"):
        conf.check_prefect_yaml(cfg, tmp_path / "broken.yaml")
    # a cron that only runs on 29 February: up to ~4 years between runs, more than the horizon unrolled
    doc["deployments"][0]["schedules"] = [{"cron": "0 0 29 2 *"}]
    (tmp_path / "leap.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="cannot keep the DR copy"):
        conf.check_prefect_yaml(cfg, tmp_path / "leap.yaml")
    # two explicit schedules together: the gap is the union's (every 100 s + a cron every minute: 60 s at most)
    doc["deployments"][0]["schedules"] = [{"interval": 400}, {"cron": "* * * * *"}]
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(doc))
    [line] = conf.check_prefect_yaml(cfg, tmp_path / "two.yaml")
    assert "every 400 s (6m40s) + cron '* * * * *'" in line and "meets the objectives" in line


def test_plan_shows_the_derived_schedules(tmp_path):
    cfg = _cfg(tmp_path, "{rpo: 10m, rto: 15m, drill_interval: 30d}")
    r = subprocess.run([sys.executable, "-m", "llmdr.cli", "--config", str(cfg.source_file), "plan", "--size", "1GB",
                        "--bandwidth", "1Gbps", "--json"], capture_output=True, text=True, timeout=180,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    import json

    scheds = json.loads(r.stdout)["schedules"]
    assert scheds[0].startswith("protect-bundle: every 300 s (5m): objectives.rpo 600 s (10m)")
    assert scheds[2].startswith("dr-drill: every 25d: objectives.drill_interval 30d - margin 4d12h")
    assert "within 7d" in scheds[3]


def test_deploy_sh_parses():
    """deploy.sh is valid bash (a quote inside `${VAR:?message}` once made every run of it a syntax error)."""
    r = subprocess.run(["bash", "-n", str(ROOT / "deployments" / "deploy.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_each_bundle_is_checked_against_its_own_objectives(tmp_path):
    """With bundles:, an explicit prefect.yaml schedule is checked once per bundle: every 20 min meets a 1 h RPO
    (20 min + 30 min reserved) but not the 10 min one, and only that bundle's copy is named in the refusal."""
    conf = _configure()
    text = OFFLINE_CONFIG.replace(
        'bundle: {name: b, path: model, components: {tokenizer: {paths: ["tokenizer.json"]}}}\n',
        "bundles:\n  - {name: slow, path: a, objectives: {rpo: 1h}}\n  - {name: fast, path: b, objectives: {rpo: 10m}}\n")
    cfg = write_config(tmp_path / "multi.yaml", text)
    doc = {"deployments": [{"name": "protect-bundle", "entrypoint": "flows/protect_bundle.py:protect_bundle",
                            "schedules": [{"interval": 1200}]}]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError) as e:
        conf.check_prefect_yaml(cfg, tmp_path / "p.yaml")
    assert "refused: 1 schedule(s)" in str(e.value)
    assert "protect-bundle-fast every 1200 s (20m) cannot keep the DR copy within objectives.rpo 600 s (10m)" in str(e.value)
    doc["deployments"][0]["schedules"] = [{"interval": 150}]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    lines = conf.check_prefect_yaml(cfg, tmp_path / "p.yaml")
    assert [x.split(":")[0] for x in lines] == ["protect-bundle-slow", "protect-bundle-fast"]
