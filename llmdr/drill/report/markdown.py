"""The Prefect artifacts' content: the markdown summary of one drill and the table rows of every drill."""

from __future__ import annotations

from typing import Any

from llmdr.common.definitions import RPO_DEFINITION, RTO_DEFINITION
from llmdr.drill.report.model import (
    DASH,
    NA,
    RUNBOOK_LABEL,
    as_dict,
    as_number,
    as_text,
    control_result,
    control_value,
    dig,
    objective_figures,
    parse_utc,
    seconds_cell,
    seconds_text,
    verdict_of,
)


def _md(v: Any) -> str:
    return as_text(v).replace("|", "\\|").replace("\n", " ")


def render_markdown(record: dict) -> str:
    """The Prefect markdown artifact: verdict, banner, RTO/RPO, controls, failure reasons, timeline."""
    record = as_dict(record)
    verdict = verdict_of(record)
    bundle = record.get("bundle") or dig(record, "scope", "bundle") or DASH
    lines = [f"# DR drill {bundle}: **{verdict}**", ""]
    if record.get("failed_over_at_end"):
        lines += ["> **SYSTEM LEFT FAILED OVER**: traffic was still served from the DR region when the drill ended. "
                  "Fail back (`llmdr failback`) once the primary is healthy.", ""]
    sb = record.get("started_by") or {}
    who = f" ({sb['who']})" if sb.get("who") else ""
    lines += [f"Drill `{as_text(record.get('id'))}` started {as_text(record.get('started_utc'))} by "
              f"{as_text(sb.get('kind'))}{who}, took {seconds_text(record.get('duration_s'), 1)}; llmdr "
              f"{as_text(record.get('tool_version'))}.", ""]
    appr = as_dict(dig(record, "evidence", "approval"))
    if appr:
        login = f"; login {appr['login']}" if appr.get("login") else ""
        lines += [f"**Approval**: {_md(appr.get('outcome'))}: {_md(appr.get('detail'))}{_md(login)}", ""]
    for name, v in objective_figures(record):
        lines.append(f"- **{name}**: {v}")
    lines.append(f"- {RTO_DEFINITION}; {RPO_DEFINITION}.")
    runbook = dig(record, "report", "files", "runbook") or dig(record, "evidence", "runbook")
    if runbook:
        lines.append(f"- **{RUNBOOK_LABEL}**: `{runbook}`")
    elif dig(record, "evidence", "runbook_error"):
        lines.append(f"- **Runbook**: not in the report ({_md(dig(record, 'evidence', 'runbook_error'))})")
    lines += ["", "## Controls", "", "| control | result | measured | objective | detail |", "|---|---|---|---|---|"]
    for c in record.get("controls") or []:
        if isinstance(c, dict):
            res = {"PASS": "PASS", "FAIL": "**FAIL**"}.get(control_result(c), NA)
            lines.append(f"| {_md(c.get('name') or c.get('id'))} | {res} | {_md(control_value(c))} | "
                         f"{_md(c.get('objective'))} | {_md(c.get('detail') or '')} |")
    reasons = record.get("failure_reasons") or []
    lines += ["", "## Failure reasons", ""]
    lines += [f"- {_md(r)}" for r in reasons] or ["none"]
    lines += ["", "## Timeline", "", "| # | t (s) | UTC | kind | event | ok |", "|---:|---:|---|---|---|---|"]
    for i, e in enumerate([e for e in record.get("timeline") or [] if isinstance(e, dict)], 1):
        ok = {True: "ok", False: "**FAILED**"}.get(e.get("ok"), "")
        lines.append(f"| {i} | {seconds_cell(e.get('t_s'))} | {_md(e.get('at_utc'))} | {_md(e.get('kind'))} | "
                     f"{_md(e.get('event'))} | {ok} |")
    return "\n".join(lines) + "\n"


def artifact_markdown(record: dict) -> str:
    """The dr-drill flow's markdown artifact: :func:`render_markdown` and where the signed report is, with the
    command that verifies it (``record["report"]`` is the published folder)."""
    folder = dig(record, "report", "folder")
    return render_markdown(record) + f"\n\nReport: `{folder}` (verify: `llmdr report verify {folder}`)\n"


def table_rows(history: list[dict]) -> list[dict]:
    """One row per drill for the table artifact (same columns every time; missing numbers are None)."""
    rows = []
    for r in (as_dict(x) for x in history or []):
        start = parse_utc(r.get("started_utc"))
        rto, rpo = as_number(dig(r, "measurements", "rto_s")), as_number(dig(r, "measurements", "rpo_s"))
        rows.append({"date": start.strftime("%Y-%m-%d %H:%M UTC") if start else DASH,
                     "drill": r.get("id") or DASH,
                     "rto_s": round(rto, 1) if rto is not None else None,
                     "rpo_s": round(rpo, 1) if rpo is not None else None,
                     "passed": verdict_of(r) == "PASS",
                     "failed_over_at_end": bool(r.get("failed_over_at_end"))})
    return rows
