"""The index log (repository format v2 §2, "Reading without growth"): the order in which index objects were written,
so a command reads the newest compaction and what came after it instead of every index object ever written.

    indexlog/e/<seq:012d>                  one logged index, created once (``If-None-Match: *``) at the next seq: the
                                           index object's own bytes (a writer's small index) or {"index": "<id>"}
    indexlog/c/<start:012d>-<seq:012d>     a base (empty object): the index logged at ``seq`` merges every index
                                           logged below ``start``, and every ``index/`` object older than the log

Every index object is still stored as ``index/<sha256>`` too: llmdr from before the log reads those, and ``prune``
and ``repair index`` list them in full. Seqs are dense: a writer takes the highest seq it has seen plus one and, when
another writer took it first (``Conflict``), lists what came after and tries the next. So a compaction that saw the
log up to ``start - 1`` had every index logged below ``start`` in its view, and an index logged later gets a seq of
``start`` or more. A reader needs the base with the highest ``start`` (one listing of the few ``c/`` keys), then the
entries from ``start`` on (``start_after``): the compaction itself and the few written since. Log entries are never
deleted (a seq is never free twice); they are small, and compactions are logged by id.

A reader that cannot trust that short view (no base yet, a junk entry, a logged object that is gone) reads every
``index/`` object instead, as llmdr did before the log: slower, never wrong. Pure of repository details: the
repository passes how to read an immutable object (through its local cache).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from llmdr.errors import Conflict, IntegrityError, ObjectNotFound, StorageError
from llmdr.repo.ids import is_hex_digest
from llmdr.repo.index import MAGIC, IndexFile, MasterIndex, index_id
from llmdr.repo.iopool import io_map
from llmdr.repo.layout import INDEX, index_key
from llmdr.storage.base import BlobStore

log = logging.getLogger(__name__)

INDEX_LOG = "indexlog/"
ENTRIES = f"{INDEX_LOG}e/"
BASES = f"{INDEX_LOG}c/"
INLINE_MAX = 256 * 1024  # a writer's index up to this size is logged with its bytes (one GET for a reader)
_SEQ = re.compile(r"\d{12}")
_BASE = re.compile(r"(\d{12})-(\d{12})")


def log_key(seq: int) -> str:
    return f"{ENTRIES}{seq:012d}"


def base_key(start: int, seq: int) -> str:
    return f"{BASES}{start:012d}-{seq:012d}"


def log_body(data: bytes, iid: str, *, inline: bool) -> bytes:
    """What the log entry of index object ``iid`` (bytes ``data``) holds."""
    if inline and len(data) <= INLINE_MAX:
        return data
    return json.dumps({"index": iid}, sort_keys=True, separators=(",", ":")).encode()


def parse_body(body: bytes) -> bytes | str:
    """The index bytes a log entry holds inline, or the id of the ``index/`` object it names; ``IntegrityError`` for
    anything else."""
    if body.startswith(MAGIC):
        return body
    try:
        iid = json.loads(body)["index"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        iid = None
    if not isinstance(iid, str) or not is_hex_digest(iid):
        raise IntegrityError("an index log entry holds neither an index object nor an index id")
    return iid


@dataclass
class Tail:
    """What the log says: the best base (``start`` 0 and ``base_seq`` None without one) and the seqs from
    ``start`` on, ascending. ``fast`` when a reader may use the base and these alone."""

    start: int = 0
    base_seq: int | None = None
    seqs: list[int] = field(default_factory=list)

    @property
    def top(self) -> int:
        """The highest seq seen (-1 for an empty log)."""
        return self.seqs[-1] if self.seqs else self.start - 1

    @property
    def fast(self) -> bool:
        return self.base_seq is not None and self.base_seq in self.seqs


class IndexLog:
    """The index log of ``store``; ``read(key)`` returns an immutable object's bytes (through the local cache)."""

    def __init__(self, store: BlobStore, read: Callable[[str], bytes]) -> None:
        self.store = store
        self._read = read
        self._lock = threading.Lock()
        self.top = -1  # the highest seq this process has seen or written

    def _after(self, seq: int) -> list[int]:
        start = log_key(seq) if seq >= 0 else None
        return sorted(int(i.key[len(ENTRIES):]) for i in self.store.list(ENTRIES, start_after=start)
                      if _SEQ.fullmatch(i.key[len(ENTRIES):]))

    def tail(self) -> Tail:
        """The best base and every entry after it (two listings, no reads)."""
        t = Tail()
        for info in self.store.list(BASES):
            m = _BASE.fullmatch(info.key[len(BASES):])
            if m is None:
                continue
            start, seq = int(m.group(1)), int(m.group(2))
            if start <= seq and (start, seq) > (t.start, t.base_seq if t.base_seq is not None else -1):
                t.start, t.base_seq = start, seq
        t.seqs = self._after(t.start - 1)
        with self._lock:
            self.top = max(self.top, t.top)
        return t

    def fetch(self, seqs: list[int]) -> dict[int, bytes | str | Exception]:
        """The entries ``seqs``: inline index bytes, a named index id, or why the entry cannot be used."""
        def one(seq: int) -> tuple[int, bytes | str | Exception]:
            try:
                return seq, parse_body(self._read(log_key(seq)))
            except (ObjectNotFound, StorageError, IntegrityError) as exc:
                return seq, exc

        return dict(io_map(one, seqs))

    def append(self, body: bytes, *, attempts: int = 50) -> int:
        """Log ``body`` at the next free seq; returns the seq."""
        if self.top < 0:
            self.tail()
        with self._lock:
            for _ in range(attempts):
                seq = self.top + 1
                try:
                    self.store.put(log_key(seq), body, if_absent=True)
                except Conflict:  # another writer took it: learn how far the log goes and try after it
                    self.top = max([seq, *self._after(seq)])
                    continue
                self.top = seq
                return seq
        raise StorageError(f"could not log an index object in {self.store.location}: {attempts} writers in a row "
                           "took the next seq first. Try again.")

    def add_base(self, start: int, seq: int) -> None:
        """Declare that the index logged at ``seq`` merges everything logged below ``start``. Best effort: without
        it readers read a longer tail, never less."""
        if not 0 <= start <= seq:
            return
        try:
            self.store.put(base_key(start, seq), b"", if_absent=True)
        except Conflict:
            pass
        except StorageError as exc:
            log.warning("%s: could not write index log base %s (%s); readers read a longer tail until the next "
                        "compaction", self.store.location, base_key(start, seq), exc)


class IndexView:
    """A repository's in-memory index (``MasterIndex``) and how it is read: from the log's base and tail (``fast``),
    or from every ``index/`` object (``full``: prune, repair, checks, and whenever the log cannot be trusted).

    ``cached(key, digest)`` reads an immutable object through the repository's local cache (proven against
    ``digest`` when given); ``cache_put(key, data)`` stores one there; ``unreadable`` collects what was left out."""

    def __init__(self, store: BlobStore, cached: Callable[[str, str | None], bytes],
                 cache_put: Callable[[str, bytes], None], unreadable: dict[str, str]) -> None:
        self.store = store
        self.log = IndexLog(store, lambda key: cached(key, None))
        self._cached = cached
        self._cache_put = cache_put
        self.unreadable = unreadable
        self.index: MasterIndex | None = None
        self.full = False  # the view was read from every index/ object
        self.ids: set[str] = set()
        self.meta: dict[str, tuple[float | None, tuple[str, ...]]] = {}  # index id -> (stored at, supersedes)
        self.listed: dict[str, float | None] = {}  # every index/ object present at the last full listing
        self._logged: set[int] = set()  # log seqs whose index is in the view
        self._lock = threading.Lock()

    def get(self, *, refresh: bool = False, full: bool = False, workers: int = 16) -> MasterIndex:
        with self._lock:
            if self.index is not None and not refresh and (self.full or not full):
                return self.index
            tail = self.log.tail()  # before any index/ listing: everything logged up to its top is then in view
            if full or not tail.fast or not self._read_tail(tail):
                self._read_all(workers)
            assert self.index is not None
            self.index.log_top = tail.top
            return self.index

    def _add(self, iid: str, f: IndexFile, stored: float | None) -> None:
        assert self.index is not None
        self.index.add(iid, f)
        self.meta[iid] = (stored, tuple(s.hex() for s in f.supersedes))
        self.ids.add(iid)

    def _read_tail(self, tail: Tail) -> bool:
        """Add the base and the entries after it; False when they cannot be trusted (read everything instead)."""
        loaded = self.ids
        got = self.log.fetch([s for s in tail.seqs if s not in self._logged])
        named = {seq: v for seq, v in got.items() if isinstance(v, str) and v not in loaded}

        def load(item: tuple[int, str]) -> tuple[int, bytes | Exception]:
            try:
                return item[0], self._cached(index_key(item[1]), item[1])
            except (ObjectNotFound, StorageError, IntegrityError) as exc:
                return item[0], exc

        got.update(io_map(load, named.items()))
        files: list[tuple[int, str, IndexFile]] = []
        for seq in sorted(got, reverse=True):  # newest first: a compaction hides what it merged
            v = got[seq]
            if isinstance(v, str):
                self._logged.add(seq)  # an id already in the view
                continue
            try:
                if isinstance(v, Exception):
                    raise v
                files.append((seq, index_id(v), IndexFile.from_bytes(v, where=f"{self.store.location}: "
                                                                     f"{log_key(seq)}")))
            except (ObjectNotFound, StorageError, IntegrityError) as exc:
                log.warning("%s: index log entry %s cannot be used (%s); reading every index object instead",
                            self.store.location, log_key(seq), exc)
                return False
        if self.index is None:
            self.index, self.full = MasterIndex(), False
        for seq, iid, f in files:
            if iid not in self.ids:
                self._add(iid, f, None)
            self._logged.add(seq)
        return True

    def _read_all(self, workers: int) -> None:
        """Every ``index/`` object present, newest first in parallel waves; one that an object already read
        supersedes is not read at all."""
        listed = {i.key[len(INDEX):]: i.modified for i in self.store.list(INDEX) if is_hex_digest(i.key[len(INDEX):])}
        self.listed = listed
        present = set(listed)
        if self.index is None or not self.full or not self.ids <= present:
            self.index, self.ids, self.meta, self._logged = MasterIndex(), set(), {}, set()
        self.full = True
        superseded = {s for _, sup in self.meta.values() for s in sup}
        todo = sorted(present - self.ids, key=lambda i: (listed[i] or 0.0, i), reverse=True)

        def load(iid: str) -> tuple[str, IndexFile | Exception]:
            try:
                return iid, IndexFile.from_bytes(self._cached(index_key(iid), iid),
                                                 where=f"{self.store.location}: index {iid}")
            except (IntegrityError, ObjectNotFound) as exc:
                return iid, exc

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            while todo:
                wave, todo = todo[:workers], todo[workers:]
                for iid, f in pool.map(load, [i for i in wave if i not in superseded]):
                    if isinstance(f, Exception):
                        self.unreadable[index_key(iid)] = str(f)
                        log.warning("%s: index %s left out: %s", self.store.location, iid[:12], f)
                        continue
                    self._add(iid, f, listed[iid])
                    superseded.update(s.hex() for s in f.supersedes)
                todo = [i for i in todo if i not in superseded]

    def add(self, f: IndexFile, *, covers: int | None = None) -> str:
        """Store ``f`` (as ``index/<id>``, then in the log) and add it to the view. With ``covers`` (the
        ``log_top`` of the view ``f`` merges) a base tells readers to start from it."""
        data = f.to_bytes()
        iid = index_id(data)
        self.store.put(index_key(iid), data, sha256=bytes.fromhex(iid))
        self._cache_put(index_key(iid), data)
        body = log_body(data, iid, inline=covers is None)
        seq = self.log.append(body)
        self._cache_put(log_key(seq), body)
        if covers is not None:
            self.log.add_base(covers + 1, seq)
        with self._lock:
            if self.index is not None:
                self._add(iid, f, None)
                self._logged.add(seq)
        return iid
