"""Damage a v2 repository the way bit rot, a lost object or an attacker would, for corruption, repair and
readiness tests. Everything goes through the repository's public lookups (``locate``, ``pack_infos``) and the raw
store below it; no test needs to know key layouts."""

from __future__ import annotations

from llmdr.repo.layout import pack_key, record_key, tree_key
from llmdr.repo.repository import Repository


def chunk_pack(repo: Repository, hexd: str) -> str:
    """The key of the pack holding chunk ``hexd``."""
    e = repo.locate(hexd)
    assert e is not None, f"chunk {hexd[:12]} is in no index of {repo.location}"
    return pack_key(e.pack.hex())


def corrupt_chunk(repo: Repository, hexd: str, *, at: int = 0) -> str:
    """Flip one byte of chunk ``hexd``'s blob inside its pack (the pack keeps its name). Returns the pack key."""
    e = repo.locate(hexd)
    assert e is not None
    key = pack_key(e.pack.hex())
    data = bytearray(repo.store.get(key))
    data[e.offset + min(at, e.stored_length - 1)] ^= 0xFF
    repo.store.put(key, bytes(data))
    return key


def remove_chunk(repo: Repository, hexd: str) -> str:
    """Delete the pack holding chunk ``hexd`` (and so every chunk packed with it). Returns the pack key."""
    key = chunk_pack(repo, hexd)
    repo.store.delete(key)
    return key


def chunks_in_same_pack(repo: Repository, hexd: str) -> set[str]:
    """Every chunk the index places in the pack that holds ``hexd`` (what ``remove_chunk`` takes away)."""
    e = repo.locate(hexd)
    assert e is not None
    return {x.chunk.hex() for x in repo.index().entries_of_pack(e.pack)}


def record_object(snapshot_id: str) -> str:
    """The key of a snapshot's record."""
    return record_key(snapshot_id)


def tree_object(repo: Repository, snapshot_id: str) -> str:
    """The key of a snapshot's root tree."""
    return tree_key(repo.load_record(snapshot_id)["tree"])


def pack_keys(repo: Repository) -> list[str]:
    return sorted(pack_key(p) for p in repo.pack_infos())
