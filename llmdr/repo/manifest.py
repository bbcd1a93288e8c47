"""Snapshot manifests: deterministic JSON, content-addressed, written last.

A snapshot id is the SHA-256 of the manifest's canonical bytes (sorted keys, no whitespace, UTF-8, files sorted by
path). The same bytes therefore carry the same id in every region, and a reader proves a manifest untouched by
hashing it. Chunk references are ``[hex digest, length]`` pairs in file order.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from llmdr.errors import IntegrityError, UnsafePathError
from llmdr.repo.chunking import ChunkerParams
from llmdr.repo.ids import is_hex_digest

FORMAT = 1


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str  # relative, '/'-separated, normalised
    size: int
    mode: int  # permission bits only
    mtime_ns: int
    chunks: tuple[tuple[str, int], ...]  # (hex sha256, length)

    @property
    def digest(self) -> str:
        """Digest of the file's content, computed from its chunk list (a Merkle root over chunk ids and lengths)."""
        h = hashlib.sha256()
        for hexd, length in self.chunks:
            h.update(bytes.fromhex(hexd))
            h.update(length.to_bytes(8, "big"))
        return h.hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "mode": self.mode, "mtime_ns": self.mtime_ns,
                "chunks": [[d, n] for d, n in self.chunks]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "FileEntry":
        chunks = tuple((str(d), int(n)) for d, n in data["chunks"])
        entry = cls(path=check_relpath(data["path"]), size=int(data["size"]), mode=int(data["mode"]) & 0o7777,
                    mtime_ns=int(data["mtime_ns"]), chunks=chunks)
        for d, n in chunks:
            if not is_hex_digest(d) or n < 0:
                raise IntegrityError(f"manifest entry {entry.path!r} has a malformed chunk reference {d!r}")
        if sum(n for _, n in chunks) != entry.size:
            raise IntegrityError(f"manifest entry {entry.path!r}: chunk lengths do not add up to its size {entry.size}")
        return entry


@dataclass(frozen=True, slots=True)
class Manifest:
    bundle: str
    source: str
    host: str
    started: str
    created: str
    tool_version: str
    chunker: ChunkerParams
    files: tuple[FileEntry, ...]
    parent: str | None = None
    kind: str = "bundle"
    stats: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    # kind -> {"files": [paths], "required": bool, "digest": hex}: which tokenizer went with which weights.
    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    hash: str = "sha256"
    format: int = FORMAT

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "kind": self.kind,
            "bundle": self.bundle,
            "source": self.source,
            "host": self.host,
            "started": self.started,
            "created": self.created,
            "tool_version": self.tool_version,
            "hash": self.hash,
            "chunker": self.chunker.to_json(),
            "parent": self.parent,
            "stats": self.stats,
            "tags": self.tags,
            "components": self.components,
            "files": [f.to_json() for f in sorted(self.files, key=lambda f: f.path)],
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def chunk_set(self) -> dict[str, int]:
        """Every distinct chunk the snapshot references, with its length."""
        out: dict[str, int] = {}
        for f in self.files:
            for d, n in f.chunks:
                out[d] = n
        return out

    @classmethod
    def from_bytes(cls, data: bytes, *, expect_id: str | None = None) -> "Manifest":
        if expect_id is not None:
            actual = hashlib.sha256(data).hexdigest()
            if actual != expect_id:
                raise IntegrityError(
                    f"manifest {expect_id[:12]} is damaged: its bytes hash to {actual[:12]}. Use the copy in another "
                    "region (`llmdr replicate` from a healthy one) or an older snapshot."
                )
        try:
            raw = json.loads(data)
            if raw.get("format") != FORMAT:
                raise IntegrityError(f"unsupported manifest format {raw.get('format')!r} (this llmdr reads {FORMAT})")
            files = tuple(FileEntry.from_json(f) for f in raw["files"])
            paths = [f.path for f in files]
            if len(set(paths)) != len(paths):
                raise IntegrityError("manifest lists the same path twice")
            return cls(
                format=raw["format"], kind=raw["kind"], bundle=raw["bundle"], source=raw["source"], host=raw["host"],
                started=raw["started"], created=raw["created"], tool_version=raw["tool_version"], hash=raw["hash"],
                chunker=ChunkerParams.from_json(raw["chunker"]), parent=raw["parent"], stats=dict(raw["stats"]),
                tags=dict(raw["tags"]), components=dict(raw.get("components", {})), files=files,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise IntegrityError(f"manifest is malformed: {exc!r}") from exc


def component_digest(entries: list[FileEntry]) -> str:
    """Digest of a component: SHA-256 over its files' paths and content digests, in path order."""
    h = hashlib.sha256()
    for e in sorted(entries, key=lambda e: e.path):
        h.update(f"{e.path}\0{e.digest}\n".encode())
    return h.hexdigest()


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def manifest_id(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_utc(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def check_relpath(path: Any) -> str:
    """Accept only a plain relative path that stays inside its root: no absolute paths, '..', empty or odd parts."""
    if not isinstance(path, str) or not path:
        raise UnsafePathError(f"manifest path {path!r} is empty or not text")
    if "\x00" in path or "\\" in path:
        raise UnsafePathError(f"manifest path {path!r} contains a NUL or backslash")
    if path.startswith("/") or re.match(r"[A-Za-z]:", path):  # POSIX or Windows-drive absolute
        raise UnsafePathError(f"manifest path {path!r} is absolute; refusing to restore outside the target")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts) or posixpath.normpath(path) != path:
        raise UnsafePathError(f"manifest path {path!r} is not a plain relative path ('..', '.' or empty parts)")
    return path
