"""Which ranged GETs fetch a set of blobs (repository format v2 §7): pure code, used by ``restore``.

Blobs are grouped by pack and sorted by offset; a blob joins the range before it when the gap between them is small
(fetching a few unused bytes costs less than another request) and the range stays small enough to hold in memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from llmdr.repo.index import IndexEntry

MAX_GAP = 1 << 20  # unused bytes between two blobs a range may carry rather than start a new GET
MAX_RANGE = 32 << 20  # the largest range one GET fetches
MIN_SPLIT = 1 << 20  # a small restore is cut into ranges of at least this much to keep every worker busy


@dataclass(frozen=True, slots=True)
class Range:
    """One ranged GET: ``length`` stored bytes of ``pack`` (raw id) from ``start``, holding ``blobs`` by offset."""

    pack: bytes
    start: int
    length: int
    blobs: tuple[IndexEntry, ...]


def plan_ranges(entries: Iterable[IndexEntry], *, max_gap: int = MAX_GAP, max_range: int = MAX_RANGE) -> list[Range]:
    """The GETs that fetch ``entries``: grouped by pack, sorted by offset, a blob joining the range before it when
    the gap between them is at most ``max_gap`` and the range stays within ``max_range`` bytes (a blob larger than
    that is a range of its own). A blob listed twice is fetched once. Ranges come by pack, then offset."""
    by_pack: dict[bytes, dict[int, IndexEntry]] = {}
    for e in entries:
        by_pack.setdefault(e.pack, {}).setdefault(e.offset, e)
    out: list[Range] = []
    for pack in sorted(by_pack):
        blobs: list[IndexEntry] = []
        start = end = 0
        for e in sorted(by_pack[pack].values(), key=lambda x: x.offset):
            e_end = e.offset + e.stored_length
            if blobs and e.offset - end <= max_gap and max(end, e_end) - start <= max_range:
                blobs.append(e)
                end = max(end, e_end)
                continue
            if blobs:
                out.append(Range(pack, start, end - start, tuple(blobs)))
            blobs, start, end = [e], e.offset, e_end
        if blobs:
            out.append(Range(pack, start, end - start, tuple(blobs)))
    return out


def plan_for(entries: Iterable[IndexEntry], workers: int) -> list[Range]:
    """``plan_ranges`` with ranges cut so that every one of ``workers`` has one (at least ``MIN_SPLIT`` bytes each,
    at most ``MAX_RANGE``)."""
    entries = list(entries)
    total = sum(e.stored_length for e in entries)
    return plan_ranges(entries, max_range=min(MAX_RANGE, max(MIN_SPLIT, -(-total // max(1, workers)))))
