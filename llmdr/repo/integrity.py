"""Integrity check of a snapshot in a region: every chunk (or a rotating subset) read back and hashed.

``verify_snapshot`` reads the manifest (its id proves it), lists the region's chunks (a missing chunk or one of the
wrong size is found without reading it), then reads the selected chunks through ``Repository.load_chunk``, which
proves each against its id. A subset ``n/t`` holds the chunks whose id falls in the n-th of t buckets, so checking
1/t, 2/t, ... t/t on successive runs reads everything once per cycle (as restic's ``--read-data-subset``). With repair sources, a corrupt or missing chunk is fetched from
another region, checked against its id, and written back with a verified put; every repair is reported, never
silent, and a chunk no region holds intact stays listed as unrepaired.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

from llmdr.common.progress import NoProgress, Progress
from llmdr.errors import IntegrityError, ObjectNotFound, UsageError
from llmdr.repo.layout import pack_key
from llmdr.repo.repository import Repository

log = logging.getLogger(__name__)

NO_INDEX = "in no index"  # VerifyResult.where of a chunk no index names


@dataclass(frozen=True)
class Subset:
    n: int
    t: int

    @classmethod
    def parse(cls, text: str, *, now: datetime | None = None) -> "Subset":
        """'n/t' (1 <= n <= t), or 't' alone: the bucket for today (rotates daily through all t)."""
        try:
            if "/" in text:
                n, t = (int(x) for x in text.split("/", 1))
            else:
                t = int(text)
                day = int(((now or datetime.now(timezone.utc)).timestamp()) // 86400)
                n = day % t + 1
        except ValueError:
            raise UsageError(f"--sample {text!r}: write N/T (e.g. 2/7) or T (today's share of T)") from None
        if not (1 <= n <= t <= 10_000):
            raise UsageError(f"--sample {text!r}: need 1 <= N <= T <= 10000")
        return cls(n, t)

    def contains(self, hexd: str) -> bool:
        return int(hexd[:8], 16) % self.t == self.n - 1

    def __str__(self) -> str:
        return f"{self.n}/{self.t}"


@dataclass
class VerifyResult:
    snapshot_id: str
    location: str
    subset: str | None
    chunks_total: int = 0
    chunks_read: int = 0
    bytes_read: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    repaired: dict[str, str] = field(default_factory=dict)  # chunk -> region it came from
    where: dict[str, str] = field(default_factory=dict)  # damaged chunk -> key of the pack that held it (pre-repair)
    duration_s: float = 0.0

    @property
    def unrepaired(self) -> list[str]:
        return sorted(c for c in self.missing + self.corrupt if c not in self.repaired)

    @property
    def ok(self) -> bool:
        return not self.unrepaired

    def to_json(self) -> dict:
        return {"snapshot_id": self.snapshot_id, "location": self.location, "subset": self.subset, "ok": self.ok,
                "chunks_total": self.chunks_total, "chunks_read": self.chunks_read, "bytes_read": self.bytes_read,
                "missing": self.missing, "corrupt": self.corrupt, "repaired": self.repaired,
                "unrepaired": self.unrepaired, "duration_s": round(self.duration_s, 3)}


def verify_snapshot(
    repo: Repository,
    snapshot_id: str,
    *,
    subset: Subset | None = None,
    repair_from: list[tuple[str, Repository]] | None = None,
    workers: int = 8,
    progress: Progress | None = None,
    read: bool = True,
) -> VerifyResult:
    """Check ``snapshot_id`` in ``repo``; with ``repair_from`` ([(region name, repo)]), fix what is broken.
    ``read=False`` checks presence and sizes only (one listing, no chunk read): cheap enough after every copy."""
    progress = progress or NoProgress()
    t0 = time.perf_counter()
    manifest = repo.load_manifest(snapshot_id)  # raises IntegrityError if the manifest itself is damaged
    wanted = manifest.chunk_set()
    scope = (str(subset) if subset else None) if read else "listing"
    res = VerifyResult(snapshot_id, repo.location, scope, chunks_total=len(wanted))
    present = repo.list_chunks()
    selected = sorted(d for d in wanted if read and (subset is None or subset.contains(d)))
    for d in sorted(wanted):
        if d not in present:
            res.missing.append(d)
        elif present[d] != wanted[d] and (not read or subset is None or subset.contains(d)):
            res.corrupt.append(d)
    to_read = [d for d in selected if d in present and present[d] == wanted[d]]
    progress.start(f"verify {snapshot_id[:12]}", sum(wanted[d] for d in to_read))

    def read(hexd: str) -> tuple[str, str]:
        """(chunk, "ok" | "corrupt" | "missing"), read and proven by the repository."""
        try:
            repo.load_chunk(hexd, size=wanted[hexd])
            state = "ok"
        except ObjectNotFound:  # vanished since the listing
            return hexd, "missing"
        except IntegrityError as exc:  # bytes that do not hash to the id, or an encrypted region refused them
            log.warning("%s", exc)
            state = "corrupt"
        progress.advance(wanted[hexd])
        return hexd, state

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llmdr-verify") as pool:
            for hexd, state in pool.map(read, to_read):
                res.chunks_read += 1
                if state == "missing":
                    res.missing.append(hexd)
                    continue
                res.bytes_read += wanted[hexd]
                if state == "corrupt":
                    res.corrupt.append(hexd)
    finally:
        progress.finish()
    res.missing.sort()
    res.corrupt.sort()
    for hexd in res.missing + res.corrupt:  # named before a repair stores the chunk in a new pack
        res.where[hexd] = pack_of(repo, hexd)
    for hexd in res.missing + res.corrupt:
        for name, other in repair_from or []:
            if _repair(repo, other, hexd):
                res.repaired[hexd] = name
                break
    res.duration_s = time.perf_counter() - t0
    return res


def pack_of(repo: Repository, hexd: str) -> str:
    """The key of the pack ``repo``'s index names for chunk ``hexd``, or ``in no index``: the object a report about
    a damaged chunk tells the reader to look at."""
    e = repo.locate(hexd)
    return pack_key(e.pack.hex()) if e is not None else NO_INDEX


def _repair(repo: Repository, source: Repository, hexd: str) -> bool:
    """Copy one chunk from ``source`` if its copy there is intact; False when it is not."""
    try:
        data = source.load_chunk(hexd)
    except (ObjectNotFound, IntegrityError):
        return False
    repo.save_chunk(hexd, data)
    return True
