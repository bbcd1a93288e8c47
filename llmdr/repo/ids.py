"""Content ids: the SHA-256 of a chunk's bytes (or of a manifest's canonical bytes), as 64 lowercase hex characters."""

from __future__ import annotations

import re

_HEX64 = re.compile(r"[0-9a-f]{64}")


def is_hex_digest(text: str) -> bool:
    return bool(_HEX64.fullmatch(text))
