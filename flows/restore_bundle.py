"""restore-bundle: bring a snapshot back from a chosen region into a folder."""

from __future__ import annotations

from prefect import flow

from tasks.protect import restore_snapshot


@flow(name="restore-bundle")
def restore_bundle(target: str, region: str = "secondary", snapshot: str = "latest", force: bool = False,
                   config_path: str = "llmdr.yaml") -> dict:
    """Restore ``snapshot`` (default: the newest) from ``region`` into ``target``, verifying every chunk."""
    return restore_snapshot(config_path, snapshot, region, target, force)
