"""Report content built from plain results (no Prefect here): markdown for flow artifacts.

Step results may carry ``retries`` (``RetryStats.to_json()``: the storage requests the retry layer repeated after a
transient fault, by kind and region); every artifact shows them, so a run that only succeeded thanks to retries
says so. Results without the key (older runs, other callers) show ``-``.
"""

from __future__ import annotations


def _mb(n: int | float) -> str:
    return f"{n / 1e6:,.1f} MB"


def _mb_per_s(nbytes: int | float, seconds: float) -> float:
    return round(nbytes / seconds / 1e6, 1) if seconds else 0.0


def retries_text(rt: dict | None) -> str:
    """Retry counts (``RetryStats.to_json()``) in a few words: ``7 (get 4, put 3)``, ``0``, or ``-`` when unknown."""
    if not rt:
        return "-"
    ops = ", ".join(f"{op} {n}" for op, n in rt.get("ops", {}).items())
    return f"{rt['total']} ({ops})" if ops else str(rt["total"])


def _retries(r: dict | None) -> str:
    return retries_text((r or {}).get("retries"))


def _retry_total(r: dict | None) -> int | None:
    rt = (r or {}).get("retries")
    return rt["total"] if rt else None


def run_retries(steps: list[dict]) -> dict:
    """The retries of every step of a run added up: ``total``, ``ops``, ``regions``, ``requests``, ``gave_up``."""
    out: dict = {"total": 0, "ops": {}, "regions": {}, "requests": {}, "gave_up": {}}
    for step in steps:
        rt = (step or {}).get("retries") or {}
        out["total"] += rt.get("total", 0)
        for part in ("ops", "regions", "requests", "gave_up"):
            for k, n in rt.get(part, {}).items():
                out[part][k] = out[part].get(k, 0) + n
    for part in ("ops", "regions", "requests", "gave_up"):
        out[part] = dict(sorted(out[part].items()))
    return out


def retries_line(steps: list[dict]) -> str:
    """One sentence for an artifact: how many storage requests were retried in the whole run, and where."""
    total = run_retries(steps)
    requests = sum(total["requests"].values())
    if not any((s or {}).get("retries") for s in steps):
        return "Storage request retries: not recorded."
    if not total["total"] and not total["gave_up"]:
        return f"Storage request retries: none ({requests:,} requests, no transient fault)."
    ops = ", ".join(f"{op} {n}" for op, n in total["ops"].items())
    regions = ", ".join(f"{r} {n}" for r, n in total["regions"].items())
    gave_up = sum(total["gave_up"].values())
    lost = f" **{gave_up} still failed after the last attempt.**" if gave_up else ""
    return (f"Storage request retries: **{total['total']}** of {requests:,} requests failed transiently and were "
            f"retried ({ops}; by region: {regions}).{lost}")


def protect_summary_markdown(bundle: str, snap: dict, copies: list[dict], rpo: list[dict] | None = None,
                             validations: list[dict] | None = None, datasets: list[dict] | None = None,
                             verified: list[dict] | None = None, retention: list[dict] | None = None) -> str:
    rate = _mb_per_s(snap["bytes_read"], snap["duration_s"])
    lines = [
        f"# protect-bundle: {bundle}",
        "",
        f"Snapshot `{snap['snapshot_id'][:12]}` created {snap['created']} in **{snap['region']}**.",
        "",
        "| step | region | snapshot | bytes total | bytes new | deduplicated | duration s | MB/s | retries |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
        f"| snapshot | {snap['region']} | {snap['snapshot_id'][:12]} | {_mb(snap['bytes_total'])} | "
        f"{_mb(snap['bytes_new'])} | {_mb(snap['bytes_deduplicated'])} | {snap['duration_s']:.2f} | {rate:.1f} | "
        f"{_retries(snap)} |",
    ]
    for c in copies:
        crate = _mb_per_s(c["bytes_copied"], c["duration_s"])
        state = "already there" if c["already_present"] else f"{c['chunks_copied']}/{c['chunks_total']} chunks"
        lines.append(f"| copy ({state}) | {c['region']} | {c['snapshot_id'][:12]} | {_mb(c['bytes_total'])} | "
                     f"{_mb(c['bytes_copied'])} | {_mb(c['bytes_total'] - c['bytes_copied'])} | "
                     f"{c['duration_s']:.2f} | {crate:.1f} | {_retries(c)} |")
    for v in verified or []:
        lines.append(f"| verify copy ({'ok' if v['ok'] else '**FAILED**'}) | {v['region']} | {v['snapshot_id'][:12]} "
                     f"| | | | {v.get('duration_s', 0):.2f} | | {_retries(v)} |")
    lines += ["", retries_line([snap, *copies, *(verified or []), *(retention or []), *(rpo or [])])]
    if validations or datasets:
        lines += ["", "| dataset | md5 | regions | expectations | result |", "|---|---|---|---:|---|"]
        checked = {v["dataset"]: v for v in validations or []}
        for d in datasets or []:
            v = checked.get(d["name"], {})
            regions = ", ".join(p["region"] for p in d.get("pushes", []))
            lines.append(f"| {d['name']} | `{d['md5']}` | {regions} | {v.get('evaluated', 0) - v.get('failed', 0)}/"
                         f"{v.get('evaluated', 0)} | {_dataset_result(v)} |")
    for r in rpo or []:
        if r["age_s"] is None:
            lines += ["", f"**RPO clock, {r['region']}: no snapshot there at all** (objective {r['objective_s']:.0f} s)"]
        else:
            verdict = "within" if r["ok"] else "**OVER**"
            lines += ["", f"RPO clock, {r['region']}: newest snapshot {r['newest'][:12]} is {r['age_s']:.0f} s old, "
                          f"{verdict} the {r['objective_s']:.0f} s objective."]
    return "\n".join(lines) + "\n"


def protect_table(snap: dict, copies: list[dict], verified: list[dict]) -> list[dict]:
    """Rows for the table artifact: one per step, the same columns for every run."""
    ok = {v["region"]: v["ok"] for v in verified}
    verify_retries = {v["region"]: _retry_total(v) for v in verified}
    rows = [{"step": "snapshot", "region": snap["region"], "snapshot": snap["snapshot_id"][:12],
             "bytes_total": snap["bytes_total"], "bytes_new": snap["bytes_new"],
             "bytes_deduplicated": snap["bytes_deduplicated"], "duration_s": snap["duration_s"],
             "mb_per_s": _mb_per_s(snap["bytes_read"], snap["duration_s"]),
             "verified": "n/a", "retries": _retry_total(snap)}]
    for c in copies:
        copy_retries, check_retries = _retry_total(c), verify_retries.get(c["region"])
        retries = None if copy_retries is None and check_retries is None else (copy_retries or 0) + (check_retries or 0)
        rows.append({"step": "copy", "region": c["region"], "snapshot": c["snapshot_id"][:12],
                     "bytes_total": c["bytes_total"], "bytes_new": c["bytes_copied"],
                     "bytes_deduplicated": c["bytes_total"] - c["bytes_copied"], "duration_s": c["duration_s"],
                     "mb_per_s": _mb_per_s(c["bytes_copied"], c["duration_s"]),
                     "verified": "ok" if ok.get(c["region"]) else "FAILED", "retries": retries})
    return rows


def artifact_key(flow: str, bundle: str) -> str:
    """Stable artifact key (lowercase letters, digits, dashes) so the Artifacts page shows one history per bundle."""
    safe = "".join(c if c.isalnum() else "-" for c in bundle.lower()).strip("-")
    return f"{flow}-{safe}"


def verify_summary_markdown(bundle: str, checks: list[dict], tests: list[dict]) -> str:
    lines = [f"# verify-replicas: {bundle}", "",
             "| region | snapshot | scope | chunks read | MB read | corrupt | missing | repaired | unrepaired | result "
             "| retries |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for c in checks:
        repaired = ", ".join(f"{k[:12]} from {v}" for k, v in c["repaired"].items()) or "0"
        lines.append(f"| {c['region']} | {c['snapshot_id'][:12]} | {c['subset'] or 'all'} | {c['chunks_read']}/"
                     f"{c['chunks_total']} | {_mb(c['bytes_read'])} | {len(c['corrupt'])} | {len(c['missing'])} | "
                     f"{repaired} | {len(c['unrepaired'])} | {'ok' if c['ok'] else '**FAILED**'} | {_retries(c)} |")
    if tests:
        lines += ["", "| region | restore test | golden | problems | retries |", "|---|---|---|---|---:|"]
        for t in tests:
            g = t["golden"]
            golden = f"{g['passed']}/{g['total']}" if g else "-"
            lines.append(f"| {t['region']} | {'PASS' if t['ok'] else '**FAIL**'} | {golden} | "
                         f"{'; '.join(t['problems']) or '-'} | {_retries(t)} |")
    lines += ["", retries_line([*checks, *tests])]
    return "\n".join(lines) + "\n"


def checkpoints_summary_markdown(out: dict) -> str:
    lines = [f"# protect-checkpoints: {out['series']}", "",
             f"{len(out['found'])} checkpoint folder(s) found, {len(out['new'])} new, "
             f"{len(out.get('incomplete', []))} incomplete (not taken; looked at again next run).", "",
             "| checkpoint | snapshot | bytes total | bytes new | deduplicated | duration s |",
             "|---|---|---:|---:|---:|---:|"]
    for n in out["new"]:
        again = " (rewritten: taken again)" if n.get("revisit") else ""
        lines.append(f"| {n['checkpoint']}{again} | {n['snapshot_id'][:12]} | {_mb(n['bytes_total'])} | "
                     f"{_mb(n['bytes_new'])} | {_mb(n['bytes_deduplicated'])} | {n['duration_s']:.2f} |")
    if out.get("incomplete"):
        lines += ["", "## Incomplete checkpoints (not snapshotted)", "", "| checkpoint | layout | why |", "|---|---|---|"]
        lines += [f"| {c['checkpoint']} | {c['layout']} | {'; '.join(c['problems'])} |" for c in out["incomplete"]]
    for r in out["retention"]:
        lines.append(f"\nRetention in {r['region']}: kept {len(r['kept'])}, forgot {len(r['forgotten'])}, "
                     f"pruned {r['chunks_deleted']} chunk(s) ({_mb(r['bytes_freed'])}).")
    return "\n".join(lines) + "\n"


def restore_summary_markdown(bundle: str, res: dict) -> str:
    rate = _mb_per_s(res["bytes_downloaded"], res["duration_s"])
    complete = {True: "complete", False: "**INCOMPLETE**", None: "not checked (no components declared)"}
    return "\n".join([
        f"# restore-bundle: {bundle}", "",
        "| snapshot | region | target | files | kept (already in place) | MB | MB downloaded | duration s | MB/s | bundle "
        "| retries |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
        f"| {res['snapshot_id'][:12]} | {res['region']} | {res['target']} | {res['files']} | {res['files_skipped']} | "
        f"{_mb(res['bytes_total'])} | {_mb(res['bytes_downloaded'])} | {res['duration_s']:.2f} | {rate:.1f} | "
        f"{complete[res.get('complete')]} | {_retries(res)} |",
        "", retries_line([res]),
    ]) + "\n"


def verify_table(checks: list[dict], tests: list[dict]) -> list[dict]:
    by_region = {t["region"]: t for t in tests}
    rows = []
    for c in checks:
        t = by_region.get(c["region"])
        rows.append({"region": c["region"], "snapshot": c["snapshot_id"][:12], "scope": c["subset"] or "all",
                     "chunks_read": c["chunks_read"], "bytes_read": c["bytes_read"], "duration_s": c["duration_s"],
                     "mb_per_s": _mb_per_s(c["bytes_read"], c["duration_s"]),
                     "corrupt": len(c["corrupt"]), "missing": len(c["missing"]), "repaired": len(c["repaired"]),
                     "verification": "ok" if c["ok"] else "FAILED",
                     "restore_test": ("PASS" if t["ok"] else "FAIL") if t else "not run",
                     "retries": _retry_total(c) if t is None or _retry_total(t) is None
                     else (_retry_total(c) or 0) + (_retry_total(t) or 0)})
    return rows


def checkpoints_table(out: dict) -> list[dict]:
    return [{"checkpoint": n["checkpoint"], "snapshot": n["snapshot_id"][:12], "region": n["region"],
             "bytes_total": n["bytes_total"], "bytes_new": n["bytes_new"],
             "bytes_deduplicated": n["bytes_deduplicated"], "duration_s": n["duration_s"],
             "mb_per_s": _mb_per_s(n["bytes_read"], n["duration_s"])}
            for n in out["new"]]


def restore_table(res: dict) -> list[dict]:
    return [{"snapshot": res["snapshot_id"][:12], "region": res["region"], "files": res["files"],
             "bytes_total": res["bytes_total"], "bytes_downloaded": res["bytes_downloaded"],
             "duration_s": res["duration_s"],
             "mb_per_s": _mb_per_s(res["bytes_downloaded"], res["duration_s"]),
             "verification": "every chunk verified", "complete": res.get("complete"), "retries": _retry_total(res)}]


def failover_markdown(rec: dict) -> str:
    """One failover / failback run: outcome, RTO and every step with its UTC time."""
    kind = rec["kind"]
    if rec.get("noop"):
        why = rec.get("error") or (rec["steps"][-1]["detail"] if rec["steps"] else "")
        head = f"No {kind} needed: {why}"
    elif rec["ok"]:
        head = (f"**{kind} completed**: {rec['from_region']} → **{rec['to_region']}**, "
                f"RTO **{rec['rto_s']:.1f} s** ({rec['rto_basis']}).")
    else:
        rb = " The router switch was rolled back." if rec.get("rolled_back") else ""
        head = f"**{kind} FAILED**: {rec['from_region']} → {rec['to_region']}: {rec.get('error')}.{rb}"
    lines = [f"# {kind}: {rec['bundle']}", "", head, "",
             f"Trigger: {rec['trigger']}; reason: {rec['reason']}; run `{rec['id']}`"
             + (f", flow run `{rec['flow_run_id']}`" if rec.get("flow_run_id") else "") + ".", ""]
    if rec.get("first_failure_utc"):
        lines.append(f"First failed probe: {rec['first_failure_utc']}.")
    b = rec.get("rto_breakdown")
    if b:
        lines.append(f"RTO = detection {b['detection_s']:.1f} s (first failed probe → down declared) + dispatch "
                     f"{b['dispatch_s']:.1f} s (event → automation → worker → failover run started) + recovery "
                     f"{b['recovery_s']:.1f} s (confirm, replica, golden check, switch, check through the router).")
    replica = rec.get("replica") or {}
    if replica:
        how = "cold start from the region's store" if replica.get("cold") else "warm standby"
        lines.append(f"Replica in {rec['to_region']}: {how}, snapshot `{(replica.get('snapshot') or '?')[:12]}`, "
                     f"restore {replica.get('restore_s') or 0:.2f} s, start {replica.get('start_s') or 0:.2f} s.")
    lines += ["", "| step | time (UTC) | result | detail |", "|---|---|---|---|"]
    for s in rec["steps"]:
        detail = str(s["detail"]).replace("|", "\\|").replace("\n", " ")[:300]
        lines.append(f"| {s['name']} | {s['at']} | {'ok' if s['ok'] else '**FAILED**'} | {detail} |")
    return "\n".join(lines) + "\n"


def failover_table(records: list[dict]) -> list[dict]:
    """Every run of one kind, newest last: the RTO history."""
    def part(r: dict, k: str):
        return (r.get("rto_breakdown") or {}).get(k)

    return [{"run": r["id"], "started_utc": r["started_utc"], "from": r["from_region"], "to": r["to_region"],
             "trigger": r["trigger"], "ok": r["ok"], "noop": r.get("noop", False), "rto_s": r.get("rto_s"),
             "detection_s": part(r, "detection_s"), "dispatch_s": part(r, "dispatch_s"),
             "recovery_s": part(r, "recovery_s"), "cold_start": bool((r.get("replica") or {}).get("cold")),
             "rolled_back": r.get("rolled_back", False), "error": (r.get("error") or "")[:200]} for r in records]


def monitor_table(summary: dict) -> list[dict]:
    """One row per probed target: status, why, and the figures behind it."""
    last = summary["last"]
    samples = {s["target"]: s for s in last["samples"]}
    rows = []
    for target, a in last["assessments"].items():
        s = samples.get(target, {})
        ev = a.get("evidence", {})
        rows.append({"target": target, "active": target == last["active"], "status": a["status"],
                     "latency_s": s.get("latency_s"), "ok": s.get("ok"), "error": s.get("error") or "",
                     "baseline_latency_s": ev.get("baseline_latency_median"),
                     "recent_error_rate": ev.get("recent_error_rate"), "reasons": "; ".join(a.get("reasons", []))})
    return rows


def monitor_markdown(bundle: str, summary: dict) -> str:
    last = summary["last"]
    lines = [f"# monitor-endpoints: {bundle}", "",
             f"{summary['rounds']} probe rounds; traffic goes to **{last['active']}**.", "",
             "| target | status | latency s | error | reasons |", "|---|---|---:|---|---|"]
    for row in monitor_table(summary):
        lat = f"{row['latency_s']:.3f}" if row["latency_s"] is not None else "-"
        lines.append(f"| {row['target']}{' (active)' if row['active'] else ''} | {row['status']} | {lat} | "
                     f"{row['error']} | {row['reasons']} |")
    if summary["emitted"]:
        lines += ["", "Events:", *[f"- `{e['event']}` {e['target']}: {e['reason']}" for e in summary["emitted"]]]
    return "\n".join(lines) + "\n"


def _dataset_result(v: dict) -> str:
    """A dataset's cell in the protect summary: valid, FAILED (naming failing partitions), or validation off."""
    if v.get("mode") == "off":
        return "**validation off by config**"
    if not v.get("success"):
        parts = v.get("failed_partitions") or []
        return "**FAILED**" + (f" in {', '.join(parts[:3])}" + (" ..." if len(parts) > 3 else "") if parts else "")
    if v.get("sample"):
        return f"valid (sample of {v['sample']['rows']} rows, seed {v['sample']['seed']})"
    return "valid"
