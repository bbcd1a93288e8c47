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

Files are assembled in a hidden temporary file next to their destination (``.<name>.llmdr-tmp``), opened on their
first write and pre-sized; at most ``MAX_OPEN_FILES`` stay open (the least recently written is closed and opened
again when its next chunk comes). When its last chunk lands a file gets its mode and mtime, is flushed to disk when
``durable``, and only then is renamed into place: a reader never sees a half file.

A marker (``.llmdr-restore.json``) names the snapshot while a restore is under way. Running the same restore again
into that folder resumes it: files already in place whose content hashes to the manifest are kept, not downloaded.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from llmdr.common.files import atomic_write
from llmdr.common.progress import NoProgress, Progress
from llmdr.errors import IntegrityError, LlmdrError, TargetNotEmpty, UnsafePathError
from llmdr.repo.bundle import IncompleteBundle, check_bundle, specs_from_manifest
from llmdr.repo.layout import pack_key
from llmdr.repo.manifest import FileEntry, Manifest, check_relpath
from llmdr.repo.rangeread import fetch_ranges, locate, range_chunks
from llmdr.repo.repository import Repository
from llmdr.repo.restoreplan import Range, plan_for

log = logging.getLogger(__name__)

MARKER = ".llmdr-restore.json"
TMP_SUFFIX = ".llmdr-tmp"
DEFAULT_MEMORY = 128 << 20  # bytes of download buffers at most, all workers together
MAX_OPEN_FILES = 128
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


def file_matches(path: Path | str, entry: FileEntry) -> bool:
    """True when ``path`` is a regular file holding exactly ``entry``'s bytes (checked chunk by chunk)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not os.path.isfile(path) or os.path.islink(path) or st.st_size != entry.size:
        return False
    with open(path, "rb", buffering=0) as fh:
        for hexd, n in entry.chunks:
            if hashlib.sha256(fh.read(n)).hexdigest() != hexd:
                return False
    return True


class _FileJob:
    """One file being assembled from chunks. Its temporary file is created on the first write (pre-sized when more
    than one chunk fills it); the last chunk to land finalises it. Paths are strings: a restore of many small
    files spends its time per file, and ``pathlib`` would be most of it."""

    def __init__(self, entry: FileEntry, dest: str, durable: bool) -> None:
        self.entry = entry
        self.dest = dest
        head, name = os.path.split(dest)
        self.tmp = os.path.join(head, f".{name}{TMP_SUFFIX}")
        self.durable = durable
        self.remaining = len(entry.chunks)
        self.fd = -1
        self.pins = 0  # writes under way (the open-file cap never closes a pinned file)
        self.lock = threading.Lock()
        self.created = False
        self.done = False

    def open(self) -> None:
        if self.created:
            self.fd = os.open(self.tmp, os.O_WRONLY | os.O_NOFOLLOW)
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW  # never through a link or into a stale file
        try:
            self.fd = os.open(self.tmp, flags, 0o600)
        except FileExistsError:  # left by an interrupted restore (or planted): remove the name, never follow it
            try:
                os.unlink(self.tmp)
            except IsADirectoryError:
                raise UnsafePathError(f"cannot restore {self.entry.path!r}: a folder is in the way at {self.tmp}, "
                                      "the temporary name restore writes that file under; move it away and run the "
                                      "same command again (it resumes)") from None
            self.fd = os.open(self.tmp, flags, 0o600)
        self.created = True
        if len(self.entry.chunks) > 1:
            try:
                os.ftruncate(self.fd, self.entry.size)  # EFBIG here when the file exceeds a file size limit
            except BaseException as exc:
                self.abandon()
                if isinstance(exc, OSError) and exc.filename is None:
                    exc.filename = self.entry.path
                raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def finalise(self) -> None:
        if self.fd < 0:  # an empty file, or one the open-file cap closed after its last write
            self.open()
        try:
            os.fchmod(self.fd, self.entry.mode)
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

    def write(self, job: _FileJob, offset: int, data: bytes | memoryview) -> None:
        """Write ``data`` at ``offset``; the write that completes the file finalises it."""
        if len(job.entry.chunks) == 1:  # the whole file in one write, by this thread alone: no open-file cache
            job.open()
            _pwrite_all(job.fd, data, offset, job.entry.path)
            job.remaining = 0
            job.finalise()
            return
        fd = self._pin(job)
        ok = last = False
        try:
            _pwrite_all(fd, data, offset, job.entry.path)
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
) -> RestoreResult:
    """Restore ``snapshot_id`` from ``repo`` into ``target`` and return what was done. Download buffers take at most
    ``memory_bytes`` (fewer workers run when their buffers would not fit; one always runs)."""
    progress = progress or NoProgress()
    t0 = time.perf_counter()
    manifest = repo.load_manifest(snapshot_id)
    target = target.absolute()
    # Every path is checked before anything is written: a bad manifest writes nothing at all.
    for entry in manifest.files:
        check_relpath(entry.path)
    fresh = _prepare_target(target, snapshot_id, force)
    root = target.resolve()
    marker = root / MARKER
    try:  # all at once: a marker cut short by a full disk would make the re-run refuse to resume
        atomic_write(marker, json.dumps({"snapshot": snapshot_id, "location": repo.location}))
    except OSError as exc:
        if exc.errno in _NO_ROOM:
            raise _no_room(exc, snapshot_id, root, manifest, 0, []) from None
        raise

    res = RestoreResult(snapshot_id, str(root), location=repo.location)
    res.files = len(manifest.files)
    res.bytes_total = manifest.total_size
    progress.start(f"restore {snapshot_id[:12]}", res.bytes_total)
    jobs: list[_FileJob] = []
    try:
        folders: set[str] = set()  # checked (before and after mkdir) once each, not once per file
        base = str(root)
        for entry in manifest.files:
            dest = os.path.join(base, entry.path)
            folder = os.path.dirname(dest)
            if folder not in folders:
                safe_destination(root, entry.path)
                os.makedirs(folder, exist_ok=True)
                safe_destination(root, entry.path)  # re-check now that the folders exist
                folders.add(folder)
            if not fresh and file_matches(dest, entry):  # a fresh target holds nothing to keep
                st = os.stat(dest)
                if st.st_mtime_ns != entry.mtime_ns or (st.st_mode & 0o7777) != entry.mode:
                    os.chmod(dest, entry.mode)
                    os.utime(dest, ns=(entry.mtime_ns, entry.mtime_ns))
                res.files_skipped += 1
                progress.advance(entry.size)
                continue
            job = _FileJob(entry, dest, durable)
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
    marker.unlink(missing_ok=True)  # last: until here, the same command resumes (and re-checks)
    res.duration_s = time.perf_counter() - t0
    log.info("restored %s into %s: %d files (%d kept), %d bytes downloaded in %.2fs", snapshot_id[:12], root,
             res.files, res.files_skipped, res.bytes_downloaded, res.duration_s)
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
            for job, offset in plan.uses[e.chunk]:
                files.write(job, offset, plain)
                with counted:
                    res.bytes_downloaded += len(plain)
                progress.advance(len(plain))

    res.buffer_bytes = fetch_ranges(plan.ranges, workers, memory, fetch, name="llmdr-down")


def _no_room(exc: OSError, snapshot_id: str, root: Path, manifest: Manifest, in_place: int,
             unfinished: list[str]) -> LlmdrError:
    """The restore ran out of room: say where, how much is free against what the snapshot needs, and that a re-run
    resumes. Called after the unfinished files' temporary copies were removed."""
    try:
        free = f"{shutil.disk_usage(root).free / 2**20:.1f} MiB free there now"
    except OSError:
        free = "free space unknown"
    if not unfinished and exc.filename:
        unfinished = [str(exc.filename)]
    stopped = f" (stopped while writing {', '.join(repr(p) for p in unfinished[:3])}" \
              f"{f' and {len(unfinished) - 3} more' if len(unfinished) > 3 else ''})" if unfinished else ""
    return LlmdrError(
        f"restore of {snapshot_id[:12]} into {root} stopped: {_NO_ROOM[exc.errno]}{stopped}; {free}, the snapshot "
        f"holds {manifest.total_size / 2**20:.1f} MiB in {len(manifest.files)} files. {in_place} files are in place "
        "and complete; no partial file was left. Free space there (or raise the limit), or restore into another "
        "folder, then run the same command again: it resumes and keeps the files already in place."
    )


def _prepare_target(target: Path, snapshot_id: str, force: bool) -> bool:
    """Check that ``target`` may be restored into (new, empty, the same restore resumed, or ``force``); True when it
    holds nothing yet (so no file in it can already match)."""
    if target.exists() and not target.is_dir():
        raise TargetNotEmpty(f"restore target {target} exists and is not a folder")
    if not target.exists():
        target.mkdir(parents=True)
        return True
    entries = [p for p in target.iterdir()]
    if not entries:
        return True
    marker = target / MARKER
    if marker.exists():
        try:
            previous = json.loads(marker.read_text()).get("snapshot")
        except ValueError:
            previous = None
        if previous == snapshot_id:
            log.info("resuming the interrupted restore of %s into %s", snapshot_id[:12], target)
            return False
    if not force:
        raise TargetNotEmpty(
            f"restore target {target} is not empty ({len(entries)} entries). Choose an empty folder, or pass --force "
            "to overwrite the files the snapshot holds (other files are left alone)."
        )
    return False
