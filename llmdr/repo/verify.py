"""What proves a snapshot in a region sound, beyond its chunks (``integrity.verify_snapshot``): its manifest, read
from the region's store itself and proven against its id (and, with repair sources, replaced by an intact copy from
another region), and the object keys of whatever is damaged, for reports that must say which object to look at.
The restore test that serves the restored bundle and asks it the golden set is ``llmdr.serving.restoretest``."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, fields

from llmdr.errors import IntegrityError, ObjectNotFound
from llmdr.repo.integrity import NO_INDEX, VerifyResult, pack_of, verify_snapshot
from llmdr.repo.layout import record_key, tree_key
from llmdr.repo.repository import Repository

log = logging.getLogger(__name__)


@dataclass
class ManifestCheck:
    """A snapshot's manifest as stored in one region: ``ok``, ``damaged`` (its bytes do not hash to the id, or the
    store refused them) or ``missing``; ``repaired_from`` names the region an intact copy was taken from."""

    snapshot_id: str
    location: str
    state: str
    detail: str = ""
    repaired_from: str | None = None
    damaged_key: str | None = None  # the object found damaged: the record, or one of its trees

    @property
    def key(self) -> str:
        return self.damaged_key or record_key(self.snapshot_id)

    @property
    def ok(self) -> bool:
        return self.state == "ok" or self.repaired_from is not None

    def to_json(self) -> dict:
        return {"key": self.key, "state": self.state, "detail": self.detail, "repaired_from": self.repaired_from,
                "ok": self.ok}

    def problem(self) -> str:
        """What is wrong, naming the object key and the region (for a message)."""
        what = f"manifest {self.key} of snapshot {self.snapshot_id[:12]} in {self.location} is {self.state}"
        what += f" ({self.detail})" if self.detail else ""
        return what


def check_manifest(repo: Repository, snapshot_id: str,
                   repair_from: list[tuple[str, Repository]] | None = None) -> ManifestCheck:
    """Read ``snapshot_id``'s manifest from ``repo``'s store (never from a local cache: the region's copy is what a
    restore elsewhere gets) and prove it against its id. With ``repair_from`` ([(region name, repo)]), a damaged or
    missing manifest is replaced by the first copy whose SHA-256 is the id, written with a verified put."""
    res = ManifestCheck(snapshot_id, repo.location, "ok")
    keys = [(record_key(snapshot_id), snapshot_id)]
    bad: list[tuple[str, str]] = []
    try:
        record = json.loads(_checked(repo, keys[0][0], snapshot_id))
        root = str(record.get("tree", ""))
        keys.append((tree_key(root), root))
        subtrees = json.loads(_checked(repo, tree_key(root), root)).get("subtrees", [])
        keys += [(tree_key(t), t) for t in subtrees]
        for k, d in keys[2:]:
            _checked(repo, k, d)
    except _Damaged as exc:
        res.state, res.detail, res.damaged_key = exc.state, exc.detail, exc.key
        bad.append((exc.key, exc.digest))
    except (ValueError, AttributeError) as exc:
        res.state, res.detail = "damaged", f"the record does not parse ({exc})"
        bad.append(keys[0])
    if res.state == "ok":
        return res
    for name, other in repair_from or []:
        try:
            for key, digest in bad:
                data = other.store.get(key)
                if hashlib.sha256(data).hexdigest() != digest:
                    raise _Damaged(key, digest, "damaged", "")
                repo.store.put(key, data, sha256=bytes.fromhex(digest))
        except (ObjectNotFound, IntegrityError, _Damaged):
            continue
        res.repaired_from = name
        log.warning("%s: repaired from %s", res.problem(), name)
        break
    return res


class _Damaged(Exception):
    def __init__(self, key: str, digest: str, state: str, detail: str) -> None:
        super().__init__(detail)
        self.key, self.digest, self.state, self.detail = key, digest, state, detail


def _checked(repo: Repository, key: str, digest: str) -> bytes:
    """``key``'s bytes from the store itself (never a cache), proven against ``digest``."""
    try:
        data = repo.store.get(key)
    except ObjectNotFound:
        raise _Damaged(key, digest, "missing", f"{key} is missing") from None
    except IntegrityError as exc:  # an encrypting or signing store refused the stored bytes
        raise _Damaged(key, digest, "damaged", str(exc)) from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise _Damaged(key, digest, "damaged", f"{key}: its bytes hash to {actual[:12]}, not to its id")
    return data


@dataclass
class SnapshotCheck(VerifyResult):
    """``integrity.VerifyResult`` with the manifest's check; its JSON names every damaged object by its key."""

    manifest: ManifestCheck | None = None

    @classmethod
    def of(cls, res: VerifyResult, manifest: ManifestCheck, repo: Repository | None = None) -> "SnapshotCheck":
        return cls(**{f.name: getattr(res, f.name) for f in fields(VerifyResult)}, manifest=manifest)

    @property
    def ok(self) -> bool:
        return super().ok and (self.manifest is None or self.manifest.ok)

    def to_json(self) -> dict:
        out = super().to_json()
        out["keys"] = {d: self.where.get(d, NO_INDEX) for d in sorted(set(self.missing + self.corrupt))}
        out["manifest"] = self.manifest.to_json() if self.manifest else None
        return out


def damaged_objects(repo: Repository, snapshot_id: str) -> list[str]:
    """The keys of ``snapshot_id``'s damaged objects in ``repo`` (manifest, missing or corrupt chunks), each with
    what is wrong: for a report that must say which object to look at."""
    mc = check_manifest(repo, snapshot_id)
    if not mc.ok:
        return [f"{mc.key} ({mc.state})"]
    res = verify_snapshot(repo, snapshot_id)
    return [f"{chunk_where(repo, d, res.where.get(d))} (missing)" for d in res.missing] + \
        [f"{chunk_where(repo, d, res.where.get(d))} (corrupt)" for d in res.corrupt]


def chunk_where(repo: Repository, hexd: str, place: str | None = None) -> str:
    """``chunk <id> in packs/…`` (or ``(in no index)``), for reports that must name the object to look at. ``place``:
    the pack key a verify already found (``VerifyResult.where``); without it the index is asked."""
    place = place or pack_of(repo, hexd)
    return f"chunk {hexd[:12]} in {place}" if place != NO_INDEX else f"chunk {hexd[:12]} ({NO_INDEX})"
