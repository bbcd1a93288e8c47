"""The DR drill report for auditors, rendered from the finished drill record's JSON (pure code, no Prefect).

One report folder per drill: ``evidence.json`` (the record itself), ``timeline.png`` (outage, detection, switch,
recovery, checks, failback on a time axis), ``trend.png`` (RTO/RPO across drills, when there is history),
``report.html`` (self-contained: images inlined) and ``report.pdf`` (A4, same content). The drill's publishing step
writes ``RUNBOOK.md`` (``llmdr.drill.runbook``: the playbook in force during the drill) into the folder first; the
report links to it when it is there. ``llmdr.drill.signing`` signs the folder afterwards.

One module per format: ``model`` (the document: one list of sections and blocks that the HTML and the PDF both
render, so they always show the same facts), ``charts`` (matplotlib), ``html`` (jinja2), ``pdf`` (fpdf2, loaded only
when a PDF is written) and ``markdown`` (the Prefect artifacts: :func:`render_markdown`, :func:`table_rows`).
The document is built from ``doc`` (tables, sections), ``labels`` (every key a readable label, every number its unit,
glued with a no-break space: never JSON), ``blocks`` (identity, measurements under the one RTO definition, evidence,
snapshot roles) and ``signature`` (key id, fingerprint, the no-llmdr recipe of :mod:`llmdr.drill.portable`).
:func:`trend_chart` also serves ``llmdr drills --chart`` on its own.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from llmdr.common.files import atomic_write
from llmdr.drill.report.charts import timeline_chart, trend_chart
from llmdr.drill.report.html import render_html
from llmdr.drill.report.markdown import render_markdown, table_rows
from llmdr.drill.report.model import (
    DASH,
    FILES,
    KIND_COLORS,
    NOT_RECORDED,
    RUNBOOK_FILE,
    RUNBOOK_LABEL,
    VERIFY_HINT,
    Section,
    Table,
    as_dict,
    sections,
    verdict_of,
)

__all__ = ["DASH", "FILES", "KIND_COLORS", "NOT_RECORDED", "RUNBOOK_FILE", "RUNBOOK_LABEL", "VERIFY_HINT", "Section",
           "Table", "render_html", "render_markdown", "sections", "table_rows", "timeline_chart", "trend_chart",
           "write_report"]

log = logging.getLogger(__name__)


def write_report(record: dict, folder: Path, *, history: list[dict] | None = None) -> dict[str, Path]:
    """Write evidence.json, timeline.png, trend.png (with history), report.html and report.pdf into ``folder``.

    ``history`` is the past drills (oldest first); the trend shows them plus this drill. A ``RUNBOOK.md`` already in
    the folder is linked from the HTML and named in the PDF. Returns ``{"evidence", "timeline", "trend"?,
    "runbook"?, "html", "pdf"}`` → path. Sign the folder afterwards."""
    record = as_dict(record)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    paths["evidence"] = folder / FILES["evidence"]
    atomic_write(paths["evidence"], json.dumps(record, sort_keys=True, indent=2, default=str) + "\n", mode=0o644)
    paths["timeline"] = timeline_chart(record, folder / FILES["timeline"])
    trend = folder / FILES["trend"]
    if history:
        past = [as_dict(h) for h in history]
        if record.get("id") not in {h.get("id") for h in past}:
            past.append(record)
        paths["trend"] = trend_chart(past, trend)
    else:
        trend.unlink(missing_ok=True)  # a stale chart would otherwise be signed with this report
    images = {p.name: p for k, p in paths.items() if k in ("timeline", "trend")}
    runbook = None
    if (folder / RUNBOOK_FILE).is_file():
        runbook = RUNBOOK_FILE
        paths["runbook"] = folder / RUNBOOK_FILE
    paths["html"] = folder / FILES["html"]
    atomic_write(paths["html"], render_html(record, images, runbook=runbook), mode=0o644)
    pdf_tmp = folder / f".{FILES['pdf']}.tmp"
    try:
        from llmdr.drill.report.pdf import render_pdf  # fpdf2 loads only when a PDF is written

        render_pdf(record, pdf_tmp, images, runbook=runbook)
        pdf_tmp.replace(folder / FILES["pdf"])
    finally:
        pdf_tmp.unlink(missing_ok=True)
    paths["pdf"] = folder / FILES["pdf"]
    log.info("drill report %s written to %s (%s)", record.get("id"), folder, verdict_of(record))
    return paths
