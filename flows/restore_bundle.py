"""restore-bundle: bring a snapshot back from a chosen region into a folder."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.params import BUNDLE, CONFIG_PATH, RESTORE_FORCE, RESTORE_REGION, RESTORE_TARGET, SNAPSHOT
from llmdr.artifacts import artifact_key, restore_summary_markdown, restore_table
from llmdr.config import bundle_ref, load_config
from llmdr.errors import UsageError
from tasks.protect import restore_snapshot


@flow(name="restore-bundle")
def restore_bundle(target: str = RESTORE_TARGET, region: str = RESTORE_REGION, snapshot: str = SNAPSHOT,
                   force: bool = RESTORE_FORCE, config_path: str = CONFIG_PATH, bundle: str | None = BUNDLE) -> dict:
    """Restore ``snapshot`` (default: the newest) from ``region`` into ``target``, verifying every chunk. A relative
    ``target`` is inside the project folder (where llmdr.yaml is), wherever the worker runs the code from."""
    config_path = bundle_ref(config_path, bundle)  # tasks load this bundle's view
    cfg = load_config(config_path)
    if not target.strip():
        raise UsageError("restore-bundle: 'target' is empty: give the folder to restore into (an absolute path, or "
                         f"one relative to the project folder {cfg.base_dir})")
    where = Path(target).expanduser()
    where = str(where if where.is_absolute() else cfg.base_dir / where)
    get_run_logger().info("phase restore: snapshot %s from %s into %s", snapshot, cfg.region(region).name, where)
    res = restore_snapshot(config_path, snapshot, region, where, force)
    create_markdown_artifact(key=artifact_key("restore-bundle", cfg.bundle.name),
                             markdown=restore_summary_markdown(cfg.bundle.name, res),
                             description="Newest restore-bundle run")
    create_table_artifact(key=f"{artifact_key('restore-bundle', cfg.bundle.name)}-table",
                          table=restore_table(res), description="restore-bundle transfer")
    return res
