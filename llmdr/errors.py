"""Error types: one root, subclasses by what the caller does next.

Every message says what was wrong, where, and what to do. ``is_retriable`` is the single place that decides whether
an operation may be tried again; the retrying store and the Prefect tasks both use it.
"""

from __future__ import annotations


class LlmdrError(Exception):
    """Root of every error llmdr raises on purpose. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class ConfigError(LlmdrError):
    """The configuration file is missing, unparsable or inconsistent."""

    exit_code = 2


class UsageError(LlmdrError):
    """The command was called with arguments that cannot work (unknown region, ambiguous id, ...)."""

    exit_code = 2


class StorageError(LlmdrError):
    """An object store refused or failed an operation."""


class ObjectNotFound(StorageError):
    """The key does not exist in the store."""


class BucketNotFound(StorageError):
    """The bucket does not exist at the endpoint."""


class AccessDenied(StorageError):
    """Credentials are wrong or lack permission. Never retried: trying again cannot help."""


class ObjectLocked(StorageError):
    """The object is under an S3 Object Lock retention (or legal hold) and cannot be deleted yet."""


class ObjectLockUnavailable(StorageError):
    """The bucket has no Object Lock and the server cannot add it to an existing bucket."""


class ReadOnlyStoreError(StorageError):
    """A write was attempted through a read-only store."""


class Conflict(StorageError):
    """A create-only put found the key already there (another writer took it first). Never retried as such: the
    caller re-reads what is there and decides."""


class RepositoryLocked(LlmdrError):
    """Another llmdr command holds a conflicting lock on the repository (a prune while a snapshot runs, or the
    reverse). The message names the holder and when its lock goes stale."""

    exit_code = 10


class FormatMismatch(LlmdrError):
    """The region holds a repository in another format than this llmdr writes (v1 before ``llmdr migrate``)."""

    exit_code = 11


class TransientStorageError(StorageError):
    """A fault that may pass: connection refused or reset, timeout, 5xx, throttling."""


class IntegrityError(LlmdrError):
    """Stored bytes do not match their recorded digest, or a manifest does not match its id."""


class ChunkMissing(ObjectNotFound, IntegrityError):
    """A chunk a snapshot references is not in the store: a missing object, and so a damaged snapshot. Callers that
    sort missing from corrupt catch ``ObjectNotFound``; those that only care that the snapshot is damaged catch
    ``IntegrityError``."""


class UnsafePathError(LlmdrError):
    """A manifest path would escape the restore target (absolute, ``..``, or through a symlink)."""


class TargetNotEmpty(LlmdrError):
    """Restoring into a folder that already holds files, without ``--force``."""

    exit_code = 2


class TargetLocked(LlmdrError):
    """Another restore is writing into the same target folder. The message names the holder (pid, host, since when)
    and what to do."""

    exit_code = 10


class SnapshotNotFound(LlmdrError):
    """No snapshot matches the reference in that region."""


class StackError(LlmdrError):
    """The local SeaweedFS stack could not be started, checked or stopped."""


class UnsafeTemplate(LlmdrError):
    """A bundle's Jinja template is refused: it reaches for Python internals (template injection), loads another
    file, or does not parse. Bundle templates are only ever rendered in Jinja's sandbox; nothing refused has run."""


def is_retriable(exc: BaseException) -> bool:
    """True when trying the same operation again may succeed.

    Only transient storage faults qualify. Integrity errors, bad credentials, missing objects or buckets,
    incomplete bundles and configuration errors are final: retrying them only hides the real problem.
    """
    return isinstance(exc, TransientStorageError)
