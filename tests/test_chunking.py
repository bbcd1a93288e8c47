import hashlib
import io
import os
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from llmdr.repo.chunking import Chunker, ChunkerParams

SMALL = ChunkerParams(avg_size=4096, min_size=1024, max_size=16384)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=200_000))
def test_chunks_reassemble_to_the_input(data):
    chunker = Chunker(SMALL)
    out = bytearray()
    for c in chunker.chunks(io.BytesIO(data)):
        assert c.offset == len(out)
        assert hashlib.sha256(c.data).digest() == c.digest
        assert len(c.data) <= SMALL.max_size
        out += c.data
    assert bytes(out) == data


def test_stream_and_buffer_chunking_agree():
    data = random.Random(1).randbytes(300_000)
    a = [(c.digest, c.offset) for c in Chunker(SMALL).chunks(io.BytesIO(data))]
    b = [(c.digest, c.offset) for c in Chunker(SMALL).chunks_of(data)]
    assert a == b


def test_boundaries_survive_an_insertion():
    """Content-defined chunking keeps most chunks when bytes are inserted near the start (a grown header)."""
    data = random.Random(2).randbytes(500_000)
    shifted = b"HEADER+" + data
    before = {c.digest for c in Chunker(SMALL).chunks_of(data)}
    after = {c.digest for c in Chunker(SMALL).chunks_of(shifted)}
    shared = len(before & after) / len(before)
    assert shared > 0.9, shared


def test_default_params_bound_chunk_size():
    data = os.urandom(40 * 1024 * 1024)
    sizes = [len(c.data) for c in Chunker().chunks(io.BytesIO(data))]
    assert sum(sizes) == len(data)
    assert max(sizes) <= 16 * 1024 * 1024
    assert all(s >= 1024 * 1024 for s in sizes[:-1])


def test_small_files_cut_in_memory_give_the_same_chunks_as_the_stream_chunker():
    """Files up to 2 x max_size are read whole and cut with cut_buf (no 2 x max_size stream buffer per file): the
    cut points must be exactly the stream chunker's, or dedup across snapshots taken both ways would break."""
    import io
    import random

    from llmdr.repo.chunking import Chunker, ChunkerParams

    params = ChunkerParams(avg_size=4096, min_size=1024, max_size=16384)
    ch = Chunker(params)
    for n in (0, 1, 1023, 1024, 5000, 16383, 16384, 16391, 32768, 32769):
        data = random.Random(n).randbytes(n)
        stream = [(c.digest, c.offset, bytes(c.data)) for c in ch.chunks(io.BytesIO(data))]
        whole = [(c.digest, c.offset, bytes(c.data)) for c in ch.chunks(io.BytesIO(data), len(data))]
        assert whole == stream, n
        assert b"".join(d for _, _, d in whole) == data
