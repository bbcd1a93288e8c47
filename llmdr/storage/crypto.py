"""Client-side encryption and manifest signatures, as BlobStore wrappers.

``EncryptingStore`` seals every object except packs (below) with AES-256-GCM before it leaves the machine::

    b"LLMDRE1\\0" | key id (8 bytes) | nonce (12 bytes) | ciphertext | GCM tag (16 bytes)

The object's key (its name in the store) is the additional authenticated data, so a ciphertext moved to another
name, or written under another key, fails to open. A wrong key, a flipped bit, a truncated object or an object that
is not encrypted at all each raise ``IntegrityError`` naming the object; nothing unauthenticated is returned. Sizes
reported by ``head``/``list`` are the plaintext sizes (the overhead is fixed), so callers comparing chunk lengths
work unchanged. Chunk names stay the SHA-256 of the plaintext: deduplication works as before within a region (one
key per region), and a copy to a region with another key is decrypted and re-encrypted on the way (the copy reads
through the source's wrapper and writes through the destination's). Those names do let someone who can list the
bucket test whether a chunk they already hold (e.g. public base-model weights) is stored there; nothing else about
the content is visible.

Packs (keys under ``packs/``) pass through ``EncryptingStore`` unsealed, in both directions: ``put``, ``get``
(ranged too), ``head``/``list`` sizes and version reads see the stored bytes as they are. A pack carries its own
per-blob sealing, done by the repository with ``blob_cipher()`` (``BlobCipher`` in ``base.py``: nonce, AES-256-GCM
ciphertext, tag, under the same key and key id as the envelope above), so that one blob of a pack can be fetched
with a ranged GET and opened on its own, and repack can copy sealed blobs without re-encrypting them.

``SigningStore`` appends a signature to every manifest it writes — v1 manifests (``snapshots/``), v2 snapshot records
(``snaps/``), catalog entries and segments (``catalog/``): ``SIGNED_PREFIXES`` — and refuses, on read, one without a
valid signature::

    <canonical manifest JSON> \\n llmdr-signature v1 <method> <key id> <base64 signature>

A snapshot id is the SHA-256 of the manifest, which proves a manifest untouched only against an id you already
trust; the signature proves the writer held the signing key, so a manifest edited in the store — even one stored
under its new hash as a new "snapshot" — is refused. Signing sits outside encryption (sign, then encrypt).

Key rotation: the signer carries earlier keys (``ManifestSigner.previous``, from ``manifest_signing.previous_*``);
a manifest signed by one of them still reads, and ``SigningStore.resign`` writes it again under the current key with
the same body (so every id stays the same). A reader without ``manifest_signing`` sees ``unsigned.UnsignedReader``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from llmdr.errors import ConfigError, IntegrityError
from llmdr.storage.base import BlobCipher, BlobInfo, BlobStore, Forwarding, RangeReader, VersionInfo

MAGIC = b"LLMDRE1\0"
KEY_ID_LEN = 8
NONCE_LEN = 12
TAG_LEN = 16
HEADER = len(MAGIC) + KEY_ID_LEN + NONCE_LEN
OVERHEAD = HEADER + TAG_LEN
SIG_MARK = b"\nllmdr-signature v1 "
SIGNED_PREFIXES = ("snapshots/", "snaps/", "catalog/")
UNSEALED_PREFIX = "packs/"  # sealed per blob by the repository (BlobCipher), not by EncryptingStore
BLOB_OVERHEAD = NONCE_LEN + TAG_LEN


def parse_key(value: str, where: str) -> bytes:
    """A 256-bit key written as 64 hex characters or as base64."""
    v = value.strip()
    raw: bytes | None = None
    if len(v) == 64:
        try:
            raw = bytes.fromhex(v)
        except ValueError:
            raw = None
    if raw is None:
        try:
            raw = base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            raw = None
    if raw is None or len(raw) != 32:
        raise ConfigError(f"{where} does not hold a 256-bit key: give 64 hex characters or the base64 of 32 bytes "
                          "(e.g. `openssl rand -hex 32`)")
    return raw


def key_id(key: bytes) -> bytes:
    """8 bytes that name a key without revealing it."""
    return hmac.new(key, b"llmdr encryption key id", hashlib.sha256).digest()[:KEY_ID_LEN]


@functools.cache
def _decrypts_in_place() -> bool:
    """Whether this ``cryptography`` build decrypts AES-GCM correctly over its own input (OpenSSL does when the
    output starts where the ciphertext does); checked once on a known blob, so an install where it does not (a
    future version that refuses or copies) falls back to a separate buffer instead of failing every chunk."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead, nonce, plain = AESGCM(bytes(32)), bytes(NONCE_LEN), bytes(range(256)) * 3
    buf = bytearray(nonce + aead.encrypt(nonce, plain, b"probe"))
    view = memoryview(buf)
    try:
        aead.decrypt_into(nonce, view[NONCE_LEN:], b"probe", view[NONCE_LEN:NONCE_LEN + len(plain)])
    except Exception:  # noqa: BLE001 - any refusal means: not available here
        return False
    return bytes(view[NONCE_LEN:NONCE_LEN + len(plain)]) == plain


class AesGcmBlobCipher:
    """Seals one blob of a pack: ``nonce (12) | AES-256-GCM ciphertext | tag (16)`` with the caller's AAD (the
    repository binds it to the repo and chunk id). Same key, hence same ``key_id``, as the object envelope."""

    overhead = BLOB_OVERHEAD

    def __init__(self, key: bytes, *, key_source: str = "") -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if len(key) != 32:
            raise ConfigError("an encryption key must be 32 bytes (AES-256)")
        self.key_id = key_id(key)
        self.key_source = key_source
        self._aead = AESGCM(key)

    def seal(self, plain: bytes | memoryview, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_LEN)
        return nonce + self._aead.encrypt(nonce, plain, aad)

    def seal_into(self, plain: bytes | memoryview, aad: bytes, out: memoryview) -> int:
        nonce = os.urandom(NONCE_LEN)
        n = len(plain) + BLOB_OVERHEAD
        out[:NONCE_LEN] = nonce
        self._aead.encrypt_into(nonce, plain, aad, out[NONCE_LEN:n])
        return n

    def open(self, stored: bytes | memoryview, aad: bytes, where: object) -> bytes:
        from cryptography.exceptions import InvalidTag

        if len(stored) < BLOB_OVERHEAD:
            raise IntegrityError(f"{where} is truncated ({len(stored)} bytes, shorter than nonce and tag): damaged; "
                                 "it was not used. `llmdr verify --repair` restores it from another region")
        data = bytes(stored)
        try:
            return self._aead.decrypt(data[:NONCE_LEN], data[NONCE_LEN:], aad)
        except InvalidTag:
            raise self._failed(where) from None

    def open_in_place(self, stored: memoryview, aad: bytes, where: object) -> memoryview:
        from cryptography.exceptions import InvalidTag

        if stored.readonly or not _decrypts_in_place():
            return memoryview(self.open(stored, aad, where))
        n = len(stored) - BLOB_OVERHEAD
        if n < 0:
            raise IntegrityError(f"{where} is truncated ({len(stored)} bytes, shorter than nonce and tag): damaged; "
                                 "it was not used. `llmdr verify --repair` restores it from another region")
        plain = stored[NONCE_LEN:NONCE_LEN + n]
        try:  # OpenSSL decrypts in place when output and input start at the same byte (the ciphertext's first)
            self._aead.decrypt_into(bytes(stored[:NONCE_LEN]), stored[NONCE_LEN:], aad, plain)
        except InvalidTag:
            raise self._failed(where) from None
        return plain

    def _failed(self, where: str) -> IntegrityError:
        source = self.key_source or "the configured key"
        return IntegrityError(
            f"{where} failed authentication: damaged, moved, or sealed under another key than {source} (key id "
            f"{self.key_id.hex()}); it was not used. Check the region's key, then `llmdr verify --repair` "
            "restores it from another region")


class _Resized(Forwarding):
    """A name-keeping wrapper whose stored objects are longer than what it returns (an envelope, a signature line):
    ``head`` and ``list`` report the sizes its ``get`` gives, through ``_sized``."""

    def _sized(self, info: BlobInfo) -> BlobInfo:
        return info

    def head(self, key: str, *, version_id: str | None = None) -> BlobInfo:
        return self._sized(self.inner.head(key, version_id=version_id))

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[BlobInfo]:
        return map(self._sized, self.inner.list(prefix, start_after=start_after))


class EncryptingStore(_Resized):
    def __init__(self, inner: BlobStore, key: bytes, *, key_source: str = "") -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if len(key) != 32:
            raise ConfigError("an encryption key must be 32 bytes (AES-256)")
        self.inner = inner
        self.location = inner.location
        self.key_id = key_id(key)
        self.key_source = key_source  # for messages: where the key comes from (a variable or block NAME)
        self._aead = AESGCM(key)
        self._blob_cipher = AesGcmBlobCipher(key, key_source=key_source)

    def blob_cipher(self) -> BlobCipher | None:
        return self._blob_cipher

    @property
    def key_id_hex(self) -> str:
        return self.key_id.hex()

    def seal(self, key: str, data: bytes | bytearray | memoryview) -> bytes:
        nonce = os.urandom(NONCE_LEN)
        return MAGIC + self.key_id + nonce + self._aead.encrypt(nonce, bytes(data), key.encode("utf-8"))

    def open(self, key: str, blob: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        where = f"{self.location}: object {key!r}"
        if not blob.startswith(MAGIC):
            raise IntegrityError(f"{where} is not encrypted although this region encrypts everything; it was not "
                                 "written by llmdr with this configuration (or was replaced): refusing it")
        if len(blob) < OVERHEAD:
            raise IntegrityError(f"{where} is truncated ({len(blob)} bytes, shorter than the encryption envelope)")
        kid = blob[len(MAGIC):len(MAGIC) + KEY_ID_LEN]
        if kid != self.key_id:
            source = self.key_source or "the configured key"
            raise IntegrityError(
                f"{where} was encrypted with key id {kid.hex()}, but this region's key ({source}) has id "
                f"{self.key_id_hex}: wrong key. Set it to the key the copy was written with; nothing was read")
        nonce = blob[len(MAGIC) + KEY_ID_LEN:HEADER]
        try:
            return self._aead.decrypt(nonce, blob[HEADER:], key.encode("utf-8"))
        except InvalidTag:
            raise IntegrityError(f"{where} failed authentication (damaged, truncated or tampered with); it was not "
                                 "used. `llmdr verify --repair` restores it from another region") from None

    # BlobStore --------------------------------------------------------------------------------------------------------
    def put(self, key: str, data: bytes | bytearray | memoryview, *, sha256: bytes | None = None,
            if_absent: bool = False, retain: bool = True) -> None:
        # ``sha256`` names the plaintext: checked here, before sealing; the store below checks the sealed bytes it
        # receives against their own digest (damage on the way)
        if key.startswith(UNSEALED_PREFIX):
            return self.inner.put(key, data, sha256=sha256, if_absent=if_absent, retain=retain)
        _check_digest(self.location, key, data, sha256)
        blob = self.seal(key, data)
        self.inner.put(key, blob, sha256=hashlib.sha256(blob).digest(), if_absent=if_absent, retain=retain)

    def get(self, key: str, *, start: int = 0, length: int | None = None, version_id: str | None = None) -> bytes:
        if key.startswith(UNSEALED_PREFIX):
            return self.inner.get(key, start=start, length=length, version_id=version_id)
        # the tag covers the whole object: read it whole
        plain = self.open(key, self.inner.get(key, version_id=version_id))
        if start or length is not None:
            end = len(plain) if length is None else start + length
            return plain[start:end]
        return plain

    def open_range(self, key: str, start: int, length: int, *, version_id: str | None = None) -> RangeReader:
        if key.startswith(UNSEALED_PREFIX):  # packs stream as they are stored; anything else is opened whole
            return self.inner.open_range(key, start, length, version_id=version_id)
        return super().open_range(key, start, length, version_id=version_id)

    def list_versions(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[VersionInfo]:
        for v in self.inner.list_versions(prefix, start_after=start_after):
            yield v if v.is_delete_marker or v.key.startswith(UNSEALED_PREFIX) else replace(
                v, size=max(0, v.size - OVERHEAD))

    @staticmethod
    def _sized(info: BlobInfo) -> BlobInfo:
        """Plaintext sizes (the envelope's overhead is fixed); packs are stored as they are."""
        if info.key.startswith(UNSEALED_PREFIX):
            return info
        return BlobInfo(info.key, max(0, info.size - OVERHEAD), info.modified)

    def delete(self, key: str) -> None:
        self.inner.delete(key)



# --- manifest signatures -----------------------------------------------------------------------------------------------
class ManifestSigner:
    """Signs and verifies manifest bytes. HMAC-SHA256 (one shared key) or Ed25519 (private key to sign; the public
    key alone verifies, so a restore host needs no signing secret). ``previous``: earlier keys (key rotation) whose
    signatures are still accepted on read; nothing is signed with them."""

    def __init__(self, method: str, *, hmac_key: bytes | None = None, private: Any = None, public: Any = None,
                 source: str = "", previous: Sequence[ManifestSigner] = ()) -> None:
        self.method = method
        self.source = source
        self.previous = list(previous)
        self._hmac = hmac_key
        self._private = private
        self._public = public if public is not None else (private.public_key() if private is not None else None)
        if method == "hmac":
            if not hmac_key:
                raise ConfigError("HMAC manifest signing needs a key")
            self.key_id = hmac.new(hmac_key, b"llmdr manifest key id", hashlib.sha256).hexdigest()[:16]
        else:
            from cryptography.hazmat.primitives import serialization

            if self._public is None:
                raise ConfigError("Ed25519 manifest signing needs a public key to verify with")
            raw = self._public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            self.key_id = hashlib.sha256(raw).hexdigest()[:16]

    @property
    def can_sign(self) -> bool:
        return self.method == "hmac" or self._private is not None

    def verifier(self, method: str, kid: str) -> ManifestSigner | None:
        """The key (this one, or one of ``previous``) that a signature line naming ``method`` and ``kid`` claims."""
        return next((k for k in (self, *self.previous) if k.method == method and k.key_id == kid), None)

    def sign(self, data: bytes) -> bytes:
        if self.method == "hmac":
            return hmac.new(self._hmac, data, hashlib.sha256).digest()  # type: ignore[arg-type]
        if self._private is None:
            raise ConfigError(f"cannot sign manifests: the Ed25519 private key is not here ({self.source}); this "
                              "machine can verify and restore, not write snapshots")
        return self._private.sign(data)

    def verify(self, data: bytes, sig: bytes) -> bool:
        if self.method == "hmac":
            return hmac.compare_digest(self.sign(data), sig)
        from cryptography.exceptions import InvalidSignature

        try:
            self._public.verify(sig, data)
            return True
        except InvalidSignature:
            return False


def split_signed(blob: bytes) -> tuple[bytes, str, str, bytes] | None:
    """``(body, method, key id, signature)`` of a manifest as stored; None when it carries no signature line.
    Raises ``ValueError`` for a signature line that does not parse."""
    cut = blob.rfind(SIG_MARK)
    if cut < 0:
        return None
    try:
        method, kid, sig_b64 = blob[cut + len(SIG_MARK):].strip().decode("ascii").split(" ")
        return blob[:cut], method, kid, base64.b64decode(sig_b64, validate=True)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise ValueError("malformed signature line") from None


class SigningStore(_Resized):
    def __init__(self, inner: BlobStore, signer: ManifestSigner) -> None:
        self.inner = inner
        self.location = inner.location
        self.signer = signer
        sig_len = 32 if signer.method == "hmac" else 64  # HMAC-SHA256, Ed25519
        self.trailer_size = len(SIG_MARK) + len(f"{signer.method} {signer.key_id} ") + len(
            base64.b64encode(bytes(sig_len))) + 1  # what the signature line adds to a manifest

    def put(self, key: str, data: bytes | bytearray | memoryview, *, sha256: bytes | None = None,
            if_absent: bool = False, retain: bool = True) -> None:
        if not key.startswith(SIGNED_PREFIXES):
            return self.inner.put(key, data, sha256=sha256, if_absent=if_absent, retain=retain)
        body = bytes(data)
        _check_digest(self.location, key, body, sha256)
        sig = base64.b64encode(self.signer.sign(body))
        signed = body + SIG_MARK + f"{self.signer.method} {self.signer.key_id} ".encode() + sig + b"\n"
        self.inner.put(key, signed, sha256=hashlib.sha256(signed).digest(), if_absent=if_absent, retain=retain)

    def _open(self, key: str, blob: bytes) -> tuple[bytes, ManifestSigner]:
        """The manifest's body and the key whose valid signature it carries; ``IntegrityError`` otherwise."""
        where = f"{self.location}: manifest {key!r}"
        try:
            parts = split_signed(blob)
        except ValueError:
            raise IntegrityError(f"{where} has a malformed signature line; refusing it") from None
        if parts is None:
            raise IntegrityError(f"{where} carries no signature although manifest signing is on: it was written "
                                 "without the signing key, or edited; refusing it")
        body, method, kid, sig = parts
        key_used = self.signer.verifier(method, kid)
        if key_used is None:
            raise IntegrityError(
                f"{where} is signed with {method} key {kid}, neither this configuration's {self.signer.method} key "
                f"{self.signer.key_id} ({self.signer.source}) nor one of its previous keys: wrong key, or forged. After "
                "a key rotation, list the old key in manifest_signing.previous_public_keys (hmac: "
                "previous_hmac_key_envs)")
        if not key_used.verify(body, sig):
            raise IntegrityError(f"{where} fails its signature check: edited or forged after it was written; "
                                 "refusing it. `llmdr verify --repair` restores it from another region")
        return body, key_used

    def get(self, key: str, *, start: int = 0, length: int | None = None, version_id: str | None = None) -> bytes:
        if not key.startswith(SIGNED_PREFIXES):
            return self.inner.get(key, start=start, length=length, version_id=version_id)
        body, _ = self._open(key, self.inner.get(key, version_id=version_id))
        if start or length is not None:
            end = len(body) if length is None else start + length
            return body[start:end]
        return body

    def resign(self, key: str, *, dry_run: bool = False) -> bool:
        """Verify manifest ``key`` and, when a previous key signed it, write it again signed with the current key
        (a new version; the body, hence every id and hash of it, is unchanged). False when the current key already
        signed it. A manifest that does not verify raises ``IntegrityError`` and is never re-signed."""
        body, key_used = self._open(key, self.inner.get(key))
        if key_used is self.signer:
            return False
        if not dry_run:
            self.put(key, body, sha256=hashlib.sha256(body).digest())
        return True

    def open_range(self, key: str, start: int, length: int, *, version_id: str | None = None) -> RangeReader:
        if not key.startswith(SIGNED_PREFIXES):
            return self.inner.open_range(key, start, length, version_id=version_id)
        return super().open_range(key, start, length, version_id=version_id)

    def _sized(self, info: BlobInfo) -> BlobInfo:
        """Sizes are the manifest's own (as ``get`` returns it), without the signature line."""
        if not info.key.startswith(SIGNED_PREFIXES):
            return info
        return BlobInfo(info.key, max(0, info.size - self.trailer_size), info.modified)

    def list_versions(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[VersionInfo]:
        for v in self.inner.list_versions(prefix, start_after=start_after):
            signed = v.key.startswith(SIGNED_PREFIXES) and not v.is_delete_marker
            yield replace(v, size=max(0, v.size - self.trailer_size)) if signed else v

    def delete(self, key: str) -> None:
        self.inner.delete(key)


def _check_digest(location: str, key: str, data: bytes | bytearray | memoryview, sha256: bytes | None) -> None:
    """A verified put (``sha256`` given) of bytes a wrapper transforms before sending: check them here."""
    if sha256 is not None and hashlib.sha256(data).digest() != sha256:
        raise IntegrityError(f"{location}/{key}: the bytes sent do not match the SHA-256 given; nothing was written")


def load_ed25519(private_path: Path, public_path: Path, *, create: bool) -> tuple[Any, Any]:
    """(private key or None, public key). With ``create``, a missing pair is made (private key 0600)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    private = None
    if private_path.exists():
        private = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise ConfigError(f"{private_path} is not an Ed25519 private key")
    elif create and not public_path.exists():
        private = Ed25519PrivateKey.generate()
        private_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    if public_path.exists():
        public = serialization.load_pem_public_key(public_path.read_bytes())
        if not isinstance(public, Ed25519PublicKey):
            raise ConfigError(f"{public_path} is not an Ed25519 public key")
    elif private is not None:
        public = private.public_key()
        from llmdr.common.files import atomic_write

        public_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(public_path, public.public_bytes(serialization.Encoding.PEM,  # never through a planted link
                                                      serialization.PublicFormat.SubjectPublicKeyInfo), mode=0o644)
    else:
        raise ConfigError(f"manifest signing is ed25519 but neither {private_path} nor {public_path} exists: copy "
                          "the public key (to verify) or the private key (to write snapshots) here")
    return private, public


def load_ed25519_public(path: Path, setting: str) -> Any:
    """An Ed25519 public key from a PEM file named by ``setting`` (for messages); ``ConfigError`` when it is missing
    or not one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"{setting}: {path} does not exist; give the PEM public key of the earlier signing key "
                          "(the old keys/manifest-signing.pub), or remove the entry") from None
    except ValueError as exc:
        raise ConfigError(f"{setting}: {path} is not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{setting}: {path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key
