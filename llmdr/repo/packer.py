"""Writing chunks into packs (repository format v2 §1–2): chunks are appended to a pack in memory; a full pack
(``pack_target`` bytes) is uploaded on a thread pool while the next one fills; every ``INDEX_EVERY`` packs stored, an
index object names them (so a crash in a long run loses little: the next run finds those chunks), and ``close``
uploads the last pack and indexes the rest. Nothing may name a chunk (a record, a tree)
before ``close`` returns: that is the rule that makes every referenced chunk findable (restic's and Kopia's).

Memory is bounded: the pack being filled plus at most ``max_inflight_bytes`` of packs on their way. Uploads are
verified puts (the pack's name is its SHA-256). A failure stops the writer at the next ``add`` or at ``close``;
packs already uploaded but never indexed are unreferenced and are removed by a later prune once older than its
safety time.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from llmdr.repo.index import IndexEntry
from llmdr.repo.pack import PackBuilder

log = logging.getLogger(__name__)


INDEX_EVERY = 64  # packs (2 GiB at the default size) between the index objects a long run writes as it goes


class PackWriter:
    """Packs chunks for ``repo`` (a ``repository.Repository``: its ``config()``, ``store``, ``put_pack`` and
    ``add_index``; typed loosely because the repository itself uses a writer for single-chunk repairs)."""

    def __init__(self, repo: Any, *, workers: int = 4, max_inflight_bytes: int | None = None,
                 pack_target: int | None = None) -> None:
        cfg = repo.config()
        self.repo = repo
        self.target = pack_target or cfg.pack_target
        self.max_inflight = max(self.target, max_inflight_bytes or 2 * self.target)
        self._cipher = repo.store.blob_cipher()
        self._repo_id = bytes.fromhex(cfg.repo_id)
        self._builder: PackBuilder | None = None
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="llmdr-pack")
        self._cv = threading.Condition()
        self._inflight = 0
        self._error: BaseException | None = None
        self._futures: list[Future] = []
        self._spare: list[bytearray] = []  # buffers of packs already stored, reused (no page faults per pack)
        self._added: set[bytes] = set()
        self.entries: list[IndexEntry] = []
        self._unindexed: list[IndexEntry] = []  # stored packs no index object names yet
        self._unindexed_packs = 0
        self.packs = 0
        self.bytes_stored = 0

    def __enter__(self) -> "PackWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def has(self, chunk: bytes) -> bool:
        """True when this writer already took ``chunk`` (32 raw bytes)."""
        return chunk in self._added

    def add(self, hexdigest: str, digest: bytes, data: bytes | bytearray | memoryview) -> bool:
        """Queue one chunk (``digest`` = its raw SHA-256); False when this writer already has it."""
        if digest in self._added:
            return False
        self._raise_failure()
        if self._builder is None:
            with self._cv:
                spare = self._spare.pop() if self._spare else None
            self._builder = PackBuilder(repo_id=self._repo_id, cipher=self._cipher, buf=spare)
        self._builder.add(digest, data)
        self._added.add(digest)
        if self._builder.size >= self.target:
            self._flush()
        return True

    def _flush(self) -> None:
        builder, self._builder = self._builder, None
        if builder is None or builder.count == 0:
            return
        data, name, blobs = builder.finish()
        n = len(data)
        with self._cv:
            while self._inflight and self._inflight + n > self.max_inflight and self._error is None:
                self._cv.wait()
            self._raise_failure()
            self._inflight += n
        self._futures.append(self._pool.submit(self._put, name, data, blobs))

    def _put(self, name: str, data, blobs) -> None:
        try:
            self.repo.put_pack(name, data)
            pack = bytes.fromhex(name)
            new = [IndexEntry(b.chunk, pack, b.offset, b.stored_length, b.plain_length) for b in blobs]
            with self._cv:
                self.entries += new
                self._unindexed += new
                self._unindexed_packs += 1
                self.packs += 1
                self.bytes_stored += len(data)
                batch = None
                if self._unindexed_packs >= INDEX_EVERY:  # a long run indexes as it goes: a crash loses little
                    batch, self._unindexed, self._unindexed_packs = self._unindexed, [], 0
            if batch:
                self.repo.add_index(sorted(batch, key=lambda e: e.chunk))
        except BaseException as exc:
            with self._cv:
                self._error = self._error or exc
            raise
        finally:
            with self._cv:
                self._inflight -= len(data)
                if isinstance(data, bytearray):  # stored (or failed): its buffer serves the next pack
                    self._spare.append(data)
                self._cv.notify_all()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> list[IndexEntry]:
        """Upload what is left, wait for every pack, then store the index naming them. Returns its entries."""
        try:
            self._flush()
            for f in self._futures:
                f.result()
        except BaseException:
            self.abort()
            raise
        self._pool.shutdown(wait=True)
        if self._unindexed:
            self.repo.add_index(sorted(self._unindexed, key=lambda e: e.chunk))
            self._unindexed, self._unindexed_packs = [], 0
        return self.entries

    def abort(self) -> None:
        for f in self._futures:
            f.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._builder = None
