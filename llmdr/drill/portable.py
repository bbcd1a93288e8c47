"""A drill report anyone can check without llmdr: standard files written into the folder before it is signed.

* ``report-signing.pub``: the signer's Ed25519 public key (PEM, as ``openssl`` and ``cryptography`` read it);
* ``SHA256SUMS``: every other file's SHA-256 in the ``sha256sum`` format (``sha256sum --check`` reads it);
* ``SHA256SUMS.sig``: the plain 64-byte Ed25519 signature of ``SHA256SUMS`` (``openssl pkeyutl -verify -rawin``),
  or ``SHA256SUMS.hmac`` (hex HMAC-SHA256, ``openssl dgst -hmac``) with an HMAC key;
* ``README.md``: the key id, the fingerprint and the recipes (OpenSSL + coreutils, ten lines of Python).

``SIGNATURE.json`` (:mod:`llmdr.drill.signing`) still covers every file, these included; ``llmdr report verify``
also checks that ``SHA256SUMS`` and its signature agree with it. The fingerprint is the SHA-256 of the raw 32-byte
public key; the key id (``ed25519:`` + its first 32 hex digits) is what SIGNATURE.json names.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Any

from llmdr.common.files import atomic_write
from llmdr.errors import UsageError

PUBLIC_KEY_FILE = "report-signing.pub"
SUMS_FILE = "SHA256SUMS"
SUMS_SIG_FILE = "SHA256SUMS.sig"
SUMS_HMAC_FILE = "SHA256SUMS.hmac"
README_FILE = "README.md"
# written after SHA256SUMS, so not listed in it (SIGNATURE.json lists them)
UNLISTED = frozenset({SUMS_FILE, SUMS_SIG_FILE, SUMS_HMAC_FILE, "SIGNATURE.json"})

OPENSSL_RECIPE = [
    f"openssl pkey -pubin -in {PUBLIC_KEY_FILE} -outform DER | tail -c 32 | sha256sum",
    f"openssl pkeyutl -verify -pubin -inkey {PUBLIC_KEY_FILE} -rawin -in {SUMS_FILE} -sigfile {SUMS_SIG_FILE}",
    f"sha256sum --check --strict {SUMS_FILE}",
]
DEFAULT_HMAC_ENV = "LLMDR_REPORT_HMAC_KEY"


def hmac_recipe(key_env: str = DEFAULT_HMAC_ENV) -> list[str]:
    """The shell commands that check an HMAC-signed folder, the key in the environment variable ``key_env`` (the
    config's ``drill.signing.hmac_key_env``, a validated variable name)."""
    return [f'openssl dgst -sha256 -hmac "${key_env}" -r {SUMS_FILE} | cut -c1-64 | cmp - {SUMS_HMAC_FILE} '
            "&& echo HMAC OK",
            f"sha256sum --check --strict {SUMS_FILE}"]
PYTHON_RECIPE = f'''import hashlib, pathlib
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

key = load_pem_public_key(pathlib.Path("{PUBLIC_KEY_FILE}").read_bytes())
print("fingerprint", hashlib.sha256(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest())
sums = pathlib.Path("{SUMS_FILE}").read_bytes()
key.verify(pathlib.Path("{SUMS_SIG_FILE}").read_bytes(), sums)  # raises InvalidSignature if anything changed
for line in sums.decode().splitlines():
    digest, name = line.split("  ", 1)
    assert hashlib.sha256(pathlib.Path(name).read_bytes()).hexdigest() == digest, f"{{name}} changed"
print("OK: signature valid, every file unchanged")
'''


def raw_public(pub: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(raw: bytes) -> str:
    """SHA-256 of the raw 32-byte Ed25519 public key, hex (``openssl pkey ... | tail -c 32 | sha256sum``)."""
    return hashlib.sha256(raw).hexdigest()


def expected_key(text: str) -> str:
    """A fingerprint given to compare (``--fingerprint``) as 64 lower-case hex digits, or ``ed25519:`` + 32 (a key
    id); colons and spaces between digit pairs, as some registers print them, are dropped. UsageError otherwise."""
    t = text.strip().lower()
    body = t.removeprefix("ed25519:").replace(":", "").replace(" ", "")
    want = 32 if t.startswith("ed25519:") else 64
    if len(body) != want or any(c not in "0123456789abcdef" for c in body):
        raise UsageError(f"--fingerprint {text!r}: give the signer's key fingerprint (64 hex digits, as the report and "
                         "`openssl pkey -pubin -in report-signing.pub -outform DER | tail -c 32 | sha256sum` print it) "
                         "or its key id (ed25519: and 32 hex digits)")
    return f"ed25519:{body}" if want == 32 else body


def fingerprint_problem(expected: str, actual: str | None) -> str | None:
    """Why a report signed by the key with fingerprint ``actual`` (None: not an Ed25519 signature) does not match
    ``expected`` (from :func:`expected_key`); None when it does."""
    if actual is None:
        return "--fingerprint was given but this report has no Ed25519 signature to compare it with"
    if actual == expected or ("ed25519:" + actual[:32]) == expected:
        return None
    return (f"signed by the key with fingerprint {actual}, not the one you expect ({expected}): the key beside the "
            "report is someone else's, so the report may be forged; get the report from its signer again")


def key_fingerprint(path: Path) -> str:
    """The fingerprint of a PEM public key file (one :mod:`llmdr.drill.signing` has already loaded)."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    return fingerprint(raw_public(load_pem_public_key(Path(path).read_bytes())))


def write_key_and_readme(folder: Path, *, key_id: str, drill_id: str, private_key: Any = None,
                         hmac_key_env: str = DEFAULT_HMAC_ENV) -> None:
    """Before the folder is hashed: the public key (Ed25519) and README.md in, stale SHA256SUMS files out."""
    for _, dirs, files in os.walk(folder):  # refused before anything in the folder changes
        for name in dirs + files:
            if "\n" in name or "\\" in name or "\r" in name:
                raise UsageError(f"{folder}: file name {name!r} holds a newline or backslash; rename it (a report's "
                                 f"{SUMS_FILE} lists plain names)")
    for stale in (SUMS_FILE, SUMS_SIG_FILE, SUMS_HMAC_FILE, PUBLIC_KEY_FILE):
        (folder / stale).unlink(missing_ok=True)
    fp = None
    if private_key is not None:
        from cryptography.hazmat.primitives import serialization

        pub = private_key.public_key()
        atomic_write(folder / PUBLIC_KEY_FILE, pub.public_bytes(serialization.Encoding.PEM,
                                                                serialization.PublicFormat.SubjectPublicKeyInfo),
                     mode=0o644)
        fp = fingerprint(raw_public(pub))
    atomic_write(folder / README_FILE, readme(drill_id, key_id, fp, hmac_key_env), mode=0o644)


def write_sums(folder: Path, entries: list[dict[str, Any]], *, private_key: Any = None,
               hmac_key: bytes | None = None) -> list[dict[str, Any]]:
    """SHA256SUMS from the folder's signed entries (``{path, sha256, size}``) and its Ed25519 signature or HMAC;
    returns the entries with those files added, sorted by path."""
    sums = "".join(f"{e['sha256']}  {e['path']}\n" for e in entries).encode("utf-8")
    out = {SUMS_FILE: sums}
    if private_key is not None:
        out[SUMS_SIG_FILE] = private_key.sign(sums)
    elif hmac_key is not None:
        out[SUMS_HMAC_FILE] = (hmac.new(hmac_key, sums, hashlib.sha256).hexdigest() + "\n").encode("ascii")
    added = []
    for name, data in out.items():
        atomic_write(folder / name, data, mode=0o644)
        added.append({"path": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
    return sorted(list(entries) + added, key=lambda e: e["path"])


def readme(drill_id: str, key_id: str, fp: str | None, hmac_key_env: str = DEFAULT_HMAC_ENV) -> str:
    head = [f"# DR drill report {drill_id}: how to check it", "",
            "`report.pdf` and `report.html` are the report, rendered from `evidence.json` (the drill's record). "
            f"`{SUMS_FILE}` lists every other file's SHA-256; `SIGNATURE.json` is llmdr's own signature over all of "
            "them. Any changed, missing or added byte makes the checks below fail.", "",
            f"Signing key: `{key_id}`"]
    if fp is None:
        return "\n".join(head + [
            "", f"Signed with HMAC-SHA256: checking needs the signer's secret key, in `{hmac_key_env}`.", "",
            "## Without llmdr (OpenSSL and coreutils)", "", "```sh", *hmac_recipe(hmac_key_env), "```", "",
            "## With llmdr", "", "```sh", "llmdr report verify .", "```", ""])
    return "\n".join(head + [
        f"Fingerprint (SHA-256 of the raw Ed25519 public key): `{fp}`", "",
        f"`{PUBLIC_KEY_FILE}` is the signer's public key. It only proves the files match it: compare its fingerprint "
        "with the one the signer gave you through another channel (key register, runbook, ticket).", "",
        "## Without llmdr (OpenSSL 3 and coreutils)", "", "```sh", *OPENSSL_RECIPE, "```", "",
        "The first command prints the fingerprint, the second `Signature Verified Successfully`, the third `OK` for "
        f"every file. Also check that the folder holds no file beyond those {SUMS_FILE} lists and {SUMS_FILE}, "
        f"{SUMS_SIG_FILE}, SIGNATURE.json (`ls`).", "",
        "## Without llmdr (Python and the `cryptography` package)", "", "```python", PYTHON_RECIPE.rstrip(), "```",
        "", "## With llmdr", "", "```sh", "llmdr report verify .", "```", ""])


def check_portable(folder: Path, signed: list[dict[str, Any]], *, public_key: Any = None, hmac_key: bytes | None = None,
                   problems: list[str]) -> None:
    """When the folder has ``SHA256SUMS``: it must list exactly the signed files (less the unlisted ones) with their
    signed digests, and its signature must verify with the same key as SIGNATURE.json's."""
    names = {e.get("path"): e.get("sha256") for e in signed if isinstance(e, dict)}
    if SUMS_FILE not in names:
        return
    try:
        text = (folder / SUMS_FILE).read_bytes()
        listed = {}
        for line in text.decode("utf-8").splitlines():
            digest, _, name = line.partition("  ")
            listed[name] = digest
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{SUMS_FILE}: cannot be read ({exc})")
        return
    expected = {n: d for n, d in names.items() if n not in UNLISTED}
    if listed != expected:
        problems.append(f"{SUMS_FILE} does not list the signed files with their signed digests")
    if public_key is not None and SUMS_SIG_FILE in names:
        from cryptography.exceptions import InvalidSignature

        try:
            public_key.verify((folder / SUMS_SIG_FILE).read_bytes(), text)
        except (InvalidSignature, OSError):
            problems.append(f"{SUMS_SIG_FILE} is not a valid signature of {SUMS_FILE} by this key")
    if hmac_key is not None and SUMS_HMAC_FILE in names:
        want = hmac.new(hmac_key, text, hashlib.sha256).hexdigest() + "\n"
        if (folder / SUMS_HMAC_FILE).read_text(encoding="utf-8", errors="replace") != want:
            problems.append(f"{SUMS_HMAC_FILE} is not the HMAC of {SUMS_FILE} with this key")
