"""One `llmdr stack up` or `down` at a time per project: two started together would each see the servers stopped,
both start them, and the second would fail on ports the first had just bound (or stop what the first had started).
An exclusive ``flock`` on ``<state_dir>/stack/.lock`` decides; the kernel lets it go however its holder exits, so a
crashed command never leaves the project locked. The second command waits, says so, and then finds the stack up."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator

from llmdr.common.files import open_private, private_dir
from llmdr.config import Config
from llmdr.errors import StackError


@contextlib.contextmanager
def stack_lock(cfg: Config, command: str, timeout: float = 600) -> Iterator[None]:
    """Hold the project's stack lock for ``command`` (e.g. ``"stack up"``); wait up to ``timeout`` s for another
    holder, telling stderr who it is."""
    path = private_dir(cfg.state_path / "stack") / ".lock"
    fd = open_private(path, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another llmdr process"
            print(f"waiting for {holder} to finish on this project ({path})", file=sys.stderr, flush=True)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StackError(f"`llmdr {command}` waited {timeout:.0f} s for {holder} ({path}); if no "
                                         "llmdr stack command runs, this is a bug: report it") from None
                    time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"`llmdr {command}` (pid {os.getpid()})".encode(), 0)
        yield
    finally:
        os.close(fd)
