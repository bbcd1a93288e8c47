"""A region read by a configuration without ``manifest_signing`` (``factory.open_region`` puts this where the
signing store would be): a manifest that carries a signature line is refused with a ``ConfigError`` that says it is
signed and which setting is missing. Returned as it is, its signature line would make it fail its hash, so verify
would call an intact manifest "damaged" and suggest a repair that cannot help. A manifest without a signature line,
or whose signature line does not parse (damaged), passes unchanged and is checked against its id as before."""

from __future__ import annotations

from collections.abc import Iterator

from llmdr.errors import ConfigError
from llmdr.storage.base import BlobInfo, BlobStore, Forwarding, RangeReader
from llmdr.storage.crypto import SIGNED_PREFIXES, split_signed


class UnsignedReader(Forwarding):
    """A region read by a configuration without ``manifest_signing``: a manifest that carries a signature line is
    refused with a ``ConfigError`` saying that it is signed and which key to configure. Returned as it is, its
    signature line would make it fail its hash and read as damaged (with a repair suggested that cannot help)."""

    def __init__(self, inner: BlobStore, config_file: str = "llmdr.yaml") -> None:
        self.inner = inner
        self.location = inner.location
        self.config_file = config_file

    def get(self, key: str, *, start: int = 0, length: int | None = None, version_id: str | None = None) -> bytes:
        if not key.startswith(SIGNED_PREFIXES):
            return self.inner.get(key, start=start, length=length, version_id=version_id)
        blob = self.inner.get(key, version_id=version_id)
        try:
            parts = split_signed(blob)
        except ValueError:
            parts = None  # a damaged signature line: the bytes go on and fail their hash as damaged
        if parts is not None:
            method, kid = parts[1], parts[2]
            how = ("hmac_key_env: <the variable holding the HMAC key the region was written with>" if method == "hmac"
                   else "public_key: <the writer's keys/manifest-signing.pub>")
            raise ConfigError(
                f"{self.location}: manifest {key!r} is signed ({method} key {kid}) but {self.config_file} has no "
                "manifest_signing, so its signature cannot be checked and it was not used. This is a missing key, "
                f"not a damaged object: add `manifest_signing: {{method: {method}, {how}}}` to {self.config_file}")
        end = len(blob) if length is None else start + length
        return blob[start:end]

    def open_range(self, key: str, start: int, length: int, *, version_id: str | None = None) -> RangeReader:
        if not key.startswith(SIGNED_PREFIXES):
            return self.inner.open_range(key, start, length, version_id=version_id)
        return super().open_range(key, start, length, version_id=version_id)

    def put(self, key: str, data: bytes | bytearray | memoryview, *, sha256: bytes | None = None,
            if_absent: bool = False, retain: bool = True) -> None:
        self.inner.put(key, data, sha256=sha256, if_absent=if_absent, retain=retain)

    def head(self, key: str, *, version_id: str | None = None) -> BlobInfo:
        return self.inner.head(key, version_id=version_id)

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[BlobInfo]:
        return self.inner.list(prefix, start_after=start_after)

    def delete(self, key: str) -> None:
        self.inner.delete(key)
