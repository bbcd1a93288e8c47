"""Tamper evidence for drill reports: sign a report folder, verify it offline.

``SIGNATURE.json`` lists every other file of the folder with its SHA-256 and size, and carries a signature over the
canonical JSON (sorted keys, no whitespace) of everything else in it: format, algorithm, key id, time and that file
list. Verification recomputes every hash, so a changed, missing or added file fails; and because SIGNATURE.json
itself must be byte-identical to its canonical rendering, editing any byte anywhere in the folder fails too.

Two methods:

* **Ed25519** (default): a key pair under the state folder is made on first use (private key 0600, never
  overwritten); an auditor verifies with the public key file alone. The signature embeds the key's fingerprint, so
  verifying with another key says "signed by key X, you gave key Y" rather than just "bad signature".
* **HMAC-SHA256**: the key comes from an environment variable; whoever verifies needs the same secret.

The key id of an HMAC key is an HMAC of a fixed label, so it names the key without revealing anything about it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llmdr.common.files import atomic_write
from llmdr.config import Signing
from llmdr.errors import ConfigError, UsageError

log = logging.getLogger(__name__)

SIGNATURE_FILE = "SIGNATURE.json"
FORMAT = "llmdr-report-signature/1"
ED25519 = "ed25519"
HMAC_SHA256 = "hmac-sha256"
MIN_HMAC_KEY_BYTES = 16
_CHUNK = 1 << 20


@dataclass
class VerifyResult:
    ok: bool
    problems: list[str]
    key_id: str | None = None
    algorithm: str | None = None
    files: list[dict[str, Any]] = field(default_factory=list)  # the signed list: [{path, sha256, size}]
    signed_utc: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": self.problems, "key_id": self.key_id, "algorithm": self.algorithm,
                "signed_utc": self.signed_utc, "files": self.files}


# --- canonical bytes -----------------------------------------------------------------------------------------------
def canonical(obj: Any) -> bytes:
    """The bytes that are signed: sorted keys, no insignificant whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _render(doc: dict[str, Any]) -> bytes:
    """SIGNATURE.json's exact bytes. Verification re-renders the parsed file and compares, so even a whitespace
    edit that leaves the JSON meaning unchanged is detected."""
    return (json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode("ascii")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _listing(folder: Path) -> list[str]:
    """Every file under ``folder`` except the signature itself, as sorted POSIX paths relative to it."""
    out = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).as_posix()
        if rel == SIGNATURE_FILE:
            continue
        if p.is_symlink():
            out.append(rel)  # listed, so sign_folder can refuse it and verify_folder can name it
        elif p.is_file():
            out.append(rel)
    return sorted(out)


def _file_entries(folder: Path) -> list[dict[str, Any]]:
    entries = []
    for rel in _listing(folder):
        p = folder / rel
        if p.is_symlink():
            raise UsageError(f"{folder}: {rel} is a symbolic link; a signed report holds regular files only "
                             "(copy the file in instead of linking it)")
        entries.append({"path": rel, "sha256": _sha256_file(p), "size": p.stat().st_size})
    return entries


# --- keys ----------------------------------------------------------------------------------------------------------
def _raw_public(pub: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def ed25519_key_id(raw_public: bytes) -> str:
    return f"{ED25519}:{hashlib.sha256(raw_public).hexdigest()[:32]}"


def hmac_key_id(key: bytes) -> str:
    return f"{HMAC_SHA256}:{hmac.new(key, b'llmdr report signing key id', hashlib.sha256).hexdigest()[:32]}"


def key_paths(settings: Signing, state_dir: Path) -> tuple[Path, Path]:
    """(private, public) key paths of the Ed25519 pair, resolved against the state folder."""

    def resolve(p: str) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() else state_dir / path

    return resolve(settings.private_key), resolve(settings.public_key)


def load_public_key(path: Path) -> Any:
    """An Ed25519 public key from a PEM (SubjectPublicKeyInfo) file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"public key {path} does not exist; give the report-signing public key "
                         "(keys/report-signing.pub in the signer's state folder)") from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise UsageError(f"{path} is not a PEM public key ({exc}); give the .pub file written next to the "
                         "report-signing private key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key; give the .pub file "
                         "written by llmdr next to the report-signing private key")
    return key


def _load_private_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"report-signing key {path} cannot be read as an unencrypted PEM private key ({exc}); "
                          "restore the original file, or move it away to have a new pair made") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"report-signing key {path} is a {type(key).__name__}, not Ed25519; point "
                          "drill.signing.private_key at an Ed25519 key, or move it away to have one made")
    return key


def _pem_public(pub: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def ensure_keypair(settings: Signing, state_dir: Path) -> tuple[Any, Path]:
    """The Ed25519 private key and the public key's path, making the pair on first use.

    An existing private key is never overwritten. A missing public key is re-derived from the private one; a
    public key without its private key, or a pair that does not match, is an error (a new private key would not
    match the public key auditors already hold)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    priv_path, pub_path = key_paths(settings, state_dir)
    if not priv_path.exists():
        if pub_path.exists():
            raise ConfigError(f"report-signing public key {pub_path} exists but its private key {priv_path} does not; "
                              "restore the private key, or move the public key away to have a new pair made "
                              "(and give auditors the new public key)")
        priv_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            # O_EXCL: if another process made the key meanwhile, keep theirs
            fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
            log.info("made a new report-signing key pair: %s (%s)", priv_path, ed25519_key_id(_raw_public(key.public_key())))
    mode = priv_path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("report-signing key %s is readable by others (mode %o); run chmod 600 %s", priv_path, mode, priv_path)
    key = _load_private_key(priv_path)
    if not pub_path.exists():
        atomic_write(pub_path, _pem_public(key.public_key()), mode=0o644)
    elif _raw_public(load_public_key(pub_path)) != _raw_public(key.public_key()):
        raise ConfigError(f"report-signing keys do not match: {pub_path} is not the public half of {priv_path}; "
                          "restore the matching file, or move both away to have a new pair made")
    return key, pub_path


def hmac_key_from_env(settings: Signing, env: Mapping[str, str] = os.environ) -> bytes:
    value = env.get(settings.hmac_key_env)
    if not value:
        raise ConfigError(f"drill.signing.method is hmac but the environment variable {settings.hmac_key_env} is "
                          f"not set; set it to a secret of at least {MIN_HMAC_KEY_BYTES} bytes "
                          f"(e.g. `export {settings.hmac_key_env}=$(openssl rand -hex 32)`), or use method: ed25519")
    key = value.encode("utf-8")
    if len(key) < MIN_HMAC_KEY_BYTES:
        raise ConfigError(f"{settings.hmac_key_env} holds only {len(key)} bytes; a report-signing HMAC key needs at "
                          f"least {MIN_HMAC_KEY_BYTES} (e.g. `export {settings.hmac_key_env}=$(openssl rand -hex 32)`)")
    return key


def verify_keys(settings: Signing, state_dir: Path, env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The keys this installation can verify with, as keyword arguments for :func:`verify_folder`: the Ed25519
    public key file if it exists, the HMAC key if its variable is set. Nothing is created."""
    out: dict[str, Any] = {}
    _, pub = key_paths(settings, state_dir)
    if pub.exists():
        out["public_key"] = pub
    value = env.get(settings.hmac_key_env)
    if value:
        out["hmac_key"] = value.encode("utf-8")
    return out


# --- sign ----------------------------------------------------------------------------------------------------------
def _now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sign_folder(folder: Path, settings: Signing, state_dir: Path,
                env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Write ``folder/SIGNATURE.json`` covering every other file in the folder; return its content.

    Signing again replaces the previous signature (call it after the last file is written)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"cannot sign {folder}: not a folder; give the drill report folder")
    payload: dict[str, Any] = {"format": FORMAT, "signed_utc": _now_utc(), "files": _file_entries(folder)}
    if settings.method == "hmac":
        key = hmac_key_from_env(settings, env)
        payload |= {"algorithm": HMAC_SHA256, "key_id": hmac_key_id(key)}
        sig = hmac.new(key, canonical(payload), hashlib.sha256).digest()
    else:
        priv, _ = ensure_keypair(settings, state_dir)
        payload |= {"algorithm": ED25519, "key_id": ed25519_key_id(_raw_public(priv.public_key()))}
        sig = priv.sign(canonical(payload))
    doc = payload | {"signature": base64.b64encode(sig).decode("ascii")}
    atomic_write(folder / SIGNATURE_FILE, _render(doc), mode=0o644)
    log.info("signed %s: %d files, %s", folder, len(payload["files"]), payload["key_id"])
    return doc


# --- verify --------------------------------------------------------------------------------------------------------
def _check_files(folder: Path, signed: list[dict[str, Any]], problems: list[str]) -> None:
    listed = {}
    for e in signed:
        if not isinstance(e, dict) or not isinstance(e.get("path"), str):
            problems.append(f"{SIGNATURE_FILE}: malformed file entry {e!r}")
            continue
        listed[e["path"]] = e
    present = set(_listing(folder))
    for rel, e in sorted(listed.items()):
        p = folder / rel
        if rel not in present:
            problems.append(f"{rel}: missing (listed in the signature, not in the folder)")
        elif p.is_symlink():
            problems.append(f"{rel}: is a symbolic link, not the signed file")
        else:
            size = p.stat().st_size
            if _sha256_file(p) != e.get("sha256"):
                problems.append(f"{rel}: SHA-256 differs from the signed value"
                                + (f" (size {size} bytes, signed {e.get('size')})" if size != e.get("size") else ""))
            elif size != e.get("size"):
                problems.append(f"{rel}: size {size} bytes differs from the signed {e.get('size')}")
    for rel in sorted(present - set(listed)):
        problems.append(f"extra file not covered by the signature: {rel}")


def verify_folder(folder: Path, *, public_key: Path | None = None, hmac_key: bytes | None = None) -> VerifyResult:
    """Check a signed report folder offline. Problems are returned, not raised: ``ok`` is True only when the
    signature is valid for the given key and every file is exactly as signed, with nothing added.

    Raises :class:`UsageError` only when the check cannot be made: no folder, or no key of the signing method."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder; give the drill report folder (it holds {SIGNATURE_FILE})")
    sig_path = folder / SIGNATURE_FILE
    if not sig_path.is_file():
        return VerifyResult(False, [f"{SIGNATURE_FILE} missing: the folder is not signed (or the signature was removed)"])
    raw = sig_path.read_bytes()
    try:
        doc = json.loads(raw.decode("utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
    except (UnicodeDecodeError, ValueError) as exc:
        return VerifyResult(False, [f"{SIGNATURE_FILE}: not valid JSON ({exc}); it was edited or damaged"])
    problems: list[str] = []
    algorithm, key_id = doc.get("algorithm"), doc.get("key_id")
    files = doc.get("files") if isinstance(doc.get("files"), list) else []
    result = VerifyResult(False, problems, key_id if isinstance(key_id, str) else None,
                          algorithm if isinstance(algorithm, str) else None, files,
                          doc.get("signed_utc") if isinstance(doc.get("signed_utc"), str) else None)
    if doc.get("format") != FORMAT:
        problems.append(f"{SIGNATURE_FILE}: unknown format {doc.get('format')!r} (expected {FORMAT})")
    if _render(doc) != raw:
        problems.append(f"{SIGNATURE_FILE}: bytes differ from its canonical form (the file was edited)")
    sig_b64 = doc.get("signature")
    try:
        sig = base64.b64decode(sig_b64, validate=True) if isinstance(sig_b64, str) else None
    except ValueError:
        sig = None
    payload = {k: v for k, v in doc.items() if k != "signature"}
    if sig is None:
        problems.append(f"{SIGNATURE_FILE}: signature missing or not base64")
    elif algorithm == ED25519:
        if public_key is None:
            raise UsageError(f"{folder} is signed with Ed25519 key {key_id}; give its public key file "
                             "(keys/report-signing.pub in the signer's state folder) to verify it")
        from cryptography.exceptions import InvalidSignature

        pub = load_public_key(Path(public_key))
        given = ed25519_key_id(_raw_public(pub))
        if given != key_id:
            problems.append(f"signed by key {key_id}, you gave key {given} ({public_key}); verify with the signer's "
                            "public key")
        else:
            try:
                pub.verify(sig, canonical(payload))
            except InvalidSignature:
                problems.append(f"signature does not match the signed content ({SIGNATURE_FILE} was edited)")
    elif algorithm == HMAC_SHA256:
        if hmac_key is None:
            raise UsageError(f"{folder} is signed with HMAC-SHA256 key {key_id}; set the signer's key (by default in "
                             "LLMDR_REPORT_HMAC_KEY) to verify it")
        given = hmac_key_id(hmac_key)
        if given != key_id:
            problems.append(f"signed by key {key_id}, you gave key {given}; verify with the signer's HMAC key")
        elif not hmac.compare_digest(hmac.new(hmac_key, canonical(payload), hashlib.sha256).digest(), sig):
            problems.append(f"signature does not match the signed content ({SIGNATURE_FILE} was edited)")
    else:
        problems.append(f"{SIGNATURE_FILE}: unknown algorithm {algorithm!r} (expected {ED25519} or {HMAC_SHA256})")
    _check_files(folder, files, problems)
    result.ok = not problems
    return result
