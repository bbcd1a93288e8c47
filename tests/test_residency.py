"""Data residency without a running store: the config-load refusals (a bundle's, a dataset's and a bundles: entry's
policy against every region, a region without a jurisdiction, bad values), what stays valid (no policy, case),
the views of a bundles: project, the readiness row's PASS and FAIL (including a DVC remote left pointing outside the
policy, made by the real `dvc` command), the drill record's evidence and the report line, and the CLI's exit code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmdr.config import parse_config
from llmdr.config.residency import KNOWN, ResidencyError, allows, config_problems, evidence, require_resident
from llmdr.errors import ConfigError
from tests.support.config import config_yaml, region_yaml

DVC = str(Path(sys.executable).parent / "dvc")


def regions(p: str = "EU", s: str | None = "EU", *, third: str | None = None) -> list[str]:
    """Primary and secondary with the given jurisdictions (None: the line is left out), and optionally a third."""
    out = [region_yaml("eu-west", "primary", 29001, "llmdr-eu-west", keys="A",
                       lines=f"    jurisdiction: {p}\n    geography: Frankfurt" if p else ""),
           region_yaml("eu-north", "secondary", 29101, "llmdr-eu-north", keys="B",
                       lines=f"    jurisdiction: {s}" if s else "")]
    if third:
        out.append(region_yaml("cn-east", "secondary", 29201, "llmdr-cn-east", keys="C",
                               lines=f"    jurisdiction: {third}\n    geography: Shanghai"))
    return out


def load(tmp_path: Path, text: str):
    path = tmp_path / "llmdr.yaml"
    path.write_text(text)
    return parse_config(text, source=path)


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(ResidencyError) as exc:
        load(tmp_path, text)
    assert isinstance(exc.value, ConfigError) and exc.value.exit_code == 2
    return str(exc.value)


EU_BUNDLE = "{name: bank-bot, path: model, residency: [EU]}"


def test_eu_bank_with_both_regions_in_the_eu_loads(tmp_path):
    cfg = load(tmp_path, config_yaml(regions("EU", "eu"), bundle=EU_BUNDLE))
    assert cfg.bundle.residency == ["EU"]
    assert [(r.jurisdiction, r.geography) for r in cfg.regions] == [("EU", "Frankfurt"), ("eu", None)]
    assert config_problems(cfg) == []
    ev = evidence(cfg)
    assert ev["ok"] and ev["declared"] and ev["problems"] == []
    assert ev["summary"] == "bundle [EU]: every region complies (eu-west EU (Frankfurt), eu-north eu)"


def test_a_third_region_in_china_is_refused_at_load_naming_bundle_region_jurisdiction_policy(tmp_path):
    msg = refused(tmp_path, config_yaml(regions(third="CN"), bundle=EU_BUNDLE))
    assert "llmdr.yaml: refused by residency policy" in msg
    assert "bundle.residency (line 2), regions[2] (line 17)" in msg
    assert "bundle 'bank-bot' may be stored only in [EU]" in msg
    assert "region 'cn-east' (jurisdiction CN, Shanghai) is outside it" in msg
    assert "To fix: remove the region" in msg and "eu-west" not in msg


def test_a_region_without_jurisdiction_is_never_compliant(tmp_path):
    msg = refused(tmp_path, config_yaml(regions("EU", None), bundle=EU_BUNDLE))
    assert "region 'eu-north' (no jurisdiction declared) is outside it" in msg
    assert "a region without a jurisdiction is never compliant" in msg
    assert "declare its jurisdiction" in msg


def test_a_dataset_policy_is_checked_as_well(tmp_path):
    extra = "datasets:\n  - {name: loans, path: data/loans.csv, residency: [EU]}\n  - {name: faq, path: data/faq.csv}"
    msg = refused(tmp_path, config_yaml(regions("EU", "US"), extra=extra))
    assert "datasets[0].residency (line" in msg and "dataset 'loans' may be stored only in [EU]" in msg
    assert "region 'eu-north' (jurisdiction US)" in msg and "faq" not in msg


def test_a_bundles_entry_policy_is_refused_and_its_view_carries_it(tmp_path):
    bundles = ("bundles:\n  - {name: eu-bot, path: m1, residency: [EU]}\n"
               "  - {name: any-bot, path: m2, serving: {}}")
    text = config_yaml(regions("EU", "US"), bundle="{name: x, path: y}", extra=bundles).replace(
        "bundle: {name: x, path: y}\n", "")
    msg = refused(tmp_path, text)
    assert "bundles[0].residency" in msg and "bundle 'eu-bot'" in msg and "any-bot" not in msg
    cfg = load(tmp_path, text.replace("jurisdiction: US", "jurisdiction: EU"))
    assert cfg.for_bundle("eu-bot").bundle.residency == ["EU"]
    assert cfg.for_bundle("any-bot").bundle.residency is None


@pytest.mark.parametrize("policy, region, ok", [(["EU"], "eu", True), (["eu", "EEA"], "EEA", True),
                                                 (["EU"], "DE", False), (None, None, True), (["EU"], None, False),
                                                 (["European  Union"], "european union", True),
                                                 (["Türkiye"], "TÜRKIYE", True)])
def test_matching_ignores_case_and_has_no_hierarchy(tmp_path, policy, region, ok):
    cfg = load(tmp_path, config_yaml(regions("EU", "EU")))
    r = cfg.regions[1]
    r.jurisdiction = region
    assert allows(policy, r) is ok


@pytest.mark.parametrize("bundle, region, says", [
    ("{name: b, path: m, residency: []}", "EU", "allows no region at all"),
    ("{name: b, path: m, residency: [EU, eu]}", "EU", "listed more than once"),
    ("{name: b, path: m, residency: EU}", "EU", "valid list"),
    ("{name: b, path: m, residency: ['EU, US']}", "EU", "is not a short name"),
    ("{name: b, path: m}", "'EU; DROP'", "jurisdiction 'EU; DROP' is not a short name"),
    ("{name: b, path: m, residency: [null]}", "EU", "Input should be a valid string"),
    ("{name: b, path: m, residency: ['*']}", "EU", "residency '*' is not a short name"),  # no wildcards
    ("{name: b, path: m}", "'EU\\nCN'", "is not a short name"),
    ("{name: b, path: m}", "''", "jurisdiction '' is not a short name"),
    ("{name: b, path: m}", "'" + "E" * 65 + "'", "is not a short name"),
])
def test_bad_values_are_clear_config_errors(tmp_path, bundle, region, says):
    with pytest.raises(ConfigError) as exc:
        load(tmp_path, config_yaml(regions("EU", region), bundle=bundle))
    assert says in str(exc.value) and not isinstance(exc.value, ResidencyError)


def test_no_policy_keeps_every_existing_config_valid_and_passes_readiness(tmp_path):
    from llmdr.drill.readiness.checks import check_residency

    cfg = load(tmp_path, config_yaml(regions(None, None)))
    assert cfg.bundle.residency is None and config_problems(cfg) == []
    require_resident(cfg, cfg.regions[1], "anything")  # no policy: nothing refused
    row = check_residency(cfg)
    assert row.status == "PASS" and row.summary == "no residency policy (data may be stored in any region)"


def test_the_recognised_codes_include_the_seeds_cases():
    assert {"EU", "CN", "US", "UK", "CH"} <= set(KNOWN)
    assert "PIPL" in KNOWN["CN"] and "GDPR" in KNOWN["EU"]


def test_require_resident_refuses_a_region_changed_after_load(tmp_path):
    """Belt and braces: a Config whose region moved out of the policy after it was loaded (edited in memory,
    or built without load_config) is refused at the door, with what, where and what to do."""
    cfg = load(tmp_path, config_yaml(regions("EU", "EU"), bundle=EU_BUNDLE))
    cfg.regions[1].jurisdiction = "CN"
    with pytest.raises(ResidencyError) as exc:
        require_resident(cfg, cfg.regions[1], "replicate latest to region 'eu-north'")
    msg = str(exc.value)
    assert msg.startswith("replicate latest to region 'eu-north': bundle 'bank-bot' may be stored only in [EU]")
    assert "Nothing was written" in msg
    require_resident(cfg, cfg.regions[0], "snapshot")  # the EU primary is still fine
    from llmdr.errors import is_retriable

    assert not is_retriable(exc.value)  # Prefect tasks and the retrying store never try it again


def test_readiness_row_fails_for_a_region_outside_and_names_it(tmp_path):
    from llmdr.drill.readiness.checks import check_residency

    cfg = load(tmp_path, config_yaml(regions("EU", "EU"), bundle=EU_BUNDLE))
    ok = check_residency(cfg)
    assert ok.status == "PASS" and "every region complies" in ok.summary
    assert ok.data["policy"]["bundle"] == ["EU"] and ok.data["regions"]["eu-west"]["geography"] == "Frankfurt"
    cfg.regions[1].jurisdiction = None
    bad = check_residency(cfg)
    assert bad.status == "FAIL" and "bundle 'bank-bot' excludes region 'eu-north' (no jurisdiction" in bad.summary
    assert "docs/guide/residency.md" in bad.action


def test_readiness_fails_a_dvc_remote_left_outside_the_policy(tmp_path):
    """A real DVC repository whose config still has a remote in a US bucket (e.g. a region since removed): a plain
    `dvc push -r` there would send the data out; readiness says so."""
    from llmdr.drill.readiness.checks import check_residency

    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    root = tmp_path / "proj"
    (root / "data").mkdir(parents=True)
    for args in (["git", "init", "-q"], [DVC, "init", "-q"]):
        subprocess.run(args, cwd=root, env=env, check=True, capture_output=True, timeout=120)
    (root / "data" / "loans.csv").write_text("id,amount\n1,100\n")
    (root / "data" / "loans.csv.dvc").write_text("outs:\n- md5: 0123456789abcdef0123456789abcdef\n  size: 17\n"
                                                  "  hash: md5\n  path: loans.csv\n")
    extra = "datasets:\n  - {name: loans, path: data/loans.csv, residency: [EU]}"
    cfg = load(root, config_yaml(regions("EU", "EU"), bundle=EU_BUNDLE, extra=extra))
    assert check_residency(cfg).status == "PASS"  # no remotes configured yet
    from llmdr.lineage.dvcrepo import remote_url

    for name, url in (("llmdr-eu-west", remote_url(cfg.regions[0])), ("old-us", "s3://llmdr-us-east/dvc")):
        subprocess.run([DVC, "remote", "add", name, url], cwd=root, env=env, check=True, capture_output=True,
                       timeout=120)
    row = check_residency(cfg)
    assert row.status == "FAIL", row.summary
    assert "DVC remote 'old-us'" in row.summary and "s3://llmdr-us-east/dvc" in row.summary
    assert "llmdr-eu-west" not in row.summary
    subprocess.run([DVC, "remote", "remove", "old-us"], cwd=root, env=env, check=True, capture_output=True,
                   timeout=120)
    assert check_residency(cfg).status == "PASS"


def test_the_drill_record_and_report_show_the_policy(tmp_path):
    from llmdr.drill import procedure
    from llmdr.drill.report.html import render_html

    cfg = load(tmp_path, config_yaml(regions("EU", "EU"), bundle=EU_BUNDLE))
    rec = procedure.start_record(cfg, {"kind": "cli", "who": "ana"}, now=1_700_000_000.0)
    ev = rec.evidence["residency"]
    assert ev["ok"] and ev["policy"]["bundle"] == ["EU"]
    html = render_html(rec.to_json())
    assert "Data residency" in html and "bundle [EU]: every region complies" in html


def test_the_cli_exits_2_with_the_refusal_and_writes_nothing(tmp_path):
    text = config_yaml(regions(third="CN"), bundle=EU_BUNDLE, state_dir=tmp_path / "state")
    (tmp_path / "llmdr.yaml").write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("LLMDR_CONFIG", "LLMDR_BUNDLE")}
    res = subprocess.run([sys.executable, "-m", "llmdr.cli", "--config", str(tmp_path / "llmdr.yaml"), "snapshots"],
                         capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "region 'cn-east' (jurisdiction CN, Shanghai) is outside it" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "state").exists()
