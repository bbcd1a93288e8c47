"""Runbook sections 5–9, the recovery: restore the bundle from the DR region, fail back, where every credential
lives (names only), the emergency-access steps, and the drill programme with the last drills on record."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from llmdr.artifacts import artifact_key
from llmdr.config import CaddyRouter, Route53Router, format_duration
from llmdr.config.schedules import drill_schedule
from llmdr.drill.runbook.text import (
    DEPLOY_DRILL,
    DEPLOY_FAILBACK,
    DEPLOY_RESTORE,
    Context,
    code,
    console,
    deployment_name,
    field,
    heading,
    rel,
    safe_url,
    utc_text,
    warn,
)


def restore(c: Context) -> list[str]:
    cfg, t = c.cfg, c.target
    folder = f"restored-{c.bundle}"
    lines = [heading(5), "",
             f"Bring the bundle back from the DR region {code(t.name)} (its own copy; the primary is not needed). "
             "Every chunk is verified before it is written; an interrupted restore resumes.", ""]
    lines += console(cfg, [
        (c.cmd(f"snapshots --region {t.name}"), "complete snapshots there, oldest first"),
        (c.cmd(f"restore latest --region {t.name} --to {folder}"), "or a snapshot id / prefix instead of latest"),
        (c.cmd(f"check {folder}"), "every required component present and valid"),
        (c.cmd(f"verify latest --region {t.name} --restore-test"), "read back + serve + golden set (exit 6)")])
    lines += ["",
             f"To put the bundle back in place (its folder {code(cfg.bundle.path)} lost or damaged): "
             f"{code(c.cmd(f'restore latest --region {t.name} --to {shlex.quote(cfg.bundle.path)} --force'))}. A region with "
             f"corrupt or missing chunks: {code(c.cmd(f'verify latest --region {c.primary.name} --repair'))} "
             "fetches intact copies from another region.", "",
             f"From the Prefect UI: Deployments → **restore-bundle** ({code(deployment_name(c.cfg, DEPLOY_RESTORE))}) → Run → Custom run: "
             f"`target` = a folder on the worker's machine, `region` = {code(t.name)}, `snapshot` = `latest` (or an "
             f"id), `force` only to overwrite. Result: artifact {code(artifact_key('restore-bundle', c.bundle))}."]
    if cfg.datasets:
        lines += ["", "Datasets (DVC), back from the DR region's remote, md5-checked and validated:", ""]
        lines += console(cfg, [(c.cmd("datasets status"), "each version per region")]
                          + [(c.cmd(f"datasets pull {d.name} --region {t.name}"), "") for d in cfg.datasets])
    return lines


def failback(c: Context) -> list[str]:
    cfg, p = c.cfg, c.primary
    lines = [heading(6), "", f"Once {p.name} is healthy again:", ""]
    steps = [(c.cmd(f"stack up {p.name}"), "local stack: its S3 server and replica")] if p.is_local else []
    steps += [(c.cmd("status"), f"{p.name}: store healthy"),
              (c.cmd("failback --reason '<why>'"), "runs the failback flow"),
              (c.cmd("status"), f"traffic: ACTIVE on {p.name}")]
    lines += console(cfg, steps)
    lines += ["",
              f"Failback requires {p.name}'s store to answer; it copies back every snapshot taken in the DR region "
              f"meanwhile, (re)starts {p.name}'s replica on the newest snapshot, checks the golden set, then switches "
              "the router and checks again through it (rolled back if that fails), and sends the failback notice. "
              f"From the UI: Deployments → **failback** ({code(deployment_name(c.cfg, DEPLOY_FAILBACK))}) → Run. Artifact "
              f"{code(artifact_key('failback', c.bundle))}."]
    return lines


def credentials(c: Context) -> list[str]:
    cfg = c.cfg
    lines = [heading(7), "",
             "Values are never in this file. They live in the environment of whoever runs llmdr (your shell, the "
             "Prefect workers) or in Prefect Secret blocks; the workers need the same ones.", ""]
    for r in cfg.regions:
        k = r.credentials
        if k.prefect_secret_block:
            src = (f"Prefect Secret block {code(k.prefect_secret_block)} (Prefect UI → Blocks; JSON with "
                   "`access_key_id`, `secret_access_key`, optionally `session_token`)")
        elif k.default_chain:
            src = ("the AWS default credential chain" + (f" with profile {code(k.profile)}" if k.profile else "")
                   + " (`AWS_PROFILE` and the shared config/credentials files, SSO, web identity, container or "
                   "instance role, or `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`)")
        else:
            src = (f"environment variables {code(k.access_key_env)} (access key id) and {code(k.secret_key_env)} "
                   "(secret access key)")
        more = []
        if k.session_token_env:
            more.append(f"session token in {code(k.session_token_env)}")
        if k.expiration_env:
            more.append(f"expiry time (ISO 8601) in {code(k.expiration_env)}")
        if k.role_arn:
            more.append(f"assumes role {code(k.role_arn)} through STS "
                        f"{code(safe_url(k.sts_endpoint)) if k.sts_endpoint else '(AWS)'} for "
                        f"{format_duration(k.session_duration)}")
        if r.is_local and not k.prefect_secret_block and not k.default_chain:
            more.append(f"on the local stack `llmdr stack up` generates them into {code(rel(cfg.state_dir, 'local.env'))} "
                        "(mode 0600) unless the environment sets them")
        lines.append(f"- **{r.name}** storage: {src}" + ("; " + "; ".join(more) if more else "") + ".")
        if r.encryption:
            e = r.encryption
            where = (f"Prefect Secret block {code(e.prefect_secret_block)}" if e.prefect_secret_block
                     else f"environment variable {code(e.key_env)}")
            lines.append(f"- **{r.name}** encryption key (AES-256-GCM, client side): {where}. WITHOUT IT THE COPY IN "
                         f"{r.name.upper()} CANNOT BE READ: keep it in a secret store outside both regions.")
    ms = cfg.manifest_signing
    if ms is not None:
        if ms.method == "hmac":
            lines.append(f"- **Manifest signing** (HMAC-SHA256): key in environment variable {code(ms.hmac_key_env)}; "
                         "every host that writes or restores snapshots needs it.")
        else:
            lines.append(f"- **Manifest signing** (Ed25519): private key {code(rel(cfg.state_dir, ms.private_key))} "
                         f"(hosts that write snapshots), public key {code(rel(cfg.state_dir, ms.public_key))} "
                         "(every host that restores).")
        old = [f"public key {code(rel(cfg.state_dir, p))}" for p in ms.previous_public_keys]
        old += [f"HMAC key in environment variable {code(e)}" for e in ms.previous_hmac_key_envs]
        if old:
            lines.append(f"- **Previous manifest-signing keys** (rotation; objects not yet re-signed with "
                         f"`llmdr sign-manifests` need them): {', '.join(old)}; every host that restores needs them.")
    rt = cfg.router
    if isinstance(rt, Route53Router):
        lines.append(f"- **Route 53** (zone {code(rt.hosted_zone_id)}): the standard AWS chain (`AWS_PROFILE`, or "
                     "`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, or an instance role) for an identity allowed "
                     "route53:ChangeResourceRecordSets, ListResourceRecordSets and GetChange on it.")
    elif isinstance(rt, CaddyRouter):
        lines.append("- **Router** (Caddy): no credentials; its admin API listens on loopback only.")
    n = cfg.notifications
    if n is not None and (n.webhook_url_env or n.webhook_url):
        where = (f"environment variable {code(n.webhook_url_env)}" if n.webhook_url_env else
                 f"llmdr.yaml (host {urlsplit(n.webhook_url or '').hostname}; the URL is not repeated here)")
        lines.append(f"- **Notification webhook** URL (it embeds a token): {where}.")
    if n is not None and n.prefect_block:
        lines.append(f"- **Notification block**: Prefect block {code(n.prefect_block)}.")
    s = cfg.drill.signing
    if s.method == "ed25519":
        priv = s.private_key if Path(s.private_key).is_absolute() else rel(cfg.state_dir, s.private_key)
        pub = s.public_key if Path(s.public_key).is_absolute() else rel(cfg.state_dir, s.public_key)
        lines.append(f"- **Drill report signing** (Ed25519): private key {code(priv)} (mode 0600, made on first use; "
                     f"only the drill runner needs it), public key {code(pub)} (give it to auditors).")
    else:
        lines.append(f"- **Drill report signing** (HMAC-SHA256): key in environment variable {code(s.hmac_key_env)} "
                     "(auditors need the same key to verify).")
    if cfg.tracking.uri:
        u = urlsplit(cfg.tracking.uri)
        lines.append(f"- **MLflow** tracking store: `tracking.uri` in llmdr.yaml ({u.scheme or 'file'}"
                     + (f", host {u.hostname}" if u.hostname else "") + "); credentials, if any, as MLflow reads "
                     "them (`MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD` / `MLFLOW_TRACKING_TOKEN`).")
    elif cfg.control_plane.database == "postgres":
        lines.append(f"- **MLflow** tracking store: database `mlflow` of the local PostgreSQL (127.0.0.1:"
                     f"{cfg.control_plane.postgres_port}, data {code(rel(cfg.state_dir, 'postgres', 'data'))}); its "
                     f"password in {code('LLMDR_POSTGRES_PASSWORD')} or {code(rel(cfg.state_dir, 'local.env'))}.")
    else:
        lines.append(f"- **MLflow** tracking store: {code(rel(cfg.state_dir, 'mlflow', 'mlflow.db'))} (sqlite, no "
                     "credentials).")
    if cfg.datasets:
        lines.append("- **DVC remotes** (datasets): each region's storage keys above; `llmdr datasets remotes` writes "
                     "them only to `.dvc/config.local` (git-ignored, mode 0600).")
    return lines


def emergency(c: Context) -> list[str]:
    steps = c.cfg.runbook.emergency_access
    lines = [heading(8), ""]
    if steps:
        lines += [f"{i}. {' '.join(s.split())}" for i, s in enumerate(steps, 1)]
        return lines
    return lines + [warn("No emergency access steps configured — add runbook.emergency_access to llmdr.yaml "
                          "(break-glass steps, in order; names, never secrets)."), "",
                    "Until then, agree and write down:", "",
                    "1. the break-glass account or role for each region's storage (and the router and Prefect), "
                    "and where its credentials are kept (a vault entry's name, never the value);",
                    "2. who approves its use (the incident commander) and how the use is logged;",
                    "3. rotating those credentials after every use."]


def drill_programme(c: Context, now: datetime, drills: Sequence[Any] | None) -> list[str]:
    cfg = c.cfg
    interval = cfg.objectives.drill_interval
    lines = [heading(9), ""]
    if drills is None:
        lines.append(f"Drill history: not looked up ({code(c.cmd('drills'))} lists it).")
    elif not drills:
        lines.append(warn(f"No drill on record: run one (`{c.cmd('drill')}`); objective: every "
                           f"{format_duration(interval)}."))
    else:
        last = drills[-1]
        passes = [d for d in drills if field(d, "passed") and not field(d, "failed_over_at_end")]
        lines.append(f"Last drill on record: {_drill_line(last)}.")
        if passes:
            lp = passes[-1]
            age = now.timestamp() - float(field(lp, "started_ts") or 0)
            when = format_duration(timedelta(seconds=max(int(age), 0)))
            if age > interval.total_seconds():
                lines.append(warn(f"the last passing drill ({field(lp, 'id')}) was {when} before this runbook, more "
                                   f"than the {format_duration(interval)} drill interval."))
            else:
                lines.append(f"Last passing drill: {field(lp, 'id')}, {when} before this runbook (interval "
                             f"{format_duration(interval)}).")
        else:
            lines.append(warn("no passing drill on record."))
    reports = rel(cfg.drill.reports_dir, "drills")
    verify = f"report verify {reports}/<drill id>"
    if cfg.drill.signing.method == "ed25519":
        pub = cfg.drill.signing.public_key
        verify += f" --public-key {pub if Path(pub).is_absolute() else rel(cfg.state_dir, pub)}"
    lines += ["",
              f"- {code(c.cmd('drill'))}: a full drill now (needs {code(c.cmd('stack up --ui'))}): the primary is cut off, the "
              "automation must fail over on its own, RTO/RPO are measured, the restore test runs from the DR store, "
              "then failback; exit 8 if a control fails. Scheduled: the `dr-drill-quarterly` deployment "
              f"({code(deployment_name(c.cfg, DEPLOY_DRILL))}, {drill_schedule(cfg)}).",
              f"- {code(c.cmd('drills'))}: every drill (RTO, RPO, result); warns when the last passing one is older "
              f"than {format_duration(interval)}.",
              f"- {code(c.cmd('readiness'))}: the readiness checks; exits non-zero on any FAIL.",
              f"- {code(c.cmd(verify))}: checks a report's signature and every file offline (exit 12 if anything "
              f"changed). Reports are under {code(reports + '/')}; each holds a copy of this runbook "
              "(`RUNBOOK.md`) as it was during that drill, covered by the signature.",
              f"- {code(c.cmd('runbook'))}: regenerates this file."]
    return lines


def _drill_line(d: Any) -> str:
    m = field(d, "measurements") or {}
    verdict = "PASS" if field(d, "passed") and not field(d, "failed_over_at_end") else "FAIL"
    started = field(d, "started_utc")
    if started is None and field(d, "started_ts") is not None:
        started = utc_text(datetime.fromtimestamp(float(field(d, "started_ts")), timezone.utc))
    parts = [f"{field(d, 'id')} started {started}: **{verdict}**"]
    for name, key in (("RTO", "rto_s"), ("RPO", "rpo_s")):
        v = m.get(key) if isinstance(m, dict) else None
        parts.append(f"{name} {v:.1f} s" if isinstance(v, (int, float)) else f"{name} not recorded")
    return ", ".join(parts)
