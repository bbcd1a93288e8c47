"""Restoring a snapshot into a folder, planned by pack: every chunk verified, every file written atomically,
resumable (docs/design/repository-format-v2.md §7).

The restore is planned before anything is downloaded: every chunk of every file to write is placed by the index
(pack, offset, stored length), the blobs of each pack are sorted by offset and neighbours coalesced into ranges
(``restoreplan``: gap ≤ 1 MiB, range ≤ 32 MiB, less for a small restore so that every worker has one). Each worker
thread streams its ranges (``BlobStore.open_range``) blob by blob into one buffer it allocated once, opens each blob
there (a sealed one is decrypted over its own ciphertext, a plain one used where it lies) and proves it against its
chunk id, then writes it with ``os.pwrite`` at every (file, offset) that uses it: a chunk shared by many files is
fetched once, and no byte is copied in memory on the way. Each worker holds one buffer as large as the largest blob,
and as many workers run as fit ``memory_bytes`` (at least one), whatever the bundle's size.

Files are assembled in a hidden temporary file next to their destination (``.llmdr-tmp-<16 hex>``, 27 bytes
whatever the file's name: ``reserved``), created exclusively and never through a link, on their first write, and
pre-sized; at most ``MAX_OPEN_FILES`` stay open (the least recently written is closed and opened again when its next
chunk comes). Zeros at either end of a chunk (whole 4 KiB pages, or the whole chunk) are not written: the new,
pre-sized file already reads as zeros there, so a sparse file comes back sparse. When its last chunk lands a file
gets its mode (setuid, setgid and sticky bits removed unless ``preserve_special_bits``) and mtime on its descriptor,
is flushed to disk when ``durable``, and only then is renamed into place: a reader never sees a half file. Hard links
are not recorded in snapshots: each name comes back as a file of its own.

The target is locked for the whole restore (``restoretarget``: ``.llmdr-restore.lock``, naming the holder), so a
second restore into the same folder stops at once. A marker (``.llmdr-restore.json``) names the snapshot while a
restore is under way. Running the same restore again into that folder resumes it: files already in place whose
content hashes to the manifest are kept, not downloaded. A snapshot that lists one of these names (``reserved``) is
refused before anything is written.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from llmdr.common.progress import NoProgress, Progress
from llmdr.common.units import human_size
from llmdr.errors import IntegrityError, LlmdrError, UnsafePathError
from llmdr.repo.bundle import IncompleteBundle, check_bundle, specs_from_manifest
from llmdr.repo.layout import pack_key
from llmdr.repo.manifest import FileEntry, Manifest, check_relpath
from llmdr.repo.rangeread import fetch_ranges, locate, range_chunks
from llmdr.repo.repository import Repository
from llmdr.repo.reserved import MARKER, reserved_reason, tmp_name
from llmdr.repo.restoreplan import Range, plan_for
from llmdr.repo.restoretarget import check_target, create_new, lock_target, marker_temp, open_target, write_marker

log = logging.getLogger(__name__)

DEFAULT_MEMORY = 128 << 20  # bytes of download buffers at most, all workers together
MAX_OPEN_FILES = 128
_PAGE = 4096
_ZERO_PAGE = bytes(_PAGE)
# A full disk, a quota, or a file larger than the process may write (RLIMIT_FSIZE, `ulimit -f`) or the file system holds.
_NO_ROOM = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exhausted",
            errno.EFBIG: "a file is larger than this process may write (file size limit, `ulimit -f`) or than the "
                         "file system holds"}
_THEN = ("No partial file was left; files already in place stay, and the same command resumes. Restore from another "
         "region, or repair this one with `llmdr replicate` from a healthy copy.")


@dataclass
class RestoreResult:
    snapshot_id: str
    target: str
    files: int = 0
    files_skipped: int = 0
    bytes_total: int = 0
    bytes_downloaded: int = 0  # file bytes written from downloaded chunks (a chunk used twice counts twice)
    duration_s: float = 0.0
    location: str = ""
    complete: bool | None = None  # completeness check after restore; None when the snapshot declares no components
    buffer_bytes: int = 0  # bytes of download buffer the workers held: workers × the largest blob (≤ memory_bytes)
    special_bits_stripped: int = 0  # files whose setuid/setgid/sticky bits were not restored
    bytes_sparse: int = 0  # file bytes of zeros left as holes rather than written

    def to_json(self) -> dict:
        return {
            "snapshot_id": self.snapshot_id,
            "target": self.target,
            "complete": self.complete,
            "files": self.files,
            "files_skipped": self.files_skipped,
            "bytes_total": self.bytes_total,
            "bytes_downloaded": self.bytes_downloaded,
            "duration_s": round(self.duration_s, 3),
            "location": self.location,
            "buffer_bytes": self.buffer_bytes,
            "special_bits_stripped": self.special_bits_stripped,
            "bytes_sparse": self.bytes_sparse,
        }


def safe_destination(root: Path, relpath: str) -> Path:
    """The path ``relpath`` maps to under ``root``; refuses anything that resolves outside ``root``."""
    check_relpath(relpath)
    dest = root / relpath
    parent = dest.parent.resolve()
    if parent != root and root not in parent.parents:
        raise UnsafePathError(
            f"refusing to restore {relpath!r}: its folder resolves to {parent}, outside the target {root} "
            "(a symlink in the target points out of it)"
        )
    return dest


def _kept(path: str, entry: FileEntry, mode: int) -> bool:
    """True when ``path`` is already a regular file (not a link) holding exactly ``entry``'s bytes, checked chunk by
    chunk; its mode and mtime are then set to ``mode`` and the entry's, on the descriptor that was read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # missing, a symlink (ELOOP), unreadable: it is restored afresh
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != entry.size or st.st_nlink != 1:  # linked: write afresh
            return False
        for hexd, n in entry.chunks:
            if hashlib.sha256(os.read(fd, n)).hexdigest() != hexd:
                return False
        if st.st_mtime_ns != entry.mtime_ns or (st.st_mode & 0o7777) != mode:
            os.fchmod(fd, mode)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        return True
    finally:
        os.close(fd)


class _FileJob:
    """One file being assembled from chunks. Its temporary file is created on the first write (pre-sized when more
    than one chunk fills it); the last chunk to land finalises it. Paths are strings: a restore of many small
    files spends its time per file, and ``pathlib`` would be most of it."""

    def __init__(self, entry: FileEntry, dest: str, tmp: str, mode: int, durable: bool) -> None:
        self.entry = entry
        self.dest = dest
        self.tmp = tmp
        self.mode = mode
        self.durable = durable
        self.remaining = len(entry.chunks)
        self.fd = -1
        self.pins = 0  # writes under way (the open-file cap never closes a pinned file)
        self.lock = threading.Lock()
        self.created = False
        self.done = False
        self.failed: OSError | None = None  # why the first open failed: another chunk's thread gets the same error

    def open(self) -> None:
        if self.failed is not None:  # not ENOENT on the removed temporary file, which hid EFBIG 1 run in 20
            raise OSError(self.failed.errno, self.failed.strerror, self.failed.filename)
        if self.created:
            self.fd = os.open(self.tmp, os.O_WRONLY | os.O_NOFOLLOW)
            return
        self.fd = create_new(self.tmp, repr(self.entry.path))
        self.created = True
        if len(self.entry.chunks) > 1:
            try:
                os.ftruncate(self.fd, self.entry.size)  # EFBIG here when the file exceeds a file size limit
            except BaseException as exc:
                self.abandon()
                if isinstance(exc, OSError):
                    if exc.filename is None:
                        exc.filename = self.entry.path
                    self.failed = exc
                raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def finalise(self) -> None:
        if self.fd < 0:  # an empty file, or one the open-file cap closed after its last write
            self.open()
        try:
            os.fchmod(self.fd, self.mode)
            os.utime(self.fd, ns=(self.entry.mtime_ns, self.entry.mtime_ns))
            if self.durable:
                os.fsync(self.fd)
        finally:
            self.close()
        try:
            os.replace(self.tmp, self.dest)
        except IsADirectoryError:
            raise UnsafePathError(f"cannot restore file {self.entry.path!r}: a folder is in the way at "
                                  f"{self.dest}") from None
        self.done = True

    def abandon(self) -> None:
        self.close()
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


class _Files:
    """Writes into the files being assembled, keeping at most ``limit`` of them open (plus those being written).
    Opening (create, pre-size) happens under the file's own lock, so threads open different files at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lock = threading.Lock()  # guards ``open``; taken after a file's lock, never before
        self.open: OrderedDict[_FileJob, None] = OrderedDict()  # least recently written first

    def write(self, job: _FileJob, offset: int, data: bytes | memoryview, lead: int = 0, trail: int = 0) -> None:
        """Write ``data`` at ``offset`` but for its first ``lead`` and last ``trail`` bytes, zeros the new file
        already reads as (left as holes); the write that completes the file finalises it."""
        end = len(data) - trail
        part = memoryview(data)[lead:end] if lead or trail else data
        if len(job.entry.chunks) == 1:  # the whole file in one write, by this thread alone: no open-file cache
            job.open()
            if lead or trail:
                os.ftruncate(job.fd, len(data))
            if part:
                _pwrite_all(job.fd, part, offset + lead, job.entry.path)
            job.remaining = 0
            job.finalise()
            return
        fd = self._pin(job)
        ok = last = False
        try:
            if part:  # the file was pre-sized: what is left out already reads as zeros
                _pwrite_all(fd, part, offset + lead, job.entry.path)
            ok = True
        finally:
            with job.lock:
                job.pins -= 1
                if ok:
                    job.remaining -= 1
                last = ok and job.remaining == 0
        if last:
            with self.lock:
                self.open.pop(job, None)
            job.finalise()

    def _pin(self, job: _FileJob) -> int:
        with job.lock:
            opened = job.fd < 0
            if opened:
                job.open()
            job.pins += 1
            fd = job.fd
        with self.lock:
            if opened:
                self.open[job] = None
                for old in list(self.open):
                    if len(self.open) <= self.limit:
                        break
                    if old is not job and old.lock.acquire(blocking=False):  # busy: leave it open this time
                        try:
                            if old.pins == 0:
                                old.close()
                                del self.open[old]
                        finally:
                            old.lock.release()
            elif job in self.open:
                self.open.move_to_end(job)
        return fd


def _zero_ends(data: bytes | memoryview) -> tuple[int, int]:
    """(leading, trailing) zero bytes of ``data`` in whole 4 KiB pages; ``(len(data), 0)`` when it is all zeros.
    Costs one byte test for a chunk that neither starts nor ends with a zero byte."""
    n = len(data)
    if not n or (data[0] and data[n - 1]):
        return 0, 0
    view = memoryview(data)
    lead = 0
    while lead < n and view[lead:lead + _PAGE] == _ZERO_PAGE[:min(_PAGE, n - lead)]:
        lead += _PAGE
    if lead >= n:
        return n, 0
    trail = 0
    while trail + _PAGE <= n - lead and view[n - trail - _PAGE:n - trail] == _ZERO_PAGE:
        trail += _PAGE
    return lead, trail


def _pwrite_all(fd: int, data: bytes, offset: int, path: str) -> None:
    # pwrite may write less than asked without an error when the disk fills up (tmpfs does): ignoring that left
    # zeros in a file that was then renamed into place as restored. Write the rest; a full disk then raises ENOSPC.
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        view, offset = view[n:], offset + n


class _Plan:
    """What a restore downloads: each chunk's place in a pack, the (file, offset) pairs that use it, and the
    ranges that fetch them, ordered by the first file that needs each range (so files complete early)."""

    def __init__(self, repo: Repository, jobs: list[_FileJob], workers: int) -> None:
        self.uses: dict[bytes, list[tuple[_FileJob, int]]] = {}
        self.sizes: dict[bytes, int] = {}
        rank: dict[bytes, int] = {}
        for job in jobs:
            offset = 0
            for hexd, n in job.entry.chunks:
                c = bytes.fromhex(hexd)
                if self.sizes.setdefault(c, n) != n:
                    raise IntegrityError(f"snapshot file list names chunk {hexd[:12]} with two lengths "
                                         f"({self.sizes[c]} and {n}, in {job.entry.path!r}); it was not written by "
                                         "llmdr. Restore from another region.")
                self.uses.setdefault(c, []).append((job, offset))
                rank.setdefault(c, len(rank))
                offset += n
        self.located = locate(repo, self.uses, of=lambda c: f" of {self.places(c)}",
                              then=f"Nothing was written. {_THEN}")
        ranges = plan_for(self.located.values(), workers)
        self.ranges = sorted(ranges, key=lambda r: min(rank[b.chunk] for b in r.blobs))

    def places(self, chunk: bytes, most: int = 3) -> str:
        uses = self.uses[chunk]
        out = ", ".join(f"{job.entry.path!r} at {offset}" for job, offset in uses[:most])
        return out + (f" and {len(uses) - most} more places" if len(uses) > most else "")

    def files_in(self, pack: bytes) -> list[str]:
        return sorted({job.entry.path for c, e in self.located.items() if e.pack == pack for job, _ in self.uses[c]})


def restore_snapshot(
    repo: Repository,
    snapshot_id: str,
    target: Path,
    *,
    force: bool = False,
    workers: int = 8,
    durable: bool = False,
    progress: Progress | None = None,
    memory_bytes: int = DEFAULT_MEMORY,
    preserve_special_bits: bool = False,
) -> RestoreResult:
    """Restore ``snapshot_id`` from ``repo`` into ``target`` and return what was done. Download buffers take at most
    ``memory_bytes`` (fewer workers run when their buffers would not fit; one always runs). Setuid, setgid and
    sticky bits are restored only with ``preserve_special_bits`` (as ``tar -p``); the target is locked throughout."""
    t0 = time.perf_counter()
    manifest = repo.load_manifest(snapshot_id)
    # Every path is checked before anything is written: a bad manifest writes nothing at all.
    for entry in manifest.files:
        check_relpath(entry.path)
        reason = reserved_reason(entry.path)
        if reason is not None:
            raise UnsafePathError(
                f"snapshot {snapshot_id[:12]} lists the file {entry.path!r}, but {reason}: restoring it would lose "
                "the file or restore's own bookkeeping. Nothing was written. The snapshot was taken of a folder "
                "holding llmdr's own restore files (an interrupted restore), or its file list was altered: restore "
                "another snapshot, or remove or rename that file in the bundle and take a new snapshot."
            )
    root = open_target(target.absolute())
    with lock_target(root, snapshot_id):
        fresh = check_target(root, snapshot_id, force)
        res = _restore_into(repo, snapshot_id, manifest, root, fresh, workers=workers, durable=durable,
                            progress=progress or NoProgress(), memory_bytes=memory_bytes,
                            preserve_special_bits=preserve_special_bits)
    res.duration_s = time.perf_counter() - t0
    if res.special_bits_stripped:
        log.warning("%d files of %s had setuid, setgid or sticky bits; restored without them "
                    "(--preserve-special-bits keeps them)", res.special_bits_stripped, snapshot_id[:12])
    log.info("restored %s into %s: %d files (%d kept), %d bytes downloaded (%d left as holes) in %.2fs",
             snapshot_id[:12], root, res.files, res.files_skipped, res.bytes_downloaded, res.bytes_sparse,
             res.duration_s)
    return res


def _restore_into(repo: Repository, snapshot_id: str, manifest: Manifest, root: Path, fresh: bool, *, workers: int,
                  durable: bool, progress: Progress, memory_bytes: int, preserve_special_bits: bool) -> RestoreResult:
    """The restore itself, into the locked, checked folder ``root``."""
    base = str(root)
    marker = os.path.join(base, MARKER)
    temps = {marker_temp(base)}  # every temporary name taken, so that no two files share one
    try:
        write_marker(base, json.dumps({"snapshot": snapshot_id, "location": repo.location}))
    except OSError as exc:
        if exc.errno in _NO_ROOM:
            raise _no_room(exc, snapshot_id, root, manifest, 0, []) from None
        raise

    res = RestoreResult(snapshot_id, base, location=repo.location)
    res.files = len(manifest.files)
    res.bytes_total = manifest.total_size
    progress.start(f"restore {snapshot_id[:12]}", res.bytes_total)
    jobs: list[_FileJob] = []
    try:
        folders: set[str] = set()  # checked (before and after mkdir) once each, not once per file
        for entry in manifest.files:
            dest = os.path.join(base, entry.path)
            folder = os.path.dirname(dest)
            if folder not in folders:
                safe_destination(root, entry.path)
                os.makedirs(folder, exist_ok=True)
                safe_destination(root, entry.path)  # re-check now that the folders exist
                folders.add(folder)
            mode = entry.mode if preserve_special_bits else entry.mode & 0o777
            res.special_bits_stripped += mode != entry.mode
            if not fresh and _kept(dest, entry, mode):  # a fresh target holds nothing to keep
                res.files_skipped += 1
                progress.advance(entry.size)
                continue
            tmp, n = os.path.join(folder, tmp_name(entry.path)), 0
            while tmp in temps:  # two paths whose names hash alike (a crafted snapshot): the next name
                n += 1
                tmp = os.path.join(folder, tmp_name(entry.path, n))
            temps.add(tmp)
            job = _FileJob(entry, dest, tmp, mode, durable)
            jobs.append(job)
            if not entry.chunks:
                job.finalise()
        plan = _Plan(repo, [j for j in jobs if j.entry.chunks], workers)
        _run(repo, plan, _Files(MAX_OPEN_FILES), memory_bytes, workers, res, progress)
    except BaseException as exc:
        in_place = res.files_skipped + sum(1 for j in jobs if j.done)
        unfinished = [j.entry.path for j in jobs if j.created and not j.done]
        for job in jobs:
            if job.created and not job.done:
                job.abandon()
        if isinstance(exc, OSError) and exc.errno in _NO_ROOM:
            raise _no_room(exc, snapshot_id, root, manifest, in_place, unfinished) from None
        raise
    finally:
        progress.finish()
    if manifest.components:
        # every byte was proven against the snapshot, which passed the content checks when it was taken (it records
        # components only then): what is left to check is that every component's files are there
        report = check_bundle(root, specs_from_manifest(manifest.components), [e.path for e in manifest.files],
                              contents=False)
        res.complete = report.complete
        if not report.complete:
            raise IncompleteBundle(report, "the files were restored but the bundle would not serve correctly")
    try:
        os.unlink(marker)  # last: until here, the same command resumes (and re-checks)
    except FileNotFoundError:
        pass
    return res


def _run(repo: Repository, plan: _Plan, files: _Files, memory: int, workers: int, res: RestoreResult,
         progress: Progress) -> None:
    """Fetch every range of ``plan`` on worker threads; the first failure stops the rest.

    Each worker streams its ranges blob by blob into a buffer of its own, reused from blob to blob; all buffers
    together stay within ``memory`` bytes (``rangeread.fetch_ranges``)."""
    if not plan.ranges:
        return
    counted = threading.Lock()

    def gone(r: Range) -> str:
        names = plan.files_in(r.pack)
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        return (f"pack {pack_key(r.pack.hex())} is missing from {repo.location}; it holds chunks of "
                f"{', '.join(repr(n) for n in names[:5])}{more}. {_THEN}")

    def fetch(r: Range, buf: memoryview, stop: threading.Event) -> None:
        for e, plain in range_chunks(repo, r, buf, stop, sizes=plan.sizes, of=lambda c: f" of {plan.places(c)}",
                                     then=_THEN, gone=gone):
            n = len(plain)
            lead, trail = _zero_ends(plain)
            for job, offset in plan.uses[e.chunk]:
                files.write(job, offset, plain, lead, trail)
                with counted:
                    res.bytes_downloaded += n
                    res.bytes_sparse += lead + trail
                progress.advance(n)

    res.buffer_bytes = fetch_ranges(plan.ranges, workers, memory, fetch, name="llmdr-down")


def _no_room(exc: OSError, snapshot_id: str, root: Path, manifest: Manifest, in_place: int,
             unfinished: list[str]) -> LlmdrError:
    """The restore ran out of room: say where, how much is free against what the snapshot needs, and that a re-run
    resumes. Called after the unfinished files' temporary copies were removed."""
    try:
        free = f"{human_size(shutil.disk_usage(root).free)} free there now"
    except OSError:
        free = "free space unknown"
    if not unfinished and exc.filename:
        unfinished = [str(exc.filename)]
    stopped = f" (stopped while writing {', '.join(repr(p) for p in unfinished[:3])}" \
              f"{f' and {len(unfinished) - 3} more' if len(unfinished) > 3 else ''})" if unfinished else ""
    return LlmdrError(
        f"restore of {snapshot_id[:12]} into {root} stopped: {_NO_ROOM[exc.errno]}{stopped}; {free}, the snapshot "
        f"holds {human_size(manifest.total_size)} in {len(manifest.files)} files. {in_place} files are in place "
        "and complete; no partial file was left. Free space there (or raise the limit), or restore into another "
        "folder, then run the same command again: it resumes and keeps the files already in place."
    )
