"""restore-bundle: bring a snapshot back from a chosen region into a folder."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from llmdr.artifacts import artifact_key, restore_summary_markdown, restore_table
from llmdr.config import load_config
from tasks.protect import restore_snapshot


@flow(name="restore-bundle")
def restore_bundle(target: str, region: str = "secondary", snapshot: str = "latest", force: bool = False,
                   config_path: str = "") -> dict:
    """Restore ``snapshot`` (default: the newest) from ``region`` into ``target``, verifying every chunk."""
    cfg = load_config(config_path)
    res = restore_snapshot(config_path, snapshot, region, target, force)
    create_markdown_artifact(key=artifact_key("restore-bundle", cfg.bundle.name),
                             markdown=restore_summary_markdown(cfg.bundle.name, res),
                             description="Newest restore-bundle run")
    create_table_artifact(key=f"{artifact_key('restore-bundle', cfg.bundle.name)}-table",
                          table=restore_table(res), description="restore-bundle transfer")
    return res
