"""The names llmdr itself writes into a restore target, so that no bundle file can be mistaken for one of them.

A restore keeps three kinds of bookkeeping in its target: the resume marker ``.llmdr-restore.json`` and the lock
``.llmdr-restore.lock`` at the top of the target, and one temporary file per file being assembled, next to its
destination, named ``.llmdr-tmp-<16 hex>`` (the first 16 hex digits of the SHA-256 of the file's path in the
snapshot, ``-<n>`` added in the unlikely case two paths of one folder share them). That name is 27 bytes whatever
the file's name, so a file whose name is as long as the file system allows (255 bytes) restores too.

A snapshot must never hold one of these names: restore would delete or overwrite the bundle's file with its own.
``reserved_reason`` says why a path is reserved (``None`` for every other path); restore refuses a snapshot that
lists one before it writes anything, and the snapshot side uses the same test. Pure code: no file system access.
"""

from __future__ import annotations

import hashlib
import re

MARKER = ".llmdr-restore.json"  # top of the target: which snapshot an unfinished restore was writing
LOCK = ".llmdr-restore.lock"  # top of the target: who is restoring into it now
TMP_PREFIX = ".llmdr-tmp-"
_TMP = re.compile(r"\.llmdr-tmp-[0-9a-f]{16}(?:-[0-9]+)?")
_AT_TOP = {MARKER: "restore's resume marker", LOCK: "restore's lock file"}


def tmp_name(relpath: str, n: int = 0) -> str:
    """The temporary name (in the same folder) under which restore assembles the file at ``relpath``; ``n`` > 0
    gives the next candidate when another path of the folder already took that name."""
    base = TMP_PREFIX + hashlib.sha256(relpath.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"{base}-{n}" if n else base


def is_tmp_name(name: str) -> bool:
    """True when ``name`` (one path component) has the form of restore's temporary names."""
    return _TMP.fullmatch(name) is not None


def reserved_reason(relpath: str) -> str | None:
    """Why ``relpath`` (a '/'-separated path relative to the bundle) cannot be a bundle file: it is, or lies under,
    one of the names restore writes into its target. ``None`` for any other path."""
    if ".llmdr-" not in relpath:  # the quick answer for nearly every path
        return None
    parts = relpath.split("/")
    if parts[0] in _AT_TOP:
        return f"{parts[0]!r} is {_AT_TOP[parts[0]]}, kept at the top of a restore target"
    for part in parts:
        if is_tmp_name(part):
            return f"{part!r} has the form of restore's temporary files ({TMP_PREFIX}<16 hex>)"
    return None
