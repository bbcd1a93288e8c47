"""Task for the readiness-check procedure."""

from __future__ import annotations

from prefect import get_run_logger, task

from llmdr.config import load_config


# No retries: a retry would hide a flaky region, which is itself worth reporting.
@task(name="run-readiness-checks", retries=0)
def run_readiness_checks(config_path: str, only: list[str] | None = None) -> dict:
    """Every readiness check, with the artifacts' markdown and table; a failing check is a result, not an error."""
    from llmdr.drill.readiness import FAIL, PASS, artifact_content, run_checks

    rep = run_checks(load_config(config_path), only=set(only) if only else None)
    log = get_run_logger()
    for c in rep.checks:
        if c.status != PASS:
            (log.error if c.status == FAIL else log.warning)("%s %s: %s → %s", c.status, c.title, c.summary,
                                                             c.action)
    return artifact_content(rep)
