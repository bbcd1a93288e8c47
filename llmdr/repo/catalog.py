"""The snapshot catalog (repository format v2, docs/design/repository-format-v2.md §3–4): the region's order of one
bundle's snapshots, readable without downloading any file list.

    bundles/<b>.json                                  {"bundle": name}: which bundles the region holds
    catalog/<b>/e/<seq:012d>                          one entry, created once with a conditional put
    catalog/<b>/seg/<first:012d>-<last:012d>-<sha>    a sealed segment: the entries first..last in one object
    catalog/<b>/s/<first:012d>-<last:012d>-<sha>      a small segment: the entries since the last 256-entry one

``<b>`` is the first 16 hex of the SHA-256 of the bundle name. An entry is either a snapshot (its record inline, the
record id, and ``prev``: the newest live snapshot when it was written) or a forget (ids no longer listed). Order is
``seq``, never a clock: "latest" is the live snapshot entry with the highest seq. A writer takes seq ``n + 1`` with
``If-None-Match: *``; losing that race (``Conflict``) means re-reading the head and trying the next seq, so two
writers never both believe they made the head.

Reading stays flat as history grows: segments cover the past (one per ``SEGMENT`` entries, and one small one for the
entries since the last: a full read GETs one object per 256 entries and at most 16 more), and only the entries after
the last covered seq are listed, with ``start_after``. A command that needs only the head (a snapshot, a replicate,
``latest``) reads back from the newest entry only until it finds it (``tip``, ``newest_first``). Entries and
segments never change once written, so both are cached under the repository's cache folder and a warm command only
GETs what it has not seen. A small segment superseded by a wider one stays in the store (about 7 entries' worth of
bytes per snapshot in all); readers never fetch it.

Reads are tolerant: an entry that does not parse, or whose record does not hash to its id, is named in ``skipped``
and occupies its seq; nothing else is affected. An entry whose ``prev`` is not the newest live snapshot before it
is a **fork** (two writers raced around a forget) and is reported, never hidden. A record whose ``created`` lies
more than ``FUTURE_SLACK_S`` after the store's own time of its entry is **future-dated** and reported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from llmdr.common.files import atomic_write
from llmdr.errors import Conflict, IntegrityError, ObjectNotFound, StorageError
from llmdr.repo.iopool import io_map
from llmdr.repo.manifest import canonical_json, parse_utc
from llmdr.storage.base import BlobStore

log = logging.getLogger(__name__)

CATALOG = "catalog/"
BUNDLES = "bundles/"
SEGMENT = 256
SMALL_SEGMENT = 16  # a small segment is written every 16 entries, so a cold reader GETs at most 15 entries one by one
FUTURE_SLACK_S = 300.0
_SEG_NAME = re.compile(r"(\d{12})-(\d{12})-([0-9a-f]{64})")


def bundle_tag(bundle: str) -> str:
    return hashlib.sha256(bundle.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def entry_key(bundle: str, seq: int) -> str:
    return f"{CATALOG}{bundle_tag(bundle)}/e/{seq:012d}"


def bundle_key(bundle: str) -> str:
    return f"{BUNDLES}{bundle_tag(bundle)}.json"


@dataclass(frozen=True, slots=True)
class Entry:
    """One catalog entry. ``kind`` is ``snapshot`` or ``forget``; ``stored`` is the store's time of the entry
    object (its Last-Modified), None when unknown."""

    seq: int
    kind: str
    id: str | None = None
    prev: str | None = None
    record: dict[str, Any] | None = None
    forget: tuple[str, ...] = ()
    stored: float | None = None

    def to_json(self) -> dict[str, Any]:
        if self.kind == "snapshot":
            return {"kind": "snapshot", "seq": self.seq, "id": self.id, "prev": self.prev, "record": self.record}
        return {"kind": "forget", "seq": self.seq, "forget": list(self.forget)}

    @classmethod
    def parse(cls, raw: Any, seq: int, stored: float | None, *, proven: bool = False) -> "Entry":
        """``proven``: the entry comes from bytes this machine already parsed and checked (a cached segment that
        still hashes to its name), so the record's hash is not computed again."""
        if not isinstance(raw, dict) or raw.get("seq") != seq:
            raise ValueError(f"entry does not carry seq {seq}")
        if raw.get("kind") == "snapshot":
            record = raw.get("record")
            sid = raw.get("id")
            if not isinstance(record, dict) or not isinstance(sid, str) or (
                    not proven and hashlib.sha256(canonical_json(record)).hexdigest() != sid):
                raise ValueError("the inline record does not hash to the entry's id")
            prev = raw.get("prev")
            if prev is not None and not isinstance(prev, str):
                raise ValueError("malformed prev")
            if not isinstance(record.get("bundle"), str) or not isinstance(record.get("created"), str):
                raise ValueError("the record names no bundle or creation time")
            return cls(seq, "snapshot", sid, prev, record, stored=stored)
        if raw.get("kind") == "forget":
            ids = raw.get("forget")
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise ValueError("malformed forget list")
            return cls(seq, "forget", forget=tuple(ids), stored=stored)
        raise ValueError(f"unknown entry kind {raw.get('kind')!r}")


@dataclass
class View:
    """What the catalog of one bundle says: live snapshot entries oldest first (by seq), and what was set aside."""

    entries: list[Entry] = field(default_factory=list)  # every readable entry, by seq
    live: list[Entry] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # object key -> why it was left out
    forks: list[str] = field(default_factory=list)  # snapshot ids whose prev was not the live head before them
    future: list[str] = field(default_factory=list)  # snapshot ids dated after their entry's store time
    next_seq: int = 0
    covered: int = 0  # entries below this seq come from segments

    @property
    def head(self) -> Entry | None:
        return self.live[-1] if self.live else None


@dataclass
class Tip:
    """The newest part of a catalog: the live head, the next free seq, where the segments end (``covered``) and the
    readable entries after that, which is what a writer needs to append and seal."""

    head: Entry | None
    next_seq: int
    covered: int
    tail: list[Entry]


class Catalog:
    """The catalog of ``bundle`` in ``store`` (cached under ``cache_dir`` when given)."""

    def __init__(self, store: BlobStore, bundle: str, cache_dir: Path | None = None) -> None:
        self.store = store
        self.bundle = bundle
        self.tag = bundle_tag(bundle)
        self.prefix = f"{CATALOG}{self.tag}/"
        self.cache = cache_dir / "catalog" / self.tag if cache_dir is not None else None
        self._mem: dict[int, Entry] = {}
        self._segs: dict[str, list[Entry]] = {}

    # reading ----------------------------------------------------------------------------------------------------------
    def read(self) -> View:
        """The whole catalog: every entry, the live snapshots, and what was set aside, forked or future-dated."""
        view = View()
        by_seq: dict[int, Entry] = {}
        chain, _ = self._chain()
        todo = [c for c in chain if c[2] not in self._segs]
        got: dict[str, list[Entry] | Exception] = {}
        if todo:  # fetched in parallel: one per 256 entries and up to 15 small ones
            got = dict(io_map(lambda c: (c[2], self._try_segment(*c)), todo))
        covered = 0
        for _first, last, name in chain:
            entries = self._segs[name] if name in self._segs else got[name]
            if isinstance(entries, Exception):
                view.skipped[self.prefix + name] = str(entries)
                break  # the entries it should have held are read one by one below
            for e in entries:
                by_seq[e.seq] = e
            covered = last + 1
        view.covered = covered
        tail, view.next_seq = self._tail(covered)
        for seq, key, got_entry in tail:
            if isinstance(got_entry, Entry):
                by_seq[seq] = got_entry
            else:
                view.skipped[key] = got_entry
        view.next_seq = max([view.next_seq - 1, *by_seq.keys()], default=-1) + 1
        self._resolve(view, [by_seq[s] for s in sorted(by_seq)])
        return view

    def tip(self, skipped: dict[str, str] | None = None) -> Tip:
        """The head and the next free seq, reading back only until a live snapshot is found: the entries past the
        segments, then segments newest first. What cannot be read is added to ``skipped``."""
        chain, covered = self._chain()
        tail, next_seq = self._tail(covered)
        walk = self._newest_first(chain, tail, skipped if skipped is not None else {})
        return Tip(next(walk, None), next_seq, covered, [e for _, _, e in tail if isinstance(e, Entry)])

    def newest_first(self, skipped: dict[str, str] | None = None) -> Iterator[Entry]:
        """Live snapshot entries newest first (the order ``read`` lists them in, reversed), each segment fetched only
        when the walk reaches it: a caller that stops early reads only the recent past."""
        chain, covered = self._chain()
        tail, _ = self._tail(covered)
        return self._newest_first(chain, tail, skipped if skipped is not None else {})

    def _newest_first(self, chain: list[tuple[int, int, str]], tail: list[tuple[int, str, Entry | str]],
                      skipped: dict[str, str]) -> Iterator[Entry]:
        seen: set[str] = set()  # ids already listed (at a later seq: their place) or forgotten by a later entry

        def live(e: Entry) -> bool:
            if e.kind == "forget":
                seen.update(e.forget)
                return False
            if e.record.get("bundle") != self.bundle:
                skipped[entry_key(self.bundle, e.seq)] = f"names bundle {e.record.get('bundle')!r}"
                return False
            if e.id in seen:
                return False
            seen.add(e.id)
            return True

        for _seq, key, e in reversed(tail):
            if not isinstance(e, Entry):
                skipped[key] = e
            elif live(e):
                yield e
        for first, last, name in reversed(chain):
            entries = self._segs[name] if name in self._segs else self._try_segment(first, last, name)
            if isinstance(entries, Exception):  # the full read places what this segment held, one entry at a time
                view = self.read()
                skipped.update(view.skipped)
                yield from (e for e in reversed(view.entries) if e.seq <= last and live(e))
                return
            yield from (e for e in reversed(entries) if live(e))

    def _chain(self) -> tuple[list[tuple[int, int, str]], int]:
        """The widest segments that cover seq 0, 1, 2, ... without a gap (by their names), and the first seq they
        do not cover."""
        chain: list[tuple[int, int, str]] = []
        covered = 0
        for small in (False, True):  # the small ones are listed only from where the large ones end
            for first, last, name in self._segments(small, covered):
                if first > covered:
                    break  # a gap: entries after it are read one by one
                if last >= covered:
                    chain.append((first, last, name))
                    covered = last + 1
        return chain, covered

    def _tail(self, covered: int) -> tuple[list[tuple[int, str, Entry | str]], int]:
        """The entries from seq ``covered`` on, by seq, each as ``(seq, key, entry or why it cannot be read)``, and
        the seq after the highest one listed."""
        start_after = f"{self.prefix}e/{covered - 1:012d}" if covered else None
        listed = [(int(i.key.rsplit("/", 1)[1]), i) for i in self.store.list(self.prefix + "e/", start_after=start_after)
                  if i.key.rsplit("/", 1)[1].isdigit()]
        new = [t for t in listed if t[0] not in self._mem]
        fetched: dict[int, Entry | str] = {}
        if new:  # fetched in parallel: a cold reader has up to 15 to read (more where segments are missing)
            fetched = dict(io_map(lambda t: (t[0], self._load_entry(t[0], t[1].key, t[1].modified)), new))
        tail = sorted((seq, info.key, fetched.get(seq) or self._mem[seq]) for seq, info in listed)
        return tail, max([covered - 1, *(seq for seq, _ in listed)]) + 1

    def _resolve(self, view: View, entries: list[Entry]) -> None:
        view.entries = entries
        live: dict[str, Entry] = {}  # id -> entry, in seq order (dicts keep insertion order)
        for e in entries:
            if e.kind == "forget":
                for i in e.forget:
                    live.pop(i, None)
                continue
            if e.record.get("bundle") != self.bundle:
                view.skipped[entry_key(self.bundle, e.seq)] = f"names bundle {e.record.get('bundle')!r}"
                continue
            if e.prev != (next(reversed(live)) if live else None):
                view.forks.append(e.id)
            if future_dated(e):
                view.future.append(e.id)
            live.pop(e.id, None)  # listed again (two copies published at once): its place is the newer entry
            live[e.id] = e
        view.live = list(live.values())  # a forget applies to the entries before it; a later entry lists it again

    def _segments(self, small: bool, start: int) -> list[tuple[int, int, str]]:
        """Segments as ``(first, last, name)``, ``name`` relative to the catalog's prefix: the large ones (every
        one), or the small ones whose ``first`` is at least ``start``."""
        out = []
        kind = "s/" if small else "seg/"
        after = f"{self.prefix}{kind}{start - 1:012d}-~" if small and start else None
        for info in self.store.list(self.prefix + kind, start_after=after):
            name = info.key[len(self.prefix):]
            m = _SEG_NAME.fullmatch(name[len(kind):])
            if m and int(m.group(1)) <= int(m.group(2)):
                out.append((int(m.group(1)), int(m.group(2)), name))
        # widest first at each start, so a merged segment is preferred over the ones it replaced
        out.sort(key=lambda s: (s[0], -s[1]))
        return out

    def _try_segment(self, first: int, last: int, name: str) -> list[Entry] | Exception:
        """The entries of segment ``name`` (parsed once per process), or why it cannot be used."""
        try:
            self._segs[name] = self._fetch_segment(name, first, last)
        except (IntegrityError, StorageError, ValueError, KeyError, TypeError) as exc:
            return exc
        return self._segs[name]

    def _fetch_segment(self, name: str, first: int, last: int) -> list[Entry]:
        digest = name.rsplit("-", 1)[1]
        # "segs/": only segments that parsed are cached there (older llmdr cached them under "seg/" before parsing)
        cached = self.cache / "segs" / name.rsplit("/", 1)[1] if self.cache is not None else None
        data = cached.read_bytes() if cached is not None and cached.exists() else None
        proven = data is not None and hashlib.sha256(data).hexdigest() == digest  # cached only once it parsed
        if not proven:
            data = self.store.get(self.prefix + name)
            if hashlib.sha256(data).hexdigest() != digest:
                raise IntegrityError(f"{self.store.location}: segment {name} does not hash to its name")
        raw = json.loads(data)
        if raw.get("first") != first or raw.get("last") != last:
            raise ValueError("segment range does not match its name")
        out = []
        for item in raw["entries"]:
            e = Entry.parse(item["entry"], int(item["entry"]["seq"]), item.get("stored"), proven=proven)
            if not first <= e.seq <= last:
                raise ValueError(f"segment holds seq {e.seq} outside {first}-{last}")
            out.append(e)
        if cached is not None and not proven:
            atomic_write(cached, data)
        return out

    def _load_entry(self, seq: int, key: str, modified: float | None) -> Entry | str:
        """The entry at ``seq``, or why it cannot be used (entries never change: each is parsed once per process)."""
        known = self._mem.get(seq)
        if known is not None:
            return known
        got = self._fetch_entry(seq, key, modified)
        if isinstance(got, Entry):
            self._mem[seq] = got
        return got

    def _fetch_entry(self, seq: int, key: str, modified: float | None) -> Entry | str:
        cached = self.cache / "e" / f"{seq:012d}" if self.cache is not None else None
        try:
            if cached is not None and cached.exists():
                raw = json.loads(cached.read_bytes())
                return Entry.parse(raw["entry"], seq, raw.get("stored"))
        except (ValueError, KeyError, TypeError):
            pass
        try:
            data = self.store.get(key)
            e = Entry.parse(json.loads(data), seq, modified)
        except ObjectNotFound:
            return "gone since it was listed"
        except (IntegrityError, ValueError, TypeError, UnicodeDecodeError) as exc:
            log.warning("catalog entry %s in %s left out: %s", key, self.store.location, exc)
            return str(exc)
        if cached is not None:
            atomic_write(cached, canonical_json({"entry": e.to_json(), "stored": modified}))
        return e

    # writing ----------------------------------------------------------------------------------------------------------
    def append(self, make: Callable[[int, str | None], Entry], *, attempts: int = 50) -> Entry:
        """Write the entry ``make(seq, prev)`` builds at the next free seq; ``prev`` is the current live head's id.
        On a lost race the view is re-read and ``make`` called again with the new seq and head."""
        for _ in range(attempts):
            tip = self.tip()
            seq = tip.next_seq
            while self._hidden(seq):  # never write over a key we cannot read: take the next seq
                seq += 1
            entry = make(seq, tip.head.id if tip.head else None)
            try:
                self.store.put(entry_key(self.bundle, seq), canonical_json(entry.to_json()), if_absent=True)
            except Conflict:
                log.info("catalog seq %d of %s taken by another writer; retrying", seq, self.bundle)
                continue
            self._seal(tip, entry)
            return entry
        raise StorageError(f"could not append to the catalog of {self.bundle!r} in {self.store.location}: "
                           f"{attempts} writers in a row took the next seq first. Try again.")

    def _hidden(self, seq: int) -> bool:
        """In a locked (versioned) region, an unlisted seq that has versions was deleted without a version id: a
        delete marker hides its entry. Creating there would succeed and bury that snapshot below a newer version
        for good (design §6: never write over a key you cannot read), so the writer skips the seq instead — DR
        copies keep flowing, the hidden entry stays recoverable with `llmdr undelete`, and readiness names it."""
        key = entry_key(self.bundle, seq)
        if self.store.lock_policy() is None or not any(v.key == key for v in self.store.list_versions(key)):
            return False
        log.warning("catalog entry %s in %s is hidden by a delete marker; the next snapshot takes the seq after it. "
                    "Run `llmdr undelete` for this region to bring it back", key, self.store.location)
        return True

    def _seal(self, tip: Tip, new: Entry) -> None:
        """Best effort, after every ``SMALL_SEGMENT`` entries: one small segment (``s/``) holding every entry from the
        start of the current ``SEGMENT`` block to the new one (it supersedes the small ones before it: readers take
        the widest segment at each start), or at the end of a block one large segment (``seg/``) for all of it;
        earlier blocks left without their large segment (a seal that failed) get theirs too. A cold reader GETs one
        segment per ``SEGMENT`` entries, one small one, and at most 15 entries one by one."""
        small = min(SMALL_SEGMENT, SEGMENT)
        if (new.seq + 1) % small:
            return
        try:  # the store's time of the new entry (the others carry theirs)
            new = replace(new, stored=self.store.head(entry_key(self.bundle, new.seq)).modified)
        except StorageError:
            pass
        base = new.seq - new.seq % SEGMENT  # the start of the new entry's block
        blocks = [(b, b + SEGMENT - 1) for b in range(tip.covered - tip.covered % SEGMENT, base, SEGMENT)]
        blocks.append((base, new.seq))
        entries = self._entries_from(blocks[0][0], tip)
        entries[new.seq] = new
        for first, last in blocks:
            block = [{"entry": entries[s].to_json(), "stored": entries[s].stored}
                     for s in range(first, last + 1) if s in entries]  # an unreadable entry keeps its seq, empty
            data = canonical_json({"first": first, "last": last, "entries": block})
            kind = "seg/" if last - first + 1 == SEGMENT else "s/"
            name = f"{kind}{first:012d}-{last:012d}-{hashlib.sha256(data).hexdigest()}"
            try:
                self.store.put(self.prefix + name, data, sha256=hashlib.sha256(data).digest())
            except StorageError as exc:
                log.warning("could not seal catalog segment %s in %s (%s); a later snapshot will", name,
                            self.store.location, exc)
                return

    def _entries_from(self, first: int, tip: Tip) -> dict[int, Entry]:
        """The readable entries from seq ``first`` on, by seq: from the segments that cover them and the tip, or
        from a full read when one of those segments cannot be used (its entries are then read one by one)."""
        entries: dict[int, Entry] = {}
        for f, last, name in self._chain()[0] if first < tip.covered else ():
            if last < first:
                continue
            got = self._segs[name] if name in self._segs else self._try_segment(f, last, name)
            if isinstance(got, Exception):
                return {e.seq: e for e in self.read().entries if e.seq >= first} | {e.seq: e for e in tip.tail}
            entries.update((e.seq, e) for e in got if e.seq >= first)
        return entries | {e.seq: e for e in tip.tail}


def future_dated(e: Entry) -> bool:
    """True when the record's ``created`` lies more than ``FUTURE_SLACK_S`` after the store's time of its entry."""
    return e.stored is not None and _created(e) > e.stored + FUTURE_SLACK_S


def _created(e: Entry) -> float:
    created = e.record.get("created")
    try:
        if isinstance(created, str) and len(created) == 27 and created[10] == "T" and created.endswith("Z"):
            return datetime.fromisoformat(created).timestamp()  # parse_utc's one format, parsed in C (1000s per read)
        return parse_utc(created).timestamp()
    except (TypeError, ValueError):
        return 0.0
