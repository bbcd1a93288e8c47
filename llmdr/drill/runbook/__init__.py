"""The DR runbook: a markdown playbook for people, rendered from ``llmdr.yaml``.

Who is told and who to call, how an outage is detected, how to fail over by hand (CLI, Prefect UI, and the router
itself when llmdr cannot), how to restore and fail back, where every credential lives, the emergency-access steps and
the drill programme — with the config's own region names, URLs and commands, so it is right for this deployment and
regenerated (`llmdr runbook`) whenever the config changes. Every signed drill report carries a copy: the playbook that
was in force during that drill.

Secrets never appear: credentials are named by their environment variable or Prefect block, a webhook URL written
into the file is shown by its host only, and URLs lose any user:password part and query string.
:func:`render_runbook` is pure (no network, no environment, no files): the same config, time and drill history give
the same bytes.

The sections live in ``incident`` (1–4: overview, notification, detection, failover by hand) and ``recovery`` (5–9:
restore, failback, credentials, emergency access, drills); ``text`` holds the names, the :class:`Context` and the
markdown helpers they share.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llmdr.common.files import atomic_write
from llmdr.config import Config
from llmdr.drill.runbook.incident import detect, failover, header, notify, overview
from llmdr.drill.runbook.recovery import credentials, drill_programme, emergency, failback, restore
from llmdr.drill.runbook.text import (
    AUTOMATION,
    DEFAULT_UI,
    DEPLOY_DRILL,
    DEPLOY_FAILBACK,
    DEPLOY_FAILOVER,
    DEPLOY_MONITOR,
    DEPLOY_RESTORE,
    POOL_FAILOVER,
    SECTIONS,
    Context,
    automation_name,
    deployment_name,
)

__all__ = ["AUTOMATION", "DEFAULT_UI", "DEPLOY_DRILL", "DEPLOY_FAILBACK", "DEPLOY_FAILOVER", "DEPLOY_MONITOR",
           "DEPLOY_RESTORE", "POOL_FAILOVER", "SECTIONS", "automation_name", "deployment_name", "render_runbook", "write_runbook"]

log = logging.getLogger(__name__)


def render_runbook(cfg: Config, *, now: datetime | None = None, drills: Sequence[Any] | None = None) -> str:
    """The runbook as markdown. ``now`` is the generation time (default: now, UTC); ``drills`` the drill history
    (``llmdr.drill.record.history(cfg)`` records or their JSON, oldest first; None: not looked up)."""
    now = now or datetime.now(timezone.utc)
    c = Context(cfg)
    lines = header(c, now) + [""]
    for part in (overview, notify, detect, failover, restore, failback, credentials, emergency):
        lines += part(c) + [""]
    lines += drill_programme(c, now, drills)
    return "\n".join(lines).rstrip("\n") + "\n"


def write_runbook(cfg: Config, path: Path | None = None, *, now: datetime | None = None) -> Path:
    """Render the runbook (with the drill history on disk) and write it atomically to ``path`` (default:
    ``runbook.path`` next to llmdr.yaml), creating its folder. Returns the path written."""
    from llmdr.drill.record import history

    try:
        drills: list[Any] | None = history(cfg)
    except OSError as exc:  # an unreadable reports folder must not block the runbook
        log.warning("drill history not read for the runbook: %s", exc)
        drills = None
    target = Path(path) if path is not None else cfg.runbook_path
    atomic_write(target, render_runbook(cfg, now=now, drills=drills), mode=0o644)  # a shared document
    log.info("runbook written to %s", target)
    return target
