"""Build the store for a configured region: S3 adapter, the retry layer, then encryption (if the region has it) and
manifest signatures (if configured): sign, then encrypt; read-only outermost.

``adapter`` and ``retrying`` are the two steps a test may replace (``tests/support/faults.py`` puts a fault store
between them); nothing in production switches test doubles on.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from llmdr.config import Config, Region
from llmdr.storage.base import BlobStore
from llmdr.storage.credentials import quick_service_lookup, resolve_keys
from llmdr.storage.readonly import ReadOnlyStore
from llmdr.storage.retrying import RetryingStore

if TYPE_CHECKING:
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
        from llmdr.storage.s3 import S3Store, shared_session

        quick_service_lookup(shared_session())
    keys = resolve_keys(cfg, region)  # may ask STS for an assumed role's keys: not inside the pause
    with gc_paused():  # the client's service model: ~100k objects of parsed JSON, no garbage
        return S3Store(
            bucket=region.bucket,
            endpoint_url=region.endpoint,
            access_key_id=keys.access_key_id,
            secret_access_key=keys.secret_access_key,
            session_token=keys.session_token,
            region_name=region.s3_region,
            prefix=region.prefix,
            max_pool_connections=max(16, cfg.transfer.workers * 2),
            name=region.name,
            object_lock=((region.object_lock.mode, region.object_lock.period.total_seconds())
                         if region.object_lock else None),
        )


def retrying(store: BlobStore, region: Region, attempts: int) -> BlobStore:
    """The region's one request-level retry layer around ``store``."""
    return RetryingStore(store, attempts=attempts, name=region.name)


def _sealed(cfg: Config, region: Region, store: BlobStore, *, read_only: bool) -> BlobStore:
    from llmdr.storage.credentials import encryption_key, manifest_signer

    key = encryption_key(cfg, region)
    if key is not None:
        from llmdr.storage.crypto import EncryptingStore

        store = EncryptingStore(store, key[0], key_source=key[1])
    signer = manifest_signer(cfg, create=not read_only)
    if signer is not None:
        from llmdr.storage.crypto import SigningStore

        store = SigningStore(store, signer)
    return store
