"""Task for the readiness-check procedure."""

from __future__ import annotations

from prefect import get_run_logger, task

from llmdr.config import load_config


@task(name="run-readiness-checks")
def run_readiness_checks(config_path: str, only: list[str] | None = None) -> dict:
    """Every readiness check; a failing check is a result, not an error (no retries: a retry would hide a flaky
    region, which is itself worth reporting)."""
    from llmdr.drill.readiness import run_checks

    rep = run_checks(load_config(config_path), only=set(only) if only else None)
    log = get_run_logger()
    for c in rep.checks:
        if c.status != "PASS":
            (log.error if c.status == "FAIL" else log.warning)("%s %s: %s → %s", c.status, c.title, c.summary,
                                                              c.action)
    return rep.to_json() | {"markdown": _markdown(rep), "table": rep.table_rows()}


def _markdown(rep) -> str:
    from llmdr.drill.readiness import render_markdown

    return render_markdown(rep)
