"""Start-up cost of the ``llmdr`` command: what a command imports, and the collector pause start-up work runs under.

Timings are measured in ``bench/`` (the warm no-op snapshot as a whole command), never asserted here; these tests
guard the causes: a heavy library imported where it is not used, a pause that leaks or leaves the collector off."""

import gc
import subprocess
import sys

import pytest

from llmdr.common.gcpause import gc_paused

HEAVY = ("boto3", "botocore", "cryptography", "prefect", "pydantic", "yaml", "jinja2", "tokenizers", "mlflow",
         "urllib3", "llmdr.config", "llmdr.repo", "llmdr.storage", "llmdr.devstack", "flows", "tasks",
         "starlette", "uvicorn", "fastapi", "llmdr.serving.server")

# Runs the CLI as `llmdr ARGS...` would and prints, at exit, which of HEAVY the process imported.
PROBE = """
import atexit, sys
heavy = set(sys.argv[1].split(","))
sys.argv = ["llmdr"] + sys.argv[2:]
atexit.register(lambda: print("IMPORTED=" + ",".join(sorted(m for m in sys.modules if m in heavy)), file=sys.stderr))
from llmdr.cli import main
main()
"""


def imported(args, cwd):
    r = subprocess.run([sys.executable, "-c", PROBE, ",".join(HEAVY), *args], cwd=cwd, capture_output=True,
                       text=True, timeout=120)
    line = next(x for x in r.stderr.splitlines() if x.startswith("IMPORTED="))
    return r, set(filter(None, line.removeprefix("IMPORTED=").split(",")))


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["snapshot", "--help"], ["restore", "--help"],
                                  ["serve", "--help"]])
def test_version_and_help_import_no_heavy_library(args, tmp_path):
    r, mods = imported(args, tmp_path)
    assert r.returncode == 0, r.stderr
    assert mods <= {"pydantic"}, f"`llmdr {' '.join(args)}` imported {sorted(mods)}"
    if args == ["--version"]:
        assert not mods


def test_python_dash_m_llmdr_is_the_command():
    r = subprocess.run([sys.executable, "-m", "llmdr", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("llmdr "), r.stderr


def test_a_command_without_a_store_does_not_import_botocore(tmp_path):
    (tmp_path / "b").mkdir()
    r, mods = imported(["init", "b"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "llmdr.config" in mods  # the probe sees imports at all
    assert not mods & {"boto3", "botocore", "urllib3", "cryptography", "prefect", "mlflow"}, sorted(mods)


def test_exit_code_and_message_survive_the_fast_exit(tmp_path):
    r, _ = imported(["snapshots"], tmp_path)
    assert r.returncode == 2 and "llmdr.yaml: no such file" in r.stderr and "Traceback" not in r.stderr


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_gc_paused_restores_the_collector_and_nests():
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner block leaves it as the outer one set it
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with gc_paused():
            raise RuntimeError("boom")
    assert gc.isenabled()


def test_gc_paused_leaves_nothing_frozen_and_cycles_made_inside_are_still_collected():
    import weakref

    with gc_paused():
        c = _Cycle()
        ref = weakref.ref(c)
        del c
    assert ref() is not None  # a cycle: reference counting alone cannot free it
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert ref() is None


def test_gc_paused_leaves_a_collector_that_was_off_off():
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_root_command_builds_each_command_when_looked_up_and_equals_typers(monkeypatch):
    import typer.main

    from llmdr.cli import app
    from llmdr.cli.root import root_command

    eager = typer.main.get_command(app)
    built = []
    real = typer.main.get_command_from_info
    monkeypatch.setattr(typer.main, "get_command_from_info", lambda *a, **kw: built.append(a) or real(*a, **kw))
    root = root_command()
    ctx = root.make_context("llmdr", ["snapshot"], resilient_parsing=True)
    assert set(root.list_commands(ctx)) == set(eager.commands) and not built
    assert root.get_command(ctx, "snapshot").name == "snapshot" and len(built) == 1
    assert root.get_command(ctx, "no-such-command") is None
    assert list(root.commands) == list(eager.commands)  # registration order
    assert [n for n, _ in root.commands.items()] == list(eager.commands)  # builds while iterating: safe
    for name in root.list_commands(ctx):
        lazy, full = root.get_command(ctx, name), eager.commands[name]
        assert type(lazy) is type(full) and lazy.help == full.help
        assert [p.name for p in lazy.params] == [p.name for p in full.params]
        assert sorted(getattr(lazy, "commands", {})) == sorted(getattr(full, "commands", {}))


def test_quick_service_lookup_answers_as_botocore_does():
    import botocore.session
    from botocore.exceptions import UnknownServiceError
    from botocore.loaders import Loader

    from llmdr.storage.credentials import quick_service_lookup

    session = botocore.session.get_session()
    quick_service_lookup(session)
    loader = session.get_component("data_loader")
    quick_service_lookup(session)  # idempotent: the same loader (and its cache of parsed models) stays
    assert session.get_component("data_loader") is loader
    stock = Loader()
    for type_name in ("service-2", "endpoint-rule-set-1", "waiters-2"):
        names, full = loader.list_available_services(type_name), stock.list_available_services(type_name)
        assert list(names) == full and len(names) == len(full) and names[0] == full[0]
        assert all(n in names for n in full[::37] + ["s3", "sts"] if n in full)
        assert not any(n in names for n in ("no-such-service", "", "s3/2006-03-01", 3))
    kw = dict(endpoint_url="http://127.0.0.1:9", aws_access_key_id="a", aws_secret_access_key="b",
              region_name="us-east-1")
    assert session.create_client("s3", **kw).meta.service_model.service_name == "s3"
    assert session.create_client("sts", **kw).meta.service_model.service_name == "sts"
    with pytest.raises(UnknownServiceError, match="s3, s3control"):  # the message still lists every service
        session.create_client("no-such-service", **kw)
