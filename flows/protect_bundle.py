"""protect-bundle: snapshot the bundle into the primary region, then copy it to every secondary region."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from llmdr.config import load_config
from llmdr.report import artifact_key, protect_summary_markdown
from tasks.protect import copy_snapshot_to_region, take_snapshot


@flow(name="protect-bundle", log_prints=False)
def protect_bundle(config_path: str = "llmdr.yaml") -> dict:
    """Snapshot → copy to each secondary region. Fails (and publishes nothing partial) if any step fails."""
    cfg = load_config(config_path)
    snap = take_snapshot(config_path)
    futures = [copy_snapshot_to_region.submit(config_path, snap["snapshot_id"], r.name) for r in cfg.secondaries]
    copies = [f.result() for f in futures]
    result = {"snapshot": snap, "copies": copies}
    create_markdown_artifact(key=artifact_key("protect-bundle", cfg.bundle.name),
                             markdown=protect_summary_markdown(cfg.bundle.name, snap, copies),
                             description="Newest protect-bundle run")
    return result
