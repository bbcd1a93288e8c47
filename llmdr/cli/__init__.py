"""The ``llmdr`` command line, the outermost layer: it may import the flows and every core package, and nothing
imports it. :mod:`llmdr.cli.root` holds the root Typer app, the global options, the helpers the commands share and
:func:`main`; each ``cmd_<group>`` module holds one group of commands, which load the config, open what they need and
call one core function (or run one flow in this process); errors print one message and exit non-zero, never a
traceback. Importing this package registers every command on :data:`app`."""

from llmdr.cli import (  # noqa: F401  (imported for their @app.command registrations)
    cmd_control,
    cmd_drill,
    cmd_failover,
    cmd_hardware,
    cmd_init,
    cmd_lineage,
    cmd_metrics,
    cmd_migrate,
    cmd_readiness,
    cmd_replicate,
    cmd_repo,
    cmd_restore,
    cmd_serve,
    cmd_snapshot,
    cmd_stack,
    cmd_undelete,
    cmd_verify,
)
from llmdr.cli.root import app, main

__all__ = ["app", "main"]
