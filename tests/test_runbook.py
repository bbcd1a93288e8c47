"""`llmdr runbook`: the markdown playbook rendered from llmdr.yaml — every section there, the config's own names and
commands in it, secrets never (only the names of where they live), well-formed markdown, deterministic bytes."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from llmdr.config import parse_config
from llmdr.drill import runbook
from llmdr.drill.record import DrillRecord
from llmdr.drill.runbook import SECTIONS, render_runbook, write_runbook

ROOT = Path(__file__).parent.parent
NOW = datetime(2026, 11, 27, 10, 0, 0, tzinfo=timezone.utc)
TOKEN = "SECRETTOKEN"

LOCAL = """\
version: 1
bundle: {name: support-bot, path: bundle}
regions:
  - name: eu-west
    role: primary
    endpoint: http://127.0.0.1:18333
    bucket: llmdr-eu-west
    credentials: {access_key_env: LLMDR_EU_AK, secret_key_env: LLMDR_EU_SK}
    local: {}
    serving: {url: "http://127.0.0.1:18350"}
  - name: us-east
    role: secondary
    endpoint: http://127.0.0.1:18433
    bucket: llmdr-us-east
    prefix: dr
    credentials: {access_key_env: LLMDR_US_AK, secret_key_env: LLMDR_US_SK, session_token_env: LLMDR_US_TOKEN,
                  expiration_env: LLMDR_US_EXPIRES}
    local: {}
    serving: {url: "http://127.0.0.1:18450", warm: false}
    object_lock: {mode: GOVERNANCE, period: 30d}
router: {kind: caddy, listen: "http://127.0.0.1:18300", admin: "http://127.0.0.1:18301"}
objectives: {rpo: 5m, rto: 30s, drill_interval: 90d}
notifications: {webhook_url_env: LLMDR_WEBHOOK_URL, prefect_block: slack-webhook/ops}
datasets: [{name: tickets, path: data/tickets.csv}]
runbook:
  contacts:
    - {name: Ada Lovelace, role: incident commander, reach: "pager +44 20 7946 0000"}
    - {name: Grace Hopper, role: ML platform on-call, reach: "#ml-oncall | Slack"}
    - {name: Alan Turing, role: storage owner, reach: "alan@example.com"}
  emergency_access:
    - Open the vault entry llmdr/break-glass (the incident commander approves).
    - Assume role llmdr-breakglass in the DR account and note the session in the incident log.
    - Rotate the break-glass keys when the incident is closed.
"""

CLOUD = """\
version: 1
bundle: {name: support-bot, path: /srv/models/support-bot}
regions:
  - {name: use1, role: primary, s3_region: us-east-1, bucket: llmdr-use1, credentials: {prefect_secret_block: llmdr-use1-keys},
     serving: {url: "https://use1.example.com"}}
  - {name: usw2, role: secondary, s3_region: us-west-2, bucket: llmdr-usw2,
     credentials: {access_key_env: AK_USW2, secret_key_env: SK_USW2, role_arn: "arn:aws:iam::123456789012:role/llmdr",
                   sts_endpoint: "https://sts.us-west-2.amazonaws.com"},
     serving: {url: "https://usw2.example.com"}}
  - {name: euc1, role: secondary, s3_region: eu-central-1, bucket: llmdr-euc1,
     credentials: {access_key_env: AK_EUC1, secret_key_env: SK_EUC1}, serving: {url: "https://euc1.example.com"}}
router: {kind: route53, hosted_zone_id: Z0123456789ABC, record_name: api.example.com., policy: {policy},
         values: {use1: use1.example.com, usw2: usw2.example.com, euc1: euc1.example.com}, url: "https://api.example.com"}
failover: {auto: false, target: euc1}
notifications: {webhook_url: "https://hooks.example.com/services/T000/SECRETTOKEN?sig=SECRETTOKEN"}
drill: {signing: {method: hmac, hmac_key_env: LLMDR_SIGNING_KEY}}
tracking: {uri: "https://mlflow-user:SECRETTOKEN@mlflow.example.com/?token=SECRETTOKEN"}
"""


def _cfg(tmp_path: Path, text: str = LOCAL, name: str = "llmdr.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return parse_config(text, source=path)


def _cloud(tmp_path: Path, policy: str = "weighted", name: str = "llmdr.yaml"):
    return _cfg(tmp_path, CLOUD.replace("{policy}", policy), name)


def _section(md: str, n: int) -> str:
    """The body of section ``n`` (up to the next section)."""
    start = md.index(f"## {n}. {SECTIONS[n - 1]}")
    nxt = md.find("\n## ", start + 1)
    return md[start: nxt if nxt != -1 else len(md)]


def _pipes(line: str) -> int:
    return len(re.findall(r"(?<!\\)\|", line))


# --- content -----------------------------------------------------------------------------------------------------------
def test_every_section_in_order_with_the_configs_own_names(tmp_path):
    md = render_runbook(_cfg(tmp_path), now=NOW)
    assert md.startswith("# DR runbook: support-bot\n")
    positions = [md.index(f"\n## {i}. {title}\n") for i, title in enumerate(SECTIONS, 1)]
    assert positions == sorted(positions) and len(SECTIONS) == 9
    assert "2026-11-27T10:00:00Z" in md and str(tmp_path / "llmdr.yaml") in md
    assert "RPO 5m · RTO 30s · a DR drill every 90d" in md
    regions = _section(md, 1)
    assert "| eu-west | primary | http://127.0.0.1:18333 (local stack) | llmdr-eu-west | http://127.0.0.1:18350 |" in regions
    assert ("| us-east | secondary (failover target) | http://127.0.0.1:18433 (local stack) | llmdr-us-east/dr | "
            "http://127.0.0.1:18450 | no (cold start on failover) | GOVERNANCE 30d |") in regions
    assert "Caddy on this machine: clients use http://127.0.0.1:18300" in regions
    # real command lines, run from the config's folder (the default file name: no --config)
    fo = _section(md, 4)
    assert f"cd {tmp_path.as_posix()}\n" in fo
    assert re.search(r"^llmdr failover --to us-east --reason '<why, ticket>' +# ", fo, re.M)
    assert re.search(r"^llmdr golden check --url http://127.0.0.1:18300 +# golden set through the router", fo, re.M)
    assert "--config" not in md
    # Prefect UI steps with the deployment, its parameters and the artifact
    assert "Deployments → **failover** (`failover/failover`, work pool `llmdr-us-east`)" in fo
    assert "`to` = `us-east`" in fo and "`trigger` = `manual`" in fo
    assert "`failover-support-bot`" in fo
    # the Caddy fallback: the selection file, replaced atomically
    assert ("printf %s us-east > .llmdr/router/selected-region.tmp && mv .llmdr/router/selected-region.tmp "
            ".llmdr/router/selected-region") in fo
    restore = _section(md, 5)
    for cmd in ("llmdr snapshots --region us-east", "llmdr restore latest --region us-east --to restored-support-bot",
                "llmdr verify latest --region us-east --restore-test", "llmdr datasets pull tickets --region us-east"):
        assert re.search(rf"^{re.escape(cmd)}( |$)", restore, re.M), cmd
    assert "`restore-bundle/restore-bundle`" in restore and "`region` = `us-east`" in restore
    failback = _section(md, 6)
    assert re.search(r"^llmdr stack up eu-west +# ", failback, re.M)
    assert re.search(r"^llmdr failback --reason '<why>' +# ", failback, re.M)
    assert "copies back every snapshot taken in the DR region" in failback
    drills = _section(md, 9)
    for cmd in ("`llmdr drill`", "`llmdr readiness`", "exits non-zero on any FAIL",
                "`llmdr report verify reports/drills/<drill id> --public-key .llmdr/keys/report-signing.pub`"):
        assert cmd in drills, cmd


def test_who_is_told_and_on_which_events(tmp_path):
    md = _section(render_runbook(_cfg(tmp_path), now=NOW), 2)
    assert "No contacts configured" not in md
    rows = [line for line in md.splitlines() if re.match(r"\| \d \|", line)]
    assert rows == ["| 1 | Ada Lovelace | incident commander | pager +44 20 7946 0000 |",
                    "| 2 | Grace Hopper | ML platform on-call | #ml-oncall \\| Slack |",
                    "| 3 | Alan Turing | storage owner | alan@example.com |"]
    assert "environment variable `LLMDR_WEBHOOK_URL`" in md and "Prefect notification block `slack-webhook/ops`" in md
    # the events llmdr.notify announces, and what it does not
    for event in ("| failover completed |", "| failover failed |", "| failback completed |", "| failback failed |",
                  "| verification failed |", "| DR drill finished |"):
        assert event in md, event
    assert "Not notified by themselves: an endpoint going down" in md


def test_missing_contacts_notifications_and_emergency_steps_are_loud(tmp_path):
    text = LOCAL.split("notifications:")[0]  # no notifications, no runbook: section
    md = render_runbook(_cfg(tmp_path, text), now=NOW)
    assert "> **WARNING: No contacts configured — add runbook.contacts to llmdr.yaml" in md
    assert "> **WARNING: No automatic notifications configured" in md
    emergency = _section(md, 8)
    assert "> **WARNING: No emergency access steps configured — add runbook.emergency_access" in emergency
    assert "break-glass account" in emergency and "who approves" in emergency


def test_emergency_steps_numbered_in_order(tmp_path):
    md = _section(render_runbook(_cfg(tmp_path), now=NOW), 8)
    assert re.findall(r"^(\d)\. (.*)$", md, re.M) == [
        ("1", "Open the vault entry llmdr/break-glass (the incident commander approves)."),
        ("2", "Assume role llmdr-breakglass in the DR account and note the session in the incident log."),
        ("3", "Rotate the break-glass keys when the incident is closed.")]
    assert "WARNING" not in md


def test_automatic_and_manual_failover(tmp_path):
    auto = _section(render_runbook(_cfg(tmp_path), now=NOW), 3)
    assert "**Failover is automatic.**" in auto and "`llmdr-failover-when-active-region-down`" in auto
    assert "3 direct probes 0.3s apart" in auto and "MANUAL" not in auto
    manual = render_runbook(_cloud(tmp_path), now=NOW)
    assert "**Failover is MANUAL** (`failover.auto: false`)" in _section(manual, 3)
    assert "| Failover | MANUAL (failover.auto: false)" in manual
    # failover.target chooses the target over the first secondary; the other DR region is offered too
    fo = _section(manual, 4)
    assert "failover --to euc1 --reason" in fo and "`llmdr failover --to usw2`" in fo


@pytest.mark.parametrize("policy", ["weighted", "failover"])
def test_route53_manual_switch_names_the_zone_and_record(tmp_path, policy):
    md = render_runbook(_cloud(tmp_path, policy), now=NOW)
    assert f"Route 53 {policy} record api.example.com. (CNAME, TTL 30s) in hosted zone Z0123456789ABC" in md
    fo = _section(md, 4)
    assert "Hosted zones → `Z0123456789ABC` → records named `api.example.com.`" in fo
    if policy == "weighted":
        assert "**Weight 100** on Record ID `euc1` (value `euc1.example.com`) and **0** on every other one" in fo
    else:
        assert "PRIMARY record (Record ID `api.example.com-primary`) to `euc1.example.com`" in fo
        assert "(normally use1: `use1.example.com`)" in fo
    assert "--hosted-zone-id Z0123456789ABC" in fo
    creds = _section(md, 7)
    assert "**Route 53** (zone `Z0123456789ABC`)" in creds and "route53:ChangeResourceRecordSets" in creds
    assert "| use1 | primary | AWS S3 us-east-1 | llmdr-use1 | https://use1.example.com |" in md


def test_no_router(tmp_path):
    text = LOCAL.replace('router: {kind: caddy, listen: "http://127.0.0.1:18300", admin: "http://127.0.0.1:18301"}\n',
                         "")
    md = render_runbook(_cfg(tmp_path, text), now=NOW)
    assert "none: clients call a region's serving URL directly" in md
    fo = _section(md, 4)
    assert "point clients (DNS, load balancer, client config) at us-east's serving URL http://127.0.0.1:18450" in fo
    assert re.search(r"^llmdr golden check --url http://127.0.0.1:18450 +# golden set against us-east", fo, re.M)


def test_a_config_with_another_name_puts_config_in_every_command(tmp_path):
    md = render_runbook(_cloud(tmp_path, name="prod.yaml"), now=NOW)
    assert "`--config prod.yaml` (or `LLMDR_CONFIG`) selects this config" in md
    commands = re.findall(r"^llmdr .*$", md, re.M) + re.findall(r"`(llmdr [^`]*)`", md)
    assert commands
    offenders = [c for c in commands if not c.startswith("llmdr --config prod.yaml ")
                 and c not in ("llmdr runbook", "llmdr failover", "llmdr datasets remotes", "llmdr stack up")]
    assert offenders == []


# --- secrets ---------------------------------------------------------------------------------------------------------
def test_credentials_by_name_never_by_value(tmp_path, monkeypatch):
    values = {}
    for name in ("LLMDR_EU_AK", "LLMDR_EU_SK", "LLMDR_US_AK", "LLMDR_US_SK", "LLMDR_US_TOKEN", "LLMDR_US_EXPIRES",
                 "LLMDR_WEBHOOK_URL", "LLMDR_REPORT_HMAC_KEY"):
        values[name] = f"value-of-{name.lower()}-x7Q9"
        monkeypatch.setenv(name, values[name])
    monkeypatch.setenv("LLMDR_WEBHOOK_URL", "https://hooks.example.com/services/T000/" + TOKEN)
    md = render_runbook(_cfg(tmp_path), now=NOW)
    creds = _section(md, 7)
    assert "Values are never in this file" in creds
    assert ("- **eu-west** storage: environment variables `LLMDR_EU_AK` (access key id) and `LLMDR_EU_SK` (secret "
            "access key)") in creds
    assert "session token in `LLMDR_US_TOKEN`" in creds and "expiry time (ISO 8601) in `LLMDR_US_EXPIRES`" in creds
    assert "`.llmdr/local.env` (mode 0600)" in creds
    assert "private key `.llmdr/keys/report-signing.key`" in creds
    for v in values.values():
        assert v not in md
    assert TOKEN not in md and "hooks.example.com" not in md


def test_secrets_in_urls_never_leak(tmp_path, monkeypatch):
    monkeypatch.setenv("AK_USW2", "AKIAEXAMPLEVALUE1234")
    md = render_runbook(_cloud(tmp_path), now=NOW)
    assert TOKEN not in md and "mlflow-user" not in md and "/services/T000" not in md
    assert "AKIAEXAMPLEVALUE1234" not in md
    assert "a webhook URL is configured in llmdr.yaml (host only: hooks.example.com)" in md
    creds = _section(md, 7)
    assert "Prefect Secret block `llmdr-use1-keys`" in creds
    assert "assumes role `arn:aws:iam::123456789012:role/llmdr` through STS `https://sts.us-west-2.amazonaws.com`" in creds
    assert "HMAC-SHA256): key in environment variable `LLMDR_SIGNING_KEY`" in creds
    assert "(https, host mlflow.example.com)" in creds


# --- drills ----------------------------------------------------------------------------------------------------------
def _drill(start: datetime, passed: bool, rto: float | None = 4.2) -> DrillRecord:
    rec = DrillRecord(bundle="support-bot", started_ts=start.timestamp(), started_by={"kind": "cli"},
                      tool_version="0.1.0", scope={}, id=f"{start:%Y%m%dT%H%M%SZ}-abc123")
    rec.passed = passed
    rec.measurements = {"rto_s": rto, "rpo_s": 61.0}
    return rec


def test_drill_history(tmp_path):
    cfg = _cfg(tmp_path)
    assert "Drill history: not looked up" in _section(render_runbook(cfg, now=NOW), 9)
    assert "> **WARNING: No drill on record: run one (`llmdr drill`); objective: every 90d.**" in \
        render_runbook(cfg, now=NOW, drills=[])
    recent = [_drill(datetime(2026, 10, 1, tzinfo=timezone.utc), True),
              _drill(datetime(2026, 11, 20, tzinfo=timezone.utc), False, rto=None)]
    md = _section(render_runbook(cfg, now=NOW, drills=recent), 9)
    assert ("Last drill on record: 20261120T000000Z-abc123 started 2026-11-20T00:00:00Z: **FAIL**, RTO not recorded, "
            "RPO 61.0 s.") in md
    assert "Last passing drill: 20261001T000000Z-abc123, 57d10h before this runbook (interval 90d)." in md
    stale = _section(render_runbook(cfg, now=NOW, drills=[r.to_json() for r in recent[:1]]), 9)
    assert "**PASS**, RTO 4.2 s" in stale and "WARNING" not in stale
    old = render_runbook(cfg, now=datetime(2027, 3, 1, tzinfo=timezone.utc), drills=recent)
    assert "> **WARNING: the last passing drill (20261001T000000Z-abc123) was 151d before this runbook, more than " \
           "the 90d drill interval.**" in old


# --- form --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["local", "weighted", "failover", "bare"])
def test_markdown_is_well_formed(tmp_path, which):
    cfg = {"local": lambda: _cfg(tmp_path), "weighted": lambda: _cloud(tmp_path, "weighted"),
           "failover": lambda: _cloud(tmp_path, "failover"),
           "bare": lambda: _cfg(tmp_path, LOCAL.split("notifications:")[0])}[which]()
    md = render_runbook(cfg, now=NOW, drills=[_drill(datetime(2026, 10, 1, tzinfo=timezone.utc), True)])
    assert md.endswith("\n") and not md.endswith("\n\n") and "\n\n\n" not in md
    lines = md.splitlines()
    assert sum(1 for line in lines if line.startswith("```")) % 2 == 0
    tables = 0
    i = 0
    while i < len(lines):
        if lines[i].startswith("|"):
            header, sep = lines[i], lines[i + 1]
            cols = _pipes(header)
            assert re.fullmatch(r"\|(---\|)+", sep) and _pipes(sep) == cols, (header, sep)
            assert lines[i - 1] == "", f"a table needs a blank line before it: {header}"
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                assert _pipes(lines[i]) == cols, (header, lines[i])
                i += 1
            tables += 1
        i += 1
    assert tables == {"local": 4, "weighted": 3, "failover": 3, "bare": 2}[which]  # overview, regions, contacts?, events?
    # headings are numbered 1..9 without gaps
    assert re.findall(r"^## (\d)\. ", md, re.M) == [str(n) for n in range(1, 10)]


def test_deterministic_for_a_fixed_time(tmp_path):
    cfg = _cfg(tmp_path)
    drills = [_drill(datetime(2026, 10, 1, tzinfo=timezone.utc), True)]
    a = render_runbook(cfg, now=NOW, drills=drills)
    assert a == render_runbook(_cfg(tmp_path), now=NOW, drills=drills)
    later = render_runbook(cfg, now=NOW.replace(hour=11), drills=drills)
    diff = [(x, y) for x, y in zip(a.splitlines(), later.splitlines(), strict=True) if x != y]
    assert len(diff) == 2  # the generation time, and the last passing drill's age
    assert "2026-11-27T11:00:00Z" in diff[0][1]


def test_names_match_prefect_yaml_and_the_automation():
    """The deployment, pool and automation names the runbook tells people to click exist under those names."""
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    flows = {}
    for d in spec["deployments"]:
        path, _, fn = d["entrypoint"].partition(":")
        src = (ROOT / path).read_text()
        flow_name = re.search(rf'@flow\(name="([^"]+)"[^)]*\)\s*\ndef {fn}\(', src).group(1)
        flows[f"{flow_name}/{d['name']}"] = d
    for name in (runbook.DEPLOY_FAILOVER, runbook.DEPLOY_FAILBACK, runbook.DEPLOY_RESTORE, runbook.DEPLOY_MONITOR,
                 runbook.DEPLOY_DRILL):
        assert name in flows, name
    # prefect.yaml names the DR pool through $LLMDR_DR_POOL, which deploy fills with llmdr-<failover target>
    assert flows[runbook.DEPLOY_FAILOVER]["work_pool"]["name"] == "{{ $LLMDR_DR_POOL }}"
    assert runbook.POOL_FAILOVER == "llmdr-{dr}"
    assert flows[runbook.DEPLOY_MONITOR]["schedules"][0]["interval"] == 60
    # the drill's schedule is derived from objectives.drill_interval by configure.py (llmdr/config/schedules.py)
    assert flows[runbook.DEPLOY_DRILL]["schedules"][0]["slug"] == "llmdr-derived"
    autos = yaml.safe_load((ROOT / "deployments" / "automations.yaml").read_text())["automations"]
    auto = next(a for a in autos if a["name"] == runbook.AUTOMATION)
    assert auto["actions"][0]["deployment"] == runbook.DEPLOY_FAILOVER


def test_render_touches_neither_prefect_nor_boto3(tmp_path):
    cfg_path = tmp_path / "llmdr.yaml"
    cfg_path.write_text(CLOUD.replace("{policy}", "weighted"))
    code = ("import sys; from llmdr.config import load_config; from llmdr.drill.runbook import render_runbook; "
            f"render_runbook(load_config({str(cfg_path)!r})); "
            "print(sorted(m for m in ('prefect', 'boto3', 'botocore') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- writing -----------------------------------------------------------------------------------------------------------
def test_write_runbook_default_path_and_history(tmp_path):
    text = LOCAL.replace("runbook:\n", "runbook:\n  path: docs/dr/RUNBOOK.md\n")
    cfg = _cfg(tmp_path, text)
    rec = _drill(datetime(2026, 10, 1, tzinfo=timezone.utc), True)
    folder = tmp_path / "reports" / "drills" / rec.id
    folder.mkdir(parents=True)
    (folder / "evidence.json").write_text(__import__("json").dumps(rec.to_json()))
    path = write_runbook(cfg, now=NOW)
    assert path == tmp_path / "docs" / "dr" / "RUNBOOK.md" == cfg.runbook_path
    assert path.read_text() == render_runbook(cfg, now=NOW, drills=[rec])
    assert "Last drill on record: 20261001T000000Z-abc123" in path.read_text()
    assert sorted(p.name for p in path.parent.iterdir()) == ["RUNBOOK.md"]  # no temporary file left


def test_write_runbook_replaces_atomically(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    target = tmp_path / "out" / "RB.md"
    assert write_runbook(cfg, target, now=NOW) == target
    first = target.read_text()
    assert first == render_runbook(cfg, now=NOW, drills=[])

    def broken(*a, **k):
        raise RuntimeError("render failed")

    monkeypatch.setattr(runbook, "render_runbook", broken)
    with pytest.raises(RuntimeError):
        write_runbook(cfg, target, now=NOW)
    assert target.read_text() == first  # the old runbook stays whole
    monkeypatch.undo()
    write_runbook(cfg, target, now=NOW.replace(year=2027))
    assert "2027-11-27T10:00:00Z" in target.read_text()
    assert sorted(p.name for p in target.parent.iterdir()) == ["RB.md"]
