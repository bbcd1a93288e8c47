"""Snapshot records and file trees (repository format v2, docs/design/repository-format-v2.md §3).

A snapshot is two kinds of small, content-addressed objects instead of v1's one manifest:

- **trees** (``trees/<2 hex>/<id>``): the file list, canonical JSON ``{"files": [...]}`` with v1's file entries.
  Above ``LEAF_FILES`` files the list is cut into leaves of consecutive paths, cut where the SHA-256 of a path has
  its low ``CUT_BITS`` bits zero (content-defined: adding a file changes one leaf), and the root is
  ``{"subtrees": [<id>, …]}``. An unchanged listing has the same id and is not uploaded again.
- **the record** (``snaps/<id>``, ~1 KB): everything a v1 manifest held except the files, plus ``"tree"``. Its id,
  the SHA-256 of its canonical bytes, is the snapshot id; it is the same in every region.

``Manifest`` stays the in-memory view of a snapshot (record fields + files): callers read ``manifest.files`` as
before, whichever objects it came from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from llmdr.errors import IntegrityError
from llmdr.repo.chunking import ChunkerParams
from llmdr.repo.ids import is_hex_digest
from llmdr.repo.manifest import FileEntry, Manifest, canonical_json

RECORD_FORMAT = 2
LEAF_FILES = 4096
CUT_BITS = 10
_RECORD_FIELDS = ("bundle", "source", "host", "started", "created", "tool_version", "chunker", "parent", "kind",
                  "stats", "tags", "components", "hash", "format", "tree")


def _cut_here(path: str) -> bool:
    digest = hashlib.sha256(path.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[-2:], "big") & ((1 << CUT_BITS) - 1) == 0


@dataclass(frozen=True, slots=True)
class BuiltTree:
    """A file list as tree objects: ``root`` is the id the record names, ``objects`` every tree object by id."""

    root: str
    objects: dict[str, bytes]


def build_tree(files: Iterable[FileEntry]) -> BuiltTree:
    """The tree objects of ``files`` (sorted by path here)."""
    entries = sorted(files, key=lambda f: f.path)
    objects: dict[str, bytes] = {}

    def put(obj: dict[str, Any]) -> str:
        data = canonical_json(obj)
        tid = hashlib.sha256(data).hexdigest()
        objects[tid] = data
        return tid

    if len(entries) <= LEAF_FILES:
        return BuiltTree(put({"files": [f.to_json() for f in entries]}), objects)
    leaves: list[str] = []
    leaf: list[FileEntry] = []
    for f in entries:
        leaf.append(f)
        if (_cut_here(f.path) and len(leaf) >= 64) or len(leaf) >= 4 * LEAF_FILES:
            leaves.append(put({"files": [e.to_json() for e in leaf]}))
            leaf = []
    if leaf:
        leaves.append(put({"files": [e.to_json() for e in leaf]}))
    return BuiltTree(put({"subtrees": leaves}), objects)


def load_tree(root: str, fetch: Callable[[str], bytes], *, where: str) -> tuple[FileEntry, ...]:
    """The files of tree ``root``; ``fetch(id)`` returns a tree object's bytes (the caller proves them against the
    id). Paths must be unique and sorted across leaves."""
    files: list[FileEntry] = []

    def parse(tid: str, data: bytes, depth: int) -> None:
        try:
            raw = json.loads(data)
            if "subtrees" in raw and depth == 0:
                subs = raw["subtrees"]
                if not all(isinstance(s, str) and is_hex_digest(s) for s in subs):
                    raise ValueError("malformed subtree id")
                # the leaves are independent objects: fetch them at once (a cold DR host reads them from the store)
                with ThreadPoolExecutor(max_workers=min(8, max(1, len(subs))), thread_name_prefix="llmdr-tree") as pool:
                    for s, leaf in zip(subs, pool.map(fetch, subs), strict=True):
                        parse(s, leaf, depth + 1)
                return
            files.extend(FileEntry.from_json(f) for f in raw["files"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise IntegrityError(f"{where}: tree {tid[:12]} is malformed ({exc!r}); restore from another region "
                                 "or repair with `llmdr verify --repair`") from None

    parse(root, fetch(root), 0)
    paths = [f.path for f in files]
    if paths != sorted(paths) or len(set(paths)) != len(paths):
        raise IntegrityError(f"{where}: tree {root[:12]} lists paths out of order or twice; it was not written by "
                             "llmdr. Restore from another region.")
    return tuple(files)


def tree_ids(root: str, fetch: Callable[[str], bytes]) -> list[str]:
    """Every tree object id reachable from ``root`` (the root first)."""
    raw = json.loads(fetch(root))
    return [root, *raw.get("subtrees", [])]


def record_json(manifest: Manifest, tree: str) -> dict[str, Any]:
    """The record of a snapshot whose files are in tree ``tree``."""
    out = manifest.to_json()
    out.pop("files")
    out["format"] = RECORD_FORMAT
    out["tree"] = tree
    return out


def record_bytes(manifest: Manifest, tree: str) -> bytes:
    return canonical_json(record_json(manifest, tree))


def parse_record(data: bytes | dict[str, Any], *, expect_id: str | None, where: str) -> dict[str, Any]:
    """A record's fields, proven against ``expect_id`` (the SHA-256 of its canonical bytes)."""
    try:
        raw = json.loads(data) if isinstance(data, bytes | bytearray) else data
        if not isinstance(raw, dict):
            raise TypeError("not an object")
        body = canonical_json(raw)
    except (TypeError, ValueError) as exc:
        raise IntegrityError(f"{where}: snapshot record is malformed ({exc!r})") from None
    if expect_id is not None and hashlib.sha256(body).hexdigest() != expect_id:
        raise IntegrityError(f"{where}: snapshot record {expect_id[:12]} is damaged: its bytes do not hash to its id. "
                             "Use the copy in another region (`llmdr verify --repair`) or an older snapshot.")
    if raw.get("format") != RECORD_FORMAT or not is_hex_digest(str(raw.get("tree", ""))):
        raise IntegrityError(f"{where}: snapshot record {str(expect_id)[:12]} has format {raw.get('format')!r} and "
                             f"tree {str(raw.get('tree'))[:12]!r}; this llmdr reads format {RECORD_FORMAT}")
    missing = [f for f in _RECORD_FIELDS if f not in raw]
    if missing:
        raise IntegrityError(f"{where}: snapshot record {str(expect_id)[:12]} lacks {', '.join(missing)}")
    return raw


def manifest_of(record: dict[str, Any], files: tuple[FileEntry, ...]) -> Manifest:
    """The in-memory snapshot view of ``record`` with its ``files``."""
    try:
        return Manifest(
            bundle=record["bundle"], source=record["source"], host=record["host"], started=record["started"],
            created=record["created"], tool_version=record["tool_version"],
            chunker=ChunkerParams.from_json(record["chunker"]), files=files, parent=record["parent"],
            kind=record["kind"], stats=dict(record["stats"]), tags=dict(record["tags"]),
            components=dict(record["components"]), hash=record["hash"], format=RECORD_FORMAT,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"snapshot record is malformed: {exc!r}") from None
