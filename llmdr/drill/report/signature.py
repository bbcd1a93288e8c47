"""The report's signature section: what is signed, by which key (id and fingerprint), where the public key is, and
how to verify with OpenSSL alone (the full recipes, with ten lines of Python, are in the folder's README.md)."""

from __future__ import annotations

from typing import Any

from llmdr.drill.portable import (
    DEFAULT_HMAC_ENV,
    OPENSSL_RECIPE,
    PUBLIC_KEY_FILE,
    README_FILE,
    SUMS_FILE,
    SUMS_HMAC_FILE,
    SUMS_SIG_FILE,
    hmac_recipe,
)
from llmdr.drill.report.doc import kv

VERIFY_HINT = "llmdr report verify <folder>"


def signature_blocks(record: dict, *, runbook: str | None = None) -> list[Any]:
    signer = record.get("signer") if isinstance(record.get("signer"), dict) else None
    what = (f"evidence.json, the charts, {'the runbook, ' if runbook else ''}this HTML and the PDF are listed with "
            "their SHA-256 in SIGNATURE.json and signed (Ed25519, or HMAC-SHA256 with a key from the environment). "
            f"Editing any byte of any file makes verification fail. Verify offline with `{VERIFY_HINT}`, or "
            f"`llmdr report verify .` inside the folder.")
    if signer is None:
        return [what]
    if signer.get("algorithm") == "hmac-sha256":
        key_env = signer.get("key_env") or DEFAULT_HMAC_ENV
        return [what, kv([("Algorithm", "HMAC-SHA256 (a shared secret: verifying needs the same key)"),
                          ("Key id", signer.get("key_id")), ("Key held in", signer.get("key_env")),
                          ("Files for checking without llmdr", f"{SUMS_FILE}, {SUMS_HMAC_FILE}, {README_FILE}")],
                         caption="Signing key"),
                f"Without llmdr, in the report folder (with the key in {key_env}): "
                + "; then ".join(f"`{c}`" for c in hmac_recipe(key_env)) + "."]
    return [
        what,
        kv([("Algorithm", "Ed25519"), ("Key id", signer.get("key_id")),
            ("Key fingerprint", f"SHA-256 of the raw public key: {signer.get('fingerprint')}"),
            ("Public key", f"{signer.get('public_key') or PUBLIC_KEY_FILE}, in this folder (PEM)"),
            ("Files for checking without llmdr", f"{SUMS_FILE} (every file's SHA-256), {SUMS_SIG_FILE} (its Ed25519 "
                                                 f"signature), {README_FILE} (the recipes)")],
           caption="Signing key"),
        "The public key in the folder only proves that the files match it: compare its fingerprint with the one "
        "the signer published elsewhere (key register, runbook, ticket) before trusting the report.",
        ("list", [f"{c}" for c in OPENSSL_RECIPE]),
        "Run in the report folder with OpenSSL 3 and coreutils: the first command prints the fingerprint, the second "
        "\"Signature Verified Successfully\", the third \"OK\" for every file. README.md has the same check in ten "
        "lines of Python (cryptography).",
    ]
