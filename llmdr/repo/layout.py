"""Where things live in a v2 repository, and its fixed parameters (docs/design/repository-format-v2.md):

    config.json                         format, hash, chunker, repository id, pack target (fixed at creation)
    packs/<2 hex>/<64 hex>              chunks, many per pack
    index/<64 hex>                      chunk id -> (pack, offset, length)
    trees/<2 hex>/<64 hex>              file lists
    snaps/<64 hex>                      snapshot records; the id is the SHA-256 of the record
    evidence/<snapshot id>/<name>       records kept beside a snapshot
    golden/<bundle>/<answer digest>.json  the golden set of a bundle's answer-relevant content (``goldens.py``)

(The catalog's keys are in ``catalog.py``, locks' in ``repolock.py``, prune plans' in ``prune.py``.) Only the
repository package uses these to reach objects; everything else goes through ``repository.Repository``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from llmdr.errors import FormatMismatch, IntegrityError, UsageError
from llmdr.repo.chunking import DEFAULT_CHUNKER, ChunkerParams
from llmdr.repo.ids import is_hex_digest
from llmdr.repo.manifest import canonical_json

CONFIG_KEY = "config.json"
PACKS = "packs/"
INDEX = "index/"
TREES = "trees/"
SNAPS = "snaps/"
EVIDENCE = "evidence/"
GOLDEN = "golden/"
REPO_FORMAT = 2
DEFAULT_PACK_TARGET = 32 * 1024 * 1024
MIGRATED_FROM = "migrated_from"  # record field: the v1 id of a snapshot `llmdr migrate` converted (migrate.py)


def pack_key(pack_hex: str) -> str:
    return f"{PACKS}{pack_hex[:2]}/{pack_hex}"


def tree_key(tree_id: str) -> str:
    return f"{TREES}{tree_id[:2]}/{tree_id}"


def record_key(snapshot_id: str) -> str:
    return f"{SNAPS}{snapshot_id}"


def index_key(iid: str) -> str:
    return f"{INDEX}{iid}"


def key_to_pack(key: str) -> str | None:
    """Inverse of ``pack_key``; None for keys that are not pack keys."""
    shard, _, hexd = key[len(PACKS):].partition("/") if key.startswith(PACKS) else ("", "", "")
    return hexd if len(shard) == 2 and is_hex_digest(hexd) and hexd[:2] == shard else None


def evidence_key(snapshot_id: str, name: str) -> str:
    """``evidence/<snapshot id>/<name>``: a record kept beside a snapshot (e.g. the dataset validations it was taken
    with). ``name`` is one plain file name."""
    if not is_hex_digest(snapshot_id):
        raise UsageError(f"not a snapshot id: {snapshot_id!r}")
    if not name or "/" in name or name in (".", "..") or name != name.strip():
        raise UsageError(f"evidence name {name!r} must be one plain file name, e.g. 'datasets.json'")
    return f"{EVIDENCE}{snapshot_id}/{name}"


def golden_key(bundle: str, digest: str) -> str:
    """``golden/<bundle>/<answer digest>.json``: the golden set every snapshot of ``bundle`` whose answer-relevant
    content hashes to ``digest`` must answer (``goldens.answer_digest``)."""
    if not is_hex_digest(digest):
        raise UsageError(f"not an answer digest: {digest!r}")
    if not bundle or "/" in bundle or bundle in (".", "..") or bundle != bundle.strip():
        raise UsageError(f"bundle name {bundle!r} cannot name a golden set")
    return f"{GOLDEN}{bundle}/{digest}.json"


@dataclass(frozen=True, slots=True)
class RepoConfig:
    chunker: ChunkerParams = DEFAULT_CHUNKER
    hash: str = "sha256"
    format: int = REPO_FORMAT
    repo_id: str = ""
    pack_target: int = DEFAULT_PACK_TARGET

    def to_bytes(self) -> bytes:
        return canonical_json({"format": self.format, "hash": self.hash, "chunker": self.chunker.to_json(),
                               "repo_id": self.repo_id, "pack_target": self.pack_target})

    def shares_chunks_with(self, other: "RepoConfig") -> bool:
        """Chunk ids mean the same in both (same chunker and hash); packs and ids of the repositories differ."""
        return self.chunker == other.chunker and self.hash == other.hash

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> "RepoConfig":
        try:
            raw = json.loads(data)
            fmt = raw["format"]
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"{where}/{CONFIG_KEY} is malformed ({exc!r}); it is not an llmdr repository") from exc
        if fmt == 1:
            raise FormatMismatch(f"{where} holds repository format v1 (one object per chunk and per manifest); this "
                                 "llmdr reads and writes format v2. Convert it with `llmdr migrate --region R` (see "
                                 "docs/design/repository-format-v2.md), or point the region at a new prefix.")
        try:
            cfg = cls(chunker=ChunkerParams.from_json(raw["chunker"]), hash=raw["hash"], format=fmt,
                      repo_id=raw["repo_id"], pack_target=int(raw["pack_target"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise IntegrityError(f"{where}/{CONFIG_KEY} is malformed ({exc!r}); it is not an llmdr repository") from exc
        if cfg.format != REPO_FORMAT or cfg.hash != "sha256" or len(cfg.repo_id) != 32:
            raise FormatMismatch(f"{where}/{CONFIG_KEY}: unsupported repository format {cfg.format} / hash {cfg.hash}")
        return cfg
