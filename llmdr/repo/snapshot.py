"""Taking a snapshot: walk the bundle, chunk and hash every changed file, upload only new chunks, write the manifest
last.

Memory stays bounded whatever the file sizes: files are streamed through the chunker, and chunk uploads in flight
are capped by ``max_inflight_bytes``. Uploads run in parallel on a thread pool (boto3 and hashlib release the GIL).
A failure anywhere stops the snapshot before its manifest is written, so no partial snapshot is ever visible;
chunks already uploaded are reused by the next attempt.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import socket
import stat
import time
from dataclasses import dataclass, replace
from pathlib import Path

from llmdr import __version__
from llmdr.common.progress import NoProgress, Progress
from llmdr.errors import IntegrityError, LlmdrError, UsageError
from llmdr.repo.bundle import BundleReport, CheckMemo, ComponentSpec, IncompleteBundle, check_bundle
from llmdr.repo.chunking import Chunker
from llmdr.repo.ids import is_hex_digest
from llmdr.repo.index import MasterIndex
from llmdr.repo.locks import Locker
from llmdr.repo.manifest import FileEntry, Manifest, canonical_json, component_digest, manifest_id, utc_now
from llmdr.repo.names import ADVICE, is_utf8, name_problem, shown
from llmdr.repo.packer import PackWriter
from llmdr.repo.prune import planned_packs
from llmdr.repo.repolock import SHARED, RepoLock, hold
from llmdr.repo.repository import Repository
from llmdr.repo.statcache import StatCache, stat_key
from llmdr.repo.tree import RECORD_FORMAT, build_tree, record_json

log = logging.getLogger(__name__)

DEFAULT_EXCLUDES = (".llmdr", ".git", "__pycache__")
_ACCESS_ADVICE = ("Make them readable (e.g. `chmod u+r FILE`, or run as the files' owner), replace a broken or looping "
                  "symlink with the file it should point at, or move them out of the bundle folder.")


@dataclass(frozen=True, slots=True)
class SourceFile:
    relpath: str
    abspath: str  # a string, not a Path: a scan of 10,000 files spent most of its time building Paths
    st: os.stat_result


@dataclass
class SnapshotResult:
    snapshot_id: str
    manifest: Manifest
    files: int = 0
    bytes_total: int = 0
    bytes_read: int = 0
    files_unchanged: int = 0
    chunks_total: int = 0
    chunks_new: int = 0
    bytes_new: int = 0
    duration_s: float = 0.0
    location: str = ""

    @property
    def bytes_deduplicated(self) -> int:
        return self.bytes_total - self.bytes_new

    def to_json(self) -> dict:
        return {
            "snapshot_id": self.snapshot_id,
            "bundle": self.manifest.bundle,
            "parent": self.manifest.parent,
            "created": self.manifest.created,
            "files": self.files,
            "files_unchanged": self.files_unchanged,
            "bytes_total": self.bytes_total,
            "bytes_read": self.bytes_read,
            "bytes_new": self.bytes_new,
            "bytes_deduplicated": self.bytes_deduplicated,
            "chunks_total": self.chunks_total,
            "chunks_new": self.chunks_new,
            "duration_s": round(self.duration_s, 3),
            "location": self.location,
        }


def scan_source(root: Path, excludes: tuple[str, ...] = DEFAULT_EXCLUDES) -> list[SourceFile]:
    """Regular files under ``root`` (symlinks to files and folders are followed and stored as what they point at),
    sorted by path.

    Anything that cannot be stored as it is fails the scan, all of it named in one error, before a byte is uploaded:
    a file or folder that cannot be read, a symlink whose target does not exist, a symlink loop, a name that is not
    UTF-8, that llmdr reserves for its own files or that restore would refuse (``names.name_problem``). A snapshot
    that quietly left them out would restore a different bundle. FIFOs, sockets and devices hold no content to
    protect: they are skipped with a warning (and never opened, so a FIFO cannot hang the scan)."""
    if not is_utf8(str(root)):
        raise UsageError(f"bundle folder {shown(str(root))}: its path is not valid UTF-8, and a snapshot records it "
                         "as text; rename the folder (or move the bundle) to a UTF-8 path")
    if not root.is_dir():
        raise UsageError(f"bundle folder {root} does not exist or is not a folder; set bundle.path in llmdr.yaml")
    out: list[SourceFile] = []
    problems: list[str] = []
    advice: dict[str, str] = {}  # what to do, per kind of problem met
    # (dev, inode) of every folder from root down to each folder walked: a folder met again below itself is a loop.
    # Two links to the same folder side by side are not a loop and are both stored.
    chain: dict[str, frozenset[tuple[int, int]]] = {}

    base = str(root)

    def rel(path: str | Path) -> str:
        text = str(path)
        return text[len(base) + 1:] if text.startswith(base + os.sep) else Path(path).relative_to(root).as_posix()

    def walk_error(exc: OSError) -> None:
        where = rel(exc.filename) if exc.filename and str(exc.filename).startswith(str(root)) else "."
        problems.append(f"{where}/: folder cannot be read ({exc.strerror or exc})")
        advice.setdefault("access", _ACCESS_ADVICE)

    def refuse(kind: str, what: str, name: str, reason: str, here: str) -> None:
        if kind == "utf8":  # not printable as text: the folder that holds it, and the name's bytes
            problems.append(f"{here}/ holds a {what} whose name {os.fsencode(name)!r} {reason}")
        else:
            problems.append(f"{name if here == '.' else f'{here}/{name}'}{'/' if what == 'folder' else ''}: this "
                            f"{what}'s name {reason}")
        advice.setdefault(kind, ADVICE[kind])

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=walk_error):
        dst = os.stat(dirpath)
        me = (dst.st_dev, dst.st_ino)
        above = chain.get(os.path.dirname(dirpath), frozenset()) if dirpath != str(root) else frozenset()
        if me in above:
            problems.append(f"{rel(dirpath)}: symlink loop (it leads back to {shown(os.path.realpath(dirpath))}, a "
                            "folder above it)")
            advice.setdefault("access", _ACCESS_ADVICE)
            dirnames[:] = []
            continue
        chain[dirpath] = above | {me}
        top = dirpath == base
        here = "." if top else rel(dirpath)
        keep = []
        for d in sorted(dirnames):
            if d in excludes:
                continue
            bad = name_problem(d, top=top)
            if bad is None:
                keep.append(d)
            else:  # not walked: everything in it would be refused too
                refuse(bad[0], "folder", d, bad[1], here)
        dirnames[:] = keep
        for name in filenames:
            if name in excludes:
                continue
            bad = name_problem(name, top=top)
            if bad is not None:
                refuse(bad[0], "file", name, bad[1], here)
                continue
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                if os.path.islink(path):
                    problems.append(f"{rel(path)}: symlink to {shown(os.readlink(path))}, which does not exist")
                    advice.setdefault("access", _ACCESS_ADVICE)
                else:
                    log.warning("skipping %s: removed during the scan", path)
                continue
            except OSError as exc:
                what = "symlink loop" if exc.errno == errno.ELOOP else f"cannot be read ({exc.strerror or exc})"
                problems.append(f"{rel(path)}: {what}")
                advice.setdefault("access", _ACCESS_ADVICE)
                continue
            if not stat.S_ISREG(st.st_mode):
                log.warning("skipping %s: not a regular file (FIFO, socket or device)", path)
                continue
            try:  # opening is enough to know it can be read; the stat cache may mean it is never read
                os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
            except OSError as exc:
                problems.append(f"{rel(path)}: cannot be read ({exc.strerror or exc})")
                advice.setdefault("access", _ACCESS_ADVICE)
                continue
            out.append(SourceFile(rel(path), path, st))
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise LlmdrError(
            f"cannot snapshot {root}: {len(problems)} entr{'y' if len(problems) == 1 else 'ies'} cannot be stored; "
            f"the snapshot was refused and nothing was uploaded:\n{listed}{more}\n" + "\n".join(advice.values())
        )
    out.sort(key=lambda f: f.relpath)
    return out


def take_snapshot(
    repo: Repository,
    source: Path,
    *,
    bundle: str,
    stat_cache: Path | None = None,
    workers: int = 8,
    max_inflight_bytes: int = 64 * 1024 * 1024,
    progress: Progress | None = None,
    tags: dict[str, str] | None = None,
    kind: str = "bundle",
    components: list[ComponentSpec] | None = None,
) -> SnapshotResult:
    """Snapshot ``source`` into ``repo``; returns the new snapshot's id and statistics. ``stat_cache`` is the
    path of the local stat cache file (entries made with other chunker parameters are ignored).

    With ``components``, the bundle is checked first and an incomplete one is refused before anything is uploaded;
    the manifest then records each component's files and digest."""
    progress = progress or NoProgress()
    t0 = time.perf_counter()
    started = utc_now()
    started_ts = time.time()
    source = source.resolve()
    files = scan_source(source)  # first: a bundle that cannot be stored is refused before the repository is touched
    cfg = repo.ensure_config()
    stat_cache = StatCache(stat_cache, cfg.chunker, source=str(source)) if stat_cache is not None else None
    report = None
    if components:
        memo = CheckMemo(stat_cache.path.with_name(stat_cache.path.name.replace("stat-", "checks-", 1))
                         if stat_cache is not None and stat_cache.path is not None else None, source=str(source))
        report = check_bundle(source, components, [f.relpath for f in files], memo=memo)
        memo.save()
        if not report.complete:
            raise IncompleteBundle(report, "the snapshot was refused and nothing was uploaded")
        for problem in report.warnings:
            log.warning("optional component: %s", problem)
    with hold(repo.store, SHARED, "snapshot", settle_s=0.0, repo_id=cfg.repo_id) as lock:
        return _take(repo, source, files, cfg, bundle=bundle, stat_cache=stat_cache, workers=workers,
                     max_inflight_bytes=max_inflight_bytes, progress=progress, tags=tags, kind=kind,
                     report=report, lock=lock, t0=t0, started=started, started_ts=started_ts)


def _take(repo: Repository, source: Path, files: list[SourceFile], cfg, *, bundle: str, stat_cache: StatCache | None,
          workers: int, max_inflight_bytes: int, progress: Progress, tags: dict[str, str] | None, kind: str,
          report: BundleReport | None, lock: RepoLock, t0: float, started: str,
          started_ts: float) -> SnapshotResult:
    chunker = Chunker(cfg.chunker)
    index = repo.index(refresh=True)
    avoid = planned_packs(repo)  # packs a prune has marked: their chunks are uploaded again, never relied on
    result_entries: list[FileEntry] = []
    res = SnapshotResult(snapshot_id="", manifest=None, location=repo.location)  # type: ignore[arg-type]
    scheduled: set[str] = set()
    total = sum(f.st.st_size for f in files)
    progress.start(f"snapshot {bundle}", total)

    # several packs on their way at once keep the connections busy (a pack is one PUT)
    writer = PackWriter(repo, workers=workers, max_inflight_bytes=max(max_inflight_bytes, 3 * cfg.pack_target))
    present = _Present(index, writer, avoid)
    try:
        try:
            for f in files:
                st, chunks = _file_chunks(f, stat_cache, chunker, present, scheduled, writer, res, progress)
                if stat_cache is not None:
                    stat_cache.record(f.relpath, st, chunks)
                result_entries.append(
                    FileEntry(f.relpath, st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime_ns, tuple(chunks))
                )
        finally:
            progress.finish()
        writer.close()  # every new chunk is in a stored pack AND a stored index before anything names it
    except BaseException:
        writer.abort()
        raise

    res.files = len(result_entries)
    res.bytes_total = sum(e.size for e in result_entries)
    res.chunks_total = sum(len(e.chunks) for e in result_entries)
    res.duration_s = time.perf_counter() - t0
    manifest = Manifest(
        bundle=bundle,
        kind=kind,
        source=str(source),
        host=socket.gethostname(),
        started=started,
        created=utc_now(),
        tool_version=__version__,
        chunker=cfg.chunker,
        files=tuple(result_entries),
        parent=None,  # the head this snapshot builds on, decided when it is published
        format=RECORD_FORMAT,
        tags=dict(tags or {}),
        components=_component_records(report, result_entries),
        stats={
            "files": res.files,
            "bytes": res.bytes_total,
            "chunks": res.chunks_total,
            "new_chunks": res.chunks_new,
            "new_bytes": res.bytes_new,
            "files_unchanged": res.files_unchanged,
        },
    )
    then = (f"nothing was published. Delete the stat cache ({stat_cache.path}) and run the snapshot again; if it "
            "happens again, report it as a bug" if stat_cache is not None and stat_cache.path is not None else
            "nothing was published. Run the snapshot again; if it happens again, report it as a bug")
    verify_entries(result_entries, then=then)
    _recheck_reused(repo, source, result_entries, scheduled, workers, then=then)
    tree = build_tree(result_entries)
    repo.save_tree(tree)
    locker = Locker.of(repo.store)
    if locker is not None:  # reused chunks must stay locked as long as this snapshot (uploads were locked on put)
        locker.extend_reused(repo, [d for d in manifest.chunk_set() if d not in scheduled], written=scheduled,
                             started=started_ts, workers=workers)

    def record_of(prev: str | None) -> tuple[str, dict]:
        record = record_json(replace(manifest, parent=prev), tree.root)
        return manifest_id(canonical_json(record)), record

    # The catalog entry goes last: until it is written, the snapshot does not exist.
    lock.check()
    entry = repo.publish(bundle, record_of)
    repo.compact_if_needed()
    sid = entry.id
    manifest = replace(manifest, parent=entry.prev)
    if stat_cache is not None:
        stat_cache.save()
    res.snapshot_id = sid
    res.manifest = manifest
    res.duration_s = time.perf_counter() - t0
    log.info("snapshot %s of %s: %d files, %d bytes, %d new bytes in %.2fs", sid[:12], bundle, res.files,
             res.bytes_total, res.bytes_new, res.duration_s)
    return res


def _file_chunks(f: SourceFile, stat_cache: StatCache | None, chunker: Chunker, present: "_Present",
                 scheduled: set[str], writer: PackWriter, res: SnapshotResult,
                 progress: Progress) -> tuple[os.stat_result, list[tuple[str, int]]]:
    """The chunks of ``f`` and the stat they go with: from the stat cache, else read (and new chunks queued).

    A file counts as read whole only when its size, mtime, ctime and inode are the same after reading as before
    (ctime catches a rewrite in place whose mtime was put back). A file that changed is read once more; if it
    changes again the snapshot is refused: a file torn between two versions is never recorded as good."""
    before = f.st
    cached = stat_cache.lookup(f.relpath, before) if stat_cache is not None else None
    if cached is not None and all(d in present for d, _ in cached):
        after = _restat(f)
        if stat_key(after) == stat_key(before):
            res.files_unchanged += 1
            progress.advance(before.st_size)
            return before, cached
        before = after  # changed since the scan: read what is there now
    for attempt in (1, 2):
        chunks = _chunk_file(f, before.st_size, chunker, present, scheduled, writer, res, progress)
        after = _restat(f)
        if stat_key(after) == stat_key(before):
            return before, chunks
        if attempt == 1:
            log.warning("%s changed while it was being read; reading it again", f.abspath)
            before = after
    raise LlmdrError(
        f"{f.abspath} changed while it was being snapshotted, twice (size, modification time, change time or inode "
        "differ before and after reading it); nothing was published. Stop writers to the bundle (or snapshot a "
        "stable copy) and run the snapshot again."
    )


def _restat(f: SourceFile) -> os.stat_result:
    try:
        return os.stat(f.abspath)
    except FileNotFoundError:
        raise _removed(f) from None


def _removed(f: SourceFile) -> LlmdrError:
    return LlmdrError(f"{f.abspath} was removed while it was being snapshotted; nothing was published. Stop writers "
                      "to the bundle (or snapshot a stable copy) and run the snapshot again.")


def _chunk_file(
    f: SourceFile,
    size: int,
    chunker: Chunker,
    present: "_Present",
    scheduled: set[str],
    writer: PackWriter,
    res: SnapshotResult,
    progress: Progress,
) -> list[tuple[str, int]]:
    chunks: list[tuple[str, int]] = []
    try:  # without blocking: a FIFO put in the file's place after the scan must not hang the snapshot
        fh = open(f.abspath, "rb", buffering=0, opener=lambda p, fl: os.open(p, fl | os.O_NONBLOCK))
    except FileNotFoundError:
        raise _removed(f) from None
    with fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise LlmdrError(f"{f.abspath} was replaced by something other than a regular file while it was being "
                             "snapshotted; nothing was published. Stop writers to the bundle and run it again.")
        for c in chunker.chunks(fh, size):
            hexd = c.digest.hex()
            n = len(c.data)
            chunks.append((hexd, n))
            res.bytes_read += n
            if hexd not in present and hexd not in scheduled:
                scheduled.add(hexd)
                res.chunks_new += 1
                res.bytes_new += n
                writer.add(hexd, c.digest, c.data)
            progress.advance(n)
    return chunks


def _component_records(report: BundleReport | None, entries: list[FileEntry]) -> dict[str, dict]:
    if report is None:
        return {}
    by_path = {e.path: e for e in entries}
    return {
        c.kind.value: {"files": c.files, "required": c.required,
                       "digest": component_digest([by_path[f] for f in c.files])}
        for c in report.components
    }


class _Present:
    """``chunk id in present``: already stored (an index places it) or already taken by this run's writer."""

    def __init__(self, index: MasterIndex, writer: PackWriter, avoid: set[bytes]) -> None:
        self.index = index
        self.writer = writer
        self.avoid = avoid

    def __contains__(self, hexd: str) -> bool:
        raw = bytes.fromhex(hexd)
        return self.writer.has(raw) or self.index.has(raw, avoid=self.avoid)


def verify_entries(entries: list[FileEntry], *, then: str) -> None:
    """Check every file entry as a reader will (``FileEntry.from_json``) before the snapshot naming them is published:
    each chunk reference a SHA-256 and a length above zero, and the lengths adding up to the file's size (so a
    non-empty file has chunks, an empty one none). A failure raises ``IntegrityError`` naming the file; ``then``
    says what happens next."""
    for e in entries:
        total = 0
        for d, n in e.chunks:
            if n <= 0 or len(d) != 64 or not is_hex_digest(d):
                raise IntegrityError(f"the snapshot's entry for {e.path!r} has a malformed chunk reference ({d!r}, "
                                     f"{n}); {then}")
            total += n
        if total != e.size:
            raise IntegrityError(f"the snapshot's entry for {e.path!r} does not add up: the file is {e.size} bytes, "
                                 f"its {len(e.chunks)} chunks {total}; {then}")


def _recheck_reused(repo: Repository, source: Path, entries: list[FileEntry], written: set[str],
                    workers: int, *, then: str) -> None:
    """The writer's commit check (design §5): just before publishing, every chunk the snapshot names must be placed
    by a current index in a pack no prune plan marks. A reused chunk that is not (a prune ran while this snapshot
    was being taken) is read again from the source file and stored anew, so the snapshot never names a chunk about
    to go; a chunk this run stored that is not placed is an integrity failure."""
    idx = repo.index(refresh=True)
    avoid = planned_packs(repo)
    unplaced = {d for e in entries for d, _ in e.chunks if not idx.has(bytes.fromhex(d), avoid=avoid)}
    if not unplaced:
        return
    if unplaced & written:
        e = next(e for e in entries if any(d in unplaced and d in written for d, _ in e.chunks))
        raise IntegrityError(f"{repo.location}: chunks of {e.path!r} stored by this snapshot are not placed by any "
                             f"index ({len(unplaced & written)} such chunks in all); {then}")
    lost = unplaced
    log.warning("%s: %d reused chunks were pruned meanwhile; storing them again", repo.location, len(lost))
    with PackWriter(repo, workers=workers) as w:
        for e in entries:
            offset = 0
            for d, n in e.chunks:
                if d in lost:
                    lost.discard(d)
                    with open(source / e.path, "rb") as fh:
                        fh.seek(offset)
                        data = fh.read(n)
                    if hashlib.sha256(data).hexdigest() != d:
                        raise LlmdrError(f"{e.path} changed while it was being snapshotted; nothing was published. "
                                         "Run the snapshot again.")
                    w.add(d, bytes.fromhex(d), data)
                offset += n
