"""Running DVC inside this process: its import tamed, its log records captured and redacted, one call at a time per
repository, and its exceptions mapped to llmdr's typed errors.

DVC runs through ``dvc.repo.Repo`` (imported lazily): one import (~0.8 s), then each push, status or fetch costs
0.1-0.4 s instead of 2-3.5 s for a ``dvc`` subprocess that re-imports everything; keys travel in memory (a per-call
config override), never on a command line. DVC's import-time side effects (console log handlers, colorama wrapping
``sys.stdout``/``sys.stderr``) are undone once in :func:`tame_dvc`; its log records are captured per call
(:func:`dvc_call`), stripped of secrets and re-logged here.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llmdr.errors import (
    AccessDenied,
    BucketNotFound,
    ConfigError,
    LlmdrError,
    StorageError,
    TransientStorageError,
    UsageError,
)

log = logging.getLogger(__name__)

_DVC_LOGGERS = ("dvc", "dvc_data", "dvc_objects")


class DatasetNotTracked(ConfigError):
    """The dataset is not under DVC: no git+DVC repository above it, no ``.dvc`` file, or one llmdr cannot read."""


def secret_values(keys: Any) -> tuple[str, ...]:
    """Every secret in ``keys`` (``Keys`` objects), to be redacted from DVC's messages."""
    out: list[str] = []
    for k in keys:
        out += [s for s in (k.access_key_id, k.secret_access_key, k.session_token) if s]
    return tuple(out)


def redact(text: str, secrets: tuple[str, ...] | list[str]) -> str:
    """``text`` with every secret replaced by ``***`` (longest first)."""
    for s in sorted(secrets, key=len, reverse=True):
        if s:
            text = text.replace(s, "***")
    return text


_import_lock = threading.Lock()
_imported = False
_repo_locks: dict[str, threading.Lock] = {}


def tame_dvc() -> None:
    """Import DVC once and undo what its import does to the host process: ``dvc.logger.setup()`` wraps
    ``sys.stdout``/``sys.stderr`` in colorama (ANSI stripping when not a TTY) and adds console handlers to the dvc
    loggers. Their records are captured per call instead (:func:`dvc_call`); WARNING also hides progress bars."""
    global _imported
    with _import_lock:
        if _imported:
            return
        first = "dvc" not in sys.modules
        out, err = sys.stdout, sys.stderr
        import dvc.repo  # noqa: F401

        if first:
            sys.stdout, sys.stderr = out, err
        for name in _DVC_LOGGERS:
            lg = logging.getLogger(name)
            for h in list(lg.handlers):
                if type(h).__module__ == "dvc.logger":
                    lg.removeHandler(h)
            lg.setLevel(logging.WARNING)
            lg.propagate = False
        _imported = True


class _Capture(logging.Handler):
    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__(logging.WARNING)
        self.secrets = secrets
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:  # DVC logs the reason as the record's exception
                msg += " - " + " | ".join(dict.fromkeys(str(e) for e in _chain(record.exc_info[1]) if str(e)))
            msg = redact(msg, self.secrets)
        except Exception:  # noqa: BLE001 - a broken log record must not break the operation
            return
        self.messages.append(msg)
        log.debug("dvc %s: %s", record.levelname.lower(), msg)  # the typed error carries what matters


@contextmanager
def dvc_call(secrets: tuple[str, ...] | list[str]) -> Iterator[list[str]]:
    """Run DVC with its warnings and errors captured (redacted) into the yielded list and re-logged here."""
    tame_dvc()
    handler = _Capture(tuple(secrets))
    loggers = [logging.getLogger(n) for n in _DVC_LOGGERS]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield handler.messages
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


@contextmanager
def locked(root: Path) -> Iterator[None]:
    """DVC locks the repository with a lock file and fails at once on contention; serialise this process's calls."""
    with _import_lock:
        lock = _repo_locks.setdefault(str(root), threading.Lock())
    with lock:
        yield


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


_DENIED = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "(403)", "Forbidden", "ExpiredToken",
           "InvalidToken")


def missing_note(records: list[str]) -> str:
    """DVC's first 'missing cache files' message among ``records``, as a note for an error message."""
    missing = [m for m in records if "do not exist" in m or "Missing cache files" in m]
    return f" (DVC: {missing[0].splitlines()[0]})" if missing else ""


def map_error(exc: BaseException, secrets: tuple[str, ...] | list[str], records: list[str], where: str, *,
               local: bool = False) -> LlmdrError:
    """DVC's and the S3 client's exceptions as llmdr's typed errors, with every secret removed from the text.
    ``local``: an operation on the repository alone (add, status), where DVC's refusal is advice to the user."""
    if isinstance(exc, LlmdrError):
        return exc
    chain = list(_chain(exc))
    text = " | ".join(dict.fromkeys(f"{type(e).__name__}: {e}" for e in chain))
    detail = redact(" / ".join([text, *records[-3:]]), secrets)
    names = {type(e).__name__ for e in chain}
    blob = text + " " + " ".join(records)
    if "LockError" in names:
        return TransientStorageError(f"{where}: the DVC repository is locked by another dvc command ({detail}); try "
                                     "again when it has finished.")
    not_tracked = {"NotDvcRepoError", "OutputNotFoundError", "StageFileDoesNotExistError", "StageNotFound",
                   "NoOutputOrStageError"}
    if names & not_tracked:
        return DatasetNotTracked(f"{where}: {detail}")
    if local:  # nothing remote was involved: a PermissionError here is the local disk's, not a region's
        return UsageError(f"{where}: DVC refused: {redact(str(exc).strip(), secrets)}")
    if any(isinstance(e, PermissionError) for e in chain) or any(s in blob for s in _DENIED):
        return AccessDenied(f"{where}: the region refused the credentials ({detail}). Check the region's "
                            "credentials (environment variables named in llmdr.yaml) and its bucket permissions.")
    if "NoSuchBucket" in blob or "bucket does not exist" in blob:
        return BucketNotFound(f"{where}: the bucket does not exist ({detail}); create it (`llmdr stack up` does for "
                              "local regions) or fix bucket: in llmdr.yaml.")
    transient = ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ClientConnectorError",
                 "ServerDisconnectedError", "TimeoutError", "ConnectionRefusedError", "ConnectionResetError")
    if names & set(transient) or any(s in blob for s in ("SlowDown", "ServiceUnavailable", "InternalError", "(503)",
                                                           "(500)")):
        return TransientStorageError(f"{where}: the region did not answer ({detail}); try again later or use "
                                     "another region.")
    if any(type(e).__module__.startswith("dvc") for e in chain):
        return StorageError(f"{where}: DVC failed: {detail}")
    return StorageError(f"{where}: {detail}")
