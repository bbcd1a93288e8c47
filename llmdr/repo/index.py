"""Index objects (format v2, design §2): which pack holds each chunk, at what offset and length.

An index object is immutable and named by the SHA-256 of its bytes. ``IndexFile`` is one object, serialised
deterministically (entries sorted by chunk id then pack, supersedes sorted) so equal contents give an equal id.
``merge`` builds the compacted union of several objects; ``MasterIndex`` is the in-memory view a command answers
lookups from: the union of every present object that no present object supersedes, kept compact enough for about a
million chunks. Pure code: fetching, caching, encrypting and writing index objects belong to the repository.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from functools import cached_property

from llmdr.errors import IntegrityError

MAGIC = b"LLMDRI2\0"
KNOWN_FLAGS = 0  # no flag is defined yet; an object with any flag set comes from a newer llmdr or is damaged
ID_LEN = 32

_HEAD = struct.Struct("<8sBH")  # magic, flags, supersedes count
_COUNT = struct.Struct("<I")
_ENTRY = struct.Struct("<32sIQII")  # chunk, pack number, offset, stored length, plain length
_MAX_U16 = (1 << 16) - 1
_MAX_U32 = (1 << 32) - 1
_MAX_U64 = (1 << 64) - 1
# the smallest object: header, two zero counts, the hash
_MIN_LEN = _HEAD.size + 2 * _COUNT.size + ID_LEN
_REPAIR = "run `llmdr repair index` to rebuild it from the packs"


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """Where one chunk lives: ``pack`` (raw 32-byte pack id), byte ``offset`` in it, and its stored and plain
    lengths (they differ when the blob is sealed)."""

    chunk: bytes
    pack: bytes
    offset: int
    stored_length: int
    plain_length: int


def _entry_key(e: IndexEntry) -> tuple[bytes, bytes, int, int, int]:
    return (e.chunk, e.pack, e.offset, e.stored_length, e.plain_length)


def _check_entry(e: IndexEntry) -> None:
    if not (isinstance(e.chunk, bytes) and len(e.chunk) == ID_LEN and isinstance(e.pack, bytes)
            and len(e.pack) == ID_LEN):
        raise ValueError(f"index entry {e!r}: chunk and pack must be 32 raw bytes each")
    if not (0 <= e.offset <= _MAX_U64 and 0 <= e.stored_length <= _MAX_U32 and 0 <= e.plain_length <= _MAX_U32):
        raise ValueError(f"index entry {e!r}: offset must fit 64 bits and lengths 32 bits")


def _normalise(entries: Iterable[IndexEntry]) -> tuple[IndexEntry, ...]:
    """Sorted by (chunk, pack), one entry per (chunk, pack): the lowest, so the choice does not depend on order."""
    out: list[IndexEntry] = []
    last: tuple[bytes, bytes] | None = None
    for e in sorted(entries, key=_entry_key):
        if (e.chunk, e.pack) != last:
            out.append(e)
            last = (e.chunk, e.pack)
    return tuple(out)


def _check_ids(ids: Iterable[bytes], what: str) -> tuple[bytes, ...]:
    out = tuple(sorted(set(ids)))
    for i in out:
        if not (isinstance(i, bytes) and len(i) == ID_LEN):
            raise ValueError(f"{what} {i!r} is not a 32-byte raw id")
    return out


@dataclass(frozen=True)
class IndexFile:
    """One index object. ``entries`` and ``supersedes`` (raw ids of the index objects this one replaces) are
    normalised on construction: sorted, one entry per (chunk, pack), so ``to_bytes`` is deterministic."""

    entries: tuple[IndexEntry, ...]
    supersedes: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        entries = _normalise(self.entries)
        for e in entries:
            _check_entry(e)
        supersedes = _check_ids(self.supersedes, "superseded index id")
        if len(supersedes) > _MAX_U16:
            raise ValueError(f"an index can supersede at most {_MAX_U16} others, not {len(supersedes)}")
        object.__setattr__(self, "entries", entries)
        object.__setattr__(self, "supersedes", supersedes)

    @classmethod
    def _checked(cls, entries: tuple[IndexEntry, ...], supersedes: tuple[bytes, ...]) -> IndexFile:
        """Build from parts already validated and in canonical order (skips the sort of ``__post_init__``)."""
        obj = object.__new__(cls)
        object.__setattr__(obj, "entries", entries)
        object.__setattr__(obj, "supersedes", supersedes)
        return obj

    @cached_property
    def packs(self) -> frozenset[bytes]:
        """The packs this index names (each holds at least one of its entries)."""
        return frozenset(e.pack for e in self.entries)

    def to_bytes(self) -> bytes:
        """The object's bytes; its name is ``index_id`` of them."""
        packs = sorted(self.packs)
        if len(packs) > _MAX_U32 or len(self.entries) > _MAX_U32:
            raise ValueError(f"an index holds at most {_MAX_U32} packs and entries")
        number = {p: n for n, p in enumerate(packs)}
        pack_entry = _ENTRY.pack
        parts = [_HEAD.pack(MAGIC, 0, len(self.supersedes)), *self.supersedes, _COUNT.pack(len(packs)), *packs,
                 _COUNT.pack(len(self.entries))]
        parts.extend(pack_entry(e.chunk, number[e.pack], e.offset, e.stored_length, e.plain_length)
                     for e in self.entries)
        body = b"".join(parts)
        return body + hashlib.sha256(body).digest()

    @classmethod
    def from_bytes(cls, data: bytes, *, where: str) -> IndexFile:
        """Parse and validate an index object; ``where`` names it in errors (e.g. the store location and key).

        Raises ``IntegrityError`` when anything is off: magic, trailing hash, counts against the length, order or
        uniqueness of packs and entries, a pack number out of range or naming no entry, an unknown flag.
        """
        def bad(what: str) -> IntegrityError:
            return IntegrityError(f"index object {where} is damaged: {what}; {_REPAIR}")

        data = bytes(data)
        if len(data) < _MIN_LEN:
            raise bad(f"{len(data)} bytes is shorter than the smallest index ({_MIN_LEN})")
        magic, flags, n_sup = _HEAD.unpack_from(data, 0)
        if magic != MAGIC:
            raise bad(f"it starts with {magic!r}, not {MAGIC!r}")
        if hashlib.sha256(memoryview(data)[:-ID_LEN]).digest() != data[-ID_LEN:]:
            raise bad("its bytes do not match the SHA-256 at its end (truncated or altered)")
        if flags & ~KNOWN_FLAGS:
            raise bad(f"unknown flags {flags:#04x} (written by a newer llmdr?)")
        pos = _HEAD.size
        end = len(data) - ID_LEN

        def take_ids(count: int, what: str) -> tuple[bytes, ...]:
            nonlocal pos
            stop = pos + count * ID_LEN
            if stop > end:
                raise bad(f"{count} {what} do not fit in {len(data)} bytes")
            ids = tuple(data[i:i + ID_LEN] for i in range(pos, stop, ID_LEN))
            if any(a >= b for a, b in zip(ids, ids[1:], strict=False)):
                raise bad(f"{what} are not sorted and unique")
            pos = stop
            return ids

        def take_count(what: str) -> int:
            nonlocal pos
            if pos + _COUNT.size > end:
                raise bad(f"the {what} count does not fit in {len(data)} bytes")
            (n,) = _COUNT.unpack_from(data, pos)
            pos += _COUNT.size
            return n

        supersedes = take_ids(n_sup, "superseded index ids")
        packs = take_ids(take_count("pack"), "pack ids")
        n_entries = take_count("entry")
        if pos + n_entries * _ENTRY.size != end:
            raise bad(f"{n_entries} entries of {_ENTRY.size} bytes do not match its length {len(data)}")
        entries: list[IndexEntry] = []
        used = bytearray(len(packs))
        prev = (b"", -1)
        for chunk, num, offset, stored, plain in _ENTRY.iter_unpack(memoryview(data)[pos:end]):
            if num >= len(packs):
                raise bad(f"entry for chunk {chunk.hex()[:12]} names pack number {num} of {len(packs)}")
            if (chunk, num) <= prev:
                raise bad(f"entries are not sorted by chunk and pack at chunk {chunk.hex()[:12]}")
            prev = (chunk, num)
            used[num] = 1
            entries.append(IndexEntry(chunk, packs[num], offset, stored, plain))
        if not all(used):
            raise bad(f"pack {packs[used.index(0)].hex()[:12]} is listed but holds no entry")
        return cls._checked(tuple(entries), supersedes)


def index_id(data: bytes) -> str:
    """The name of an index object: the hex SHA-256 of its (plaintext) bytes."""
    return hashlib.sha256(data).hexdigest()


def _raw_id(hex_id: str) -> bytes:
    try:
        raw = bytes.fromhex(hex_id)
    except (TypeError, ValueError):
        raw = b""
    if len(raw) != ID_LEN:
        raise ValueError(f"index id {hex_id!r} is not 64 hex characters")
    return raw


def merge(files: Iterable[tuple[str, IndexFile]], *, drop_packs: Collection[bytes] = ()) -> IndexFile:
    """The compaction of the given ``(id, file)`` pairs: the union of their entries minus those in ``drop_packs``,
    superseding exactly the given ids. Commutative, associative and idempotent on the entry set: the same
    (chunk, pack) collapses to one entry, the same chunk in two packs keeps both."""
    drop = frozenset(drop_packs)
    ids: set[bytes] = set()
    best: dict[tuple[bytes, bytes], IndexEntry] = {}
    for hex_id, f in files:
        ids.add(_raw_id(hex_id))
        for e in f.entries:
            if e.pack in drop:
                continue
            k = (e.chunk, e.pack)
            old = best.get(k)
            if old is None or _entry_key(e) < _entry_key(old):
                best[k] = e
    if len(ids) > _MAX_U16:
        raise ValueError(f"an index can supersede at most {_MAX_U16} others; merge in rounds of fewer")
    entries = tuple(best[k] for k in sorted(best))
    return IndexFile._checked(entries, tuple(sorted(ids)))


# MasterIndex packs each location into one int: index ref | pack ref (32) | offset (64) | stored (32) | plain (32).
# One int per entry costs ~48 bytes against ~250 for an IndexEntry with its ints.
_STORED_SHIFT, _OFFSET_SHIFT, _PACK_SHIFT, _INDEX_SHIFT = 32, 64, 128, 160


class MasterIndex:
    """The in-memory view: the union of every index object present that no present index supersedes.

    Adding is order-independent: an object that supersedes others hides them whether they were added before or
    after it. Entries are kept compact (a dict chunk -> packed int, or a list of them for a chunk in several
    packs or several live objects); ``IndexEntry`` values are built on lookup. Pass ``avoid`` as a set.
    """

    def __init__(self) -> None:
        self.log_top = -1  # the index log seq up to which every logged index is in this view (indexlog.py)
        self._refs: dict[str, int] = {}  # present index id -> ref number
        self._superseded: set[str] = set()  # ids named by any present object's supersedes
        self._live_packs: dict[int, frozenset[int]] = {}  # live index ref -> its pack refs
        self._pack_ids: list[bytes] = []
        self._pack_refs: dict[bytes, int] = {}
        self._locs: dict[bytes, int | list[int]] = {}
        self._by_pack: dict[int, list[bytes]] | None = None  # built on demand, dropped on add

    def add(self, index_id: str, f: IndexFile) -> None:
        """Take in one present index object (adding the same id again changes nothing)."""
        if index_id in self._refs:
            return
        ref = len(self._refs)
        self._refs[index_id] = ref
        newly = {s.hex() for s in f.supersedes} - self._superseded
        self._superseded |= newly
        dead = {self._refs[i] for i in newly if i in self._refs and self._refs[i] in self._live_packs}
        if index_id not in self._superseded:
            self._insert(ref, f)
        if dead:
            self._remove(dead)
        self._by_pack = None

    def _pack_ref(self, pack: bytes) -> int:
        n = self._pack_refs.get(pack)
        if n is None:
            n = self._pack_refs[pack] = len(self._pack_ids)
            self._pack_ids.append(pack)
        return n

    def _insert(self, ref: int, f: IndexFile) -> None:
        locs = self._locs
        pack_refs: dict[bytes, int] = {}
        base = ref << _INDEX_SHIFT
        for e in f.entries:
            p = pack_refs.get(e.pack)
            if p is None:
                p = pack_refs[e.pack] = self._pack_ref(e.pack)
            loc = (base | p << _PACK_SHIFT | e.offset << _OFFSET_SHIFT | e.stored_length << _STORED_SHIFT
                   | e.plain_length)
            old = locs.get(e.chunk)
            if old is None:
                locs[e.chunk] = loc
            elif isinstance(old, int):
                locs[e.chunk] = [old, loc]
            else:
                old.append(loc)
        self._live_packs[ref] = frozenset(pack_refs.values())

    def _remove(self, dead: set[int]) -> None:
        """Drop every location that came from the now-superseded index refs in ``dead`` (one pass; rare)."""
        changes: list[tuple[bytes, int | list[int] | None]] = []
        for chunk, v in self._locs.items():
            if isinstance(v, int):
                if v >> _INDEX_SHIFT in dead:
                    changes.append((chunk, None))
                continue
            kept = [x for x in v if x >> _INDEX_SHIFT not in dead]
            if len(kept) != len(v):
                changes.append((chunk, kept[0] if len(kept) == 1 else (kept or None)))
        for chunk, new in changes:
            if new is None:
                del self._locs[chunk]
            else:
                self._locs[chunk] = new
        for ref in dead:
            del self._live_packs[ref]

    def _entry(self, chunk: bytes, loc: int) -> IndexEntry:
        return IndexEntry(chunk, self._pack_ids[(loc >> _PACK_SHIFT) & _MAX_U32], (loc >> _OFFSET_SHIFT) & _MAX_U64,
                          (loc >> _STORED_SHIFT) & _MAX_U32, loc & _MAX_U32)

    def live_ids(self) -> set[str]:
        """Present ids minus those named in a present object's ``supersedes``."""
        return set(self._refs) - self._superseded

    def lookup(self, chunk: bytes, *, avoid: Collection[bytes] = ()) -> IndexEntry | None:
        """An entry for ``chunk`` from a live index, preferring a pack not in ``avoid`` (packs a pending prune plan
        names); among equals the lowest (pack, offset), so the answer does not depend on the order of adding."""
        v = self._locs.get(chunk)
        if v is None:
            return None
        if isinstance(v, int):
            return self._entry(chunk, v)
        entries = sorted((self._entry(chunk, x) for x in v), key=_entry_key)
        return next((e for e in entries if e.pack not in avoid), entries[0])

    def has(self, chunk: bytes, *, avoid: Collection[bytes] = ()) -> bool:
        """True when a live index places ``chunk`` in a pack not in ``avoid``."""
        v = self._locs.get(chunk)
        if v is None:
            return False
        mask = _MAX_U32
        if isinstance(v, int):
            return self._pack_ids[(v >> _PACK_SHIFT) & mask] not in avoid
        return any(self._pack_ids[(x >> _PACK_SHIFT) & mask] not in avoid for x in v)

    def packs(self) -> set[bytes]:
        """Packs named by live indexes."""
        return {self._pack_ids[p] for refs in self._live_packs.values() for p in refs}

    def chunks(self) -> set[bytes]:
        return set(self._locs)

    def entries_of_pack(self, pack: bytes) -> list[IndexEntry]:
        """The live entries placing a chunk in ``pack``, sorted by offset (one per chunk)."""
        p = self._pack_refs.get(pack)
        if p is None:
            return []
        if self._by_pack is None:
            by_pack: dict[int, list[bytes]] = {}
            for chunk, v in self._locs.items():
                for x in (v,) if isinstance(v, int) else v:
                    by_pack.setdefault((x >> _PACK_SHIFT) & _MAX_U32, []).append(chunk)
            self._by_pack = by_pack
        best: dict[bytes, IndexEntry] = {}
        for chunk in self._by_pack.get(p, ()):
            v = self._locs[chunk]
            for x in (v,) if isinstance(v, int) else v:
                if (x >> _PACK_SHIFT) & _MAX_U32 == p:
                    e = self._entry(chunk, x)
                    if chunk not in best or _entry_key(e) < _entry_key(best[chunk]):
                        best[chunk] = e
        return sorted(best.values(), key=lambda e: (e.offset, e.chunk))

    def __len__(self) -> int:
        """Distinct chunks held by live indexes."""
        return len(self._locs)
