"""The DR runbook: a markdown playbook for people, rendered from ``llmdr.yaml``.

Who is told and who to call, how an outage is detected, how to fail over by hand (CLI, Prefect UI, and the router
itself when llmdr cannot), how to restore and fail back, where every credential lives, the emergency-access steps and
the drill programme — with the config's own region names, URLs and commands, so it is right for this deployment and
regenerated (`llmdr runbook`) whenever the config changes. Every signed drill report carries a copy: the playbook that
was in force during that drill.

Secrets never appear: credentials are named by their environment variable or Prefect block, a webhook URL written
into the file is shown by its host only, and URLs lose any user:password part and query string.
:func:`render_runbook` is pure (no network, no environment, no files): the same config, time and drill history give
the same bytes.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from llmdr import __version__
from llmdr.artifacts import artifact_key
from llmdr.common.files import atomic_write
from llmdr.config import DEFAULT_CONFIG, CaddyRouter, Config, Region, Route53Router, format_duration

log = logging.getLogger(__name__)

# Names defined in prefect.yaml and deployments/automations.yaml (tests/test_runbook.py checks they still match).
POOL_FAILOVER = "llmdr-failover"
DEPLOY_FAILOVER = "failover/failover"
DEPLOY_FAILBACK = "failback/failback"
DEPLOY_RESTORE = "restore-bundle/restore-bundle"
DEPLOY_MONITOR = "monitor-endpoints/monitor-endpoints"
DEPLOY_DRILL = "dr-drill/dr-drill-quarterly"
AUTOMATION = "llmdr-failover-when-active-region-down"
DEFAULT_UI = "http://127.0.0.1:4200"

SECTIONS = ("Overview", "Who is notified, who to call", "Detect an outage", "Fail over by hand", "Restore",
            "Fail back", "Credentials (names only)", "Emergency access", "Drills and readiness")


# --- small markdown helpers ----------------------------------------------------------------------------------------
def _code(s: Any) -> str:
    """Inline code that survives backticks in the value."""
    s = str(s)
    return f"`` {s} ``" if "`" in s else f"`{s}`"


def _cell(s: Any) -> str:
    """Text safe inside a table cell: pipes escaped, one line."""
    return " ".join(str(s).split()).replace("|", "\\|") or "—"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def _warn(text: str) -> str:
    return f"> **WARNING: {text}**"


def _safe_url(url: str) -> str:
    """``url`` without user:password, query or fragment (where tokens hide)."""
    u = urlsplit(url)
    host = u.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{u.port}" if u.port else ""
    return f"{u.scheme}://{host}{port}{u.path}"


def _rel(p: str, *more: str) -> str:
    """A path from the config (relative to the config folder, or absolute), joined with ``more``, POSIX style."""
    return Path(p, *more).as_posix()


def _dur(td: timedelta) -> str:
    """``format_duration``, but sub-second durations as e.g. ``0.3s``."""
    secs = td.total_seconds()
    return format_duration(td) if secs >= 1 or secs == 0 else f"{secs:g}s"


def _utc(dt: datetime) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _get(d: Any, key: str) -> Any:
    return d.get(key) if isinstance(d, dict) else getattr(d, key, None)


# --- the runbook ---------------------------------------------------------------------------------------------------
class _Ctx:
    """What every section needs: the config, the command prefix, the names it keeps using."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        src = cfg.source_file
        self.config_name = src.name if src is not None else DEFAULT_CONFIG
        self.llmdr = ("llmdr" if self.config_name == DEFAULT_CONFIG
                      else f"llmdr --config {shlex.quote(self.config_name)}")
        self.primary = cfg.primary
        self.target = cfg.failover_target()
        self.others = [r for r in cfg.secondaries if r.name != self.target.name]
        self.bundle = cfg.bundle.name

    def cmd(self, rest: str) -> str:
        return f"{self.llmdr} {rest}"


def render_runbook(cfg: Config, *, now: datetime | None = None, drills: Sequence[Any] | None = None) -> str:
    """The runbook as markdown. ``now`` is the generation time (default: now, UTC); ``drills`` the drill history
    (``llmdr.drill.history(cfg)`` records or their JSON, oldest first; None: not looked up)."""
    now = now or datetime.now(timezone.utc)
    c = _Ctx(cfg)
    lines = _header(c, now) + [""]
    for part in (_overview, _notify, _detect, _failover, _restore, _failback, _credentials, _emergency):
        lines += part(c) + [""]
    lines += _drills(c, now, drills)
    return "\n".join(lines).rstrip("\n") + "\n"


def write_runbook(cfg: Config, path: Path | None = None, *, now: datetime | None = None) -> Path:
    """Render the runbook (with the drill history on disk) and write it atomically to ``path`` (default:
    ``runbook.path`` next to llmdr.yaml), creating its folder. Returns the path written."""
    from llmdr.drill.record import history

    try:
        drills: list[Any] | None = history(cfg)
    except OSError as exc:  # an unreadable reports folder must not block the runbook
        log.warning("drill history not read for the runbook: %s", exc)
        drills = None
    target = Path(path) if path is not None else cfg.runbook_path
    atomic_write(target, render_runbook(cfg, now=now, drills=drills))
    log.info("runbook written to %s", target)
    return target


def _console(cfg: Config, steps: Sequence[tuple[str, str]]) -> list[str]:
    """A console block run from the config's folder, each command with its comment aligned."""
    width = max(len(cmd) for cmd, _ in steps) + 2
    return ["```console", f"cd {shlex.quote(cfg.base_dir.as_posix())}",
            *[f"{cmd:<{width}}# {why}" if why else cmd for cmd, why in steps], "```"]


def _section(n: int) -> str:
    return f"## {n}. {SECTIONS[n - 1]}"


def _header(c: _Ctx, now: datetime) -> list[str]:
    cfg = c.cfg
    src = str(cfg.source_file) if cfg.source_file is not None else f"{DEFAULT_CONFIG} (not loaded from a file)"
    lines = [f"# DR runbook: {c.bundle}", "",
             f"Generated by `llmdr runbook` (llmdr {__version__}) from {_code(src)} at {_utc(now)}. It is derived "
             "from that file: regenerate it after every change (edits by hand are overwritten).", "",
             "**Secrets are never in this file**: it names the environment variables and Prefect blocks that hold "
             "them, never their values.", "",
             f"Run every command below in {_code(cfg.base_dir.as_posix())}, the folder holding "
             f"{_code(c.config_name)}."]
    if c.llmdr != "llmdr":
        lines.append(f"{_code(c.llmdr.removeprefix('llmdr '))} (or `LLMDR_CONFIG`) selects this config; the commands "
                     "include it.")
    return lines


def _overview(c: _Ctx) -> list[str]:
    cfg, o = c.cfg, c.cfg.objectives
    auto = ("automatic (a Prefect automation runs the failover when the active region is down)" if cfg.failover.auto
            else "MANUAL (failover.auto: false): nobody moves traffic until someone follows section 4")
    lines = [_section(1), ""]
    lines += _table(["item", "value"], [
        ["Bundle", f"{c.bundle} (folder {cfg.bundle.path})"],
        ["Config file", str(cfg.source_file or DEFAULT_CONFIG)],
        ["Objectives", f"RPO {format_duration(o.rpo)} · RTO {format_duration(o.rto)} · a DR drill every "
                       f"{format_duration(o.drill_interval)}"],
        ["Failover", auto],
        ["Failover target", f"{c.target.name}" + (" (failover.target)" if cfg.failover.target else
                                                  " (the first secondary; set failover.target to choose)")],
        ["Router", _router_line(cfg)],
    ])
    lines += ["", "### Regions", ""]
    rows = []
    for r in cfg.regions:
        role = r.role + (" (failover target)" if r.name == c.target.name else "")
        lock = f"{r.object_lock.mode} {format_duration(r.object_lock.period)}" if r.object_lock else "none"
        rows.append([r.name, role, _store(r), f"{r.bucket}/{r.prefix.strip('/')}" if r.prefix.strip("/") else r.bucket,
                     _safe_url(r.serving.url) if r.serving else "none", _warm(r), lock])
    lines += _table(["region", "role", "store endpoint", "bucket/prefix", "serving URL", "warm standby",
                     "Object Lock"], rows)
    return lines


def _store(r: Region) -> str:
    where = _safe_url(r.endpoint) if r.endpoint else f"AWS S3 {r.s3_region}"
    return where + (" (local stack)" if r.is_local else "")


def _warm(r: Region) -> str:
    if r.serving is None:
        return "no serving endpoint"
    if r.serving.warm:
        return "yes (replica kept running)"
    return "no (cold start on failover)"


def _router_line(cfg: Config) -> str:
    rt = cfg.router
    if isinstance(rt, CaddyRouter):
        return f"Caddy on this machine: clients use {_safe_url(rt.listen)} (admin API {_safe_url(rt.admin)}, loopback)"
    if isinstance(rt, Route53Router):
        return (f"Route 53 {rt.policy} record {rt.record_name} ({rt.record_type}, TTL {rt.ttl}s) in hosted zone "
                f"{rt.hosted_zone_id}: clients use {_safe_url(rt.url)}")
    return "none: clients call a region's serving URL directly"


def _notify(c: _Ctx) -> list[str]:
    cfg = c.cfg
    lines = [_section(2), "", "### Contacts (call in this order)", ""]
    if cfg.runbook.contacts:
        lines += _table(["#", "name", "role", "how to reach"],
                        [[i, k.name, k.role or "—", k.reach or "—"] for i, k in enumerate(cfg.runbook.contacts, 1)])
    else:
        lines.append(_warn("No contacts configured — add runbook.contacts to llmdr.yaml (name, role, reach)."))
    lines += ["", "### Automatic notifications", ""]
    n = cfg.notifications
    channels = []
    if n is not None:
        if n.webhook_url_env:
            channels.append(f"Webhook (one JSON POST; Slack/Teams incoming webhooks show its text): the URL is read from "
                            f"the environment variable {_code(n.webhook_url_env)} when a notice is sent"
                            + (" (it wins over the URL also written in llmdr.yaml)" if n.webhook_url else "") + ".")
        elif n.webhook_url:
            host = urlsplit(n.webhook_url).hostname or "?"
            channels.append(f"Webhook (one JSON POST): a webhook URL is configured in llmdr.yaml (host only: {host}). "
                            "Such URLs usually embed a token: move it to an environment variable and name it in "
                            "notifications.webhook_url_env.")
        if n.prefect_block:
            channels.append(f"Prefect notification block {_code(n.prefect_block)} (Prefect UI → Blocks).")
    if not channels:
        lines.append(_warn("No automatic notifications configured — add notifications: {webhook_url_env: ..., "
                           "prefect_block: ...} to llmdr.yaml. Until then nobody is told about a failover: call the "
                           "contacts above."))
    else:
        lines += [f"- {ch}" for ch in channels]
        timeout = _dur(n.timeout) if n is not None else "?"
        lines += [f"- Each channel gets up to {timeout} per notice; delivery is best effort: a notice "
                  "that cannot be sent is logged in the flow run and never stops a failover.",
                  "", "Every channel gets a notice on these events:", ""]
        lines += _table(["event", "when", "severity"], [
            ["failover completed", "traffic moved to another region (automation, `llmdr failover` or the UI)",
             "warning"],
            ["failover failed", "a failover was tried; traffic not moved, or the switch rolled back", "critical"],
            ["failback completed", "traffic back on the primary", "info"],
            ["failback failed", "traffic stays on the DR region", "warning"],
            ["verification failed", "verify-replicas left a region's copy wrong (read-back or restore test), or "
                                    "the golden check before a switch failed", "critical"],
            ["DR drill finished", "every drill, with its verdict", "info (PASS) / critical (FAIL)"],
            ["readiness failed", "the daily readiness-check found a failing check (credentials, stale copy, "
                                 "missing component, no recent drill, no Object Lock, restore slower than the RTO)",
             "critical"],
        ])
        lines += ["", "Not notified by themselves: an endpoint going down or degraded (a Prefect event, "
                  "`llmdr.endpoint.down` / `.degraded`, that starts the failover automation), a failover that found "
                  "nothing to do (the target was already active, or the outage was a blip)."]
    return lines


def _detect(c: _Ctx) -> list[str]:
    cfg, m = c.cfg, c.cfg.monitor
    lines = [_section(3), ""]
    if not any(r.serving for r in cfg.regions):
        lines += [_warn("No region has a serving endpoint (regions[].serving.url): the monitor has nothing to "
                        "probe and no failover can run. Only the storage copies (sections 5 and 6) are protected."),
                  ""]
    lines += [f"- The `monitor-endpoints` deployment ({_code(DEPLOY_MONITOR)}, work pool {_code(POOL_FAILOVER)}) runs every "
              f"minute and watches for ~58 s: it probes every region's serving endpoint"
              + (" and the router" if cfg.router else "") + f" every {_dur(m.interval)} (timeout "
              f"{_dur(m.timeout)}). An endpoint is **down** after {m.down_after} failed probes in a row "
              "(event `llmdr.endpoint.down`), **degraded** when its error rate reaches "
              f"{m.error_rate_threshold:g} or its latency / tokens per answer drift (robust z-score ≥ "
              f"{m.z_threshold:g}) or a golden spot check fails (`llmdr.endpoint.degraded`), "
              "`llmdr.endpoint.recovered` when healthy again. Prefect UI → Events shows them.",
              f"- By hand: {_code(c.cmd('status'))} (where traffic goes, each region's store / replica / monitor "
              f"status; exit 3 if the active region does not answer), {_code(c.cmd('monitor --once'))} (one probe "
              f"round), {_code(c.cmd('monitor --duration 60'))} (watch a minute; exit 3 if the active region is "
              "down).", ""]
    f = cfg.failover
    if f.auto:
        lines.append(f"**Failover is automatic.** The Prefect automation {_code(AUTOMATION)} runs the "
                     f"{_code(DEPLOY_FAILOVER)} deployment when `llmdr.endpoint.down` arrives for the region the router "
                     f"sends traffic to. The flow confirms the outage with {f.confirm_probes} direct probes "
                     f"{_dur(f.confirm_interval)} "
                     f"apart (a blip does not move traffic), gets a healthy replica in {_code(c.target.name)} "
                     "(warm, or cold-started from that region's own store), checks the golden set against it, "
                     "switches the router and checks the golden set through the router (the switch is rolled back "
                     "if that fails). Check that the automation is enabled: Prefect UI → Automations. If traffic "
                     f"has not moved within the RTO ({format_duration(cfg.objectives.rto)}), fail over by hand "
                     "(section 4).")
    else:
        lines.append(f"**Failover is MANUAL** (`failover.auto: false`): the automation {_code(AUTOMATION)} is "
                     f"created disabled. A down region is detected (events, {_code(c.cmd('status'))}) but no notice is sent and "
                     "traffic does not move until someone follows section 4.")
    return lines


def _failover(c: _Ctx) -> list[str]:
    cfg = c.cfg
    t = c.target
    lines = [_section(4), "",
             "When: the active region is down and traffic has not moved on its own, or a planned switchover "
             "(maintenance). `llmdr failover` moves traffic even if the active region still answers.", "",
             "### From the command line", ""]
    gold = "" if cfg.golden == "golden.jsonl" else f" --golden {cfg.golden}"
    steps = [(c.cmd("status"), "which region is ACTIVE; store / replica / monitor per region"),
             (c.cmd(f"failover --to {t.name} --reason '<why, ticket>'"), "runs the failover flow"),
             (c.cmd("status"), f"traffic: ACTIVE on {t.name}")]
    if cfg.router:
        steps.append((c.cmd(f"golden check --url {_safe_url(cfg.router.url)}{gold}"),
                      "golden set through the router (exit 5 on a mismatch)"))
    elif t.serving:
        steps.append((c.cmd(f"golden check --url {_safe_url(t.serving.url)}{gold}"),
                      f"golden set against {t.name} (exit 5 on a mismatch)"))
    steps.append((c.cmd("failovers"), "the record: steps, RTO"))
    lines += _console(cfg, steps)
    lines += ["",
              f"The flow starts the replica in {t.name} from that region's own store if it is not running, checks "
              "the golden set against it, switches the router, checks again through the router (rolled back if "
              "that fails), records the run and sends the failover notice."]
    if t.serving:
        lines.append(f"If the golden check through the router fails, ask {t.name}'s replica directly: "
                     f"{_code(c.cmd('golden check --url ' + _safe_url(t.serving.url) + gold))}; restart it with "
                     f"{_code(c.cmd('replica start ' + t.name + ' --snapshot latest'))}.")
    if c.others:
        lines.append("Other DR regions: " + ", ".join(_code(c.cmd(f"failover --to {r.name}")) for r in c.others) + ".")
    lines += ["", "### From the Prefect UI", "",
              f"1. Open the Prefect UI ({DEFAULT_UI} for the local stack started by {_code(c.cmd('stack up --ui'))}; "
              f"{_code(c.cmd('stack status'))} shows it), or your Prefect server.",
              f"2. Deployments → **failover** ({_code(DEPLOY_FAILOVER)}, work pool {_code(POOL_FAILOVER)}).",
              f"3. Run → Custom run → parameters: `to` = {_code(t.name)}, `reason` = why (ticket), `trigger` = "
              "`manual` (keep it: other triggers require the outage to be confirmed first), `config_path` empty "
              "(the worker's llmdr.yaml). Submit.",
              "4. Flow Runs → the new run: watch its steps (ensure-replica, golden-check, switch-router, "
              "verify-through-router) reach Completed.",
              f"5. Artifacts → {_code(artifact_key('failover', c.bundle))} (result, RTO, every step) and "
              f"{_code(artifact_key('failover', c.bundle) + '-table')} (every run).",
              "",
              f"A run needs a worker on pool {_code(POOL_FAILOVER)}: the warm runner (`deployments/warm_runner.py`, "
              f"started by {_code(c.cmd('stack up --ui'))}) or `prefect worker start --pool {POOL_FAILOVER}`. If it stays "
              "Scheduled, no worker serves that pool: use the command line.", "",
              "### If llmdr cannot switch: change the router itself", ""]
    lines += _router_fallback(c)
    return lines


def _router_fallback(c: _Ctx) -> list[str]:
    cfg, t, rt = c.cfg, c.target, c.cfg.router
    if isinstance(rt, CaddyRouter):
        sel = _rel(cfg.state_dir, "router", "selected-region")
        return [f"Caddy sends each request to the region named in {_code(sel)} (read on every request: the region name, no "
                "newline). Replace that file atomically:", "", "```console", f"cd {shlex.quote(cfg.base_dir.as_posix())}",
                f"printf %s {t.name} > {shlex.quote(sel + '.tmp')} && mv {shlex.quote(sel + '.tmp')} {shlex.quote(sel)}", "```", "",
                f"Answers then carry `X-Llmdr-Region: {t.name}`. A switch made this way is not in the router history "
                f"({_code(_rel(cfg.state_dir, 'router', 'history.jsonl'))}); {_code(c.cmd('status'))} shows the live "
                f"selection. If Caddy itself is down, {_code(c.cmd('stack up'))} restarts it (local stack), or point clients at "
                + (f"{t.name}'s serving URL {_safe_url(t.serving.url)}." if t.serving else "the target region.")]
    if isinstance(rt, Route53Router):
        value = rt.values.get(t.name, "(no value for this region in router.values)")
        lines = [f"AWS console → Route 53 → Hosted zones → {_code(rt.hosted_zone_id)} → records named "
                 f"{_code(rt.record_name)} (type {rt.record_type}):", ""]
        if rt.policy == "weighted":
            lines += [f"- Weighted records, one per region (Record ID = region name). Set **Weight 100** on Record ID "
                      f"{_code(t.name)} (value {_code(value)}) and **0** on every other one."]
        else:
            base = rt.record_name.rstrip(".")
            lines += [f"- Failover records: set the PRIMARY record (Record ID {_code(base + '-primary')}) to "
                      f"{_code(value)}, {t.name}'s value, and the SECONDARY ({_code(base + '-secondary')}) to the "
                      f"region it replaces (normally {c.primary.name}: "
                      f"{_code(rt.values.get(c.primary.name, '(no value in router.values)'))})."]
        lines += ["- Values per region: " + ", ".join(f"{k} → {_code(v)}" for k, v in sorted(rt.values.items())) + ".",
                  f"- Or with the AWS CLI: `aws route53 change-resource-record-sets --hosted-zone-id "
                  f"{rt.hosted_zone_id} --change-batch file://switch.json` (all records UPSERTed in one batch).",
                  f"- Resolvers keep the old answer for up to the TTL ({rt.ttl}s). The switch is not in llmdr's router "
                  f"history; {_code(c.cmd('status'))} reads the live records."]
        return lines
    if t.serving:
        return [f"No router is configured: point clients (DNS, load balancer, client config) at {t.name}'s serving "
                f"URL {_safe_url(t.serving.url)}."]
    return ["No router and no serving endpoint are configured: there is no traffic to move; restore the bundle where "
            "it is needed (section 5)."]


def _restore(c: _Ctx) -> list[str]:
    cfg, t = c.cfg, c.target
    folder = f"restored-{c.bundle}"
    lines = [_section(5), "",
             f"Bring the bundle back from the DR region {_code(t.name)} (its own copy; the primary is not needed). "
             "Every chunk is verified before it is written; an interrupted restore resumes.", ""]
    lines += _console(cfg, [
        (c.cmd(f"snapshots --region {t.name}"), "complete snapshots there, oldest first"),
        (c.cmd(f"restore latest --region {t.name} --to {folder}"), "or a snapshot id / prefix instead of latest"),
        (c.cmd(f"check {folder}"), "every required component present and valid"),
        (c.cmd(f"verify latest --region {t.name} --restore-test"), "read back + serve + golden set (exit 6)")])
    lines += ["",
             f"To put the bundle back in place (its folder {_code(cfg.bundle.path)} lost or damaged): "
             f"{_code(c.cmd(f'restore latest --region {t.name} --to {shlex.quote(cfg.bundle.path)} --force'))}. A region with "
             f"corrupt or missing chunks: {_code(c.cmd(f'verify latest --region {c.primary.name} --repair'))} "
             "fetches intact copies from another region.", "",
             f"From the Prefect UI: Deployments → **restore-bundle** ({_code(DEPLOY_RESTORE)}) → Run → Custom run: "
             f"`target` = a folder on the worker's machine, `region` = {_code(t.name)}, `snapshot` = `latest` (or an "
             f"id), `force` only to overwrite. Result: artifact {_code(artifact_key('restore-bundle', c.bundle))}."]
    if cfg.datasets:
        lines += ["", "Datasets (DVC), back from the DR region's remote, md5-checked and validated:", ""]
        lines += _console(cfg, [(c.cmd("datasets status"), "each version per region")]
                          + [(c.cmd(f"datasets pull {d.name} --region {t.name}"), "") for d in cfg.datasets])
    return lines


def _failback(c: _Ctx) -> list[str]:
    cfg, p = c.cfg, c.primary
    lines = [_section(6), "", f"Once {p.name} is healthy again:", ""]
    steps = [(c.cmd(f"stack up {p.name}"), "local stack: its S3 server and replica")] if p.is_local else []
    steps += [(c.cmd("status"), f"{p.name}: store healthy"),
              (c.cmd("failback --reason '<why>'"), "runs the failback flow"),
              (c.cmd("status"), f"traffic: ACTIVE on {p.name}")]
    lines += _console(cfg, steps)
    lines += ["",
              f"Failback requires {p.name}'s store to answer; it copies back every snapshot taken in the DR region "
              f"meanwhile, (re)starts {p.name}'s replica on the newest snapshot, checks the golden set, then switches "
              "the router and checks again through it (rolled back if that fails), and sends the failback notice. "
              f"From the UI: Deployments → **failback** ({_code(DEPLOY_FAILBACK)}) → Run. Artifact "
              f"{_code(artifact_key('failback', c.bundle))}."]
    return lines


def _credentials(c: _Ctx) -> list[str]:
    cfg = c.cfg
    lines = [_section(7), "",
             "Values are never in this file. They live in the environment of whoever runs llmdr (your shell, the "
             "Prefect workers) or in Prefect Secret blocks; the workers need the same ones.", ""]
    for r in cfg.regions:
        k = r.credentials
        if k.prefect_secret_block:
            src = (f"Prefect Secret block {_code(k.prefect_secret_block)} (Prefect UI → Blocks; JSON with "
                   "`access_key_id`, `secret_access_key`, optionally `session_token`)")
        else:
            src = (f"environment variables {_code(k.access_key_env)} (access key id) and {_code(k.secret_key_env)} "
                   "(secret access key)")
        more = []
        if k.session_token_env:
            more.append(f"session token in {_code(k.session_token_env)}")
        if k.expiration_env:
            more.append(f"expiry time (ISO 8601) in {_code(k.expiration_env)}")
        if k.role_arn:
            more.append(f"assumes role {_code(k.role_arn)} through STS "
                        f"{_code(_safe_url(k.sts_endpoint)) if k.sts_endpoint else '(AWS)'} for "
                        f"{format_duration(k.session_duration)}")
        if r.is_local and not k.prefect_secret_block:
            more.append(f"on the local stack `llmdr stack up` generates them into {_code(_rel(cfg.state_dir, 'local.env'))} "
                        "(mode 0600) unless the environment sets them")
        lines.append(f"- **{r.name}** storage: {src}" + ("; " + "; ".join(more) if more else "") + ".")
        if r.encryption:
            e = r.encryption
            where = (f"Prefect Secret block {_code(e.prefect_secret_block)}" if e.prefect_secret_block
                     else f"environment variable {_code(e.key_env)}")
            lines.append(f"- **{r.name}** encryption key (AES-256-GCM, client side): {where}. WITHOUT IT THE COPY IN "
                         f"{r.name.upper()} CANNOT BE READ: keep it in a secret store outside both regions.")
    ms = cfg.manifest_signing
    if ms is not None:
        if ms.method == "hmac":
            lines.append(f"- **Manifest signing** (HMAC-SHA256): key in environment variable {_code(ms.hmac_key_env)}; "
                         "every host that writes or restores snapshots needs it.")
        else:
            lines.append(f"- **Manifest signing** (Ed25519): private key {_code(_rel(cfg.state_dir, ms.private_key))} "
                         f"(hosts that write snapshots), public key {_code(_rel(cfg.state_dir, ms.public_key))} "
                         "(every host that restores).")
    rt = cfg.router
    if isinstance(rt, Route53Router):
        lines.append(f"- **Route 53** (zone {_code(rt.hosted_zone_id)}): the standard AWS chain (`AWS_PROFILE`, or "
                     "`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, or an instance role) for an identity allowed "
                     "route53:ChangeResourceRecordSets, ListResourceRecordSets and GetChange on it.")
    elif isinstance(rt, CaddyRouter):
        lines.append("- **Router** (Caddy): no credentials; its admin API listens on loopback only.")
    n = cfg.notifications
    if n is not None and (n.webhook_url_env or n.webhook_url):
        where = (f"environment variable {_code(n.webhook_url_env)}" if n.webhook_url_env else
                 f"llmdr.yaml (host {urlsplit(n.webhook_url or '').hostname}; the URL is not repeated here)")
        lines.append(f"- **Notification webhook** URL (it embeds a token): {where}.")
    if n is not None and n.prefect_block:
        lines.append(f"- **Notification block**: Prefect block {_code(n.prefect_block)}.")
    s = cfg.drill.signing
    if s.method == "ed25519":
        priv = s.private_key if Path(s.private_key).is_absolute() else _rel(cfg.state_dir, s.private_key)
        pub = s.public_key if Path(s.public_key).is_absolute() else _rel(cfg.state_dir, s.public_key)
        lines.append(f"- **Drill report signing** (Ed25519): private key {_code(priv)} (mode 0600, made on first use; "
                     f"only the drill runner needs it), public key {_code(pub)} (give it to auditors).")
    else:
        lines.append(f"- **Drill report signing** (HMAC-SHA256): key in environment variable {_code(s.hmac_key_env)} "
                     "(auditors need the same key to verify).")
    if cfg.tracking.uri:
        u = urlsplit(cfg.tracking.uri)
        lines.append(f"- **MLflow** tracking store: `tracking.uri` in llmdr.yaml ({u.scheme or 'file'}"
                     + (f", host {u.hostname}" if u.hostname else "") + "); credentials, if any, as MLflow reads "
                     "them (`MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD` / `MLFLOW_TRACKING_TOKEN`).")
    else:
        lines.append(f"- **MLflow** tracking store: {_code(_rel(cfg.state_dir, 'mlflow', 'mlflow.db'))} (sqlite, no "
                     "credentials).")
    if cfg.datasets:
        lines.append("- **DVC remotes** (datasets): each region's storage keys above; `llmdr datasets remotes` writes "
                     "them only to `.dvc/config.local` (git-ignored, mode 0600).")
    return lines


def _emergency(c: _Ctx) -> list[str]:
    steps = c.cfg.runbook.emergency_access
    lines = [_section(8), ""]
    if steps:
        lines += [f"{i}. {' '.join(s.split())}" for i, s in enumerate(steps, 1)]
        return lines
    return lines + [_warn("No emergency access steps configured — add runbook.emergency_access to llmdr.yaml "
                          "(break-glass steps, in order; names, never secrets)."), "",
                    "Until then, agree and write down:", "",
                    "1. the break-glass account or role for each region's storage (and the router and Prefect), "
                    "and where its credentials are kept (a vault entry's name, never the value);",
                    "2. who approves its use (the incident commander) and how the use is logged;",
                    "3. rotating those credentials after every use."]


def _drills(c: _Ctx, now: datetime, drills: Sequence[Any] | None) -> list[str]:
    cfg = c.cfg
    interval = cfg.objectives.drill_interval
    lines = [_section(9), ""]
    if drills is None:
        lines.append(f"Drill history: not looked up ({_code(c.cmd('drills'))} lists it).")
    elif not drills:
        lines.append(_warn(f"No drill on record: run one (`{c.cmd('drill')}`); objective: every "
                           f"{format_duration(interval)}."))
    else:
        last = drills[-1]
        passes = [d for d in drills if _get(d, "passed") and not _get(d, "failed_over_at_end")]
        lines.append(f"Last drill on record: {_drill_line(last)}.")
        if passes:
            lp = passes[-1]
            age = now.timestamp() - float(_get(lp, "started_ts") or 0)
            when = format_duration(timedelta(seconds=max(int(age), 0)))
            if age > interval.total_seconds():
                lines.append(_warn(f"the last passing drill ({_get(lp, 'id')}) was {when} before this runbook, more "
                                   f"than the {format_duration(interval)} drill interval."))
            else:
                lines.append(f"Last passing drill: {_get(lp, 'id')}, {when} before this runbook (interval "
                             f"{format_duration(interval)}).")
        else:
            lines.append(_warn("no passing drill on record."))
    reports = _rel(cfg.drill.reports_dir, "drills")
    verify = f"report verify {reports}/<drill id>"
    if cfg.drill.signing.method == "ed25519":
        pub = cfg.drill.signing.public_key
        verify += f" --public-key {pub if Path(pub).is_absolute() else _rel(cfg.state_dir, pub)}"
    lines += ["",
              f"- {_code(c.cmd('drill'))}: a full drill now (needs {_code(c.cmd('stack up --ui'))}): the primary is cut off, the "
              "automation must fail over on its own, RTO/RPO are measured, the restore test runs from the DR store, "
              "then failback; exit 8 if a control fails. Scheduled: the `dr-drill-quarterly` deployment "
              f"({_code(DEPLOY_DRILL)}, 06:00 UTC on 1 January, April, July and October).",
              f"- {_code(c.cmd('drills'))}: every drill (RTO, RPO, result); warns when the last passing one is older "
              f"than {format_duration(interval)}.",
              f"- {_code(c.cmd('readiness'))}: the readiness checks; exits non-zero on any FAIL.",
              f"- {_code(c.cmd(verify))}: checks a report's signature and every file offline (exit 10 if anything "
              f"changed). Reports are under {_code(reports + '/')}; each holds a copy of this runbook "
              "(`RUNBOOK.md`) as it was during that drill, covered by the signature.",
              f"- {_code(c.cmd('runbook'))}: regenerates this file."]
    return lines


def _drill_line(d: Any) -> str:
    m = _get(d, "measurements") or {}
    verdict = "PASS" if _get(d, "passed") and not _get(d, "failed_over_at_end") else "FAIL"
    started = _get(d, "started_utc")
    if started is None and _get(d, "started_ts") is not None:
        started = _utc(datetime.fromtimestamp(float(_get(d, "started_ts")), timezone.utc))
    parts = [f"{_get(d, 'id')} started {started}: **{verdict}**"]
    for name, key in (("RTO", "rto_s"), ("RPO", "rpo_s")):
        v = m.get(key) if isinstance(m, dict) else None
        parts.append(f"{name} {v:.1f} s" if isinstance(v, (int, float)) else f"{name} not recorded")
    return ", ".join(parts)
