"""Reading a stored object's range the way a restore does: through ``open_range`` into one reused buffer."""

from __future__ import annotations


def read_streamed(store, key: str, start: int, length: int, piece: int = 64 * 1024) -> bytes:
    """``length`` bytes of ``key`` from ``start`` (fewer at the object's end), read ``piece`` bytes at a time."""
    out = bytearray()
    buf = memoryview(bytearray(piece))
    with store.open_range(key, start, length) as r:
        while n := r.readinto(buf):
            out += buf[:n]
    return bytes(out)
