"""Streaming the body of a ranged S3 GET into the caller's buffer (``S3Store.open_range``).

``http.client``'s ``readinto`` on the response botocore opened: one kernel copy, no ``bytes`` per read. Where that
is not reachable (another HTTP stack under botocore), botocore's ``read`` is copied in. A body that ends before its
Content-Length is a ``TransientStorageError`` (the retry layer resumes from there), never a short range; the
connection goes back to the pool only when the body was read whole.
"""

from __future__ import annotations

import http.client
from collections.abc import Callable
from typing import Any

from llmdr.errors import TransientStorageError


class BodyReader:
    """A ``RangeReader`` over a botocore ``StreamingBody`` of ``length`` bytes. ``what`` names the request in
    messages; ``map_error`` turns a client exception into llmdr's typed one (the adapter's mapping)."""

    def __init__(self, what: str, body: Any, length: int, map_error: Callable[[Exception], Exception]) -> None:
        self._what, self._body, self._left, self._map = what, body, length, map_error
        raw = getattr(body, "_raw_stream", None)
        fp = getattr(raw, "_fp", None)
        self._raw = raw
        self._readinto = getattr(fp, "readinto", None)

    def readinto(self, buf: memoryview | bytearray) -> int:
        if self._left <= 0:
            return 0
        view = memoryview(buf)[:self._left]
        try:
            if self._readinto is not None:
                n = self._readinto(view)
            else:
                data = self._body.read(len(view))
                n = len(data)
                view[:n] = data
        except Exception as exc:
            self._abandon()
            if isinstance(exc, http.client.HTTPException):  # e.g. IncompleteRead, raised below botocore's wrappers
                raise TransientStorageError(f"{self._what}: connection dropped in the middle of the response body "
                                            f"({exc!r})") from exc
            raise self._map(exc) from exc
        if not n:
            self._abandon()
            raise TransientStorageError(f"{self._what}: the connection ended {self._left} bytes before the end of "
                                        "the range")
        self._left -= n
        return n

    def _abandon(self) -> None:
        self._left = 0
        try:
            self._body.close()
        except Exception:  # noqa: BLE001 - a connection already broken has nothing left to free
            pass

    def close(self) -> None:
        if self._left > 0:
            self._abandon()  # unread bytes on the connection: it cannot be reused
        elif self._raw is not None and hasattr(self._raw, "release_conn"):
            self._raw.release_conn()

    def __enter__(self) -> BodyReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
