"""Signatures on llmdr's records in the stores, with the project's manifest key (``manifest_signing``).

A record in a region's store is only as trustworthy as the keys that can write there: whoever holds one region's
write keys could add a failover record, a switch, or a pointer that puts *their* golden set in force, and a control
host rebuilding its view from the stores (``llmdr control restore``) would believe it. With ``manifest_signing``
configured, every record is written with a ``llmdr_signature`` field: the signer's method and key id and a signature
over the canonical JSON of {bundle, key, record} — so a signed record moved to another name or another bundle's
prefix does not verify either. Reads (``problem``) refuse a record without a signature, with an unknown key or with
one that does not verify. Without ``manifest_signing`` records are written and read unsigned, as before (readiness
and the docs say what that leaves open).

A verify-only host (an Ed25519 public key, no private key) writes its records unsigned with a warning rather than
failing a failover; other hosts then skip them on read, with a warning that says why.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from llmdr.config import Config
from llmdr.errors import LlmdrError

log = logging.getLogger(__name__)

SIG_FIELD = "llmdr_signature"


def _signer(cfg: Config, *, create: bool):
    from llmdr.storage.credentials import manifest_signer

    return manifest_signer(cfg, create=create)


def _body(cfg: Config, key: str, record: dict[str, Any]) -> bytes:
    doc = {"bundle": cfg.bundle.name, "key": key, "record": record}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def seal(cfg: Config, key: str, record: dict[str, Any]) -> dict[str, Any]:
    """RECORD with its signature field, when the project signs (else RECORD unchanged)."""
    record = {k: v for k, v in record.items() if k != SIG_FIELD}
    try:
        signer = _signer(cfg, create=True)
    except LlmdrError as exc:
        log.warning("record %s written unsigned: the manifest key is not usable here (%s); hosts that verify will "
                    "skip it", key, str(exc).splitlines()[0])
        return record
    if signer is None:
        return record
    if not signer.can_sign:
        log.warning("record %s written unsigned: this host holds only the public manifest key (%s); hosts that "
                    "verify will skip it", key, signer.source)
        return record
    sig = base64.b64encode(signer.sign(_body(cfg, key, record))).decode("ascii")
    return {**record, SIG_FIELD: {"method": signer.method, "key_id": signer.key_id, "value": sig}}


def problem(cfg: Config, key: str, record: dict[str, Any]) -> str | None:
    """Why RECORD (as read from KEY) must not be trusted; None when it verifies, or when the project does not sign.
    The caller drops the signature field (``unsealed``)."""
    signer = _signer(cfg, create=False)
    if signer is None:
        return None
    sig = record.get(SIG_FIELD)
    if not isinstance(sig, dict):
        return (f"not signed, and this project signs its records with its manifest key ({signer.source}): written "
                "before signing was on, by a host without the key, or by someone else with the region's write keys")
    try:
        method, kid, raw = str(sig["method"]), str(sig["key_id"]), base64.b64decode(str(sig["value"]), validate=True)
    except (KeyError, ValueError) as exc:
        return f"its signature field does not parse ({exc})"
    key_obj = signer.verifier(method, kid)
    if key_obj is None:
        return f"signed with {method} key {kid}, which is not this project's manifest key ({signer.key_id}) nor a " \
               "previous one listed for rotation"
    if not key_obj.verify(_body(cfg, key, unsealed(record)), raw):
        return f"its {method} signature (key {kid}) does not verify: the record was changed, or moved from another " \
               "name or bundle"
    return None


def unsealed(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != SIG_FIELD}
