"""``llmdr repair index``: rebuild a region's index from its packs, or compact many index objects into one
(repository format v2 §2).

Every pack carries its own trailer (chunk ids, lengths), so the index is derived data: when an index object is
lost, truncated or fails its hash, reading each pack's trailer (one or two ranged GETs per pack) gives every entry
back. The new index supersedes every index object present; the old ones are deleted by a later prune once the new
one is old enough that no reader can still be using them. A pack whose trailer does not verify is reported and left
out: its chunks are then missing, and `llmdr verify --repair` brings them from another region.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from llmdr.errors import IntegrityError, ObjectNotFound
from llmdr.repo.index import IndexEntry
from llmdr.repo.pack import read_blobs
from llmdr.repo.repository import Repository

log = logging.getLogger(__name__)


@dataclass
class RepairResult:
    location: str
    packs: int = 0
    chunks: int = 0
    bad_packs: dict[str, str] = field(default_factory=dict)  # pack key -> why it was left out
    index: str | None = None  # the new index object's id
    superseded: int = 0

    def to_json(self) -> dict:
        return {"location": self.location, "packs": self.packs, "chunks": self.chunks, "bad_packs": self.bad_packs,
                "index": self.index, "superseded": self.superseded}


def rebuild_index(repo: Repository, *, workers: int = 8, lock_wait_s: float = 0.0) -> RepairResult:
    """Read every pack's trailer and write one index naming all their chunks, superseding every index present."""
    from llmdr.repo.repolock import hold

    res = RepairResult(repo.location)
    cfg = repo.config()
    cipher = repo.store.blob_cipher()
    with hold(repo.store, "exclusive", "repair-index", wait_s=lock_wait_s, settle_s=0.2) as lock:
        view = repo.index(refresh=True, full=True)
        covers = view.log_top  # every index logged up to here is replaced by the rebuild
        # every index present (design §2), the damaged ones included: they are what a rebuild replaces
        old = sorted(view.live_ids() | set(repo.index_meta) | set(repo.index_listed))
        packs = repo.pack_infos()

        def trailer(item) -> tuple[str, list[IndexEntry] | str]:
            pack_hex, info = item
            where = f"{repo.location}: {info.key}"
            try:
                blobs = read_blobs(lambda s, n: repo.read_pack(pack_hex, s, n), info.size,
                                   repo_id=bytes.fromhex(cfg.repo_id), cipher=cipher, where=where)
            except (IntegrityError, ObjectNotFound) as exc:
                return info.key, str(exc)
            pack = bytes.fromhex(pack_hex)
            return info.key, [IndexEntry(b.chunk, pack, b.offset, b.stored_length, b.plain_length) for b in blobs]

        entries: list[IndexEntry] = []
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for key, got in pool.map(trailer, sorted(packs.items())):
                if isinstance(got, str):
                    res.bad_packs[key] = got
                    log.warning("%s", got)
                    continue
                res.packs += 1
                entries += got
        lock.check()
        res.chunks = len({e.chunk for e in entries})
        res.index = repo.add_index(sorted(entries, key=lambda e: (e.chunk, e.pack)),
                                   supersedes=tuple(bytes.fromhex(i) for i in old), covers=covers)
        res.superseded = len(old)
    return res


def compact_index(repo: Repository, *, lock_wait_s: float = 0.0) -> RepairResult:
    """Merge every live index object into one (dropping nothing) that supersedes them."""
    from llmdr.repo.repolock import hold

    res = RepairResult(repo.location)
    with hold(repo.store, "exclusive", "compact-index", wait_s=lock_wait_s, settle_s=0.2) as lock:
        idx = repo.index(refresh=True, full=True)
        live, covers = sorted(idx.live_ids()), idx.log_top
        if len(live) <= 1:
            return res
        entries = [e for pack in sorted(idx.packs()) for e in idx.entries_of_pack(pack)]
        lock.check()
        res.index = repo.add_index(sorted(entries, key=lambda e: (e.chunk, e.pack)),
                                   supersedes=tuple(bytes.fromhex(i) for i in live), covers=covers)
        res.superseded, res.chunks, res.packs = len(live), len({e.chunk for e in entries}), len(idx.packs())
    return res
