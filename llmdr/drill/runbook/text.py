"""What every runbook section uses: the deployment, pool and automation names, the section titles, the
:class:`Context` (config, command prefix, regions), and small markdown helpers that keep secrets and table syntax
out of the way (:func:`safe_url`, :func:`cell`, :func:`code`)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from llmdr.config import DEFAULT_CONFIG, Config, format_duration

# Names defined in prefect.yaml and deployments/automations.yaml (tests/test_runbook.py checks they still match).
# the DR region's work pool (llmdr-<failover target>, llmdr.config.pools) runs failover and the monitor; "{dr}" is
# that region's name, filled in by :func:`dr_pool`
POOL_FAILOVER = "llmdr-{dr}"
DEPLOY_FAILOVER = "failover/failover"
DEPLOY_FAILBACK = "failback/failback"
DEPLOY_RESTORE = "restore-bundle/restore-bundle"
DEPLOY_MONITOR = "monitor-endpoints/monitor-endpoints"
DEPLOY_DRILL = "dr-drill/dr-drill-quarterly"
AUTOMATION = "llmdr-failover-when-active-region-down"
DEFAULT_UI = "http://127.0.0.1:4200"



def deployment_name(cfg: Config, base: str) -> str:
    """``flow/deployment`` of CFG's bundle: its own copy ``flow/deployment-<bundle>`` in a project with several
    (deployments/configure.py), BASE otherwise."""
    return f"{base}-{cfg.view_of}" if cfg.view_of else base


def automation_name(cfg: Config) -> str:
    """The failover automation of CFG's bundle: one per bundle in a project with several (deployments/automations.py),
    ``AUTOMATION-<bundle>``; the project's single one otherwise."""
    return f"{AUTOMATION}-{cfg.view_of}" if cfg.view_of else AUTOMATION


def dr_pool(cfg: Config) -> str:
    """The work pool that runs failover and the monitor: the failover target's (llmdr.config.pools)."""
    from llmdr.config.pools import dr_region, region_pool

    return region_pool(dr_region(cfg))


SECTIONS = ("Overview", "Who is notified, who to call", "Detect an outage", "Fail over by hand", "Restore",
            "Fail back", "Credentials (names only)", "Emergency access", "Drills and readiness")


# --- small markdown helpers ----------------------------------------------------------------------------------------
def code(s: Any) -> str:
    """Inline code that survives backticks in the value."""
    s = str(s)
    return f"`` {s} ``" if "`" in s else f"`{s}`"


def cell(s: Any) -> str:
    """Text safe inside a table cell: pipes escaped, one line."""
    return " ".join(str(s).split()).replace("|", "\\|") or "—"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return out


def warn(text: str) -> str:
    return f"> **WARNING: {text}**"


def safe_url(url: str) -> str:
    """``url`` without user:password, query or fragment (where tokens hide)."""
    u = urlsplit(url)
    host = u.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{u.port}" if u.port else ""
    return f"{u.scheme}://{host}{port}{u.path}"


def rel(p: str, *more: str) -> str:
    """A path from the config (relative to the config folder, or absolute), joined with ``more``, POSIX style."""
    return Path(p, *more).as_posix()


def dur(td: timedelta) -> str:
    """``format_duration``, but sub-second durations as e.g. ``0.3s``."""
    secs = td.total_seconds()
    return format_duration(td) if secs >= 1 or secs == 0 else f"{secs:g}s"


def utc_text(dt: datetime) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def field(d: Any, key: str) -> Any:
    return d.get(key) if isinstance(d, dict) else getattr(d, key, None)


class Context:
    """What every section needs: the config, the command prefix, the names it keeps using."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        src = cfg.source_file
        self.config_name = src.name if src is not None else DEFAULT_CONFIG
        self.llmdr = ("llmdr" if self.config_name == DEFAULT_CONFIG
                      else f"llmdr --config {shlex.quote(self.config_name)}")
        self.primary = cfg.primary
        self.target = cfg.failover_target()
        self.others = [r for r in cfg.secondaries if r.name != self.target.name]
        self.bundle = cfg.bundle.name

    def cmd(self, rest: str) -> str:
        return f"{self.llmdr} {rest}"


def console(cfg: Config, steps: Sequence[tuple[str, str]]) -> list[str]:
    """A console block run from the config's folder, each command with its comment aligned."""
    width = max(len(cmd) for cmd, _ in steps) + 2
    return ["```console", f"cd {shlex.quote(cfg.base_dir.as_posix())}",
            *[f"{cmd:<{width}}# {why}" if why else cmd for cmd, why in steps], "```"]


def heading(n: int) -> str:
    return f"## {n}. {SECTIONS[n - 1]}"
