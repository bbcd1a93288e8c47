"""``llmdr control restore``: rebuild a control host's local view from the regions' stores.

A fresh host with only ``llmdr.yaml`` and the keys gets back the failover history, the router's switch log, the
drill report folders (each verified by its signature), the golden set and the runbook in force. Records are only
added, never removed: local lines the stores lack stay. A golden set or runbook that exists locally and differs
from the stored one is kept unless ``force``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from llmdr.common.files import atomic_write, open_private, private_dir
from llmdr.config import Config
from llmdr.control import json_records, layout, listing, read_object

log = logging.getLogger(__name__)


def _append_lines(path: Path, lines: list[str]) -> None:
    if not lines:
        return
    private_dir(path.parent)
    fd = open_private(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, "".join(line + "\n" for line in lines).encode())
    finally:
        os.close(fd)


def restore_failovers(cfg: Config) -> int:
    from llmdr.failover import steps as fo

    have = {r.id for r in fo.history(cfg, stores=False)}
    new = [r for r in fo.stored_history(cfg) if r.id not in have]
    _append_lines(fo.history_path(cfg), [json.dumps(r.to_json(), sort_keys=True) for r in new])
    return len(new)


def _switch_problem(_key: str, rec: dict) -> str | None:
    if not (isinstance(rec.get("active"), str) and isinstance(rec.get("since"), str)
            and isinstance(rec.get("reason"), str) and isinstance(rec.get("previous"), (str, type(None)))):
        return "not a switch record (active, since, reason, previous)"
    return None


def stored_switches(cfg: Config) -> list[dict]:
    return [rec for _key, rec in json_records(cfg, layout.SWITCHES, check=_switch_problem)]


def restore_switches(cfg: Config) -> int:
    from llmdr.failover.router import router_log

    rlog = router_log(cfg)

    def ident(e: dict) -> tuple:
        return (e.get("since"), e.get("active"), e.get("previous"), e.get("reason"))

    have = {ident(e) for e in rlog.history()}
    new = sorted((e for e in stored_switches(cfg) if ident(e) not in have), key=lambda e: e["since"])
    _append_lines(rlog.history_path, [json.dumps(e, sort_keys=True) for e in new])
    return len(new)


def newest_document(cfg: Config, kind: str) -> tuple[dict, bytes] | None:
    """The newest pointer of ``kind`` across regions whose document is there and matches its SHA-256."""
    prefix = layout.doc_pointer_prefix(kind)

    def check(_key: str, rec: dict) -> str | None:
        return None if layout.is_sha256(rec.get("sha256")) else "not a pointer record (no sha256)"

    for _key, rec in reversed(json_records(cfg, prefix, check=check)):
        key = layout.doc_key(kind, rec["sha256"])
        regions = listing(cfg, f"{layout.ROOT}{kind}/docs/").get(key, [])
        data = read_object(cfg, key, regions) if regions else None
        if data is not None and hashlib.sha256(data).hexdigest() == rec["sha256"]:
            return rec, data
        log.warning("the %s named by %s is missing or damaged in every region; trying an older one", kind, _key)
    return None


def restore_document(cfg: Config, kind: str, path: Path, *, force: bool) -> str:
    found = newest_document(cfg, kind)
    if found is None:
        return "none stored"
    rec, data = found
    if path.is_file():
        if hashlib.sha256(path.read_bytes()).hexdigest() == rec["sha256"]:
            return "current"
        if not force:
            return f"kept the local file (differs from the stored one of {rec.get('written_utc')}; --force replaces it)"
    atomic_write(path, data)
    return f"restored ({rec.get('written_utc')}, sha256 {rec['sha256'][:12]})"


def rebuild(cfg: Config, *, force: bool = False) -> dict[str, Any]:
    """Rebuild the local view from the stores; what was added, by kind."""
    from llmdr.drill.record import drills_dir
    from llmdr.drill.stored import restore_reports

    return {"failovers_added": restore_failovers(cfg), "switches_added": restore_switches(cfg),
            "drills_restored": restore_reports(cfg, drills_dir(cfg)),
            "golden": restore_document(cfg, "golden", cfg.golden_path, force=force),
            "runbook": restore_document(cfg, "runbook", cfg.runbook_path, force=force)}
