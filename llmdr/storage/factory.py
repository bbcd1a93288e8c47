"""Build the store for a configured region: S3 adapter wrapped in the retry layer."""

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
    if read_only:
        store = ReadOnlyStore(store)
    return store
