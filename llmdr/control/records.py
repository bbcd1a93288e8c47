"""Writing llmdr's records to every region, and keeping what a region did not take as pending.

A record is written to each region in its own thread (a failover's record must not wait for the region that is
down longer than one bounded try): ``attempts`` requests through the region's retry layer, create-only
(``if_absent``: a name is never overwritten, so two writers never lose each other's records). A region that fails
keeps the record under ``<state>/control/pending/<region>/<key>``; the next write to that region, or
``llmdr control sync``, pushes it. The store chain is the region's own (``open_region``): encrypted in a region with
``encryption:``, Object-Locked in one with ``object_lock:``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from llmdr.common.files import atomic_write
from llmdr.config import Config, Region
from llmdr.control import layout
from llmdr.control.reads import forget
from llmdr.control.sealing import seal
from llmdr.errors import Conflict, LlmdrError

log = logging.getLogger(__name__)

WRITE_ATTEMPTS = 2


@dataclass
class Placement:
    """Where a write landed: the regions that hold every object, and those it is pending for (with why)."""

    keys: list[str]
    held: list[str] = field(default_factory=list)
    pending: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"keys": self.keys, "held": self.held, "pending": self.pending}


def pending_dir(cfg: Config) -> Path:
    return cfg.bundle_state_path / "control" / "pending"


def _pending_path(cfg: Config, region: str, key: str) -> Path:
    return pending_dir(cfg) / region / key


def _keep_pending(cfg: Config, region: str, items: list[tuple[str, bytes]]) -> None:
    for key, data in items:
        atomic_write(_pending_path(cfg, region, key), data)


def pending(cfg: Config) -> dict[str, list[str]]:
    """Region -> keys still to be written there (kept locally), in push order."""
    out: dict[str, list[str]] = {}
    base = pending_dir(cfg)
    for region in cfg.regions:
        root = base / region.name
        keys = []
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                if name.startswith("."):  # atomic_write's temporary files
                    continue
                keys.append(str((Path(dirpath) / name).relative_to(root)).replace(os.sep, "/"))
        if keys:
            out[region.name] = sorted(keys, key=lambda k: (layout.is_last(k), k))
    return out


def _open(cfg: Config, region: Region):
    from llmdr.storage.factory import open_region

    return open_region(cfg, region, attempts=WRITE_ATTEMPTS)


def _put_all(store, items: list[tuple[str, bytes]]) -> None:
    for key, data in items:
        try:
            store.put(key, data, if_absent=True)
        except Conflict:
            # the name is taken: an earlier push of this very record (names are unique per record)
            log.info("%s already in %s", key, store.location)


def _write_region(cfg: Config, region: Region, items: list[tuple[str, bytes]]) -> str | None:
    """Push the region's pending records, then ``items``; None when all landed, else why not (kept pending)."""
    queued = pending(cfg).get(region.name, [])
    pushed = 0
    try:
        store = _open(cfg, region)
        for key in queued:
            path = _pending_path(cfg, region.name, key)
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # another llmdr pushed it meanwhile
                continue
            _put_all(store, [(key, data)])
            path.unlink(missing_ok=True)
        for key, data in items:
            _put_all(store, [(key, data)])
            pushed += 1
    except (LlmdrError, OSError) as exc:
        _keep_pending(cfg, region.name, items[pushed:])
        why = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        log.warning("llmdr's record(s) %s not written to region '%s' (%s); kept in %s for `llmdr control sync`",
                    ", ".join(k for k, _ in items) or "(pending)", region.name, why, pending_dir(cfg) / region.name)
        return why
    return None


def publish(cfg: Config, items: list[tuple[str, bytes]]) -> Placement:
    """Write ``items`` (key, bytes; keys from ``layout``, the ones that vouch for others last) to every region.
    Never raises for a region that does not answer: the record is kept pending for it."""
    for key, _ in items:
        if not key.startswith(layout.ROOT):
            raise ValueError(f"{key!r} is not a control record key")
    regions = list(cfg.regions)
    with ThreadPoolExecutor(max_workers=max(1, len(regions)), thread_name_prefix="llmdr-control") as pool:
        results = list(pool.map(lambda r: _write_region(cfg, r, items), regions))
    forget()
    place = Placement(keys=[k for k, _ in items])
    for region, why in zip(regions, results, strict=True):
        if why is None:
            place.held.append(region.name)
        else:
            place.pending[region.name] = why
    return place


def record_bytes(cfg: Config, key: str, record: dict) -> bytes:
    """RECORD as stored under KEY: JSON, signed with the project's manifest key when it signs (``sealing``)."""
    return (json.dumps(seal(cfg, key, record), sort_keys=True, indent=1) + "\n").encode()


def put_record(cfg: Config, key: str, record: dict) -> Placement:
    """One JSON record under ``key`` in every region."""
    return publish(cfg, [(key, record_bytes(cfg, key, record))])


def put_document(cfg: Config, kind: str, path: Path, *, ts: float | None = None) -> Placement:
    """The file at ``path`` as the ``kind`` ("golden" or "runbook") in force from now: content-addressed, with a
    pointer record naming it."""
    data = Path(path).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    pointer = {"sha256": sha, "size": len(data), "name": Path(path).name,
               "written_utc": layout.stamp(time.time() if ts is None else ts)}
    key = layout.doc_pointer_prefix(kind) + layout.record_name(ts)
    # the document is content-addressed (its name is its hash); the pointer that puts it in force is signed
    return publish(cfg, [(layout.doc_key(kind, sha), data), (key, record_bytes(cfg, key, pointer))])


def sync(cfg: Config) -> dict[str, dict]:
    """Push every pending record to its region: region -> {"pushed": n, "left": n, "error": ...}."""
    before = pending(cfg)
    out: dict[str, dict] = {}
    for region in cfg.regions:
        keys = before.get(region.name, [])
        if not keys:
            continue
        why = _write_region(cfg, region, [])
        left = len(pending(cfg).get(region.name, []))
        out[region.name] = {"pushed": len(keys) - left, "left": left, "error": why}
    _prune_empty(pending_dir(cfg))
    forget()
    return out


def _prune_empty(root: Path) -> None:
    for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda t: -len(t[0])):
        if Path(dirpath) != root:
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


def publish_soon(cfg: Config, items: list[tuple[str, bytes]]) -> threading.Thread:
    """For a step on the recovery path (a router switch): keep ``items`` pending for every region (local, at once)
    and push them from a background thread, so the step never waits for a region that is down. A process that ends
    first leaves them pending for the next write or `llmdr control sync`. Returns the thread (a test joins it)."""
    for region in cfg.regions:
        _keep_pending(cfg, region.name, items)

    def push() -> None:
        try:
            sync(cfg)
        except Exception as exc:  # noqa: BLE001 - a background push must never take the process down
            log.warning("llmdr's pending records not pushed: %s", exc)

    thread = threading.Thread(target=push, name="llmdr-control-push", daemon=True)
    thread.start()
    return thread
