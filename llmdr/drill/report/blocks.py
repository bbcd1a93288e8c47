"""The report's audit sections, built from the drill record: who ran it (host, OS user, Prefect run, approver), the
measurements under the one RTO/RPO definition, the evidence as labelled tables (snapshot ids with their role in the
drill, the failover and failback records, the checks) and the signature (key id, fingerprint, how to verify without
llmdr). Nothing here prints JSON: nested values become labelled rows (:mod:`llmdr.drill.report.labels`)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from llmdr.common.definitions import FAILOVER_CLOCK, RPO_DEFINITION, RTO_DEFINITION
from llmdr.drill.report.doc import Table, kv
from llmdr.drill.report.labels import (
    DASH,
    NBSP,
    NOT_RECORDED,
    golden_summary,
    is_golden,
    label,
    number,
    rows_of,
    seconds,
    value,
)

NO_APPROVAL = "not required (this drill ran without an approval step)"
KIND_TEXT = {"schedule": "the Prefect schedule", "ui": "a person, from the Prefect UI or API",
             "cli": "a person, with `llmdr drill`", "api": "the Prefect API (no deployment)"}
# the keys each block shows itself; the rest of the evidence is listed under "Other evidence"
SHOWN = {"snapshots", "manifest_digests", "components", "golden_after_failover", "restore_test",
         "bundle_complete_dr", "failover", "failback", "model_version", "dataset_versions", "prefect_flow_run_id",
         "mlflow_run_id", "runbook", "runbook_error", "prechecks", "datasets", "approval",
         "residency"}


def _utc(ts: Any) -> str | None:
    x = number(ts)
    if x is None:
        return None
    return datetime.fromtimestamp(x, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- identity ------------------------------------------------------------------------------------------------------
def identity_pairs(record: dict) -> list[tuple[str, Any]]:
    sb = record.get("started_by") or {}
    kind = sb.get("kind")
    pairs: list[tuple[str, Any]] = [
        ("Started by", f"{kind}: {KIND_TEXT[kind]}" if kind in KIND_TEXT else kind),
        ("Who", sb.get("who")), ("Host", sb.get("host") or NOT_RECORDED), ("OS user", sb.get("os_user") or NOT_RECORDED),
        ("Prefect flow run", sb.get("flow_run_id") or "none (not run under Prefect)"),
        ("Prefect deployment", sb.get("deployment") or "none (run in the calling process)"),
        ("Approver", sb.get("approver") or NO_APPROVAL)]
    known = {"kind", "who", "host", "os_user", "flow_run_id", "deployment", "approver"}
    pairs += [(label(k), value(k, v)) for k, v in sorted(sb.items()) if k not in known]
    return pairs + approval_pairs(record)


APPROVAL_ROWS = (("outcome", "Approval"), ("detail", "Approval detail"),
                 ("approver", "Approver's name (self-declared on the form)"), ("reason", "Approval reason"),
                 ("not_before", "Approved window: not before"), ("not_after", "Approved window: not after"),
                 ("asked_utc", "Approval asked"), ("answered_utc", "Approval answered"),
                 ("timeout", "Approval timeout"), ("login", "Login that sent the approval (authenticating front)"),
                 ("login_detail", "How the login was found"), ("login_remote_ip", "Approval sent from"))


def approval_pairs(record: dict) -> list[tuple[str, Any]]:
    """The approval step as the evidence records it (``evidence.approval``); nothing for older drills."""
    appr = (record.get("evidence") or {}).get("approval")
    if not isinstance(appr, dict):
        return []
    return [(name, appr[k]) for k, name in APPROVAL_ROWS if appr.get(k) not in (None, "")]


# --- measurements --------------------------------------------------------------------------------------------------
MEASURED = {"rto_s", "rpo_s", "rto_detail", "rpo_detail"}


def measurement_blocks(record: dict) -> list[Any]:
    m = record.get("measurements") or {}
    pairs = [("RTO", seconds(m.get("rto_s"))), ("RTO measured", m.get("rto_detail")),
             ("RPO", seconds(m.get("rpo_s"))), ("RPO measured", m.get("rpo_detail"))]
    pairs += [(label(k), value(k, v)) for k, v in sorted(m.items()) if k not in MEASURED]
    blocks: list[Any] = [f"{RTO_DEFINITION}. {RPO_DEFINITION}.", kv(pairs)]
    fo = (record.get("evidence") or {}).get("failover")
    if isinstance(fo, dict) and number(fo.get("rto_s")) is not None:
        rel = FAILOVER_CLOCK
        und = number(m.get("undetected_s"))
        if und is not None and number(m.get("rto_s")) is not None:
            rel += (f" Here: {und:.2f}{NBSP}s undetected + {fo['rto_s']:.2f}{NBSP}s failover = "
                    f"{und + fo['rto_s']:.2f}{NBSP}s, the RTO above ({m['rto_s']:.1f}{NBSP}s, to 0.1{NBSP}s).")
        blocks.append(rel)
    return blocks


# --- evidence ------------------------------------------------------------------------------------------------------
def _roles(record: dict) -> tuple[str | None, str | None]:
    regions = [r for r in (record.get("scope") or {}).get("regions") or [] if isinstance(r, dict)]
    primary = next((r.get("name") for r in regions if r.get("role") == "primary"), None)
    dr = next((r.get("name") for r in regions if r.get("role") != "primary"), None)
    return primary, dr


def snapshot_blocks(record: dict) -> list[Any]:
    """Each snapshot id with its role: the protected one (primary), the DR copy, the one the restore test restored;
    and a sentence on how they relate."""
    ev = record.get("evidence") or {}
    primary, dr = _roles(record)
    snaps = ev.get("snapshots") if isinstance(ev.get("snapshots"), dict) else {}

    def sid(region: str | None) -> tuple[str | None, str | None]:
        s = snaps.get(region) if region else None
        s = s if isinstance(s, dict) else {"id": s}
        return s.get("id"), s.get("created")

    rows = []
    p_id, p_created = sid(primary)
    d_id, d_created = sid(dr)
    rt = ev.get("restore_test") if isinstance(ev.get("restore_test"), dict) else {}
    r_id = rt.get("snapshot_id")
    if primary:
        rows.append(["Protected snapshot", f"{primary} (primary)", p_id or NOT_RECORDED, p_created or DASH,
                     "the newest snapshot of the bundle in the primary region when the drill started"])
    if dr:
        rows.append(["DR copy", f"{dr} (DR)", d_id or NOT_RECORDED, d_created or DASH,
                     "the newest snapshot complete in the DR region when the outage began: the RPO is measured "
                     "from its creation, and it is what the DR region serves"])
    rows.append(["Restored and verified", rt.get("location") or dr or DASH, r_id or NOT_RECORDED, DASH,
                 "restored from the DR store into scratch by the restore test, checked complete and asked the "
                 "golden set"])
    for region in sorted(set(snaps) - {primary, dr}):
        rid, created = sid(region)
        rows.append(["Snapshot", region, rid or NOT_RECORDED, created or DASH, "newest snapshot in this region"])
    notes = ["A snapshot id is the SHA-256 of the snapshot's manifest, which lists every file's digest."]
    if p_id and d_id:
        notes.append("The DR copy is the protected snapshot (same id): nothing protected was missing in the DR region."
                     if p_id == d_id else "The DR copy differs from the primary's newest snapshot: the DR region "
                     "was behind when the outage began (the RPO counts that).")
    if d_id and r_id:
        notes.append("The restored snapshot is the DR copy (same id): what was verified is what the DR region serves."
                     if r_id == d_id else "The restore test restored a newer snapshot than the DR copy (one "
                     "replicated during the drill).")
    return [Table(["role", "region", "snapshot id", "created (UTC)", "what it is"], rows,
                  [1.1, 1, 2.6, 1.5, 2.6], "Snapshots", mono_cols=(2,)), " ".join(notes)]


def _digests(v: Any, key_header: str, caption: str) -> Table:
    rows = []
    if isinstance(v, dict):
        for k in sorted(v):
            x = v[k]
            if isinstance(x, dict):
                x = x.get("digest") or x.get("id")
            rows.append([str(k), x if isinstance(x, str) and x else NOT_RECORDED])
    return Table([key_header, "SHA-256 digest"], rows or [[NOT_RECORDED, DASH]], [1, 3.2], caption, mono_cols=(1,))


def record_blocks(name: str, d: Any, overrides: dict[str, str] | None = None) -> list[Any]:
    """A step record (failover, failback, restore test...): labelled rows (nested values flattened, golden results
    summarised), then each list of steps/cases as a table."""
    if not isinstance(d, dict) or not d:
        return [kv([(name, NOT_RECORDED)])]
    overrides = overrides or {}
    pairs: list[tuple[str, Any]] = []
    lists: list[tuple[str, list]] = []
    for k in sorted(d, key=lambda k: (k != "ok", k)):  # the result first
        v = d[k]
        if k.endswith("_ts") and f"{k[:-3]}_utc" in d:
            continue
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            lists.append((k, v))
        elif isinstance(v, dict) and v and not is_golden(v):
            pairs += [(r, t) for r, t in rows_of(v, overrides.get(k) or label(k))]
        else:
            pairs.append((overrides.get(k) or label(k), value(k, v)))
    blocks: list[Any] = [kv(pairs, caption=name)]
    for k, v in lists:
        cols = [c for c in ("name", "id", "at", "ok", "detail", "error") if any(c in x for x in v)] or sorted(v[0])[:5]
        rows = [[("PASS" if x.get(c) else "FAIL") if c == "ok" and x.get(c) is not None else value(c, x.get(c))
                 for c in cols] for x in v]
        widths = [{"name": 2, "detail": 2.4, "error": 2.4, "at": 1.7}.get(c, 0.8) for c in cols]
        blocks.append(Table([label(c) for c in cols], rows, widths, f"{name}: {label(k).lower()}",
                            status_col=cols.index("ok") if "ok" in cols else None))
    return blocks


def model_version_text(v: Any) -> str:
    if isinstance(v, dict):
        if v.get("error"):
            return f"not recorded: the model registry failed ({v['error']})"
        aliases = ", ".join(v.get("aliases") or []) or "none"
        return (f"{v.get('name', DASH)} version {v.get('version', DASH)} (aliases: {aliases}); a registered version "
                "is a catalogue entry that points at the snapshot, not a loadable MLflow model")
    return value("", v) if v is not None else "none registered (tracking.register_models is off, or no snapshot)"


def evidence_blocks(record: dict) -> list[Any]:
    ev = record.get("evidence") if isinstance(record.get("evidence"), dict) else {}
    blocks: list[Any] = snapshot_blocks(record)
    blocks.append(_digests(ev.get("components"), "component", "Per-component digests"))
    g = ev.get("golden_after_failover")
    if isinstance(g, dict) and g:
        cases = [c for c in g.get("cases") or [] if isinstance(c, dict)]
        rows = [[value("", c.get("id")), "PASS" if c.get("ok") else "FAIL", _ratio(c.get("score")),
                 _ratio(c.get("similarity")), value("", c.get("expected")),
                 value("", f"error: {c['error']}" if c.get("error") else c.get("actual"))]
                for c in cases]
        blocks.append(Table(["case", "result", "gate score", "similarity", "expected", "actual through the router"],
                            rows or [[DASH, "PASS" if g.get("ok") else "FAIL", DASH, DASH, DASH, DASH]],
                            [0.9, 0.7, 0.7, 0.8, 2.2, 2.2], f"Golden outputs after failover: {golden_summary(g)}",
                            status_col=1))
    else:
        blocks.append(kv([("Golden outputs after failover", NOT_RECORDED)]))
    blocks += record_blocks("Restore test from the DR store", ev.get("restore_test"))
    blocks += record_blocks("Bundle complete in the DR region", ev.get("bundle_complete_dr"))
    blocks += record_blocks("Failover (run by the automation)", ev.get("failover"))
    blocks += record_blocks("Failback", ev.get("failback"),
                            {"rto_s": "Failback time (see its basis)", "rto_basis": "Failback time basis"})
    if isinstance(ev.get("prechecks"), dict):
        blocks += prechecks_blocks(ev["prechecks"])
    dss = [d for d in ev.get("datasets") or [] if isinstance(d, dict)]
    if dss:
        blocks.append(Table(["dataset", "region", "MD5", "valid", "validation"],
                            [[value("", d.get("name")), value("", d.get("region")), value("", d.get("md5")),
                              "PASS" if d.get("valid") else "FAIL", value("", d.get("validation") or d.get("error"))]
                             for d in dss], [1.2, 0.9, 2.2, 0.6, 2.4], "Datasets from the DR region", status_col=3,
                            mono_cols=(2,)))
    dv = ev.get("dataset_versions")
    if isinstance(dv, dict):
        dv = "\n".join(f"{k}: {value('', v)}" for k, v in sorted(dv.items())) or None
    elif isinstance(dv, list):
        dv = "\n".join(f"{x.get('name')}: MD5 {x.get('md5')} ({x.get('remote')})" if isinstance(x, dict) else str(x)
                       for x in dv) or None
    blocks.append(kv([("Model version", model_version_text(ev.get("model_version"))), ("Dataset versions", dv),
                      ("Prefect flow run", ev.get("prefect_flow_run_id")), ("MLflow run", ev.get("mlflow_run_id")),
                      ("Runbook", ev.get("runbook")),
                      ("Data residency", (ev.get("residency") or {}).get("summary"))], caption="Provenance"))
    other = [(k, ev[k]) for k in sorted(ev) if k not in SHOWN]
    if other:
        pairs: list[tuple[str, Any]] = []
        for k, v in other:
            pairs += rows_of(v, label(k)) if isinstance(v, (dict, list)) and v else [(label(k), value(k, v))]
        blocks.append(kv(pairs, caption="Other evidence"))
    return blocks


def prechecks_blocks(pre: dict) -> list[Any]:
    auto = pre.get("automation") if isinstance(pre.get("automation"), dict) else {}
    enabled = {True: "enabled", False: "DISABLED", None: "not found"}.get(auto.get("enabled"), DASH)
    pairs = [("Traffic on", pre.get("active")), ("Problems", value("", pre.get("problems")) if pre.get("problems")
                                                  else "none"),
             ("Warnings", value("", pre.get("warnings")) if pre.get("warnings") else "none"),
             ("Failover automation", f"{auto.get('name', DASH)}: {enabled}" if auto else None),
             ("Checked at (UTC)", _utc(pre.get("checked_at")))]
    mon = pre.get("monitor")
    if isinstance(mon, dict) and mon:
        pairs += rows_of(mon, "Monitor")
    blocks: list[Any] = [kv(pairs, caption="Checks before the outage")]
    reps = pre.get("replicas") if isinstance(pre.get("replicas"), dict) else {}
    if reps:
        rows = [[str(r), "PASS" if (s or {}).get("healthy") else "FAIL", value("", (s or {}).get("detail")),
                 value("", (s or {}).get("snapshot")), value("", (s or {}).get("url"))] for r, s in sorted(reps.items())
                if isinstance(s, dict)]
        blocks.append(Table(["region", "healthy", "detail", "snapshot id", "URL"], rows, [0.9, 0.7, 1.4, 2.6, 1.6],
                            "Replicas before the outage", status_col=1, mono_cols=(3,)))
    return blocks


def _ratio(v: Any) -> str:
    x = number(v)
    return DASH if x is None else f"{x:.2f}"
