"""A snapshot made by hand: the file list a crafted record, or an older llmdr, can put in front of restore, whatever
the snapshot side would accept."""

from __future__ import annotations

import hashlib

from llmdr.repo.chunking import ChunkerParams
from llmdr.repo.layout import record_key, tree_key
from llmdr.repo.manifest import FileEntry, Manifest, canonical_json
from llmdr.repo.repository import Repository
from llmdr.repo.tree import record_bytes


def publish_files(repo: Repository, entries: list[FileEntry], chunker: ChunkerParams) -> str:
    """Store a tree holding exactly ``entries`` and a record naming it (no catalog entry: restore by id); return
    the snapshot id. The chunks must already be in packs and indexed."""
    tree = canonical_json({"files": [e.to_json() for e in entries]})
    repo.store.put(tree_key(hashlib.sha256(tree).hexdigest()), tree)
    m = Manifest(bundle="b", source="/x", host="h", started="2026-01-01T00:00:00.000000Z",
                 created="2026-01-01T00:00:00.000000Z", tool_version="0", chunker=chunker, files=())
    data = record_bytes(m, hashlib.sha256(tree).hexdigest())
    repo.store.put(record_key(hashlib.sha256(data).hexdigest()), data)
    return hashlib.sha256(data).hexdigest()
