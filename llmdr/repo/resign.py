"""`llmdr sign-manifests`: after a manifest-signing key rotation, write every signed object of a region (snapshot
records, v1 manifests, catalog entries and segments: ``SIGNED_PREFIXES``) again under the current key, so that the
old key can then be removed from ``manifest_signing.previous_*``.

Each object is verified first, with the current key or one of the previous ones, and only then re-signed; its body
is written unchanged (a new version of the same key), so every id and hash stays the same and caches stay valid. An
object that does not verify (no signature, an unknown key, a bad signature, damaged) is never re-signed: re-signing
it would launder a forgery. It is reported and left as it is.

Refused in a region under COMPLIANCE Object Lock: the versions signed with the old key cannot be removed or
replaced before their retention ends, and reads of the past (``--as-of``, versions hidden by a delete marker) still
find them, so the old key must stay listed anyway; a new locked version of each object would only add storage.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from llmdr.config import Config, Region
from llmdr.errors import IntegrityError, ObjectNotFound, UsageError
from llmdr.storage.crypto import SIGNED_PREFIXES, SigningStore

log = logging.getLogger(__name__)

COMPLIANCE = "COMPLIANCE"


@dataclass
class ResignResult:
    region: str
    key_id: str  # the current key's id: what every re-signed object now carries
    dry_run: bool = False
    resigned: list[str] = field(default_factory=list)  # keys signed by a previous key (re-signed unless dry_run)
    current: int = 0  # objects the current key had signed already
    refused: dict[str, str] = field(default_factory=dict)  # key -> why it does not verify (left as it is)

    @property
    def ok(self) -> bool:
        return not self.refused

    def to_json(self) -> dict:
        return {"region": self.region, "key_id": self.key_id, "dry_run": self.dry_run, "resigned": self.resigned,
                "current": self.current, "refused": self.refused, "ok": self.ok}


def refuse_compliance(store: SigningStore, region: str) -> None:
    """``UsageError`` when the region keeps its objects under COMPLIANCE Object Lock (its configured lock, or the
    bucket's default retention)."""
    policy = store.lock_policy()
    default = store.bucket_protection().get("default_retention") or {}
    if COMPLIANCE not in ((policy.mode if policy else None), default.get("mode")):
        return
    raise UsageError(
        f"sign-manifests refused in region '{region}': it keeps every object under COMPLIANCE Object Lock, so the "
        "versions signed with the old key can be neither replaced nor deleted before their retention ends, and reads "
        "of the past (--as-of, locked versions hidden by a delete marker) still need the old key. Nothing was "
        "written. Keep the old key listed in manifest_signing.previous_public_keys (hmac: previous_hmac_key_envs): "
        "its objects keep verifying, and new ones are signed with the current key")


def resign_manifests(store: SigningStore, region: str, *, dry_run: bool = False, lock_wait_s: float = 0.0,
                     workers: int = 8) -> ResignResult:
    """Verify every signed object of ``store`` and re-sign with the current key those a previous key signed (with
    ``dry_run`` only count them). Holds the repository's exclusive lock while writing, so no snapshot, replicate or
    prune runs meanwhile."""
    from contextlib import nullcontext

    from llmdr.repo.repolock import hold

    refuse_compliance(store, region)
    res = ResignResult(region, store.signer.key_id, dry_run)

    def one(key: str) -> tuple[str, bool | None, str]:
        try:
            return key, store.resign(key, dry_run=dry_run), ""
        except ObjectNotFound:
            return key, False, "gone"  # deleted since it was listed (a forget, a prune): nothing to sign
        except IntegrityError as exc:
            return key, None, str(exc)

    guard = nullcontext() if dry_run else hold(store, "exclusive", "sign-manifests", wait_s=lock_wait_s)
    with guard as lock, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llmdr-resign") as pool:
        keys = [info.key for prefix in SIGNED_PREFIXES for info in store.list(prefix)]
        for key, changed, why in pool.map(one, keys):
            if changed is None:
                res.refused[key] = why
                log.warning("%s: %s not re-signed: %s", region, key, why)
            elif changed:
                res.resigned.append(key)
            elif why != "gone":
                res.current += 1
        if lock is not None:
            lock.check()  # a lock lost while writing is reported, not passed over
    log.info("%s: %d manifest(s) %s with key %s, %d already, %d refused", region, len(res.resigned),
             "to re-sign" if dry_run else "re-signed", res.key_id, res.current, len(res.refused))
    return res


def sign_manifests(cfg: Config, region: Region, *, dry_run: bool = False, lock_wait_s: float = 0.0) -> ResignResult:
    """`llmdr sign-manifests`: ``resign_manifests`` on the configured region (``ConfigError`` without
    ``manifest_signing``)."""
    from llmdr.storage.factory import open_signing

    store = open_signing(cfg, region, create=not dry_run)
    return resign_manifests(store, region.name, dry_run=dry_run, lock_wait_s=lock_wait_s,
                            workers=max(1, cfg.transfer.workers))
