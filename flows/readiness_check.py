"""readiness-check: every readiness check, published as a Prefect artifact; the run fails (and notifies) when any
check fails, so a daily schedule turns silent process failures into a red run."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from llmdr.artifacts import artifact_key
from llmdr.config import load_config
from tasks.readiness import run_readiness_checks


@flow(name="readiness-check")
def readiness_check(config_path: str = "", only: list[str] | None = None, notify: bool = True) -> dict:
    cfg = load_config(config_path)
    rep = run_readiness_checks(config_path, only)
    key = artifact_key("readiness", cfg.bundle.name)
    create_markdown_artifact(key=key, markdown=rep.pop("markdown"), description="Newest readiness check")
    create_table_artifact(key=f"{key}-table", table=rep.pop("table"), description="Readiness checks")
    failed = [c for c in rep["checks"] if c["status"] == "FAIL"]
    if failed:
        if notify:
            from llmdr.notify import readiness_notice
            from tasks.failover import send_notice

            warned = [c for c in rep["checks"] if c["status"] == "WARN"]
            n = readiness_notice(cfg.bundle.name, verdict=rep["verdict"], score=rep["score"], failed=failed,
                                 warned=warned)
            send_notice(config_path, {"kind": n.kind, "title": n.title, "body": n.body, "severity": n.severity,
                                      "data": n.data})
        raise RuntimeError(f"readiness FAIL (score {rep['score']}/100): "
                           + "; ".join(f"{c['title']}: {c['summary']}" for c in failed))
    return rep
