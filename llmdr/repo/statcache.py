"""Local stat cache: lets a re-snapshot skip files whose metadata has not changed, without reading them.

An entry is used only when size, mtime, ctime and inode all match, its chunk lengths add up to the size, its keyed
checksum holds, and every chunk it names is still present in the target store; otherwise the file is read and hashed
again. The cache is only ever an optimisation: deleting it costs one full read of the bundle.

The cache is never trusted blindly: a changed digit in it would make a snapshot whose lengths do not add up, two
swapped entries one that restores a file's bytes under another's name. Each entry carries an HMAC-SHA256 (cut to
128 bits) under a random key kept beside the cache (``stat-<tag>.key``, 0600), over the bundle folder, the chunker
and the entry (path, size, mtime, ctime, inode, chunks); an entry whose checksum fails is ignored with a warning
naming it. So that the warm no-op snapshot does not pay one HMAC per file, the file as a whole carries one more HMAC
(its first line, over the rest): when it holds, every entry is as llmdr wrote it and none is checked one by one.

File: ``<hex HMAC of the body>\\n<JSON body>``, the body ``{"format": 2, "source": …, "chunker": …, "files":
{path: [[size, mtime_ns, ctime_ns, inode], [[chunk, length], …], <hex HMAC of the entry>]}}``. Both files are read
without following a symlink and replaced atomically (a symlink there is replaced, never written through).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import stat
from pathlib import Path

from llmdr.common.files import atomic_write
from llmdr.repo.chunking import ChunkerParams

log = logging.getLogger(__name__)

Key = tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode
Chunks = list[tuple[str, int]]

FORMAT = 2
KEY_BYTES = 32
MAC_HEX = 32  # HMAC-SHA256 cut to 128 bits
MAX_CACHE_BYTES = 1 << 30  # a larger "cache" is not one llmdr wrote: it is not read


def stat_key(st: os.stat_result) -> Key:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class StatCache:
    """The stat cache of one bundle folder (``source``) at ``path``; ``path`` None keeps nothing."""

    def __init__(self, path: Path | None, chunker: ChunkerParams, *, source: str = "") -> None:
        self.path = path
        self.chunker = chunker
        self.source = source
        self._prefix = b"llmdr-statcache/2\0" + source.encode("utf-8", "surrogateescape") + b"\0" + json.dumps(
            chunker.to_json(), sort_keys=True).encode() + b"\0"
        self._key: bytes | None = None
        self._trusted = False  # the whole file's HMAC held: its entries need no checking one by one
        self._old: dict[str, list] = {}  # path -> [key list, chunks, mac] as read
        self._new: dict[str, tuple[Key, Chunks, str]] = {}
        self._used: dict[str, tuple[Chunks, str]] = {}  # path -> (chunks lookup returned, the entry's checksum)
        self._kept = 0  # entries recorded as they were read
        self.rejected: list[str] = []  # paths whose entry failed its check (their files were read again)
        if path is not None:
            self._key = read_key(self.key_path)
            self._load(path)

    @property
    def key_path(self) -> Path:
        assert self.path is not None
        return self.path.with_name(self.path.stem + ".key")

    @staticmethod
    def for_source(cache_dir: Path, source: Path) -> Path:
        tag = hashlib.sha256(str(source.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:16]
        return cache_dir / f"stat-{tag}.json"

    def _load(self, path: Path) -> None:
        data = read_private(path, "stat cache")
        if data is None:
            return
        if self._key is None:
            log.info("stat cache %s has no usable key beside it (%s): not used; every file is read once",
                     path, self.key_path)
            return
        head, _, body = data.partition(b"\n")
        self._trusted = len(head) == MAC_HEX and hmac.compare_digest(head, self._file_mac(body).encode())
        try:
            raw = json.loads(body)
            files = raw["files"]
            if raw.get("format") != FORMAT or raw.get("chunker") != self.chunker.to_json():
                return  # another format or other chunker parameters: no entry can be used
            if raw.get("source") != self.source:
                log.warning("stat cache %s was made for another bundle folder (%r, not %r): not used", path,
                            raw.get("source"), self.source)
                return
            if not isinstance(files, dict):
                raise TypeError("files is not an object")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable stat cache %s (%s); every file is read again", path, exc)
            return
        if not self._trusted:
            log.warning("stat cache %s does not match its checksum (changed outside llmdr?); each entry is checked "
                        "on use, and a file whose entry fails is read again", path)
        self._old = files

    def _file_mac(self, body: bytes) -> str:
        assert self._key is not None
        return hmac.digest(self._key, b"file\0" + self._prefix + body, "sha256")[:MAC_HEX // 2].hex()

    def _entry_mac(self, relpath: str, key: Key | list, chunks: Chunks | list) -> str:
        assert self._key is not None
        msg = "%s\0%d\0%d\0%d\0%d\0%s" % (relpath, *key, ",".join("%s:%d" % (d, n) for d, n in chunks))
        return hmac.digest(self._key, b"entry\0" + self._prefix + msg.encode("utf-8", "surrogateescape"),
                           "sha256")[:MAC_HEX // 2].hex()

    def lookup(self, relpath: str, st: os.stat_result) -> Chunks | None:
        """The chunks recorded for ``relpath`` if its entry matches ``st`` and passes its checks, else None."""
        hit = self._old.get(relpath)
        if hit is None:
            return None
        try:
            k, chunks, mac = hit
            if k[0] != st.st_size or k[1] != st.st_mtime_ns or k[2] != st.st_ctime_ns or k[3] != st.st_ino:
                return None  # the file changed: not an error
            if not self._trusted and not (isinstance(mac, str) and len(k) == 4 and
                                          hmac.compare_digest(mac, self._entry_mac(relpath, k, chunks))):
                raise ValueError("its checksum does not match")
            out = [(d, n) for d, n in chunks]
            total = 0
            for d, n in out:
                if type(n) is not int or n <= 0 or type(d) is not str or len(d) != 64:
                    raise ValueError(f"it holds a malformed chunk reference ({d!r}, {n!r})")
                total += n
            if total != st.st_size:
                raise ValueError(f"its chunk lengths add up to {total}, not to the file's size {st.st_size}")
        except (ValueError, TypeError, LookupError) as exc:
            self.rejected.append(relpath)
            log.warning("stat cache %s: the entry for %r is ignored (%s); the file is read again", self.path,
                        relpath, exc)
            return None
        self._used[relpath] = (out, mac)
        return out

    def record(self, relpath: str, st: os.stat_result, chunks: Chunks) -> None:
        used = self._used.get(relpath)
        # the entry lookup returned (checked, and for this very stat) keeps its checksum; others get one on save
        if used is not None and used[0] is chunks:
            mac = used[1]
            self._kept += 1
        else:
            mac = ""
        self._new[relpath] = (stat_key(st), chunks, mac)

    def save(self) -> None:
        if self.path is None:
            return
        if self._trusted and self._kept == len(self._new) == len(self._old):
            return  # every entry recorded as it was read from a file that verified: the same bytes are there
        if self._key is None:
            self._key = os.urandom(KEY_BYTES)
            atomic_write(self.key_path, self._key, mode=0o600)
        files = {p: [k, chunks, mac or self._entry_mac(p, k, chunks)]
                 for p, (k, chunks, mac) in self._new.items()}
        body = json.dumps({"format": FORMAT, "source": self.source, "chunker": self.chunker.to_json(),
                           "files": files}, separators=(",", ":")).encode()
        atomic_write(self.path, self._file_mac(body).encode() + b"\n" + body, mode=0o600)


def read_private(path: Path, what: str, *, private: bool = False) -> bytes | None:
    """The bytes of ``path`` if it is a regular file (never through a symlink, never a FIFO or device) and, when
    ``private``, readable by its owner alone; else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("%s %s is not used: %s (a symlink there is replaced on the next save)", what, path,
                    exc.strerror or exc)
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_CACHE_BYTES:
            log.warning("%s %s is not used: not a regular file of a plausible size", what, path)
            return None
        if private and (st.st_mode & 0o077 or st.st_uid != os.geteuid()):
            log.warning("%s %s is not used: others may read or write it (mode %o, owner uid %d)", what, path,
                        stat.S_IMODE(st.st_mode), st.st_uid)
            return None
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read(MAX_CACHE_BYTES + 1)
    finally:
        os.close(fd)


def read_key(path: Path, what: str = "stat cache key") -> bytes | None:
    """A cache's key, or None when there is none usable (a new one is made on save)."""
    data = read_private(path, what, private=True)
    if data is not None and len(data) != KEY_BYTES:
        log.warning("%s %s is not %d bytes: not used (a new key is made)", what, path, KEY_BYTES)
        return None
    return data
