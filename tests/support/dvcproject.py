"""A git+DVC project for protect-bundle tests with datasets: the demo model, data tracked by DVC and committed, and
an llmdr.yaml on the running test regions (fresh key prefix) with a sqlite MLflow store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

from llmdr.config import Config

DVC = str(Path(sys.executable).parent / "dvc")
GIT_ID = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
BUNDLE = ('{name: linbot, path: model, components: {weights: {paths: ["*.safetensors"]}, '
          'tokenizer: {paths: ["tokenizer.json"]}}}')


def run(*args: str, cwd: Path) -> None:
    """git or dvc in ``cwd``, no analytics, a fixed committer; fails the test on a non-zero exit."""
    r = subprocess.run(args, cwd=cwd, env={**os.environ, "DVC_NO_ANALYTICS": "1", **GIT_ID}, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def dvc_project(stack: Config, tmp_path: Path, *, write_data: Callable[[Path], None], track: str,
                extra: str) -> Config:
    """``tmp_path/project``: git and DVC initialised, ``write_data(root)`` run, ``track`` (a file or folder) added to
    DVC and committed, the demo model in ``model/``; returns its config (``extra`` is formatted with ``db``, the
    MLflow sqlite file)."""
    from llmdr.serving.tinymodel import write_demo_bundle
    from tests.support.config import two_region_yaml, write_config

    root = tmp_path / "project"
    root.mkdir()
    run("git", "init", "-q", cwd=root)
    run(DVC, "init", "-q", cwd=root)
    write_data(root)
    run(DVC, "add", "-q", track, cwd=root)
    run("git", "add", "-A", cwd=root)
    run("git", "commit", "-q", "-m", "v1", cwd=root)
    write_demo_bundle(root / "model")
    state = root / ".llmdr"
    state.mkdir()
    shutil.copy(stack.state_path / "local.env", state / "local.env")
    text = two_region_yaml(stack.primary.port, stack.secondaries[0].port, prefix=f"t-{uuid.uuid4().hex[:10]}",
                           bundle=BUNDLE, extra=extra.format(db=tmp_path / "mlflow.db"))
    return write_config(root / "llmdr.yaml", text)
