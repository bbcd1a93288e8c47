"""Pack files of repository format v2 (docs/design/repository-format-v2.md §1): many chunks in one object.

::

    offset 0   magic "LLMDRP2\\0"            8 bytes
           8   key id                        8 bytes (zeros when unencrypted)
          16   blob 1 | blob 2 | ... | blob n  contiguous
           …   trailer                       T bytes
      end-12   trailer length T             u32 LE
       end-8   tail magic "LLMDRP2T"         8 bytes

A blob is the chunk's bytes, or with a cipher ``nonce | ciphertext | tag`` under AAD ``"llmdr-blob-v2" | repo_id |
chunk id``, so each blob opens on its own from a ranged GET. The trailer lists the blobs (``count u32``, then per
blob ``chunk id 32 | type u8 | stored length u32 | plain length u32``, then SHA-256 of those bytes); with a cipher it
is sealed whole under AAD ``"llmdr-trailer-v2" | repo_id``, so chunk ids are not visible. A pack is proven by the
trailer's hash or tag, the magic at both ends and ``16 + Σ stored + T + 12 == object size``; each blob by its tag
(when sealed) and the SHA-256 of its plaintext against its chunk id. Pure code: no store access, no threads.

A plain (unsealed) pack's trailer ends with one zero-length entry of type 1 whose "chunk id" is 32 random bytes: a
salt. A pack's name is the SHA-256 of its bytes; sealed packs differ every time (random nonces), but without the
salt a writer storing again exactly the chunks of a pack that a prune has planned to delete would produce that very
pack name, and the prune's DELETE could remove the new upload. With it, every pack uploaded is a new object. Readers
never return type-1 entries as blobs.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from llmdr.errors import FormatMismatch, IntegrityError

MAGIC = b"LLMDRP2\0"
TAIL_MAGIC = b"LLMDRP2T"
KEY_ID_LEN = 8
HEADER_SIZE = 16
TAIL_SIZE = 12
CHUNK_ID_LEN = 32
REPO_ID_LEN = 16
ENTRY = struct.Struct("<32sBII")  # chunk id | type | stored length | plain length: 41 bytes
COUNT = struct.Struct("<I")
DIGEST_LEN = 32
MIN_TRAILER = COUNT.size + DIGEST_LEN  # an empty plaintext trailer
TRAILER_GUESS = 64 * 1024  # read_blobs' first ranged GET: the whole trailer in one call for any ordinary pack
BLOB_AAD = b"llmdr-blob-v2"
TRAILER_AAD = b"llmdr-trailer-v2"
TYPE_DATA = 0
TYPE_SALT = 1  # the "reserved" type: a zero-length entry whose id is random (plain packs; see the module docstring)
KNOWN_TYPES = frozenset({0, 1})  # 0 data, 1 reserved
NO_KEY = bytes(KEY_ID_LEN)
U32_MAX = 0xFFFF_FFFF
REINDEX = ("the pack is damaged and none of it was used: restore it from another region (`llmdr verify --repair`) "
           "or rebuild the index without it (`llmdr repair index`)")


class PackCipher(Protocol):
    """What this module needs of ``llmdr.storage.base.BlobCipher`` (AES-256-GCM under the region key)."""

    key_id: bytes
    overhead: int

    def seal(self, plain: bytes | memoryview, aad: bytes) -> bytes: ...

    def seal_into(self, plain: bytes | memoryview, aad: bytes, out: memoryview) -> int: ...

    def open(self, stored: bytes | memoryview, aad: bytes, where: object) -> bytes: ...

    def open_in_place(self, stored: memoryview, aad: bytes, where: object) -> memoryview: ...


@dataclass(frozen=True, slots=True)
class PackBlob:
    """One blob of a pack: its chunk id (raw SHA-256 of the plaintext), where its stored bytes are, and sizes."""

    chunk: bytes
    offset: int
    stored_length: int
    plain_length: int
    type: int = TYPE_DATA


def blob_aad(repo_id: bytes, chunk: bytes) -> bytes:
    """AAD of a sealed blob: binds it to the repository and its chunk id (not the pack, so repack copies it)."""
    _check_len("repo_id", repo_id, REPO_ID_LEN)
    _check_len("chunk id", chunk, CHUNK_ID_LEN)
    return BLOB_AAD + repo_id + chunk


def trailer_aad(repo_id: bytes) -> bytes:
    """AAD of a sealed trailer."""
    _check_len("repo_id", repo_id, REPO_ID_LEN)
    return TRAILER_AAD + repo_id


class PackBuilder:
    """Builds one pack in a single buffer: ``add`` chunks, then ``finish`` for the bytes and the pack's name.

    The caller guarantees ``chunk`` is the SHA-256 of ``plain`` (it hashed it while chunking); every reader checks it
    again. One chunk id appears at most once in a pack.
    """

    def __init__(self, *, repo_id: bytes, cipher: PackCipher | None = None, buf: bytearray | None = None) -> None:
        """``buf``: a buffer an earlier pack of the same writer used and gave back: it is written over, never
        shrunk before ``finish``, so its pages are reused instead of faulted in again for every pack."""
        _check_len("repo_id", repo_id, REPO_ID_LEN)
        if cipher is not None:
            _check_len("cipher key id", cipher.key_id, KEY_ID_LEN)
        self._repo_id = bytes(repo_id)
        self._cipher = cipher
        self._buf = buf if buf is not None else bytearray()
        self._n = 0  # bytes of the pack written so far (the buffer may be longer: left from an earlier pack)
        self._write(MAGIC + (cipher.key_id if cipher is not None else NO_KEY))
        self._blobs: list[PackBlob] = []
        self._chunks: set[bytes] = set()
        self._finished = False

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        end = self._n + len(data)
        self._buf[self._n:end if end <= len(self._buf) else len(self._buf)] = data  # grows only past the end
        self._n = end

    def add(self, chunk: bytes, plain: bytes | memoryview) -> PackBlob:
        """Append one chunk (sealed when there is a cipher) and return where it lies in the pack."""
        if self._finished:
            raise ValueError("PackBuilder.add after finish: start a new PackBuilder for the next pack")
        chunk = bytes(chunk)
        _check_len("chunk id", chunk, CHUNK_ID_LEN)
        if chunk in self._chunks:
            raise ValueError(f"chunk {chunk.hex()} is already in this pack: deduplicate before adding")
        plain_length = len(plain)
        stored_length = plain_length + (self._cipher.overhead if self._cipher is not None else 0)
        if stored_length > U32_MAX:
            raise ValueError(f"chunk {chunk.hex()} is {plain_length} bytes: too large for a pack (u32 lengths)")
        blob = PackBlob(chunk, self._n, stored_length, plain_length)
        if self._cipher is None:
            self._write(plain)
        else:  # sealed straight into the pack: no ciphertext object per blob
            end = self._n + stored_length
            if end > len(self._buf):
                self._buf[len(self._buf):] = bytes(end - len(self._buf))
            with memoryview(self._buf) as view:
                self._n += self._cipher.seal_into(plain, blob_aad(self._repo_id, chunk), view[self._n:end])
        self._blobs.append(blob)
        self._chunks.add(chunk)
        return blob

    @property
    def count(self) -> int:
        return len(self._blobs)

    @property
    def size(self) -> int:
        """Bytes the pack would have if finished now, trailer and tail included."""
        if self._finished:
            return self._n
        trailer = MIN_TRAILER + ENTRY.size * (len(self._blobs) + (self._cipher is None))  # + the salt entry
        if self._cipher is not None:
            trailer += self._cipher.overhead
        return self._n + trailer + TAIL_SIZE

    def finish(self) -> tuple[bytearray, str, list[PackBlob]]:
        """(pack bytes, hex SHA-256 of them = the pack's name, blobs in pack order). The bytes are the builder's
        own buffer, not a copy (a ``bytearray`` goes to botocore as it is; a view would be copied to ``bytes``
        first); the builder takes no more chunks."""
        if self._finished:
            raise ValueError("PackBuilder.finish called twice: start a new PackBuilder for the next pack")
        self._finished = True
        salted = self._cipher is None
        body = bytearray(COUNT.pack(len(self._blobs) + salted))
        for b in self._blobs:
            body += ENTRY.pack(b.chunk, b.type, b.stored_length, b.plain_length)
        if salted:
            body += ENTRY.pack(os.urandom(CHUNK_ID_LEN), TYPE_SALT, 0, 0)
        body += hashlib.sha256(body).digest()
        trailer = body if self._cipher is None else self._cipher.seal(body, trailer_aad(self._repo_id))
        self._write(trailer)
        self._write(COUNT.pack(len(trailer)))
        self._write(TAIL_MAGIC)
        del self._buf[self._n:]  # what an earlier, longer pack left (kept allocated when it is less than half)
        return self._buf, hashlib.sha256(self._buf).hexdigest(), list(self._blobs)


def trailer_length(last: bytes | memoryview, object_size: int, where: str) -> int:
    """The trailer length T, from the last ``TAIL_SIZE`` bytes of a pack (``last`` may be any longer suffix),
    after checking the tail magic and that T fits in an object of ``object_size`` bytes."""
    if object_size < HEADER_SIZE + MIN_TRAILER + TAIL_SIZE:
        raise IntegrityError(f"{where}: {object_size} bytes is too short for a pack (truncated); {REINDEX}")
    if len(last) < TAIL_SIZE:
        raise IntegrityError(f"{where}: got {len(last)} bytes of the pack's tail, expected {TAIL_SIZE} (short "
                             f"read or truncated); {REINDEX}")
    tail = bytes(last[-TAIL_SIZE:])
    if tail[4:] != TAIL_MAGIC:
        raise IntegrityError(f"{where}: does not end with the pack magic {TAIL_MAGIC!r} (truncated, damaged, or "
                             f"not a pack); {REINDEX}")
    (size,) = COUNT.unpack_from(tail)
    if size < MIN_TRAILER or HEADER_SIZE + size + TAIL_SIZE > object_size:
        raise IntegrityError(f"{where}: trailer length {size} does not fit a pack of {object_size} bytes "
                             f"(truncated or damaged); {REINDEX}")
    return size


def parse_trailer(trailer_and_tail: bytes | memoryview, object_size: int, *, repo_id: bytes,
                  cipher: PackCipher | None = None, where: str) -> list[PackBlob]:
    """The blobs of a pack, from a suffix of it holding at least the trailer and the tail (the whole pack will do).

    Checks the tail magic, the trailer's SHA-256 (or GCM tag), that its count and lengths are consistent, that no
    chunk appears twice, and that the blobs and trailer exactly fill ``object_size``. The header is not seen here:
    ``parse_pack`` also checks it."""
    size = trailer_length(trailer_and_tail, object_size, where)
    if len(trailer_and_tail) < size + TAIL_SIZE:
        raise IntegrityError(f"{where}: got {len(trailer_and_tail)} bytes of the pack's end, but the trailer and "
                             f"tail need {size + TAIL_SIZE} (short read); {REINDEX}")
    end = len(trailer_and_tail) - TAIL_SIZE
    stored = memoryview(trailer_and_tail)[end - size:end]
    body = _open_trailer(stored, repo_id, cipher, where)
    blobs = _entries(body, where)
    overhead = cipher.overhead if cipher is not None else 0
    offset = HEADER_SIZE
    for b in blobs:
        if b.stored_length != b.plain_length + overhead:
            raise IntegrityError(f"{where}: chunk {b.chunk.hex()} has stored length {b.stored_length} but plain "
                                 f"length {b.plain_length} (expected overhead {overhead}); {REINDEX}")
        offset += b.stored_length
    if offset + size + TAIL_SIZE != object_size:
        raise IntegrityError(f"{where}: header, blobs and trailer make {offset + size + TAIL_SIZE} bytes but the pack "
                             f"is {object_size} (truncated or damaged); {REINDEX}")
    return blobs


def read_blobs(get_range: Callable[[int, int], bytes], object_size: int, *, repo_id: bytes,
               cipher: PackCipher | None = None, where: str) -> list[PackBlob]:
    """The blobs of a stored pack, read with ranged GETs (``get_range(start, length) -> bytes``): the last 64 KiB
    (or the whole pack when smaller), then — only when the trailer is longer — the rest of the trailer. When the
    first read covers the whole pack, the header is checked too."""
    if object_size < HEADER_SIZE + MIN_TRAILER + TAIL_SIZE:
        raise IntegrityError(f"{where}: {object_size} bytes is too short for a pack (truncated); {REINDEX}")
    first = min(object_size, TRAILER_GUESS)
    data = _ranged(get_range, object_size - first, first, where)
    if first == object_size:
        return parse_pack(data, repo_id=repo_id, cipher=cipher, where=where)
    need = trailer_length(data, object_size, where) + TAIL_SIZE
    if need > first:
        data = _ranged(get_range, object_size - need, need - first, where) + data
    return parse_trailer(data, object_size, repo_id=repo_id, cipher=cipher, where=where)


def parse_pack(data: bytes | memoryview, *, repo_id: bytes, cipher: PackCipher | None = None,
               where: str) -> list[PackBlob]:
    """The blobs of a whole pack in memory, after checking its header (magic, key id against ``cipher``) and its
    trailer (``parse_trailer``). Blob contents are checked by ``open_blob``."""
    if len(data) < HEADER_SIZE + MIN_TRAILER + TAIL_SIZE:
        raise IntegrityError(f"{where}: {len(data)} bytes is too short for a pack (truncated); {REINDEX}")
    header = bytes(data[:HEADER_SIZE])
    if header[:len(MAGIC)] != MAGIC:
        raise IntegrityError(f"{where}: does not start with the pack magic {MAGIC!r} (damaged, or not a pack); "
                             f"{REINDEX}")
    _check_key_id(header[len(MAGIC):], cipher, where)
    return parse_trailer(data, len(data), repo_id=repo_id, cipher=cipher, where=where)


def open_blob(stored: bytes | memoryview, blob: PackBlob, *, repo_id: bytes, cipher: PackCipher | None = None,
              where: object, in_place: bool = False) -> bytes | memoryview:
    """The plaintext of one blob from its stored bytes (e.g. a ranged GET of ``blob.offset``, ``stored_length``):
    opened when sealed, then checked against its length and its chunk id. Nothing unproven is returned.

    ``in_place`` (``stored`` a writable buffer the caller reuses): nothing is copied; the result is a view of
    ``stored`` (a sealed blob is decrypted over its ciphertext), valid until the caller reuses the buffer.
    ``where`` is formatted into an error message only (any object: a caller may pass one that builds its text
    when formatted, see ``rangeread``)."""
    def what() -> str:  # built only for an error: a restore of many small files opens thousands of blobs
        return f"{where}: chunk {blob.chunk.hex()} at offset {blob.offset}"

    fix = "it was not used; `llmdr verify --repair` restores it from another region"
    if len(stored) != blob.stored_length:
        raise IntegrityError(f"{what()}: got {len(stored)} stored bytes, expected {blob.stored_length} (short read "
                             f"or truncated pack); {fix}")
    if cipher is None:
        plain = stored if isinstance(stored, bytes) or in_place else bytes(stored)
    else:
        try:
            if in_place and isinstance(stored, memoryview):
                plain = cipher.open_in_place(stored, blob_aad(repo_id, blob.chunk), where)
            else:
                plain = cipher.open(stored, blob_aad(repo_id, blob.chunk), where)
        except IntegrityError as exc:
            raise IntegrityError(f"{what()} failed authentication under key id {cipher.key_id.hex()} (damaged, "
                                 f"moved, or sealed with another key); {fix}") from exc
    if len(plain) != blob.plain_length:
        raise IntegrityError(f"{what()}: {len(plain)} bytes, expected {blob.plain_length}; {fix}")
    if hashlib.sha256(plain).digest() != blob.chunk:
        raise IntegrityError(f"{what()}: the bytes do not match the chunk id (damaged); {fix}")
    return plain


def _check_len(name: str, value: bytes, n: int) -> None:
    if len(value) != n:
        raise ValueError(f"{name} must be {n} raw bytes, got {len(value)}")


def _check_key_id(kid: bytes, cipher: PackCipher | None, where: str) -> None:
    want = cipher.key_id if cipher is not None else NO_KEY
    if kid == want:
        return
    if cipher is None:
        raise IntegrityError(f"{where}: the pack is encrypted (key id {kid.hex()}) but no key is configured for this "
                             "region: wrong key. Configure the region's encryption key; nothing was read")
    if kid == NO_KEY:
        raise IntegrityError(f"{where}: the pack is not encrypted but this region's key has id {want.hex()}: wrong "
                             f"key (or the pack was replaced). Nothing was read; {REINDEX}")
    raise IntegrityError(f"{where}: the pack was sealed with key id {kid.hex()}, but this region's key has id "
                         f"{want.hex()}: wrong key. Set the key the pack was written with; nothing was read")


def _open_trailer(stored: memoryview, repo_id: bytes, cipher: PackCipher | None, where: str) -> memoryview:
    """The trailer's entries (count and blob entries), proven by its GCM tag (when sealed) and its SHA-256."""
    plain = stored
    if cipher is not None:
        try:
            plain = memoryview(cipher.open(stored, trailer_aad(repo_id), f"{where}: pack trailer"))
        except IntegrityError as exc:
            raise IntegrityError(f"{where}: the pack trailer failed authentication under key id "
                                 f"{cipher.key_id.hex()} (damaged, truncated, or sealed with another key); "
                                 f"{REINDEX}") from exc
    body, digest = plain[:-DIGEST_LEN], plain[-DIGEST_LEN:]
    if len(plain) < MIN_TRAILER or hashlib.sha256(body).digest() != digest:
        raise IntegrityError(f"{where}: the pack trailer fails its SHA-256 check (damaged or truncated; or the pack "
                             f"is encrypted and no key was given); {REINDEX}")
    return body


def _entries(body: memoryview, where: str) -> list[PackBlob]:
    """Blob entries of a proven trailer (``count`` then the entries, digest removed), offsets implied from 16."""
    (count,) = COUNT.unpack_from(body)
    if len(body) != COUNT.size + ENTRY.size * count:
        raise IntegrityError(f"{where}: the pack trailer says {count} blobs but holds {len(body) - COUNT.size} bytes "
                             f"of entries ({ENTRY.size} each); {REINDEX}")
    blobs: list[PackBlob] = []
    seen: set[bytes] = set()
    offset = HEADER_SIZE
    for chunk, kind, stored_length, plain_length in ENTRY.iter_unpack(body[COUNT.size:]):
        if chunk in seen:
            raise IntegrityError(f"{where}: chunk {chunk.hex()} appears twice in the pack trailer; {REINDEX}")
        if kind not in KNOWN_TYPES:
            raise FormatMismatch(f"{where}: blob type {kind} of chunk {chunk.hex()} is unknown to this llmdr (a newer "
                                 "format?); upgrade llmdr to read this pack")
        seen.add(chunk)
        if kind == TYPE_SALT and stored_length == 0 and plain_length == 0:
            continue  # a plain pack's salt: no bytes, not a chunk
        blobs.append(PackBlob(chunk, offset, stored_length, plain_length, kind))
        offset += stored_length
    return blobs


def _ranged(get_range: Callable[[int, int], bytes], start: int, length: int, where: str) -> bytes:
    """One ranged read, checked for length (a short read is never parsed as a pack)."""
    data = get_range(start, length)
    if len(data) != length:
        raise IntegrityError(f"{where}: asked for {length} bytes at offset {start}, got {len(data)} (short read or "
                             f"the pack changed size); {REINDEX}")
    return bytes(data)
