"""Content ids: the SHA-256 of a chunk's bytes (or of a manifest's canonical bytes), as a small value type."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """A SHA-256 digest. ``str()`` is 64 lowercase hex characters; ``short`` is the 12-character log form."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise ValueError(f"a SHA-256 digest is 32 bytes, got {len(self.raw)}")

    @classmethod
    def parse(cls, text: str) -> "Digest":
        """Parse 64 hex characters; raises ValueError with the offending text otherwise."""
        if not isinstance(text, str) or not _HEX64.fullmatch(text):
            raise ValueError(f"not a SHA-256 hex digest: {text!r}")
        return cls(bytes.fromhex(text))

    @classmethod
    def of(cls, data: bytes | bytearray | memoryview) -> "Digest":
        return cls(hashlib.sha256(data).digest())

    @property
    def hex(self) -> str:
        return self.raw.hex()

    @property
    def short(self) -> str:
        return self.raw.hex()[:12]

    def __str__(self) -> str:
        return self.raw.hex()

    def __repr__(self) -> str:
        return f"Digest({self.short})"


def is_hex_digest(text: str) -> bool:
    return bool(_HEX64.fullmatch(text))
