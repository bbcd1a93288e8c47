"""The root of the ``llmdr`` command line: the Typer app, its global options (--config, --verbose, --version), the
option types and helpers every command module shares, and :func:`main`, which turns errors into one message and an
exit code. The commands themselves live in the ``cmd_*`` modules next to this one, which register on :data:`app`."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from llmdr import __version__
from llmdr.cli.exitcodes import epilog
from llmdr.common.units import human_size as human_size  # re-exported: the cmd_* modules print sizes with it
from llmdr.errors import LlmdrError

# The order `llmdr --help` lists the commands in, whatever order the cmd_* modules register them in (a command
# missing here is listed after these, in registration order).
HELP_ORDER = (
    "init", "demo-bundle", "serve", "verify", "forget", "sample-bundle", "snapshot", "protect", "check", "replicate",
    "snapshots", "show", "restore", "status", "monitor", "hardware", "failover", "failback", "failovers", "drill", "drills",
    "readiness", "plan", "runbook", "lineage", "stack", "golden", "report", "datasets", "replica", "prune", "repair",
    "locks", "undelete", "migrate", "control",
)


class _OrderedGroup(TyperGroup):
    """The root command group, listing its commands in :data:`HELP_ORDER`."""

    def list_commands(self, ctx) -> list[str]:
        names = list(self.commands)  # the names only: a _LazyCommands builds no command for a listing
        rank = {name: i for i, name in enumerate(HELP_ORDER)}
        return sorted(names, key=lambda n: rank.get(n, len(rank)))


class _LazyCommands(MutableMapping):
    """The root group's commands by name, each built (typer reads its function's signature and options) the first
    time it is looked up: a command runs with only its own built, not all ~40 (~40 ms of every command). Iterates in
    registration order, over a copy of the names, so building while iterating (``items()``) is safe."""

    def __init__(self, makers: dict[str, Callable[[], Any]]) -> None:
        self._makers = dict(makers)
        self._built: dict[str, Any] = {}
        self._names = list(makers)

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            self._built[name] = self._makers.pop(name)()  # KeyError for an unknown name, as a dict
        return self._built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        if name not in self._names:
            self._names.append(name)
        self._makers.pop(name, None)
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        if self._makers.pop(name, None) is None:
            del self._built[name]
        self._names.remove(name)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names))

    def __len__(self) -> int:
        return len(self._names)


def _flags_show_no_type() -> None:
    """Typer 0.29's rich help prints a type after every option, flags included (``--json <bool>``), although a flag
    takes no value (its plain help prints none). Show no type for a flag or a counter, in every command's help."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "llmdr_flags", False):  # another Typer: its help is what it is
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag or self.count else shown(self, ctx)

    display_type_rich.llmdr_flags = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich


_flags_show_no_type()

app = typer.Typer(
    name="llmdr",
    help="Disaster recovery for LLM bundles: snapshot, replicate, verify, restore.",
    epilog=epilog(),
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
    bundle: str | None = None  # --bundle / $LLMDR_BUNDLE: the bundle of a project with several ("all": each)
    as_of: float | None = None  # --as-of: read the regions as they were then (seconds since the epoch)


# Commands that run once per bundle with `--bundle all` (every other command takes one bundle's name).
ALL_BUNDLES_COMMANDS = ("status", "stack")
# Commands that only read a region, so --as-of applies to them (design §6); every other command refuses it.
AS_OF_COMMANDS = ("snapshots", "show", "restore", "verify")


state = _State()


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"llmdr {__version__}")
        raise typer.Exit(0)


def parse_as_of(text: str, now: float | None = None) -> float:
    """``--as-of`` as seconds since the epoch: ISO 8601 (UTC unless it names an offset), or a duration ago
    (``2h``, ``1d``, ``1h30m``: before ``now``, this machine's clock)."""
    import time
    from datetime import datetime, timezone

    from llmdr.config import parse_duration
    from llmdr.errors import UsageError

    try:
        return (time.time() if now is None else now) - parse_duration(text).total_seconds()
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(f"--as-of {text!r}: write a UTC time (2026-12-03T08:00:00Z) or how long ago (2h, 1d, "
                         "1h30m)") from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def as_of(command: str) -> float | None:
    """The global ``--as-of`` time for COMMAND (None without it); a command that writes refuses it (``UsageError``),
    and so does ``verify --repair``, which the caller names as COMMAND."""
    from llmdr.errors import UsageError

    if state.as_of is not None and command not in AS_OF_COMMANDS:
        raise UsageError(f"--as-of reads a region as it was; `llmdr {command}` would write, so it cannot run on that "
                         f"view. Drop --as-of (it applies to: {', '.join(AS_OF_COMMANDS)})")
    return state.as_of


@app.callback()
def _root(
    ctx: typer.Context,
    config: ConfigOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", callback=_print_version,
                                          is_eager=True)] = False,
    as_of_time: Annotated[Optional[str], typer.Option(
        "--as-of", metavar="TIME", help="Read the region as it was at TIME (UTC ISO 8601, or e.g. 2h ago) from its "
        "object versions; read commands only (snapshots, show, restore, verify).")] = None,
    bundle: Annotated[Optional[str], typer.Option(
        "--bundle", "-b", envvar="LLMDR_BUNDLE", metavar="NAME", help="The bundle to act on, in a project with "
        "several (bundles: in llmdr.yaml); required there. 'all': each in turn (status only; `stack` always acts "
        "on every bundle).")] = None,
) -> None:
    state.config_path = config
    state.bundle = bundle or None  # typer reads $LLMDR_BUNDLE into it
    state.as_of = None
    if as_of_time is not None:
        state.as_of = parse_as_of(as_of_time)
        as_of(ctx.invoked_subcommand or "")
    level = logging.INFO if verbose else logging.WARNING
    before = set(logging.getLogger().handlers)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    for handler in set(logging.getLogger().handlers) - before:
        # the terminal's own level: Prefect's run loggers log INFO for the API and propagate here
        handler.setLevel(level)


def load_cfg(config: Path | None = None, *, whole: bool = False):
    """The project's config: from CONFIG, else the global --config, else ./llmdr.yaml or $LLMDR_CONFIG; seen as the
    --bundle's view (required when the project has several bundles), or WHOLE (every bundle: ``cfg.views()``)."""
    from llmdr.common.gcpause import gc_paused

    with gc_paused():  # pydantic builds the config's models on import: many objects, no garbage
        from llmdr.config import load_config, split_ref

        path, in_ref = split_ref(config or state.config_path or os.environ.get("LLMDR_CONFIG") or None)
        cfg = load_config(path, whole=True)
    if not whole:
        cfg = cfg.for_bundle(_one_bundle(cfg, in_ref))
    if cfg.state_path.is_dir():  # keys, caches and logs live there: an existing state folder is tightened to 0700
        from llmdr.common.files import private_dir

        try:
            private_dir(cfg.state_path)
        except PermissionError:  # another user's folder: theirs to fix, and not ours to write into anyway
            logging.getLogger(__name__).warning("state folder %s is readable by others and not ours to tighten",
                                                cfg.state_path)
    return cfg


def _one_bundle(cfg, in_ref: str | None = None) -> str | None:
    """The bundle a command acts on: --bundle / $LLMDR_BUNDLE, else a ``<config>#<bundle>`` reference's."""
    from llmdr.errors import UsageError

    name = state.bundle or in_ref
    if name == "all":
        raise UsageError(f"--bundle all: this command acts on one bundle; name one of {', '.join(cfg.bundle_names())} "
                         f"(`all` applies to: {', '.join(ALL_BUNDLES_COMMANDS)})")
    if name is None and cfg.multi_bundle:
        raise UsageError(f"{cfg.source_file} protects several bundles ({', '.join(cfg.bundle_names())}): choose one "
                         "with --bundle NAME or LLMDR_BUNDLE (`llmdr status --bundle all` shows every one)")
    return name


def load_views(config: Path | None = None) -> list:
    """The configs a command run once per bundle acts on: --bundle's view, or every bundle's with ``--bundle all``
    (a project with one bundle: that one)."""
    cfg = load_cfg(config, whole=True)
    name = state.bundle
    return cfg.views() if name == "all" or (name is None and not cfg.multi_bundle) else [cfg.for_bundle(name)]


def emit(as_json: bool, data: Any, text: str | None = None) -> None:
    """Print DATA as one JSON document with --json, else TEXT (when given)."""
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif text is not None:
        typer.echo(text)


def hidden_json(hidden: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The keys a read found hidden by a delete marker over a locked version (key -> version, lock), as a list for
    JSON output: ``{key, locked_version, mode, until, until_utc}`` in key order."""
    from llmdr.storage.versioned import utc_text

    return [{"key": k, "locked_version": h["version_id"], "mode": h["mode"], "until": h["until"],
             "until_utc": utc_text(h["until"])} for k, h in sorted(hidden.items())]


def warn_hidden(hidden: dict[str, dict[str, Any]], region: str) -> None:
    """One warning on stderr per key that was read through a delete marker, saying how to bring it back."""
    from llmdr.repo.undelete import describe

    for h in hidden_json(hidden):
        typer.echo(f"WARNING: {describe(h)}; read from its locked version {h['locked_version']}. Run `llmdr "
                   f"undelete --region {region}` to remove the marker", err=True)


def progress_for(as_json: bool):
    """Byte progress on stderr for text output: a bar on a terminal; else (a log, a pipe) a line now and then
    (``LineProgress``: every $LLMDR_PROGRESS_INTERVAL seconds, default 10, or at each 10 % step; 0: at every step).
    No progress with --json."""
    from llmdr.common.progress import LineProgress, NoProgress

    if as_json:
        return NoProgress()
    if sys.stderr.isatty():
        return _RichProgress()
    raw = os.environ.get("LLMDR_PROGRESS_INTERVAL", "").strip()
    try:
        interval = float(raw) if raw else 10.0
        if not 0 <= interval < float("inf"):
            raise ValueError(raw)
    except ValueError:
        from llmdr.errors import UsageError

        raise UsageError(f"LLMDR_PROGRESS_INTERVAL={raw!r} in the environment: write the seconds between progress "
                         "lines, e.g. 10 (0: a line at every 10 % step), or unset it") from None
    return LineProgress(lambda line: typer.echo(line, err=True), interval)


class _RichProgress:
    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

        self._p = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(binary_units=False),
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


# Running flows in this process ----------------------------------------------------------------------------------------
def use_local_prefect(cfg) -> None:
    """Send events and flow runs to the local Prefect server when `llmdr stack up --ui` runs one (unless the
    environment already names a Prefect API)."""
    from llmdr.devstack import orchestration
    from llmdr.integrations.prefect import quiet_console

    quiet_console()  # warnings on the console; INFO run logs still reach the API (the UI)
    if "PREFECT_API_URL" not in os.environ and orchestration.running(cfg):
        st = orchestration.status(cfg)
        if st.healthy:
            os.environ["PREFECT_API_URL"] = st.url + "/api"


def run_flow(fn, **kw) -> dict:
    """Call the flow FN in this process with the config's path (flows load the config themselves)."""
    cfg = load_cfg()
    use_local_prefect(cfg)
    path = str((cfg.source_file or Path("llmdr.yaml")).resolve())
    return fn(config_path=path, bundle=cfg.view_of, **kw)


def main() -> None:
    """The ``llmdr`` command: run it, print an error as one line (no traceback), exit with its code."""
    # llmdr's models need no pydantic plugin; looking them up scans every installed package's entry points at the
    # first model (~20 ms of every command). Set PYDANTIC_DISABLE_PLUGINS= (empty) to load them anyway.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    _exit(_run())


def root_command():
    """The root click group of :data:`app`, as ``app()`` would run it, except that each command and sub-group is
    built when it is looked up (:class:`_LazyCommands`), not all of them up front."""
    from functools import partial

    import typer.main

    commands, groups = app.registered_commands, app.registered_groups
    app.registered_commands, app.registered_groups = [], []  # typer builds the group alone...
    try:
        root = typer.main.get_command(app)
    finally:
        app.registered_commands, app.registered_groups = commands, groups
    makers: dict[str, Callable[[], Any]] = {}  # ...and each command when it is needed, in registration order
    for info in commands:
        name = info.name or typer.main.get_command_name(info.callback.__name__)
        makers[name] = partial(typer.main.get_command_from_info, info, rich_markup_mode=app.rich_markup_mode,
                               pretty_exceptions_short=app.pretty_exceptions_short)
    for info in groups:
        makers[info.name] = partial(typer.main.get_group_from_info, info, rich_markup_mode=app.rich_markup_mode,
                                    pretty_exceptions_short=app.pretty_exceptions_short,
                                    suggest_commands=app.suggest_commands)
    root.commands = _LazyCommands(makers)
    return root


def _run() -> int:
    try:
        rv = root_command()(standalone_mode=False)
    except typer.Exit as e:
        return e.exit_code
    except TyperException as e:  # usage errors: missing argument, bad option...
        show = getattr(e, "show", None)
        if show is not None:
            show()
        else:
            typer.echo(f"error: {e.format_message()}", err=True)
        return e.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except KeyboardInterrupt:
        typer.echo("interrupted; nothing partial is visible. Run the same command again to resume.", err=True)
        return 130
    except LlmdrError as e:
        typer.echo(f"error: {e}", err=True)
        return e.exit_code
    except OSError as e:
        typer.echo(f"error: {e.strerror or e}{': ' + str(e.filename) if e.filename else ''}", err=True)
        return 1
    return rv if isinstance(rv, int) else 0


def _exit(code: int) -> None:
    """Exit with CODE, without the interpreter's last full garbage collection over every object the command's
    imports made (botocore's service model, the pydantic schemas): ~0.15 s of a short command. ``gc.freeze()``
    leaves those objects out of it; atexit handlers, flushes and module teardown still run."""
    import gc

    gc.freeze()
    sys.exit(code)
