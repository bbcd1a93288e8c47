"""The record of which region the router sends traffic to, since when, and why.

``state.json`` holds the last switch (replaced atomically); ``history.jsonl`` next to it gets one line per switch,
appended with a single write, oldest first. A crash can at worst leave a torn last history line, which ``history()``
skips with a warning instead of refusing the whole file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from llmdr.common.files import atomic_write, open_private, private_dir
from llmdr.config import Config
from llmdr.errors import LlmdrError
from llmdr.failover.router.base import utc_now

log = logging.getLogger(__name__)


class RouterLog:
    def __init__(self, path: Path, cfg: Config | None = None):
        self.path = Path(path)
        self.history_path = self.path.with_name("history.jsonl")
        self.cfg = cfg  # given: each switch also goes to every region's store (``llmdr.control``), in the background

    def record(self, active: str, *, reason: str, previous: str | None) -> dict:
        """Record a switch to ``active``: the current state first (atomic), then one history line."""
        entry = {"active": active, "previous": previous, "since": utc_now(), "reason": reason}
        line = json.dumps(entry, sort_keys=True) + "\n"
        atomic_write(self.path, json.dumps(entry, sort_keys=True, indent=2) + "\n")
        fd = open_private(self.history_path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        if self.cfg is not None:
            from llmdr.control import layout
            from llmdr.control.records import publish_soon, record_bytes

            key = layout.switch_key()
            publish_soon(self.cfg, [(key, record_bytes(self.cfg, key, entry))])
        return entry

    def current(self) -> dict | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LlmdrError(f"{self.path}: router state is not valid JSON ({exc.msg}); it is rewritten by the next "
                             "`llmdr` switch, or delete it (the history stays in history.jsonl)") from None
        return data if isinstance(data, dict) else None

    def history(self) -> list[dict]:
        try:
            lines = self.history_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s:%d: skipping a torn history line", self.history_path, n)
        return out

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Serialise switches across processes, so the history order is the order the router saw."""
        private_dir(self.path.parent)
        fd = open_private(self.path.with_name(".lock"), os.O_WRONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
