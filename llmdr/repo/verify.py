"""What proves a snapshot in a region sound, beyond its chunks (``integrity.verify_snapshot``): its manifest, read
from the region's store itself and proven against its id (and, with repair sources, replaced by an intact copy from
another region), and the object keys of whatever is damaged, for reports that must say which object to look at.
The restore test that serves the restored bundle and asks it the golden set is ``llmdr.serving.restoretest``."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, fields

from llmdr.errors import IntegrityError, ObjectNotFound
from llmdr.repo.integrity import VerifyResult, verify_snapshot
from llmdr.repo.repository import Repository, chunk_key, manifest_key

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

    @property
    def key(self) -> str:
        return manifest_key(self.snapshot_id)

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
    key = manifest_key(snapshot_id)
    try:
        actual = hashlib.sha256(repo.store.get(key)).hexdigest()
        if actual != snapshot_id:
            res.state, res.detail = "damaged", f"its bytes hash to {actual[:12]}, not to its id"
    except ObjectNotFound:
        res.state = "missing"
    except IntegrityError as exc:  # an encrypting or signing store refused the stored bytes
        res.state, res.detail = "damaged", str(exc)
    if res.state == "ok":
        return res
    for name, other in repair_from or []:
        try:
            data = other.store.get(key)
        except (ObjectNotFound, IntegrityError):
            continue
        digest = hashlib.sha256(data).digest()
        if digest.hex() == snapshot_id:
            repo.store.put(key, data, sha256=digest)
            res.repaired_from = name
            log.warning("%s: repaired from %s", res.problem(), name)
            break
    return res


@dataclass
class SnapshotCheck(VerifyResult):
    """``integrity.VerifyResult`` with the manifest's check; its JSON names every damaged object by its key."""

    manifest: ManifestCheck | None = None

    @classmethod
    def of(cls, res: VerifyResult, manifest: ManifestCheck) -> "SnapshotCheck":
        return cls(**{f.name: getattr(res, f.name) for f in fields(VerifyResult)}, manifest=manifest)

    @property
    def ok(self) -> bool:
        return super().ok and (self.manifest is None or self.manifest.ok)

    def to_json(self) -> dict:
        out = super().to_json()
        out["keys"] = {d: chunk_key(d) for d in sorted(set(self.missing + self.corrupt))}
        out["manifest"] = self.manifest.to_json() if self.manifest else None
        return out


def damaged_objects(repo: Repository, snapshot_id: str) -> list[str]:
    """The keys of ``snapshot_id``'s damaged objects in ``repo`` (manifest, missing or corrupt chunks), each with
    what is wrong: for a report that must say which object to look at."""
    mc = check_manifest(repo, snapshot_id)
    if not mc.ok:
        return [f"{mc.key} ({mc.state})"]
    res = verify_snapshot(repo, snapshot_id)
    return [f"{chunk_key(d)} (missing)" for d in res.missing] + [f"{chunk_key(d)} (corrupt)" for d in res.corrupt]
