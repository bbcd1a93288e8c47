"""Build the store for a configured region: S3 adapter, the retry layer, then encryption (if the region has it) and
manifest signatures (if configured): sign, then encrypt; read-only outermost."""

from __future__ import annotations

import itertools
import logging
import math
import os

from llmdr.config import Config, Region
from llmdr.errors import ConfigError
from llmdr.storage.base import BlobStore
from llmdr.storage.credentials import resolve_keys
from llmdr.storage.readonly import ReadOnlyStore
from llmdr.storage.retrying import RetryingStore

log = logging.getLogger(__name__)


def open_region(cfg: Config, region: Region, *, read_only: bool = False, attempts: int = 4,
                sealed: bool = True) -> BlobStore:
    """The region's store. ``sealed=False`` leaves out encryption and manifest signatures: for objects other tools
    write into the same bucket (DVC's remote), never for llmdr's own repository."""
    from llmdr.storage.s3 import S3Store

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
    store, attempts = _with_injected_faults(store, region, attempts)  # tests and drills only; off unless asked
    store = RetryingStore(store, attempts=attempts, name=region.name)
    if sealed:
        store = _sealed(cfg, region, store, read_only=read_only)
    if read_only:
        store = ReadOnlyStore(store)
    return store


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


# Fault injection (tests and drills only) ----------------------------------------------------------------------------
FAULT_RATE_ENV = "LLMDR_FAULT_RATE"
FAULT_SEED_ENV = "LLMDR_FAULT_SEED"
_fault_stores = itertools.count()
_warned: set[str] = set()


def _with_injected_faults(store: BlobStore, region: Region, attempts: int) -> tuple[BlobStore, int]:
    """With ``LLMDR_FAULT_RATE=0.1`` in the environment, put a random-mode ``FaultyStore`` between the S3 adapter and
    the retry layer, so that share of every request to the region fails transiently (seeded by ``LLMDR_FAULT_SEED``,
    default 0). FOR TESTS AND DR DRILLS ONLY: it proves that snapshot, copy, verify and restore ride out a lossy
    network, and logs a warning for each region it is active on. Unset, nothing changes.

    The retry layer then makes enough attempts that a request fails for good with probability at most 1e-8
    (rate ** attempts): at 10 % the default 4 attempts would lose one request in 10,000 (1e-4), i.e. a run of
    ~1,000 requests would fail about one time in ten; 8 attempts lose one in 1e8 (a 1,000-request run: 1e-5)."""
    raw = os.environ.get(FAULT_RATE_ENV, "").strip()
    if not raw:
        return store, attempts
    try:
        rate = float(raw)
    except ValueError:
        rate = -1.0
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"{FAULT_RATE_ENV}={raw!r}: expected a share of requests to fail, 0 <= rate < 1 (e.g. 0.1); "
                          "unset it for normal operation")
    if rate == 0.0:
        return store, attempts
    from llmdr.testing.faulty import FaultyStore

    seed = os.environ.get(FAULT_SEED_ENV, "0").strip() or "0"
    if region.name not in _warned:
        _warned.add(region.name)
        log.warning("FAULT INJECTION ACTIVE (%s=%s, %s=%s): %.0f%% of requests to region '%s' fail on purpose. "
                    "For tests and DR drills only; unset %s for normal operation.", FAULT_RATE_ENV, raw,
                    FAULT_SEED_ENV, seed, rate * 100, region.name, FAULT_RATE_ENV)
    # Each store opened gets its own stream of draws (same seed and order of opening: same streams).
    faulty = FaultyStore(store, rate=rate, seed=f"{seed}:{region.name}:{next(_fault_stores)}")
    needed = math.ceil(round(math.log(1e-8) / math.log(rate), 6))  # rate ** needed <= 1e-8 (round: 8.0000000002)
    return faulty, max(attempts, needed)
