"""The root of the ``llmdr`` command line: the Typer app, its global options (--config, --verbose, --version), the
option types and helpers every command module shares, and :func:`main`, which turns errors into one message and an
exit code. The commands themselves live in the ``cmd_*`` modules next to this one, which register on :data:`app`."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from llmdr import __version__
from llmdr.errors import LlmdrError

# The order `llmdr --help` lists the commands in, whatever order the cmd_* modules register them in (a command
# missing here is listed after these, in registration order).
HELP_ORDER = (
    "init", "demo-bundle", "serve", "verify", "forget", "sample-bundle", "snapshot", "protect", "check", "replicate",
    "snapshots", "show", "restore", "status", "monitor", "failover", "failback", "failovers", "drill", "drills",
    "readiness", "plan", "runbook", "lineage", "stack", "golden", "report", "datasets", "replica", "prune", "repair",
    "locks", "migrate",
)


class _OrderedGroup(TyperGroup):
    """The root command group, listing its commands in :data:`HELP_ORDER`."""

    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        rank = {name: i for i, name in enumerate(HELP_ORDER)}
        return sorted(names, key=lambda n: rank.get(n, len(rank)))


app = typer.Typer(
    name="llmdr",
    help="Disaster recovery for LLM bundles: snapshot, replicate, verify, restore.",
    cls=_OrderedGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="Path to llmdr.yaml (default: "
                                                                         "./llmdr.yaml or $LLMDR_CONFIG).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead of text.")]
RegionOpt = Annotated[Optional[str], typer.Option("--region", "-r", help="Region name (default: the primary).")]


class _State:
    config_path: Path | None = None


state = _State()


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"llmdr {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    config: ConfigOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", callback=_print_version,
                                          is_eager=True)] = False,
) -> None:
    state.config_path = config
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")


def load_cfg(config: Path | None = None):
    """The project's config: from CONFIG, else the global --config, else ./llmdr.yaml or $LLMDR_CONFIG."""
    from llmdr.config import load_config

    return load_config(config or state.config_path)


def emit(as_json: bool, data: Any, text: str | None = None) -> None:
    """Print DATA as one JSON document with --json, else TEXT (when given)."""
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif text is not None:
        typer.echo(text)


def progress_for(as_json: bool):
    """A byte progress bar on stderr when it is a terminal and the output is text; else no progress."""
    from llmdr.common.progress import NoProgress

    if as_json or not sys.stderr.isatty():
        return NoProgress()
    return _RichProgress()


class _RichProgress:
    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

        self._p = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                           TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        self._task = None

    def start(self, description: str, total_bytes: int) -> None:
        self._p.start()
        self._task = self._p.add_task(description, total=total_bytes)

    def advance(self, nbytes: int) -> None:
        if self._task is not None:
            self._p.advance(self._task, nbytes)

    def finish(self) -> None:
        self._p.stop()


def human_size(n: float) -> str:
    """Bytes as B / KiB / MiB / GiB / TiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# Running flows in this process ----------------------------------------------------------------------------------------
def use_local_prefect(cfg) -> None:
    """Send events and flow runs to the local Prefect server when `llmdr stack up --ui` runs one (unless the
    environment already names a Prefect API)."""
    import os

    from llmdr.devstack import orchestration

    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if "PREFECT_API_URL" not in os.environ and orchestration.running(cfg):
        st = orchestration.status(cfg)
        if st.healthy:
            os.environ["PREFECT_API_URL"] = st.url + "/api"


def run_flow(fn, **kw) -> dict:
    """Call the flow FN in this process with the config's path (flows load the config themselves)."""
    cfg = load_cfg()
    use_local_prefect(cfg)
    path = str((cfg.source_file or Path("llmdr.yaml")).resolve())
    return fn(config_path=path, **kw)


def main() -> None:
    try:
        rv = app(standalone_mode=False)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except TyperException as e:  # usage errors: missing argument, bad option...
        show = getattr(e, "show", None)
        if show is not None:
            show()
        else:
            typer.echo(f"error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("interrupted; nothing partial is visible. Run the same command again to resume.", err=True)
        sys.exit(130)
    except LlmdrError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except OSError as e:
        typer.echo(f"error: {e.strerror or e}{': ' + str(e.filename) if e.filename else ''}", err=True)
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
