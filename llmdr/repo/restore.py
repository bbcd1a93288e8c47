"""Restoring a snapshot into a folder: every chunk verified, every file written atomically, resumable.

Files are assembled in a hidden temporary file next to their destination (``.<name>.llmdr-tmp``), chunks written
at their offsets as they arrive from parallel downloads, each checked against its SHA-256 first. Mode and mtime are
set, the data is flushed to disk, and only then is the file renamed into place: a reader never sees a half file.

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
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from llmdr.common.files import atomic_write
from llmdr.common.progress import NoProgress, Progress
from llmdr.errors import LlmdrError, TargetNotEmpty, UnsafePathError
from llmdr.repo.bundle import IncompleteBundle, check_bundle, specs_from_manifest
from llmdr.repo.manifest import FileEntry, Manifest, check_relpath
from llmdr.repo.repository import Repository

log = logging.getLogger(__name__)

MARKER = ".llmdr-restore.json"
TMP_SUFFIX = ".llmdr-tmp"
# A full disk, a quota, or a file larger than the process may write (RLIMIT_FSIZE, `ulimit -f`) or the file system holds.
_NO_ROOM = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exhausted",
            errno.EFBIG: "a file is larger than this process may write (file size limit, `ulimit -f`) or than the "
                         "file system holds"}


@dataclass
class RestoreResult:
    snapshot_id: str
    target: str
    files: int = 0
    files_skipped: int = 0
    bytes_total: int = 0
    bytes_downloaded: int = 0
    duration_s: float = 0.0
    location: str = ""
    complete: bool | None = None  # completeness check after restore; None when the snapshot declares no components

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


def file_matches(path: Path, entry: FileEntry) -> bool:
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
    """One file being assembled from chunks; the last chunk to land finalises it."""

    def __init__(self, entry: FileEntry, dest: Path, durable: bool) -> None:
        self.entry = entry
        self.dest = dest
        self.tmp = dest.with_name(f".{dest.name}{TMP_SUFFIX}")
        self.durable = durable
        self.remaining = len(entry.chunks)
        self.lock = threading.Lock()
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(self.fd, entry.size)  # EFBIG here when the file exceeds a file size limit
        except BaseException as exc:
            self.abandon()
            if isinstance(exc, OSError) and exc.filename is None:
                exc.filename = entry.path
            raise

    def write(self, offset: int, data: bytes) -> bool:
        # pwrite may write less than asked without an error when the disk fills up (tmpfs does): ignoring that
        # left zeros in a file that was then renamed into place as restored. Write the rest; a full disk then
        # raises ENOSPC.
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            if n <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.entry.path)
            view, offset = view[n:], offset + n
        with self.lock:
            self.remaining -= 1
            return self.remaining == 0

    def finalise(self) -> None:
        try:
            os.fchmod(self.fd, self.entry.mode)
            if self.durable:
                os.fsync(self.fd)
        finally:
            os.close(self.fd)
            self.fd = -1
        os.utime(self.tmp, ns=(self.entry.mtime_ns, self.entry.mtime_ns))
        if self.dest.is_dir() and not self.dest.is_symlink():
            raise UnsafePathError(f"cannot restore file {self.entry.path!r}: a folder is in the way at {self.dest}")
        os.replace(self.tmp, self.dest)

    def abandon(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def restore_snapshot(
    repo: Repository,
    snapshot_id: str,
    target: Path,
    *,
    force: bool = False,
    workers: int = 8,
    durable: bool = False,
    progress: Progress | None = None,
) -> RestoreResult:
    """Restore ``snapshot_id`` from ``repo`` into ``target`` and return what was done."""
    progress = progress or NoProgress()
    t0 = time.perf_counter()
    manifest = repo.load_manifest(snapshot_id)
    target = target.absolute()
    # Every path is checked before anything is written: a bad manifest writes nothing at all.
    for entry in manifest.files:
        check_relpath(entry.path)
    _prepare_target(target, snapshot_id, force)
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

    def open_file(entry: FileEntry) -> _FileJob | None:
        """Start restoring ``entry``; None when there is nothing to download (already in place, or empty)."""
        dest = safe_destination(root, entry.path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        safe_destination(root, entry.path)  # re-check now that the folders exist
        if file_matches(dest, entry):
            st = dest.stat()
            if st.st_mtime_ns != entry.mtime_ns or (st.st_mode & 0o7777) != entry.mode:
                os.chmod(dest, entry.mode)
                os.utime(dest, ns=(entry.mtime_ns, entry.mtime_ns))
            res.files_skipped += 1
            progress.advance(entry.size)
            return None
        job = _FileJob(entry, dest, durable)
        jobs.append(job)
        if not entry.chunks:
            job.finalise()
            return None
        return job

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llmdr-down") as pool:
            window = threading.BoundedSemaphore(workers * 2)
            futures: set[Future] = set()
            failed = threading.Event()
            # Several files at a time: threads writing into one file serialise on its inode lock.
            for job, hexd, n, offset in _interleave(manifest.files, open_file, max(1, workers // 2)):
                window.acquire()
                if failed.is_set():
                    window.release()
                    break
                fut = pool.submit(_fetch, repo, job, hexd, n, offset, manifest, res, progress)
                fut.add_done_callback(lambda f: _release(f, window, failed))
                futures.add(fut)
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            errors = [f.exception() for f in done if f.exception() is not None]
            if errors:
                for f in futures:
                    f.cancel()
                wait(futures)
                raise errors[0]  # type: ignore[misc]
    except BaseException as exc:
        in_place = res.files_skipped + sum(1 for j in jobs if j.fd < 0 and not j.tmp.exists())
        unfinished = [j.entry.path for j in jobs if j.fd >= 0 or j.tmp.exists()]
        for job in jobs:
            if job.fd >= 0 or job.tmp.exists():
                job.abandon()
        if isinstance(exc, OSError) and exc.errno in _NO_ROOM:
            raise _no_room(exc, snapshot_id, root, manifest, in_place, unfinished) from None
        raise
    finally:
        progress.finish()
    if manifest.components:
        report = check_bundle(root, specs_from_manifest(manifest.components))
        res.complete = report.complete
        if not report.complete:
            raise IncompleteBundle(report, "the files were restored but the bundle would not serve correctly")
    marker.unlink(missing_ok=True)  # last: until here, the same command resumes (and re-checks)
    res.duration_s = time.perf_counter() - t0
    log.info("restored %s into %s: %d files (%d kept), %d bytes downloaded in %.2fs", snapshot_id[:12], root,
             res.files, res.files_skipped, res.bytes_downloaded, res.duration_s)
    return res


_bytes_lock = threading.Lock()


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


def _interleave(entries, open_file, width: int) -> Iterator[tuple[_FileJob, str, int, int]]:
    """Yield (file job, chunk id, length, offset) round-robin over up to ``width`` files at a time, opening each
    file only when it joins the rotation (so the number of open files stays bounded)."""
    pending = iter(entries)
    active: deque[tuple[_FileJob, Iterator[tuple[str, int, int]]]] = deque()

    def chunks_of(entry: FileEntry) -> Iterator[tuple[str, int, int]]:
        offset = 0
        for hexd, n in entry.chunks:
            yield hexd, n, offset
            offset += n

    def refill() -> None:
        while len(active) < width:
            entry = next(pending, None)
            if entry is None:
                return
            job = open_file(entry)
            if job is not None:
                active.append((job, chunks_of(entry)))

    refill()
    while active:
        job, it = active.popleft()
        item = next(it, None)
        if item is None:
            refill()
            continue
        yield (job, *item)
        active.append((job, it))


def _release(fut: Future, window: threading.BoundedSemaphore, failed: threading.Event) -> None:
    window.release()
    if fut.cancelled() or fut.exception() is not None:
        failed.set()


def _fetch(repo: Repository, job: _FileJob, hexd: str, n: int, offset: int, manifest: Manifest,
           res: RestoreResult, progress: Progress) -> None:
    data = repo.load_chunk(hexd, size=n, of=f" of {job.entry.path!r} (offset {offset})",
                           then="Nothing was written for that file. Restore from another region, or repair this one "
                                "with `llmdr replicate` from a healthy copy.")
    last = job.write(offset, data)
    with _bytes_lock:
        res.bytes_downloaded += n
    progress.advance(n)
    if last:
        job.finalise()


def _prepare_target(target: Path, snapshot_id: str, force: bool) -> None:
    if target.exists() and not target.is_dir():
        raise TargetNotEmpty(f"restore target {target} exists and is not a folder")
    if not target.exists():
        target.mkdir(parents=True)
        return
    entries = [p for p in target.iterdir()]
    if not entries:
        return
    marker = target / MARKER
    if marker.exists():
        try:
            previous = json.loads(marker.read_text()).get("snapshot")
        except ValueError:
            previous = None
        if previous == snapshot_id:
            log.info("resuming the interrupted restore of %s into %s", snapshot_id[:12], target)
            return
    if not force:
        raise TargetNotEmpty(
            f"restore target {target} is not empty ({len(entries)} entries). Choose an empty folder, or pass --force "
            "to overwrite the files the snapshot holds (other files are left alone)."
        )
