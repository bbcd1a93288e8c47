"""Which file names a snapshot can hold.

A name is stored as UTF-8 text (records and trees are JSON), must pass the manifest reader's path check
(``manifest.check_relpath``: no backslash, nothing that reads as a Windows drive), and must not be one of the names
llmdr itself writes into a bundle or a restore target. The snapshot's scan refuses any other name before a byte is
uploaded, so every snapshot llmdr takes can be read and restored.

Reserved names (``is_reserved``): anything beginning ``.llmdr-`` (restore's marker, lock and temporary files, listed
in ``reserved.py``), ``.<name>.llmdr-…`` (staging names next to a file, e.g. datasets) and ``*.llmdr-tmp``. The
snapshot refuses this wider set; restore refuses only the names it would actually write over (``reserved``), so a
snapshot an older llmdr took still restores unless it collides.
"""

from __future__ import annotations

import os
import re

RESERVED_MARK = ".llmdr-"
RESERVED_SUFFIX = ".llmdr-tmp"
RESERVED_HELP = "`.llmdr-*`, `.*.llmdr-*` and `*.llmdr-tmp` are reserved for llmdr's marker and temporary files"

_DRIVE = re.compile(r"[A-Za-z]:")


def is_reserved(name: str) -> bool:
    """True when ``name`` (one path component) is a name llmdr writes into a bundle or a restore target itself."""
    return name.endswith(RESERVED_SUFFIX) or (name.startswith(".") and RESERVED_MARK in name)


def is_utf8(name: str) -> bool:
    """False for a name ``os`` decoded with surrogate escapes: its bytes are not UTF-8."""
    if name.isascii():
        return True
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(text: str) -> str:
    """``text`` fit for a message: a name that is not UTF-8 shown as its bytes (``b'caf\\xe9'``)."""
    return text if is_utf8(text) else repr(os.fsencode(text))


def name_problem(name: str, *, top: bool) -> tuple[str, str] | None:
    """Why a snapshot cannot hold a file or folder called ``name`` (``top``: directly in the bundle folder), as
    (kind, what is wrong with the name); None when it can. Kinds: ``utf8``, ``reserved``, ``path``."""
    if name.isascii() and RESERVED_MARK not in name and "\\" not in name and not (top and name[1:2] == ":"):
        return None  # the common case, in a few string operations (the scan asks once per file)
    if not is_utf8(name):
        return "utf8", "is not valid UTF-8 (snapshots record names as UTF-8 text)"
    if is_reserved(name):
        return "reserved", f"is reserved ({RESERVED_HELP})"
    if "\\" in name:
        return "path", "holds a backslash, which restore refuses as a path separator"
    if top and _DRIVE.match(name):
        return "path", f"begins like a Windows drive ({name[:2]}), which restore refuses as an absolute path"
    return None


ADVICE = {
    "utf8": "Rename files and folders whose names are not UTF-8 (e.g. `convmv -f latin1 -t utf-8 --notest -r "
            "FOLDER`, or `mv`).",
    "reserved": "Rename files and folders whose names llmdr reserves (e.g. drop the `.llmdr-` part); one left by an "
                "interrupted restore means that restore is unfinished: run it again to finish it, or delete it.",
    "path": "Rename files and folders whose names hold a backslash or begin with a drive letter and a colon.",
}
