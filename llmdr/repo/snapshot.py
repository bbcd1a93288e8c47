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
from llmdr.errors import LlmdrError, UsageError
from llmdr.repo.bundle import BundleReport, CheckMemo, ComponentSpec, IncompleteBundle, check_bundle
from llmdr.repo.chunking import Chunker
from llmdr.repo.index import MasterIndex
from llmdr.repo.locks import Locker
from llmdr.repo.manifest import FileEntry, Manifest, canonical_json, component_digest, manifest_id, utc_now
from llmdr.repo.packer import PackWriter
from llmdr.repo.prune import planned_packs
from llmdr.repo.repolock import SHARED, RepoLock, hold
from llmdr.repo.repository import Repository
from llmdr.repo.statcache import StatCache
from llmdr.repo.tree import RECORD_FORMAT, build_tree, record_json

log = logging.getLogger(__name__)

DEFAULT_EXCLUDES = (".llmdr", ".git", "__pycache__")


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
    a file or folder that cannot be read, a symlink whose target does not exist, a symlink loop. A snapshot that
    quietly left them out would restore a different bundle. FIFOs, sockets and devices hold no content to protect:
    they are skipped with a warning (and never opened, so a FIFO cannot hang the scan)."""
    if not root.is_dir():
        raise UsageError(f"bundle folder {root} does not exist or is not a folder; set bundle.path in llmdr.yaml")
    out: list[SourceFile] = []
    problems: list[str] = []
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

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=walk_error):
        dst = os.stat(dirpath)
        me = (dst.st_dev, dst.st_ino)
        above = chain.get(os.path.dirname(dirpath), frozenset()) if dirpath != str(root) else frozenset()
        if me in above:
            problems.append(f"{rel(dirpath)}: symlink loop (it leads back to {os.path.realpath(dirpath)}, a folder "
                            "above it)")
            dirnames[:] = []
            continue
        chain[dirpath] = above | {me}
        dirnames[:] = sorted(d for d in dirnames if d not in excludes)
        for name in filenames:
            if name in excludes or name.endswith(".llmdr-tmp"):
                continue
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                if os.path.islink(path):
                    problems.append(f"{rel(path)}: symlink to {os.readlink(path)}, which does not exist")
                else:
                    log.warning("skipping %s: removed during the scan", path)
                continue
            except OSError as exc:
                what = "symlink loop" if exc.errno == errno.ELOOP else f"cannot be read ({exc.strerror or exc})"
                problems.append(f"{rel(path)}: {what}")
                continue
            if not stat.S_ISREG(st.st_mode):
                log.warning("skipping %s: not a regular file (FIFO, socket or device)", path)
                continue
            try:  # opening is enough to know it can be read; the stat cache may mean it is never read
                os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
            except OSError as exc:
                problems.append(f"{rel(path)}: cannot be read ({exc.strerror or exc})")
                continue
            out.append(SourceFile(rel(path), path, st))
    if problems:
        shown = "\n".join(f"  - {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise LlmdrError(
            f"cannot snapshot {root}: {len(problems)} entr{'y' if len(problems) == 1 else 'ies'} cannot be stored; "
            f"the snapshot was refused and nothing was uploaded:\n{shown}{more}\n"
            "Make them readable (e.g. `chmod u+r FILE`, or run as the files' owner), replace a broken or looping "
            "symlink with the file it should point at, or move them out of the bundle folder."
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
    cfg = repo.ensure_config()
    stat_cache = StatCache(stat_cache, cfg.chunker) if stat_cache is not None else None

    files = scan_source(source)
    report = None
    if components:
        memo = CheckMemo(stat_cache.path.with_name(stat_cache.path.name.replace("stat-", "checks-", 1))
                         if stat_cache is not None and stat_cache.path is not None else None)
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
                cached = stat_cache.lookup(f.relpath, f.st) if stat_cache else None
                if cached is not None and all(d in present for d, _ in cached):
                    chunks = cached
                    res.files_unchanged += 1
                    progress.advance(f.st.st_size)
                else:
                    chunks = _chunk_file(f, chunker, present, scheduled, writer, res, progress)
                st_after = os.stat(f.abspath)
                if st_after.st_mtime_ns != f.st.st_mtime_ns or st_after.st_size != f.st.st_size:
                    raise LlmdrError(
                        f"{f.abspath} changed while it was being snapshotted; nothing was written. Stop writers to "
                        "the bundle (or snapshot a stable copy) and run the snapshot again."
                    )
                if stat_cache is not None:
                    stat_cache.record(f.relpath, f.st, chunks)
                result_entries.append(
                    FileEntry(f.relpath, f.st.st_size, stat.S_IMODE(f.st.st_mode), f.st.st_mtime_ns, tuple(chunks))
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
    _recheck_reused(repo, source, result_entries, scheduled, workers)
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


def _chunk_file(
    f: SourceFile,
    chunker: Chunker,
    present: "_Present",
    scheduled: set[str],
    writer: PackWriter,
    res: SnapshotResult,
    progress: Progress,
) -> list[tuple[str, int]]:
    chunks: list[tuple[str, int]] = []
    with open(f.abspath, "rb", buffering=0) as fh:
        for c in chunker.chunks(fh, f.st.st_size):
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


def _recheck_reused(repo: Repository, source: Path, entries: list[FileEntry], written: set[str],
                    workers: int) -> None:
    """The writer's commit check (design §5): just before publishing, every reused chunk must still be placed by a
    current index in a pack no prune plan marks. A chunk that is not (a prune ran while this snapshot was being
    taken) is read again from the source file and stored anew, so the snapshot never names a chunk about to go."""
    idx = repo.index(refresh=True)
    avoid = planned_packs(repo)
    lost = {d for e in entries for d, _ in e.chunks
            if d not in written and not idx.has(bytes.fromhex(d), avoid=avoid)}
    if not lost:
        return
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
