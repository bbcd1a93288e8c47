"""Build the store for a configured region: S3 adapter, the retry layer, then encryption (if the region has it) and
manifest signatures (if configured): sign, then encrypt; read-only outermost."""

from __future__ import annotations

from ..config import Config, Region
from ..credentials import resolve_keys
from .base import BlobStore
from .readonly import ReadOnlyStore
from .retrying import RetryingStore


def open_region(cfg: Config, region: Region, *, read_only: bool = False, attempts: int = 4) -> BlobStore:
    from .s3 import S3Store

    keys = resolve_keys(cfg, region)
    store: BlobStore = S3Store(
        bucket=region.bucket,
        endpoint_url=region.endpoint,
        access_key_id=keys.access_key_id,
        secret_access_key=keys.secret_access_key,
        session_token=keys.session_token,
        region_name=region.s3_region,
        prefix=region.prefix,
        max_pool_connections=max(16, cfg.transfer.workers * 2),
        name=region.name,
        object_lock=(region.object_lock.mode, region.object_lock.period.total_seconds()) if region.object_lock else None,
    )
    store = RetryingStore(store, attempts=attempts)
    store = _sealed(cfg, region, store, read_only=read_only)
    if read_only:
        store = ReadOnlyStore(store)
    return store


def _sealed(cfg: Config, region: Region, store: BlobStore, *, read_only: bool) -> BlobStore:
    from ..credentials import encryption_key, manifest_signer

    key = encryption_key(cfg, region)
    if key is not None:
        from .crypto import EncryptingStore

        store = EncryptingStore(store, key[0], key_source=key[1])
    signer = manifest_signer(cfg, create=not read_only)
    if signer is not None:
        from .crypto import SigningStore

        store = SigningStore(store, signer)
    return store
