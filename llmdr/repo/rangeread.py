"""Reading the blobs of one planned range (``restoreplan.Range``) from its pack as a stream (format v2 §7).

Restore and replicate both fetch chunks by pack range: one ranged GET per range, streamed into a buffer the worker
thread allocated once (``BlobStore.open_range``), each blob opened (a sealed one decrypted over its own ciphertext)
and proven against its chunk id before anyone sees it. Nothing is copied on the way; each worker holds one buffer as
large as the largest blob, and only as many workers run as fit a byte budget, so memory depends neither on the size
of a range nor on the bundle's. A blob that is damaged, or cut short by a truncated pack,
is reported as an ``IntegrityError`` in its place and the stream goes on to the next (``RangeBlobs``);
``range_chunks`` then takes that chunk, or every chunk of a pack that is gone, from another copy the index knows of
(``Repository.load_chunk``), or raises. ``locate`` places the chunks first, so a chunk no index knows stops the
command before anything is read or written.
"""

from __future__ import annotations

import contextlib
import mmap
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait

from llmdr.errors import ChunkMissing, IntegrityError, ObjectNotFound
from llmdr.repo.index import IndexEntry, MasterIndex
from llmdr.repo.layout import pack_key
from llmdr.repo.repository import Repository
from llmdr.repo.restoreplan import Range
from llmdr.storage.base import read_full


def index_for(repo: Repository, chunks: Iterable[bytes]) -> MasterIndex:
    """An index view that places every one of ``chunks`` if the region can: the view in hand, else one refreshed
    (indexed since it was read), else every ``index/`` object read (an older llmdr's indexes are not in the log)."""
    chunks = list(chunks)
    index = repo.index()
    for fresher in ({"refresh": True}, {"refresh": True, "full": True}):
        if all(index.lookup(c) is not None for c in chunks):
            break
        index = repo.index(**fresher)
    return index


def locate(repo: Repository, chunks: Iterable[bytes], *, of: Callable[[bytes], str],
           then: str) -> dict[bytes, IndexEntry]:
    """Where each of ``chunks`` is (``index_for``), or ``ChunkMissing`` for the first one no index places; ``of``
    says what a chunk belongs to (" of 'a.bin' at 0"), ``then`` what that means and what to do."""
    chunks = list(chunks)
    index = index_for(repo, chunks)
    located: dict[bytes, IndexEntry] = {}
    for c in chunks:
        e = index.lookup(c)
        if e is None:
            raise ChunkMissing(f"chunk {c.hex()[:12]}{of(c)} is in no index of {repo.location}; the snapshot there "
                               f"is damaged. {then}")
        located[c] = e
    return located


def buffer_plan(entries: Iterable[IndexEntry], ranges: int, workers: int, memory: int) -> tuple[int, int]:
    """(workers, bytes of buffer each): each worker holds one buffer as large as the largest of ``entries`` (a sealed
    blob is decrypted over its own ciphertext there, a plain one used where it lies); at most ``workers`` and
    ``ranges`` workers, as many as fit ``memory``, at least one."""
    size = max((e.stored_length for e in entries), default=1)
    return max(1, min(workers, ranges, memory // size)), size


class _Where:
    """Says where a blob is when an error message formats it, and costs nothing otherwise (the text names the files
    that use the chunk: worth building for one damaged blob, not for each of 10,000 good ones)."""

    __slots__ = ("describe", "e")

    def __init__(self, describe: Callable[[IndexEntry], str], e: IndexEntry) -> None:
        self.describe, self.e = describe, e

    def __format__(self, spec: str) -> str:
        return format(self.describe(self.e), spec)

    def __str__(self) -> str:
        return self.describe(self.e)


def _anonymous(n: int) -> memoryview:
    """``n`` zeroed bytes mapped on their own: given back to the system as soon as the last view of them goes,
    where a ``bytearray`` of the same size would stay in the allocator's per-thread arenas and keep the process's
    resident memory above the budget."""
    return memoryview(mmap.mmap(-1, n))


class RangeBlobs:
    """The blobs of ``r`` in offset order, each as ``(entry, plain)`` with ``plain`` a view into ``buf`` valid
    until the next item, or ``(entry, error)`` when that blob cannot be used from this pack. Opening the range
    raises ``ObjectNotFound`` when the pack is gone (and the typed store errors); use it in a ``with`` block."""

    def __init__(self, repo: Repository, r: Range, buf: memoryview, *, where: Callable[[IndexEntry], str],
                 then: str, sizes: dict[bytes, int] | None = None) -> None:
        self.repo, self.r, self.buf, self.where, self.then, self.sizes = repo, r, buf, where, then, sizes
        self.reader = repo.stream_pack(r.pack.hex(), r.start, r.length)

    def __enter__(self) -> RangeBlobs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reader.close()

    def __iter__(self) -> Iterator[tuple[IndexEntry, memoryview | IntegrityError]]:
        pos = self.r.start
        for e in self.r.blobs:
            buf = self.buf
            while pos < e.offset:  # a small gap between the blobs wanted: read past it
                skipped = read_full(self.reader, buf[:min(len(buf), e.offset - pos)])
                pos += skipped
                if not skipped:
                    break
            view = buf[:read_full(self.reader, buf[:e.stored_length])] if pos == e.offset else buf[:0]
            pos += len(view)
            size = self.sizes.get(e.chunk) if self.sizes is not None else None
            try:
                plain = self.repo.open_blob(view, e, size=size, then=self.then, in_place=True,
                                            where=_Where(self.where, e))
            except IntegrityError as exc:
                yield e, exc
                continue
            yield e, memoryview(plain)


def _elsewhere(repo: Repository, e: IndexEntry) -> bool:
    """True when the index also places ``e``'s chunk in another pack than ``e``'s."""
    alt = repo.index().lookup(e.chunk, avoid={e.pack})
    return alt is not None and alt.pack != e.pack


def range_chunks(repo: Repository, r: Range, buf: memoryview, stop: threading.Event, *, sizes: dict[bytes, int],
                 of: Callable[[bytes], str], then: str,
                 gone: Callable[[Range], str]) -> Iterator[tuple[IndexEntry, bytes | memoryview]]:
    """Every chunk of ``r`` as ``(entry, plain bytes)``, proven against its id, until ``stop`` is set: from the
    range streamed into ``buf`` (a view valid until the next item), or, for a blob damaged there or a pack that is
    gone, from another pack the index places the chunk in (``Repository.load_chunk``; e.g. one `llmdr verify
    --repair` wrote). Where no other copy exists: the blob's ``IntegrityError``, or ``ChunkMissing`` with
    ``gone(r)`` for a pack that is gone. ``of`` says what a chunk belongs to, ``then`` what to do."""

    def where(e: IndexEntry) -> str:
        return f"chunk {e.chunk.hex()[:12]}{of(e.chunk)} in {pack_key(e.pack.hex())} of {repo.location}"

    try:
        blobs: RangeBlobs | None = RangeBlobs(repo, r, buf, where=where, then=then, sizes=sizes)
    except ObjectNotFound:
        if not all(_elsewhere(repo, e) for e in r.blobs):
            raise ChunkMissing(gone(r)) from None
        blobs = None
    with blobs if blobs is not None else contextlib.nullcontext():
        for e, got in blobs if blobs is not None else ((e, None) for e in r.blobs):
            if stop.is_set():
                return
            if isinstance(got, memoryview):
                yield e, got
                continue
            if got is not None and not _elsewhere(repo, e):
                raise got
            yield e, repo.load_chunk(e.chunk.hex(), size=sizes[e.chunk], of=of(e.chunk), then=then)


def fetch_ranges(ranges: list[Range], workers: int, memory: int,
                 fetch: Callable[[Range, memoryview, threading.Event], None], *, name: str) -> int:
    """Call ``fetch(range, buffers, stop)`` for every range on worker threads, each with a buffer of its own as
    large as the largest blob, as many workers as ``buffer_plan`` allows within ``memory`` bytes; ranges are taken
    in order. The first failure sets ``stop`` (``fetch`` checks it between blobs), the other workers finish their
    range, and it is raised. Returns the bytes of buffer the workers held."""
    n, size = buffer_plan((e for r in ranges for e in r.blobs), len(ranges), workers, memory)
    todo = iter(ranges)
    taking = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def worker() -> None:
        buf = _anonymous(size)
        try:
            while not stop.is_set():
                with taking:
                    r = next(todo, None)
                if r is None:
                    return
                fetch(r, buf, stop)
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    with ThreadPoolExecutor(max_workers=n, thread_name_prefix=name) as pool:
        futures = [pool.submit(worker) for _ in range(n)]
        try:
            wait(futures)
        except BaseException:
            stop.set()
            raise
    if errors:
        raise errors[0]
    return n * size
