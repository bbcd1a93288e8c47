"""The self-contained HTML report (jinja2 template ``llmdr/drill/templates/drill_report.html.j2``, charts inlined
as data URIs), rendered from the document model."""

from __future__ import annotations

import base64
from pathlib import Path

from llmdr.drill.report.labels import nobreak
from llmdr.drill.report.model import (
    DASH,
    FILES,
    KIND_COLORS,
    RUNBOOK_LABEL,
    Table,
    as_dict,
    dig,
    headline_figures,
    sections,
    verdict_of,
)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def render_html(record: dict, images: dict[str, Path] | None = None, *, runbook: str | None = None) -> str:
    """The self-contained HTML report; ``images`` maps chart file names to PNGs to inline; ``runbook`` the
    runbook's file name in the report folder (a relative link), if it is there."""
    from importlib.resources import files

    import jinja2

    record = as_dict(record)
    images = images or {}
    env = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.tests["table"] = lambda b: isinstance(b, Table)
    tpl = env.from_string((files("llmdr.drill") / "templates" / "drill_report.html.j2").read_text(encoding="utf-8"))
    secs = sections(record, has_trend=FILES["trend"] in images, runbook=runbook)
    return tpl.render(record=record, verdict=verdict_of(record), sections=secs,
                      images={k: _data_uri(p) for k, p in images.items()}, kind_colors=KIND_COLORS,
                      bundle=record.get("bundle") or dig(record, "scope", "bundle") or DASH,
                      headline=[(k, nobreak(v)) for k, v in headline_figures(record)], dash=DASH, runbook=runbook, runbook_label=RUNBOOK_LABEL)
