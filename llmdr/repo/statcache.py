"""Local stat cache: lets a re-snapshot skip files whose metadata has not changed, without reading them.

An entry is trusted only when size, mtime, ctime and inode all match and every chunk it names is still present in
the target store; otherwise the file is read and hashed again. The cache is a JSON file under ``.llmdr/cache``,
replaced atomically, and is only ever an optimisation: deleting it costs one full read of the bundle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from llmdr.common.files import atomic_write
from llmdr.repo.chunking import ChunkerParams

log = logging.getLogger(__name__)

Key = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode


def stat_key(st: os.stat_result) -> Key:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class StatCache:
    def __init__(self, path: Path | None, chunker: ChunkerParams) -> None:
        self.path = path
        self.chunker = chunker
        self._old: dict[str, tuple[Key, list[tuple[str, int]]]] = {}
        self._new: dict[str, tuple[Key, list[tuple[str, int]]]] = {}
        if path is not None and path.exists():
            try:
                raw = json.loads(path.read_text())
                if raw.get("chunker") == chunker.to_json():
                    for p, (k, chunks) in raw["files"].items():
                        self._old[p] = (tuple(k), [(d, int(n)) for d, n in chunks])  # type: ignore[assignment]
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring unreadable stat cache %s: %s", path, exc)

    @staticmethod
    def for_source(cache_dir: Path, source: Path) -> Path:
        tag = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:16]
        return cache_dir / f"stat-{tag}.json"

    def lookup(self, relpath: str, st: os.stat_result) -> list[tuple[str, int]] | None:
        hit = self._old.get(relpath)
        if hit is None or hit[0] != stat_key(st):
            return None
        return hit[1]

    def record(self, relpath: str, st: os.stat_result, chunks: list[tuple[str, int]]) -> None:
        self._new[relpath] = (stat_key(st), chunks)

    def save(self) -> None:
        if self.path is None:
            return
        data = {"chunker": self.chunker.to_json(), "files": {p: [list(k), c] for p, (k, c) in self._new.items()}}
        atomic_write(self.path, json.dumps(data, separators=(",", ":")))
