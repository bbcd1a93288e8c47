"""Reading llmdr's records back from the regions' stores.

``listing`` lists one prefix in every region once and remembers it for the rest of the command (``CACHE_S``; every
write forgets it), so a command that reads the history several times asks each region once. A region that does not
answer is left out with a warning: reads work from what the other regions hold. Nothing read here is trusted
blindly: keys outside the layout, records that do not parse and, in a project that signs, records whose signature
does not verify (``sealing``) are skipped with a warning (``json_records``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from llmdr.config import Config, Region
from llmdr.control import layout
from llmdr.control.sealing import problem, unsealed
from llmdr.errors import LlmdrError

log = logging.getLogger(__name__)

CACHE_S = 30.0
READ_ATTEMPTS = 1
_cache: dict[tuple, tuple[float, dict[str, list[str]]]] = {}
_stores: dict[tuple, Any] = {}
_lock = threading.Lock()


def forget() -> None:
    """Drop the remembered listings (after a write, or in a test)."""
    with _lock:
        _cache.clear()


def _ident(cfg: Config) -> tuple:
    return (str(cfg.state_path), tuple((r.name, r.bucket, r.endpoint, r.prefix) for r in cfg.regions))


def _store(cfg: Config, region: Region):
    from llmdr.storage.factory import open_region

    key = (_ident(cfg), region.name)
    with _lock:
        st = _stores.get(key)
    if st is None:
        st = open_region(cfg, region, read_only=True, attempts=READ_ATTEMPTS)
        with _lock:
            _stores[key] = st
    return st


def _list_region(cfg: Config, region: Region, prefix: str) -> list[str] | None:
    try:
        return [b.key for b in _store(cfg, region).list(prefix)]
    except (LlmdrError, OSError) as exc:
        log.warning("region '%s' not read for llmdr's records under %s (%s); using the other regions",
                    region.name, prefix, str(exc).splitlines()[0][:200])
        return None


def region_keys(cfg: Config, prefix: str) -> dict[str, list[str] | None]:
    """Region -> its keys under ``prefix``, every region listed at once; None for a region that could not be read
    (warned). In config order; not cached."""
    with ThreadPoolExecutor(max_workers=max(1, len(cfg.regions)), thread_name_prefix="llmdr-control-list") as pool:
        found = list(pool.map(lambda r: _list_region(cfg, r, prefix), cfg.regions))
    return {r.name: keys for r, keys in zip(cfg.regions, found, strict=True)}


def listing(cfg: Config, prefix: str) -> dict[str, list[str]]:
    """Key -> the regions holding it (Object-Locked ones first, then config order), for every key under ``prefix``
    in any region."""
    ck = (_ident(cfg), prefix)
    with _lock:
        hit = _cache.get(ck)
    if hit is not None and time.monotonic() - hit[0] < CACHE_S:
        return hit[1]
    found = region_keys(cfg, prefix)
    # Object-Locked regions first: a record is read from the copy nobody could have rewritten since, when there is one
    out: dict[str, list[str]] = {}
    for region in sorted(cfg.regions, key=lambda r: r.object_lock is None):
        for k in found[region.name] or []:
            out.setdefault(k, []).append(region.name)
    with _lock:
        _cache[ck] = (time.monotonic(), out)
    return out


def read_object(cfg: Config, key: str, regions: list[str]) -> bytes | None:
    """The object at ``key`` from the first of ``regions`` that gives it; None (warned) when none does."""
    for name in regions:
        try:
            return _store(cfg, cfg.region(name)).get(key)
        except (LlmdrError, OSError) as exc:
            log.warning("%s not read from region '%s' (%s)", key, name, str(exc).splitlines()[0][:200])
    return None


def json_records(cfg: Config, prefix: str, *, check: Callable[[str, dict], str | None] | None = None
                 ) -> list[tuple[str, dict]]:
    """Every JSON record directly under ``prefix`` in any region, oldest name first, as (key, record). Skipped with
    a warning, never returned: a key outside the layout, bytes that are not a JSON object, a record ``check``
    refuses (it returns why)."""
    out = []
    for key, regions in sorted(listing(cfg, prefix).items()):
        if layout.parse_record(prefix, key) is None:
            log.warning("skipping %s in the store of %s: not a name llmdr writes (%s<time>-<id>.json)", key,
                        "/".join(regions), prefix)
            continue
        data = read_object(cfg, key, regions)
        if data is None:
            continue
        try:
            rec = json.loads(data.decode("utf-8"))
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except (UnicodeDecodeError, ValueError) as exc:
            log.warning("skipping %s in the store of %s: not a JSON record (%s)", key, "/".join(regions), exc)
            continue
        why = problem(cfg, key, rec)  # the signature, when the project signs its records
        if why is None:
            rec = unsealed(rec)
            why = check(key, rec) if check else None
        if why:
            log.warning("skipping %s in the store of %s: %s", key, "/".join(regions), why)
            continue
        out.append((key, rec))
    return out
