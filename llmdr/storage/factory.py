"""Build the store for a configured region: S3 adapter, the retry layer, then encryption (if the region has it) and
manifest signatures (if configured): sign, then encrypt; read-only outermost.

``adapter`` and ``retrying`` are the two steps a test may replace (``tests/support/faults.py`` puts a fault store
between them); nothing in production switches test doubles on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from llmdr.config import Config, Region
from llmdr.storage.aws import quick_service_lookup
from llmdr.storage.base import BlobStore
from llmdr.storage.credentials import renewed_keys, resolve_keys
from llmdr.storage.readonly import ReadOnlyStore
from llmdr.storage.retrying import RetryingStore

if TYPE_CHECKING:
    from llmdr.storage.credentials import Keys
    from llmdr.storage.crypto import SigningStore
    from llmdr.storage.s3 import S3Store

log = logging.getLogger(__name__)


def open_region(cfg: Config, region: Region, *, read_only: bool = False, attempts: int = 4,
                sealed: bool = True, as_of: float | None = None, use_hidden: bool = False,
                hidden: dict[str, dict[str, Any]] | None = None) -> BlobStore:
    """The region's store. ``sealed=False`` leaves out encryption and manifest signatures: for objects other tools
    write into the same bucket (DVC's remote), never for llmdr's own repository. ``as_of`` (seconds since the
    epoch) reads the region as it was then, read-only; ``use_hidden`` reads keys hidden by a delete marker over a
    locked version (recorded in ``hidden`` when given). Both sit right above the retry layer, below encryption and
    signing, since version reads return the stored bytes (``versioned.py``)."""
    store = retrying(adapter(cfg, region), region, attempts)
    if as_of is not None:
        from llmdr.storage.versioned import AsOfStore

        store = AsOfStore(store, as_of)
    if use_hidden:
        from llmdr.storage.versioned import HiddenVersionStore

        store = HiddenVersionStore(store, hidden)
    if sealed:
        store = _sealed(cfg, region, store, read_only=read_only)
    if read_only:
        store = ReadOnlyStore(store)
    return store


def adapter(cfg: Config, region: Region) -> S3Store:
    """The region's bare S3 adapter: no retries, no encryption, writable. For administration (creating the bucket)
    and as the bottom of ``open_region``'s stack."""
    from llmdr.common.gcpause import gc_paused

    with gc_paused():  # botocore's import: many objects, no garbage
        from llmdr.storage.s3 import shared_session

        quick_service_lookup(shared_session())
    keys = resolve_keys(cfg, region)  # may ask STS for an assumed role's keys: not inside the pause
    with gc_paused():  # the client's service model: ~100k objects of parsed JSON, no garbage
        return region_s3(
            region, keys, renew=lambda: renewed_keys(cfg, region),
            prefix=region.prefix,
            max_pool_connections=max(16, cfg.transfer.workers * 2),
            object_lock=((region.object_lock.mode, region.object_lock.period.total_seconds())
                         if region.object_lock else None),
        )


def region_s3(region: Region, keys: Keys, renew: Callable[[], Keys] | None = None, **options: Any) -> S3Store:
    """An ``S3Store`` on the region's bucket with ``keys``: its endpoint as botocore resolves it (llmdr.yaml, else
    AWS_ENDPOINT_URL_S3 / the profile's endpoint_url, else AWS S3), its addressing style and profile. ``renew``: for a
    region with ``role_arn``, where fresh keys come from once ``keys`` near their expiry (the client renews them
    itself). ``options``: more ``S3Store`` arguments (prefix, timeouts...)."""
    from llmdr.storage.s3 import S3Store

    common = dict(bucket=region.bucket, endpoint_url=region.endpoint, region_name=region.s3_region, name=region.name,
                  addressing_style=region.addressing_style, profile=region.credentials.profile,
                  keys_from=keys.source, **options)
    if region.credentials.role_arn and renew is not None and keys.expiration is not None:
        from llmdr.storage.aws import renewing_session

        def fresh() -> tuple[str, str, str | None, Any]:
            k = renew()
            return k.access_key_id, k.secret_access_key, k.session_token, k.expiration or keys.expiration

        first = (keys.access_key_id, keys.secret_access_key, keys.session_token, keys.expiration)
        return S3Store(access_key_id=None, secret_access_key=None,
                       botocore_session=renewing_session(region.credentials.profile, first, fresh), **common)
    if region.credentials.default_chain and not region.credentials.role_arn:
        # botocore's own chain: the client takes the session's self-refreshing credentials rather than the frozen
        # copy ``keys`` holds, so a transfer that outlives an SSO or web-identity session (~1 h) keeps going
        return S3Store(access_key_id=None, secret_access_key=None, **common)
    return S3Store(access_key_id=keys.access_key_id, secret_access_key=keys.secret_access_key,
                   session_token=keys.session_token, **common)


def retrying(store: BlobStore, region: Region, attempts: int) -> BlobStore:
    """The region's one request-level retry layer around ``store``."""
    return RetryingStore(store, attempts=attempts, name=region.name)


def _sealed(cfg: Config, region: Region, store: BlobStore, *, read_only: bool) -> BlobStore:
    from llmdr.storage.credentials import manifest_signer

    store = _encrypted(cfg, region, store)
    signer = manifest_signer(cfg, create=not read_only)
    if signer is None:  # signed manifests are then refused as "signed, key not configured", not read as damaged
        from llmdr.storage.unsigned import UnsignedReader

        return UnsignedReader(store, str(cfg.source_file or "llmdr.yaml"))
    from llmdr.storage.crypto import SigningStore

    return SigningStore(store, signer)


def _encrypted(cfg: Config, region: Region, store: BlobStore) -> BlobStore:
    from llmdr.storage.credentials import encryption_key

    key = encryption_key(cfg, region)
    if key is None:
        return store
    from llmdr.storage.crypto import EncryptingStore

    return EncryptingStore(store, key[0], key_source=key[1])


def open_signing(cfg: Config, region: Region, *, create: bool = True, attempts: int = 4) -> SigningStore:
    """The region's store, writable, with manifest signatures outermost: for `llmdr sign-manifests`, which needs to
    know which key signed each manifest (``create``: make a missing Ed25519 pair, as a writer does). ``ConfigError``
    when the config has no ``manifest_signing``."""
    from llmdr.errors import ConfigError
    from llmdr.storage.credentials import manifest_signer
    from llmdr.storage.crypto import SigningStore

    signer = manifest_signer(cfg, create=create)
    if signer is None:
        raise ConfigError(f"{cfg.source_file or 'llmdr.yaml'} has no manifest_signing: there is no key to sign "
                          "manifests with. Add manifest_signing (method and key) first")
    return SigningStore(_encrypted(cfg, region, retrying(adapter(cfg, region), region, attempts)), signer)
