"""Tamper evidence for drill reports: sign a report folder, verify it offline.

``SIGNATURE.json`` lists every other file of the folder with its SHA-256 and size, and carries a signature over the
canonical JSON (sorted keys, no whitespace) of everything else in it: format, algorithm, key id, time, the drill id
(the folder's name) and that file list. Verification recomputes every hash, so a changed, missing or added file
fails; and because SIGNATURE.json itself must be byte-identical to its canonical rendering, editing any byte
anywhere in the folder fails too. The folder must be named after the drill it was signed for, so a valid report
renamed or copied under another drill's id is refused. A signed folder holds regular files only (and the
subfolders they are in): a symlink, FIFO, socket, device file or extra folder is refused, when signing and when
verifying, and no file is opened through a link or without checking that it is a regular file. Signatures of format
1 (before the drill id was signed) still verify when their signed ``evidence.json`` names the folder's drill.

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
import stat
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
FORMAT = "llmdr-report-signature/2"
FORMAT_V1 = "llmdr-report-signature/1"  # no drill_id: verified against the signed evidence.json's id instead
EVIDENCE_FILE = "evidence.json"
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
    drill_id: str | None = None  # the drill the signature was made for

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": self.problems, "key_id": self.key_id, "algorithm": self.algorithm,
                "signed_utc": self.signed_utc, "drill_id": self.drill_id, "files": self.files}


# --- canonical bytes -----------------------------------------------------------------------------------------------
def canonical(obj: Any) -> bytes:
    """The bytes that are signed: sorted keys, no insignificant whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _render(doc: dict[str, Any]) -> bytes:
    """SIGNATURE.json's exact bytes. Verification re-renders the parsed file and compares, so even a whitespace
    edit that leaves the JSON meaning unchanged is detected."""
    return (json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode("ascii")


def _open_regular(path: Path) -> tuple[Any, int]:
    """(binary file object, size) of a regular file, opened without following a link and without blocking on a FIFO
    that replaced it since the folder was listed; ``UsageError`` for anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise UsageError(f"{path}: cannot be opened as a regular file ({exc.strerror}); a signed report holds "
                         "regular files only") from None
    fh = os.fdopen(fd, "rb")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        fh.close()
        raise UsageError(f"{path} is {_kind(st.st_mode)}, not a regular file; a signed report holds regular files "
                         "only")
    return fh, st.st_size


def _sha256_file(path: Path) -> tuple[str, int]:
    """(SHA-256, size) of a regular file (``_open_regular``)."""
    fh, size = _open_regular(path)
    with fh:
        h = hashlib.sha256()
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest(), size


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device file"),
                       (stat.S_ISBLK, "a block device file"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


@dataclass
class _Scan:
    """What a report folder holds, by POSIX path relative to it: regular files (the signature excluded), subfolders,
    and anything else (symlinks, FIFOs, sockets, devices) with what it is. Nothing is followed or opened."""

    files: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    special: dict[str, str] = field(default_factory=dict)


def _scan(folder: Path) -> _Scan:
    out = _Scan()
    todo = [(folder, "")]
    while todo:
        path, rel = todo.pop()
        with os.scandir(path) as it:
            for entry in it:
                name = f"{rel}{entry.name}"
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISDIR(mode):
                    out.folders.append(name)
                    todo.append((Path(entry.path), name + "/"))
                elif stat.S_ISREG(mode):
                    if name != SIGNATURE_FILE:
                        out.files.append(name)
                else:
                    out.special[name] = _kind(mode)
    out.files.sort()
    out.folders.sort()
    return out


def _special_problem(rel: str, kind: str) -> str:
    return f"{rel} is {kind}; a signed report holds regular files only: remove it"


def _file_entries(folder: Path) -> list[dict[str, Any]]:
    scan = _scan(folder)
    for rel, kind in sorted(scan.special.items()):
        hint = " (copy the file in instead of linking it)" if kind == "a symbolic link" else ""
        raise UsageError(f"{folder}: {_special_problem(rel, kind)}{hint}")
    used = {str(Path(f).parent.as_posix()) for f in scan.files}
    for d in scan.folders:
        if not any(u == d or u.startswith(d + "/") for u in used):
            raise UsageError(f"{folder}: folder {d} holds no file; a signed report holds no empty folders: remove it")
    entries = []
    for rel in scan.files:
        digest, size = _sha256_file(folder / rel)
        entries.append({"path": rel, "sha256": digest, "size": size})
    return entries


def drill_id_of(folder: Path) -> str:
    """The drill a report folder stands for: its name (``.`` and ``..`` resolved, links not followed)."""
    return Path(os.path.abspath(folder)).name


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


def sign_folder(folder: Path, settings: Signing, state_dir: Path, env: Mapping[str, str] = os.environ, *,
                portable: bool = False) -> dict[str, Any]:
    """Write ``folder/SIGNATURE.json`` covering every other file in the folder and the folder's name (the drill
    id); return its content. A symlink, FIFO, socket, device file or empty folder in it is refused (``UsageError``).
    ``portable``: first write the files that let anyone verify without llmdr (:mod:`llmdr.drill.portable`).

    Signing again replaces the previous signature (call it after the last file is written)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"cannot sign {folder}: not a folder; give the drill report folder")
    priv = key = None
    if settings.method == "hmac":
        key = hmac_key_from_env(settings, env)
        head = {"algorithm": HMAC_SHA256, "key_id": hmac_key_id(key)}
    else:
        priv, _ = ensure_keypair(settings, state_dir)
        head = {"algorithm": ED25519, "key_id": ed25519_key_id(_raw_public(priv.public_key()))}
    if portable:
        from llmdr.drill import portable as pt

        pt.write_key_and_readme(folder, key_id=head["key_id"], drill_id=drill_id_of(folder), private_key=priv,
                                 hmac_key_env=settings.hmac_key_env)
    entries = _file_entries(folder)
    if portable:
        entries = pt.write_sums(folder, entries, private_key=priv, hmac_key=key)
    payload: dict[str, Any] = {"format": FORMAT, "signed_utc": _now_utc(), "drill_id": drill_id_of(folder),
                               "files": entries} | head
    sig = hmac.new(key, canonical(payload), hashlib.sha256).digest() if priv is None else priv.sign(canonical(payload))
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
    scan = _scan(folder)
    present = set(scan.files)
    for rel, e in sorted(listed.items()):
        if rel in scan.special:
            problems.append(f"{rel}: is {scan.special[rel]}, not the signed file")
        elif rel not in present:
            problems.append(f"{rel}: missing (listed in the signature, not in the folder)")
        else:
            try:
                digest, size = _sha256_file(folder / rel)
            except UsageError as exc:  # replaced since the listing
                problems.append(str(exc))
                continue
            if digest != e.get("sha256"):
                problems.append(f"{rel}: SHA-256 differs from the signed value"
                                + (f" (size {size} bytes, signed {e.get('size')})" if size != e.get("size") else ""))
            elif size != e.get("size"):
                problems.append(f"{rel}: size {size} bytes differs from the signed {e.get('size')}")
    used = {p.rsplit("/", 1)[0] for p in listed if "/" in p}
    extra = [(rel, f"extra file not covered by the signature: {rel}") for rel in present - set(listed)]
    extra += [(rel, f"extra folder not covered by the signature: {rel}/ (remove it)") for rel in scan.folders
              if not any(u == rel or u.startswith(rel + "/") for u in used)]
    extra += [(rel, _special_problem(rel, kind)) for rel, kind in scan.special.items() if rel not in listed]
    problems.extend(msg for _, msg in sorted(extra))


def _check_identity(folder: Path, doc: dict[str, Any], files: list[dict[str, Any]], problems: list[str]) -> str | None:
    """The drill id the signature vouches for, with a problem when the folder is not named after it. Format 1
    signed no drill id: its signed evidence.json's ``id`` stands in for it."""
    name = drill_id_of(folder)
    if doc.get("format") == FORMAT_V1:
        claimed = _signed_evidence_id(folder, files)
        if claimed is None:
            problems.append(f"{SIGNATURE_FILE}: format 1 signs no drill id and the folder holds no signed "
                            f"{EVIDENCE_FILE} naming one, so which drill this report is for cannot be proven")
            return None
    else:
        claimed = doc.get("drill_id")
        if not isinstance(claimed, str) or not claimed:
            problems.append(f"{SIGNATURE_FILE}: no drill id signed; the report's identity cannot be proven")
            return None
    if claimed != name:
        problems.append(f"this report was signed for drill {claimed!r} but the folder is named {name!r}: a report "
                        "renamed or copied under another drill's id. Use the report of that drill, or rename the "
                        f"folder back to {claimed!r}")
    return claimed


def _signed_evidence_id(folder: Path, files: list[dict[str, Any]]) -> str | None:
    """The ``id`` in evidence.json when that file is listed in the signature and matches its signed hash."""
    entry = next((e for e in files if isinstance(e, dict) and e.get("path") == EVIDENCE_FILE), None)
    if entry is None:
        return None
    try:
        fh, _ = _open_regular(folder / EVIDENCE_FILE)
        with fh:
            data = fh.read()
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            return None  # the file check reports the difference
        rid = json.loads(data.decode("utf-8")).get("id")
    except (UsageError, OSError, ValueError, AttributeError):
        return None
    return rid if isinstance(rid, str) and rid else None


def verify_folder(folder: Path, *, public_key: Path | None = None, hmac_key: bytes | None = None) -> VerifyResult:
    """Check a signed report folder offline. Problems are returned, not raised: ``ok`` is True only when the
    signature is valid for the given key and every file is exactly as signed, with nothing added.

    Raises :class:`UsageError` only when the check cannot be made: no folder, or no key of the signing method."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder; give the drill report folder (it holds {SIGNATURE_FILE})")
    sig_path = folder / SIGNATURE_FILE
    try:
        mode = os.lstat(sig_path).st_mode
    except FileNotFoundError:
        return VerifyResult(False, [f"{SIGNATURE_FILE} missing: the folder is not signed (or the signature was removed)"])
    if not stat.S_ISREG(mode):
        return VerifyResult(False, [f"{SIGNATURE_FILE} is {_kind(mode)}, not the report's own signature file: "
                                    "the folder cannot be verified"])
    fh, _ = _open_regular(sig_path)
    with fh:
        raw = fh.read()
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
    if doc.get("format") not in (FORMAT, FORMAT_V1):
        problems.append(f"{SIGNATURE_FILE}: unknown format {doc.get('format')!r} (expected {FORMAT})")
    if _render(doc) != raw:
        problems.append(f"{SIGNATURE_FILE}: bytes differ from its canonical form (the file was edited)")
    sig_b64 = doc.get("signature")
    try:
        sig = base64.b64decode(sig_b64, validate=True) if isinstance(sig_b64, str) else None
    except ValueError:
        sig = None
    payload = {k: v for k, v in doc.items() if k != "signature"}
    pub = None
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
    result.drill_id = _check_identity(folder, doc, files, problems)
    _check_files(folder, files, problems)
    if not problems:  # the files are as signed: SHA256SUMS and its signature must agree with SIGNATURE.json
        from llmdr.drill.portable import check_portable

        check_portable(folder, files, public_key=pub if algorithm == ED25519 else None,
                       hmac_key=hmac_key if algorithm == HMAC_SHA256 else None, problems=problems)
    result.ok = not problems
    return result
