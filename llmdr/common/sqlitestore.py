"""The sqlite files llmdr's monitors keep (probe samples, sampled answers' features, GPU readings): WAL mode with a
busy timeout, so a monitor writes while the CLI or a server reads from another process."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path


class WalStore:
    """One sqlite file, one connection per store and process (opening one per call made every call pay a WAL
    checkpoint on close), thread-safe. ``schema``: statements run once at open (``CREATE ... IF NOT EXISTS``)."""

    def __init__(self, path: Path, schema: tuple[str, ...] = ()) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._con: sqlite3.Connection | None = None
        self._pid = 0
        with self._connect() as con:
            for statement in schema:
                con.execute(statement)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._con is None or self._pid != os.getpid():  # a forked child must not share the parent's handle
                self._con = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
                self._con.execute("PRAGMA journal_mode=WAL")
                self._con.execute("PRAGMA synchronous=NORMAL")  # with WAL: survives a crashed process, cheap commits
                self._pid = os.getpid()
            with self._con:  # commits, or rolls back on error
                yield self._con

    def close(self) -> None:
        with self._lock:
            if self._con is not None and self._pid == os.getpid():
                self._con.close()
            self._con = None
