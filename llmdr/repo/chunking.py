"""Content-defined chunking (FastCDC 2020) with SHA-256 chunk ids.

Content-defined boundaries keep dedup working when bytes shift: a safetensors header that grows by a few bytes moves
every tensor after it, which would defeat fixed-size chunks. Average ~5 MiB chunks keep the object count (and S3
request count) low for multi-GB weights; files smaller than ``min_size`` are one chunk. SHA-256 (not BLAKE3) is the
id because S3-compatible servers verify ``x-amz-checksum-sha256`` on upload: the same digest then proves the bytes
end to end at no extra cost (bench/ measures the trade-off).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ChunkerParams:
    name: str = "fastcdc2020"
    avg_size: int = 4 * MiB
    min_size: int = 1 * MiB
    max_size: int = 16 * MiB

    def to_json(self) -> dict:
        return {"name": self.name, "avg_size": self.avg_size, "min_size": self.min_size, "max_size": self.max_size}

    @classmethod
    def from_json(cls, data: dict) -> "ChunkerParams":
        return cls(name=data["name"], avg_size=int(data["avg_size"]), min_size=int(data["min_size"]),
                   max_size=int(data["max_size"]))


DEFAULT_CHUNKER = ChunkerParams()


@dataclass(frozen=True, slots=True)
class Chunk:
    digest: bytes  # raw SHA-256
    offset: int
    data: memoryview  # valid only until the iterator advances


class Chunker:
    """Splits a stream into content-defined chunks. Memory use is bounded by a few ``max_size`` buffers."""

    def __init__(self, params: ChunkerParams = DEFAULT_CHUNKER) -> None:
        if params.name != "fastcdc2020":
            raise ValueError(f"unknown chunker {params.name!r}")
        from pyfastcdc import FastCDC

        self.params = params
        self._cdc = FastCDC(params.avg_size, min_size=params.min_size, max_size=params.max_size)

    def chunks(self, stream: BinaryIO, size: int | None = None) -> Iterator[Chunk]:
        """Yield chunks of ``stream``; each ``Chunk.data`` view is valid until the next one is produced.

        With ``size`` (the file's size) at most twice ``max_size``, the file is read whole and cut in memory: the
        same cut points, without the stream chunker's buffer of 2 x ``max_size`` allocated and zero-filled per file
        (32 MiB with the defaults, ~21 ms each: minutes for a bundle of 10,000 small files)."""
        if size is not None and size <= 2 * self.params.max_size:
            data = stream.read()
            if data:
                yield from self.chunks_of(data)
            return
        for c in self._cdc.cut_stream(stream):
            yield Chunk(hashlib.sha256(c.data).digest(), c.offset, c.data)

    def chunks_of(self, data: bytes) -> Iterator[Chunk]:
        for c in self._cdc.cut_buf(data):
            yield Chunk(hashlib.sha256(c.data).digest(), c.offset, c.data)
