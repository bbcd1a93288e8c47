"""Write a repository in format v1 by hand, as llmdr before issue #15 did (for ``llmdr migrate`` tests).

    config.json                 {"format": 1, "hash": "sha256", "chunker": {...}}
    chunks/<2 hex>/<64 hex>     one object per chunk (plain bytes; an EncryptingStore seals it whole)
    snapshots/<64 hex>.json     one manifest per snapshot; its id is the SHA-256 of its bytes (a SigningStore
                                appends the signature line, as v1 did)

Everything goes through the store given, so an ``EncryptingStore`` or ``SigningStore`` makes an encrypted or signed
v1 region exactly as v1 llmdr did through the same wrappers. Creation times are fixed (one minute apart from
``BASE``) unless given, so two builds of the same history have the same manifest ids.
"""

from __future__ import annotations

import hashlib
import io
from datetime import datetime, timedelta, timezone

from llmdr.repo.chunking import Chunker, ChunkerParams
from llmdr.repo.manifest import FileEntry, Manifest, canonical_json
from llmdr.storage.base import BlobStore

SMALL = ChunkerParams(avg_size=4096, min_size=1024, max_size=16384)
BASE = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)


def stamp(minutes: int) -> str:
    return (BASE + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class V1Writer:
    """Writes v1 snapshots into ``store``; ``heads`` holds each bundle's newest id (the next one's parent)."""

    def __init__(self, store: BlobStore, *, chunker: ChunkerParams = SMALL, config: bool = True) -> None:
        self.store = store
        self.chunker = chunker
        self.heads: dict[str, str] = {}
        self.count = 0
        if config:
            cfg = canonical_json({"format": 1, "hash": "sha256", "chunker": chunker.to_json()})
            store.put("config.json", cfg, sha256=hashlib.sha256(cfg).digest())

    def snapshot(self, bundle: str, files: dict[str, bytes], *, created: str | None = None,
                 parent: str | None = "head", tags: dict[str, str] | None = None) -> str:
        """Store ``files`` as one v1 snapshot of ``bundle``; returns its v1 id. ``parent="head"``: the bundle's
        previous snapshot written here."""
        chunker = Chunker(self.chunker)
        entries = []
        for path in sorted(files):
            data = files[path]
            refs = []
            for c in chunker.chunks(io.BytesIO(data), len(data)):
                d = c.digest.hex()
                self.store.put(f"chunks/{d[:2]}/{d}", bytes(c.data), sha256=c.digest)
                refs.append((d, len(c.data)))
            entries.append(FileEntry(path, len(data), 0o644, 1_700_000_000_000_000_000, tuple(refs)))
        self.count += 1
        m = Manifest(bundle=bundle, source=f"/data/{bundle}", host="v1-host", started=created or stamp(self.count),
                     created=created or stamp(self.count), tool_version="0.9.0", chunker=self.chunker,
                     files=tuple(entries), parent=self.heads.get(bundle) if parent == "head" else parent,
                     tags=dict(tags or {}), stats={"files": len(entries), "bytes": sum(map(len, files.values()))})
        data = m.to_bytes()
        sid = hashlib.sha256(data).hexdigest()
        self.store.put(f"snapshots/{sid}.json", data, sha256=bytes.fromhex(sid))
        self.heads[bundle] = sid
        return sid


def age_all(memory_store, seconds: float) -> None:
    """Pretend every object of a ``MemoryStore`` was written ``seconds`` earlier."""
    for info in list(memory_store.list("")):
        memory_store.age(info.key, seconds)


def copy_v1_snapshot(src: BlobStore, dst: BlobStore, sid: str) -> None:
    """What v1 ``llmdr replicate`` did: the snapshot's chunks, then its manifest byte for byte (and the config)."""
    from llmdr.repo.manifest import Manifest

    for key in ("config.json",):
        dst.put(key, src.get(key))
    data = src.get(f"snapshots/{sid}.json")
    for d in Manifest.from_bytes(data, expect_id=sid).chunk_set():
        dst.put(f"chunks/{d[:2]}/{d}", src.get(f"chunks/{d[:2]}/{d}"), sha256=bytes.fromhex(d))
    dst.put(f"snapshots/{sid}.json", data, sha256=bytes.fromhex(sid))
