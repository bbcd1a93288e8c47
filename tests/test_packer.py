"""PackWriter: chunks into packs, an index every INDEX_EVERY packs so a crashed long run loses little."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmdr.errors import TransientStorageError
from llmdr.repo import packer
from llmdr.repo.chunking import ChunkerParams
from llmdr.repo.layout import RepoConfig
from llmdr.repo.repository import Repository
from llmdr.repo.restore import restore_snapshot
from llmdr.repo.snapshot import take_snapshot
from llmdr.storage.memory import MemoryStore
from tests.support.trees import read_tree, write_tree

SMALL = ChunkerParams(avg_size=4096, min_size=1024, max_size=16384)


class DiesAfter(MemoryStore):
    """A store whose pack uploads fail after ``n`` of them (the process is gone; nothing more lands)."""

    def __init__(self, n: int) -> None:
        super().__init__("dies")
        self.left = n

    def put(self, key, data, **kw):
        if key.startswith("packs/"):
            if self.left <= 0:
                raise TransientStorageError(f"{key}: connection lost")
            self.left -= 1
        return super().put(key, data, **kw)


def test_a_crashed_long_run_keeps_what_it_indexed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(packer, "INDEX_EVERY", 2)
    src = tmp_path / "src"
    write_tree(src, {f"f{i}.bin": os.urandom(80_000) for i in range(12)})  # ~15 packs of 64 KiB
    store = DiesAfter(7)
    repo = Repository(store, pack_target=64 * 1024)
    repo.ensure_config(RepoConfig(chunker=SMALL, pack_target=64 * 1024))
    with pytest.raises(TransientStorageError):
        take_snapshot(repo, src, bundle="b", workers=1)
    indexed = Repository(store).list_chunks()
    assert indexed and not Repository(store).snapshots()  # 6 of 7 packs were indexed (in twos); nothing published
    store.left = 10_000
    again = take_snapshot(Repository(store), src, bundle="b", workers=1)
    assert again.chunks_new == again.chunks_total - len(indexed)  # what was indexed before the crash is reused
    restore_snapshot(Repository(store), again.snapshot_id, tmp_path / "out")
    assert read_tree(tmp_path / "out") == read_tree(src)


def test_index_at_close_names_every_pack(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src, {f"f{i}.bin": os.urandom(30_000) for i in range(5)})
    repo = Repository(MemoryStore(), pack_target=32 * 1024)
    repo.ensure_config(RepoConfig(chunker=SMALL, pack_target=32 * 1024))
    res = take_snapshot(repo, src, bundle="b", workers=2)
    fresh = Repository(repo.store)
    assert set(fresh.list_chunks()) == set(res.manifest.chunk_set())
    assert len(fresh.pack_infos()) > 2
