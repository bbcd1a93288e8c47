"""Reading the blobs of one planned range (``restoreplan.Range``) from its pack as a stream (format v2 §7).

Restore and replicate both fetch chunks by pack range: one ranged GET per range, streamed into a buffer the worker
thread allocated once (``BlobStore.open_range``), each blob opened (decrypted into a second reused buffer when the
region seals blobs) and proven against its chunk id before anyone sees it. Nothing is copied on the way, so memory is
two blob-sized buffers per worker whatever the range's size. A blob that is damaged, or cut short by a truncated pack,
is reported as an ``IntegrityError`` in its place and the stream goes on to the next: the caller decides whether
another copy of that chunk exists (``Repository.load_chunk`` tries every pack the index places it in).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait

from llmdr.errors import IntegrityError
from llmdr.repo.index import IndexEntry
from llmdr.repo.repository import Repository
from llmdr.repo.restoreplan import Range
from llmdr.storage.base import read_full


class Buffers:
    """One worker's buffers: ``stored`` for a blob as stored, ``plain`` for an opened sealed blob (None for a region
    without a cipher, where a blob is used where it lies). ``need`` is what they cost in bytes."""

    def __init__(self, stored_max: int, plain_max: int, sealed: bool) -> None:
        self.stored = memoryview(bytearray(stored_max))
        self.plain = memoryview(bytearray(plain_max)) if sealed else None

    @staticmethod
    def plan(repo: Repository, entries: Iterable[IndexEntry], ranges: int, workers: int,
             memory: int) -> tuple[int, Callable[[], Buffers]]:
        """How many workers (at most ``workers`` and ``ranges``, as many as fit ``memory``, at least one) and how
        to make each one's buffers, sized for the largest of ``entries``."""
        entries = list(entries)
        sealed = repo.store.blob_cipher() is not None
        stored_max = max((e.stored_length for e in entries), default=1)
        plain_max = max((e.plain_length for e in entries), default=1)
        need = stored_max + (plain_max if sealed else 0)
        return max(1, min(workers, ranges, memory // need)), lambda: Buffers(stored_max, plain_max, sealed)


class RangeBlobs:
    """The blobs of ``r`` in offset order, each as ``(entry, plain)`` with ``plain`` a view into ``bufs`` valid
    until the next item, or ``(entry, error)`` when that blob cannot be used from this pack. Opening the range
    raises ``ObjectNotFound`` when the pack is gone (and the typed store errors); use it in a ``with`` block."""

    def __init__(self, repo: Repository, r: Range, bufs: Buffers, *, where: Callable[[IndexEntry], str],
                 then: str, sizes: dict[bytes, int] | None = None) -> None:
        self.repo, self.r, self.bufs, self.where, self.then, self.sizes = repo, r, bufs, where, then, sizes
        self.reader = repo.stream_pack(r.pack.hex(), r.start, r.length)

    def __enter__(self) -> RangeBlobs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reader.close()

    def __iter__(self) -> Iterator[tuple[IndexEntry, memoryview | IntegrityError]]:
        buf, pos = self.bufs.stored, self.r.start
        for e in self.r.blobs:
            while pos < e.offset:  # a small gap between the blobs wanted: read past it
                skipped = read_full(self.reader, buf[:min(len(buf), e.offset - pos)])
                pos += skipped
                if not skipped:
                    break
            view = buf[:read_full(self.reader, buf[:e.stored_length])] if pos == e.offset else buf[:0]
            pos += len(view)
            size = self.sizes.get(e.chunk) if self.sizes is not None else None
            try:
                plain = self.repo.open_blob(view, e, size=size, then=self.then, out=self.bufs.plain,
                                            where=self.where(e))
            except IntegrityError as exc:
                yield e, exc
                continue
            yield e, memoryview(plain)


def fetch_ranges(ranges: Iterable[Range], workers: int, make_buffers: Callable[[], Buffers],
                 fetch: Callable[[Range, Buffers, threading.Event], None], *, name: str) -> None:
    """Call ``fetch(range, buffers, stop)`` for every range on ``workers`` threads, each with buffers of its own made
    once; ranges are taken in order. The first failure sets ``stop`` (``fetch`` checks it between blobs), the other
    workers finish their range, and it is raised."""
    todo = iter(ranges)
    taking = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def worker() -> None:
        bufs = make_buffers()
        try:
            while not stop.is_set():
                with taking:
                    r = next(todo, None)
                if r is None:
                    return
                fetch(r, bufs, stop)
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix=name) as pool:
        futures = [pool.submit(worker) for _ in range(max(1, workers))]
        try:
            wait(futures)
        except BaseException:
            stop.set()
            raise
    if errors:
        raise errors[0]
