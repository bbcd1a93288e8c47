"""What proves a snapshot in a region sound, beyond its chunks (``integrity.verify_snapshot``): its manifest, read
from the region's store itself and proven against its id (and, with repair sources, replaced by an intact copy from
another region), and the restore test: restore a snapshot into a scratch folder, check the bundle is complete,
serve it, and ask it the golden set. The restore test fails, naming what went wrong, when a chunk is corrupt (with
the object key of every damaged object), a component is missing or broken, or the answers differ from the golden
ones (then listing which components differ from the golden set's bundle)."""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from .bundle import ComponentSpec, IncompleteBundle, check_bundle, content_digests, detected_specs
from .endpoint import OpenAIEndpoint
from .errors import IntegrityError, ObjectNotFound
from .golden import GoldenReport, GoldenSet, check
from .integrity import VerifyResult, verify_snapshot
from .repository import Repository, chunk_key, manifest_key
from .restore import restore_snapshot

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


@dataclass
class RestoreTestResult:
    snapshot_id: str
    location: str
    problems: list[str] = field(default_factory=list)
    golden: GoldenReport | None = None
    differing_components: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems and self.golden is not None and self.golden.ok

    def to_json(self) -> dict:
        return {"snapshot_id": self.snapshot_id, "location": self.location, "ok": self.ok, "problems": self.problems,
                "golden": self.golden.to_json() if self.golden else None,
                "differing_components": self.differing_components, "duration_s": round(self.duration_s, 3)}


def restore_test(repo: Repository, snapshot_id: str, scratch: Path, specs: list[ComponentSpec],
                 golden: GoldenSet, *, workers: int = 8) -> RestoreTestResult:
    """Run the restore test; the scratch folder is removed afterwards whatever happens."""
    from .serving import ModelService, make_server

    t0 = time.perf_counter()
    res = RestoreTestResult(snapshot_id, repo.location)
    target = scratch / f"restore-test-{snapshot_id[:12]}"
    if target.exists():
        shutil.rmtree(target)
    try:
        try:
            restore_snapshot(repo, snapshot_id, target, workers=workers)
        except IncompleteBundle as exc:
            res.problems.append(f"restore failed: {exc}")
            return res
        except IntegrityError as exc:
            res.problems.append(f"restore failed: {exc}")
            res.problems += [f"damaged in {repo.location}: {k}" for k in damaged_objects(repo, snapshot_id)]
            return res
        report = check_bundle(target, specs)
        res.problems += [f"incomplete: {p}" for p in report.problems]
        if res.problems:
            return res
        expected = golden.header.get("components") or {}
        actual = content_digests(target, specs or detected_specs(target))
        res.differing_components = sorted(k for k, v in expected.items() if k in actual and actual[k] != v)
        try:
            service = ModelService(target)
        except Exception as exc:  # a bundle that does not load is a failed restore test, with the reason
            res.problems.append(f"the restored model does not load: {exc}")
            return res
        httpd = make_server(service, "127.0.0.1", 0)
        thread = threading.Thread(target=httpd.serve_forever, name="llmdr-restore-test", daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{httpd.server_address[1]}"
            res.golden = check(golden, OpenAIEndpoint(url).answer)
        finally:
            httpd.shutdown()
            httpd.server_close()
            thread.join(timeout=10)
        if not res.golden.ok:
            differ = ", ".join(res.differing_components) or "none recorded"
            res.problems.append(
                f"{res.golden.passed}/{len(res.golden.results)} golden answers match; components that differ from "
                f"the golden set's bundle: {differ}"
            )
        return res
    finally:
        shutil.rmtree(target, ignore_errors=True)
        res.duration_s = time.perf_counter() - t0
