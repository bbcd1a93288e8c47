"""The restore target folder: opened (created, a symlink target followed once), locked for as long as a restore runs,
checked (empty, the same restore resumed, or ``--force``), and the files restore itself keeps there written safely.

The lock keeps two restores out of one folder.

The lock is the file ``.llmdr-restore.lock`` at the top of the target (``reserved.LOCK``), created exclusively and
never through a link (``O_CREAT | O_EXCL | O_NOFOLLOW``, mode 0600), holding who took it: pid, host, start time
and snapshot. What decides who holds it is an exclusive ``flock`` on that file, kept for the whole restore: the
kernel lets it go when the holder exits, however it exits. So a lock file whose ``flock`` is free was left by a
process that is gone (killed, crashed, power lost): it is taken over, and the log says whose it was. A lock file
written on another host is never taken over (its holder may run there on a shared file system): the error says so.
Where the file system has no ``flock``, the pid decides: a lock of this host whose pid no longer runs is taken over.

The holder removes the file when it is done, whether the restore succeeded or failed. Anything else found at the
lock's name (a symlink, a folder, a FIFO) is refused, never followed, never removed.

Every file restore creates in the target (a file's temporary copy, the resume marker's) is created exclusively and
never through a link (``create_new``); the marker is read without following a link.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import stat
import time
from datetime import datetime, timezone
from pathlib import Path

from llmdr.errors import TargetLocked, TargetNotEmpty, UnsafePathError
from llmdr.repo.reserved import LOCK, MARKER, tmp_name

log = logging.getLogger(__name__)

_OPEN = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class TargetLock:
    """A held lock on one restore target; ``release`` (or leaving the ``with`` block) removes it."""

    def __init__(self, fd: int, path: str, ident: tuple[int, int]) -> None:
        self.fd, self.path, self.ident = fd, path, ident

    def __enter__(self) -> TargetLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Remove the lock file (only if it is still ours) and let the ``flock`` go; safe to call twice."""
        if self.fd < 0:
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self.ident:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self.fd)  # after the unlink: a restore waiting on this file finds it gone and starts afresh
            self.fd = -1


def lock_target(root: str | Path, snapshot_id: str) -> TargetLock:
    """Take the lock on the restore target ``root`` (an existing folder, symlinks resolved) for ``snapshot_id``, or
    raise ``TargetLocked`` naming the holder, or ``UnsafePathError`` when something else is at the lock's name."""
    path = os.path.join(root, LOCK)
    for _ in range(8):  # another restore may release (and remove) the file between our open and our flock
        created = True
        try:
            fd = os.open(path, _OPEN | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            created = False
            try:
                fd = os.open(path, _OPEN)
            except FileNotFoundError:
                continue
            except PermissionError as exc:
                raise TargetLocked(f"restore target {root} holds a lock file this user cannot open ({path}: "
                                   f"{exc.strerror}): another user's restore may be running there. Restore into "
                                   "another folder, or ask that user.") from None
            except OSError as exc:  # ELOOP: a symlink; EISDIR: a folder
                raise _in_the_way(root, path, exc) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:  # llmdr creates it with O_EXCL: never linked twice
                raise _in_the_way(root, path, None)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                flocked = True
            except BlockingIOError:
                raise TargetLocked(_held_by(root, path, _holder(fd, wait=True))) from None
            except OSError:  # no flock on this file system: the pid decides
                flocked = False
            if not created:
                if not _still_at(path, st):
                    os.close(fd)
                    continue
                h = _holder(fd, wait=not flocked)
                if not h and os.fstat(fd).st_size:  # someone's file, not a lock llmdr wrote: never truncated
                    raise _in_the_way(root, path, None)
                _take_over(root, path, h, flocked)
            info = {"pid": os.getpid(), "host": socket.gethostname(), "snapshot": snapshot_id,
                    "started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            return TargetLock(fd, path, (st.st_dev, st.st_ino))
        except BaseException:
            os.close(fd)
            raise
    raise TargetLocked(f"restore target {root} could not be locked: other restores keep taking and releasing "
                       f"{path}. Run one restore at a time into a folder.")


def _still_at(path: str, st: os.stat_result) -> bool:
    """True when ``path`` still names the file ``st`` describes (its holder did not remove it meanwhile)."""
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


def _holder(fd: int, *, wait: bool) -> dict:
    """What the lock file says about its holder ({} when it says nothing readable). A holder writes it just after
    taking the lock: when asked to ``wait``, an empty or half-written file is read again for a moment."""
    for attempt in range(5 if wait else 1):
        try:
            data = json.loads(os.pread(fd, 4096, 0) or b"null")
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict):
            return data
        if attempt < 4 and wait:
            time.sleep(0.05)
    return {}


def _describe(h: dict) -> str:
    if not h:
        return "a restore that has not said who it is yet (or a lock file llmdr did not write)"
    sid = str(h.get("snapshot", "?"))[:12]
    return f"pid {h.get('pid', '?')} on host {h.get('host', '?')}, since {h.get('started', '?')}, restoring {sid}"


def _held_by(root: str, path: str, h: dict) -> str:
    return (f"restore target {root} is locked by another restore: {_describe(h)}. Wait for it to finish, or restore "
            f"into another folder; two restores into one folder would overwrite each other's files. If no restore "
            f"is running there any more, remove {path} and run the command again.")


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def _take_over(root: str, path: str, h: dict, flocked: bool) -> None:
    """Decide whether a lock file whose holder is not known to run may be taken over (the caller holds its
    ``flock`` when ``flocked``); raise ``TargetLocked`` when it may not."""
    here = socket.gethostname()
    if h and h.get("host") != here:
        raise TargetLocked(f"restore target {root} is locked by a restore on another host: {_describe(h)}. A lock "
                           f"of another host is never taken over. Wait for it to finish, or, if it no longer runs, "
                           f"remove {path} and run the command again.")
    if not flocked and _pid_alive(h.get("pid")):
        raise TargetLocked(_held_by(root, path, h))
    why = "its lock is free" if flocked else "that pid no longer runs"
    log.warning("taking over the lock on restore target %s left by %s (%s): that restore was interrupted", root,
                _describe(h), why)


def _in_the_way(root: str, path: str, exc: OSError | None) -> UnsafePathError:
    if exc is not None and exc.errno == errno.ELOOP:
        try:
            what = f"a symlink (to {os.readlink(path)})"
        except OSError:
            what = "a symlink"
    elif (exc is not None and exc.errno == errno.EISDIR) or os.path.isdir(path):
        what = "a folder"
    elif exc is not None:
        what = f"something that cannot be opened ({exc.strerror})"
    elif os.path.isfile(path):
        what = "a file that holds no lock record (or is also linked elsewhere)"
    else:
        what = "not a regular file"
    return UnsafePathError(f"cannot lock restore target {root}: {path} is {what}, not the lock file llmdr writes "
                           f"there. Nothing was written. Remove it (llmdr never follows or deletes it) and run the "
                           "command again.")


def open_target(target: Path) -> Path:
    """The folder to restore into (``target`` absolute), created when missing; a symlink given as the target is
    followed once, and everything after works in the folder it leads to."""
    if os.path.islink(target) and not target.exists():
        raise TargetNotEmpty(f"restore target {target} is a symlink to {os.readlink(target)}, which does not exist; "
                             "create that folder, or give another target")
    if not target.is_dir():
        if os.path.lexists(target):
            raise TargetNotEmpty(f"restore target {target} exists and is not a folder")
        target.mkdir(parents=True, exist_ok=True)  # two restores may create it at once: the lock decides after
    root = target.resolve()
    if os.path.islink(target):
        log.info("restore target %s is a symlink: restoring into %s", target, root)
    return root


def check_target(root: Path, snapshot_id: str, force: bool) -> bool:
    """Check that ``root`` (locked by this restore) may be restored into: empty but for the lock, the same restore
    resumed, or ``force``. True when it holds nothing yet (so no file in it can already match)."""
    entries = [n for n in os.listdir(root) if n != LOCK]
    if not entries:
        return True
    if _marker_snapshot(root / MARKER) == snapshot_id:
        log.info("resuming the interrupted restore of %s into %s", snapshot_id[:12], root)
        return False
    if not force:
        raise TargetNotEmpty(
            f"restore target {root} is not empty ({len(entries)} entries). Choose an empty folder, or pass --force "
            "to overwrite the files the snapshot holds (other files are left alone)."
        )
    return False


def _marker_snapshot(path: Path) -> str | None:
    """The snapshot a resume marker names; None when there is none, or something else is at its name (a link is
    never followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = json.loads(os.read(fd, 1 << 16))
        return data.get("snapshot") if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def create_new(path: str, what: str) -> int:
    """A new file at ``path`` (mode 0600, open for writing), created exclusively and never through a link: whatever
    is at that name (left by an interrupted restore, or planted) is removed first, never followed; a folder there is
    an ``UnsafePathError`` naming ``what`` was to be written."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o600)
    except FileExistsError:
        try:
            os.unlink(path)
        except IsADirectoryError:
            raise UnsafePathError(f"cannot restore {what}: a folder is in the way at {path}, the temporary name "
                                  "restore writes it under; move it away and run the same command again (it "
                                  "resumes)") from None
        return os.open(path, flags, 0o600)


def marker_temp(root: str) -> str:
    """The temporary name the resume marker is written under."""
    return os.path.join(root, tmp_name(MARKER))


def write_marker(root: str, text: str) -> None:
    """The resume marker, written whole under its temporary name (``create_new``) and renamed into place: a marker
    cut short by a full disk would make the re-run refuse to resume."""
    tmp, path = marker_temp(root), os.path.join(root, MARKER)
    fd = create_new(tmp, "the resume marker")
    try:
        data = memoryview(text.encode())
        while data:
            data = data[os.write(fd, data):]
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except IsADirectoryError:
        os.unlink(tmp)
        raise UnsafePathError(f"cannot restore into {root}: a folder is in the way at {path}, the name of restore's "
                              "resume marker; move it away and run the command again") from None
