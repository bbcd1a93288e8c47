"""Repository locks (format v2, design §5): keep llmdr commands that must not overlap on one region apart.

A lock is a small JSON object ``locks/<32 hex>.json`` (``{"kind", "op", "host", "pid", "repo_id"?,
"refreshed_seq"}``) written without Object Lock retention so it can be deleted. ``shared`` locks (snapshot,
replicate, restore, verify, ...) conflict with a live ``exclusive`` one; an ``exclusive`` lock (prune, index
compaction, migrate) conflicts with any live lock. A lock is **live** while ``server_time() - Last-Modified <
stale_s``: both times come from the store, so a client clock a year off neither keeps a lock alive nor kills one.
A lock object that does not parse counts as a live exclusive lock of unknown owner until it is stale.

Taking a lock: list, wait (with jitter, up to ``wait_s``) while a conflicting live lock exists, PUT our own, wait
``settle_s``, list again and back off if a conflicting lock appeared meanwhile (two takers racing both see each
other). A daemon thread re-PUTs the object every ``refresh_s``; a failed or late refresh is remembered and
``RepoLock.check()`` raises, so the command stops before its next commit step. This does not use the local wall
clock at all: intervals are measured on the boot clock, which keeps counting while the machine sleeps.

Locks make prune and writers polite; safety does not depend on them (the two-phase delete of §5 protects a writer
that ignores ``locks/``). ``llmdr.repo.locks`` is another thing: S3 Object Lock retention.
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from llmdr.errors import IntegrityError, LlmdrError, ObjectNotFound, RepositoryLocked
from llmdr.repo.manifest import canonical_json
from llmdr.storage.base import BlobInfo, BlobStore

log = logging.getLogger(__name__)

LOCKS = "locks/"
SHARED = "shared"
EXCLUSIVE = "exclusive"
KINDS = (SHARED, EXCLUSIVE)
UNREADABLE = "(unreadable lock object)"  # the ``op`` of a lock object that does not parse
MAX_LOCK_BYTES = 64 * 1024  # a bigger object under locks/ is not read; it counts as unreadable
MAX_BACKOFF_S = 30.0
JOIN_TIMEOUT_S = 60.0


def _elapsed() -> float:
    """Seconds on a clock that only moves forward and keeps counting through a suspend (Linux boot time), for
    intervals measured by this process. Never compared with store times."""
    clock = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(clock) if clock is not None else time.monotonic()


def late_after(stale_s: float) -> float:
    """How long after its last successful refresh a held lock counts as late: ``stale_s`` minus a 10-minute margin
    (20 min for the default 30), or minus a third of ``stale_s`` when that is shorter (short test timings)."""
    return stale_s - min(600.0, stale_s / 3)


@dataclass(frozen=True)
class LockInfo:
    """One lock object as a reader sees it. ``age_s``: store time since its last write (refresh); ``live``: younger
    than the stale time. An unreadable object has kind exclusive, op ``UNREADABLE``, host ``?``, pid 0."""

    key: str
    kind: str
    op: str
    host: str
    pid: int
    age_s: float
    live: bool

    def describe(self, stale_s: float) -> str:
        """The holder, for messages: what, who, how old, and when it goes stale."""
        stale_in = f"stale in {max(0.0, stale_s - self.age_s):.0f} s" if self.live else "stale"
        if self.op == UNREADABLE:
            return (f"an unreadable lock object {self.key} (treated as exclusive; written {self.age_s:.0f} s ago, "
                    f"{stale_in})")
        return (f"{self.kind} lock of {self.op!r} by host {self.host} pid {self.pid} (refreshed {self.age_s:.0f} s "
                f"ago, {stale_in}; object {self.key})")


def _parse(data: bytes) -> dict[str, Any] | None:
    """The lock body, or None when it is not a lock this format writes."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict) or body.get("kind") not in KINDS:
        return None
    op, host, pid = body.get("op"), body.get("host"), body.get("pid")
    if not isinstance(op, str) or not isinstance(host, str) or type(pid) is not int:
        return None
    return body


def _read(store: BlobStore, info: BlobInfo, now: float, stale_s: float) -> LockInfo | None:
    """The lock behind a listed object; None when it vanished since the listing (released)."""
    # a missing Last-Modified cannot be aged: count the lock as just written (live) rather than guess
    age = max(0.0, now - info.modified) if info.modified is not None else 0.0
    body = None
    if info.size <= MAX_LOCK_BYTES:
        try:
            body = _parse(store.get(info.key))
        except ObjectNotFound:
            return None
        except IntegrityError:  # an encrypted region's object that does not open: unreadable
            body = None
    if body is None:
        return LockInfo(info.key, EXCLUSIVE, UNREADABLE, "?", 0, age, age < stale_s)
    return LockInfo(info.key, body["kind"], body["op"], body["host"], body["pid"], age, age < stale_s)


def list_locks(store: BlobStore, *, stale_s: float = 1800.0) -> list[LockInfo]:
    """Every lock object in the repository, in key order, aged by the store's clock."""
    now = store.server_time()  # before listing: an object written meanwhile looks younger, never older
    out = []
    for info in list(store.list(LOCKS)):
        lock = _read(store, info, now, stale_s)
        if lock is not None:
            out.append(lock)
    return out


def remove_stale(store: BlobStore, *, stale_s: float = 1800.0) -> list[str]:
    """Delete the lock objects that are stale (every version, as ``store.delete`` does); returns their keys. Called
    by exclusive takers: a stale lock no longer protects anything, it only clutters ``locks/``."""
    removed = []
    for lock in list_locks(store, stale_s=stale_s):
        if not lock.live:
            store.delete(lock.key)
            removed.append(lock.key)
            log.info("removed stale lock %s from %s: %s", lock.key, store.location, lock.describe(stale_s))
    return removed


def conflicts(locks: list[LockInfo], kind: str, own_key: str | None = None) -> list[LockInfo]:
    """The live locks that stop a ``kind`` lock: a live exclusive for shared, any live lock for exclusive."""
    return [lk for lk in locks if lk.live and lk.key != own_key and (kind == EXCLUSIVE or lk.kind == EXCLUSIVE)]


class RepoLock:
    """One lock this process holds, refreshed by a daemon thread until ``release``. Commands call ``check()`` before
    each commit step (writing a record, deleting): it raises once a refresh failed or came late, because the lock
    may have gone stale meanwhile and another command may have acted on the repository."""

    def __init__(self, store: BlobStore, key: str, kind: str, op: str, body: dict[str, Any], *, refresh_s: float,
                 stale_s: float) -> None:
        self.store = store
        self.key = key
        self.kind = kind
        self.op = op
        self.refresh_s = refresh_s
        self.stale_s = stale_s
        self._body = body
        self._seq = -1
        self._late_s = late_after(stale_s)
        self._state = threading.Lock()
        self._last_ok = _elapsed()
        self._failure: BaseException | None = None
        self._released = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"RepoLock({self.kind} {self.op!r} {self.key} in {self.store.location})"

    # writing ----------------------------------------------------------------------------------------------------------
    def _write(self) -> None:
        """PUT the lock object with the next refresh counter. Its time counts from before the PUT (conservative)."""
        started = _elapsed()
        with self._state:
            self._seq += 1
            data = canonical_json({**self._body, "refreshed_seq": self._seq})
        self.store.put(self.key, data, retain=False)
        with self._state:
            self._last_ok = started

    def _fail(self, exc: BaseException) -> None:
        with self._state:
            if self._failure is None:
                self._failure = exc

    def _refresh(self) -> bool:
        """One refresh; False when refreshing must stop (the object was removed by someone else)."""
        late = _elapsed() - self._last_ok
        if late > self._late_s:  # stale or nearly: another command may have taken the repository meanwhile
            self._fail(RepositoryLocked(
                f"{self.store.location}: the {self.kind} lock of {self.op!r} ({self.key}) was refreshed only after "
                f"{late:.0f} s (the limit is {self._late_s:.0f} s; it goes stale after {self.stale_s:.0f} s): the "
                "process was paused or the store unreachable. This command stops before its next step; run it again"))
        try:
            self.store.head(self.key)
        except ObjectNotFound as exc:
            self._fail(RepositoryLocked(
                f"{self.store.location}: the {self.kind} lock of {self.op!r} ({self.key}) was removed by someone else "
                "(a stale-lock cleanup or by hand), so another command may act on the repository. This command "
                "stops before its next step; run it again"))
            log.warning("lock %s in %s was removed by someone else (%s); not recreating it", self.key,
                        self.store.location, exc)
            return False
        self._write()
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                if not self._refresh():
                    return
            except Exception as exc:  # any failure: remembered for check(); keep trying so the lock stays live
                log.warning("refresh of lock %s in %s failed: %s", self.key, self.store.location, exc)
                self._fail(exc)

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"llmdr-lock-{self.key}", daemon=True)
        self._thread.start()

    def _drop(self) -> None:
        """Delete our lock object (backing off while taking it). Errors propagate."""
        self.store.delete(self.key)

    # public -----------------------------------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise ``RepositoryLocked`` if the lock may no longer protect this command: released, a refresh failed, or
        the last successful refresh is older than the stale time minus a margin (``late_after``)."""
        with self._state:
            failure, last, released = self._failure, self._last_ok, self._released
        where = f"{self.store.location}: the {self.kind} lock of {self.op!r} ({self.key})"
        if released:
            raise RepositoryLocked(f"{where} was released already; take a new lock before changing the repository")
        if isinstance(failure, RepositoryLocked):
            raise RepositoryLocked(str(failure))
        if failure is not None:
            raise RepositoryLocked(
                f"{where} could not be refreshed ({failure}); it may have gone stale and another command (a prune) "
                "may act on the repository. This command stops before its next step: check the store and run it "
                "again") from failure
        late = _elapsed() - last
        if late > self._late_s:
            raise RepositoryLocked(
                f"{where} was last refreshed {late:.0f} s ago (the limit is {self._late_s:.0f} s; it goes stale after "
                f"{self.stale_s:.0f} s): the store is slow or unreachable, or the process was paused. This command "
                "stops before its next step; run it again")

    def release(self) -> None:
        """Stop refreshing and delete the lock object. Idempotent. A failed delete is logged, not raised: the lock
        then goes stale ``stale_s`` after its last refresh, and raising here would hide the command's own error."""
        with self._state:
            if self._released:
                return
            self._released = True
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(JOIN_TIMEOUT_S)
        try:
            self.store.delete(self.key)
        except LlmdrError as exc:
            log.warning("could not delete lock object %s in %s (%s); it goes stale %.0f s after its last refresh, "
                        "or delete it by hand", self.key, self.store.location, exc, self.stale_s)


def _locked(store: BlobStore, kind: str, op: str, holders: list[LockInfo], stale_s: float,
            wait_s: float) -> RepositoryLocked:
    waited = f" after waiting {wait_s:g} s" if wait_s > 0 else ""
    keys = ", ".join(h.key for h in holders)
    return RepositoryLocked(
        f"cannot take a {kind} lock for {op!r} on {store.location}{waited}: held by "
        f"{'; '.join(h.describe(stale_s) for h in holders)}. Wait for that command to finish and run this one again "
        f"(or give it a longer lock wait). If the holder is gone (crashed, machine lost), its lock goes stale "
        f"{stale_s:.0f} s after its last refresh; or remove it now with `llmdr locks --remove KEY` ({keys}) in "
        f"{store.location}")


def acquire(store: BlobStore, kind: str, op: str, *, wait_s: float = 0.0, refresh_s: float = 300.0,
            stale_s: float = 1800.0, settle_s: float = 2.0, repo_id: str | None = None) -> RepoLock:
    """Take a ``kind`` lock for command ``op`` (design §5 steps 1-4), waiting up to ``wait_s`` for conflicting
    holders; raise ``RepositoryLocked`` naming them otherwise. An exclusive taker also removes stale locks."""
    if kind not in KINDS:
        raise ValueError(f"lock kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if not 0 < refresh_s < late_after(stale_s):
        raise ValueError(f"refresh_s ({refresh_s:g}) must be positive and below {late_after(stale_s):g} s for a "
                         f"stale time of {stale_s:g} s, or every lock would count as late")
    body: dict[str, Any] = {"kind": kind, "op": op, "host": socket.gethostname(), "pid": os.getpid()}
    if repo_id is not None:
        body["repo_id"] = repo_id
    lock = RepoLock(store, f"{LOCKS}{secrets.token_hex(16)}.json", kind, op, body, refresh_s=refresh_s,
                    stale_s=stale_s)
    deadline = _elapsed() + wait_s
    backoff = max(settle_s, 0.05)
    while True:
        holders = conflicts(list_locks(store, stale_s=stale_s), kind)
        if not holders:
            try:
                lock._write()
                time.sleep(settle_s)  # a taker racing us has PUT its lock by now: both see each other and back off
                holders = conflicts(list_locks(store, stale_s=stale_s), kind, lock.key)
            except BaseException:
                _quiet_delete(store, lock.key)
                raise
            if not holders:
                lock._start()
                if kind == EXCLUSIVE:
                    _quiet_remove_stale(store, stale_s)
                log.info("took %s lock %s for %r on %s", kind, lock.key, op, store.location)
                return lock
            lock._drop()
        remaining = deadline - _elapsed()
        if remaining <= 0:
            raise _locked(store, kind, op, holders, stale_s, wait_s)
        log.info("%s lock for %r on %s waits for %s", kind, op, store.location,
                 "; ".join(h.describe(stale_s) for h in holders))
        time.sleep(min(remaining, backoff * random.uniform(0.5, 1.5)))
        backoff = min(backoff * 2, MAX_BACKOFF_S)


def _quiet_delete(store: BlobStore, key: str) -> None:
    try:
        store.delete(key)
    except Exception as exc:  # already failing: keep the first error, say what is left behind
        log.warning("could not delete lock object %s in %s (%s); it goes stale on its own", key, store.location, exc)


def _quiet_remove_stale(store: BlobStore, stale_s: float) -> None:
    try:
        remove_stale(store, stale_s=stale_s)
    except LlmdrError as exc:  # housekeeping only: stale locks stop nobody
        log.warning("could not remove stale locks from %s: %s", store.location, exc)


@contextmanager
def hold(store: BlobStore, kind: str, op: str, **kw: Any) -> Iterator[RepoLock]:
    """``acquire`` for the duration of a ``with`` block; released however the block ends."""
    lock = acquire(store, kind, op, **kw)
    try:
        yield lock
    finally:
        lock.release()
