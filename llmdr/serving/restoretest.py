"""The restore test: restore a snapshot into a scratch folder, check the bundle is complete, serve it, and ask it
the golden set. It fails, naming what went wrong, when a chunk is corrupt (with the object key of every damaged
object), a component is missing or broken, or the answers differ from the golden ones (then listing which
components differ from the golden set's bundle)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmdr.config import Config
from llmdr.errors import IntegrityError, UsageError
from llmdr.repo import ops
from llmdr.repo.bundle import (
    ComponentSpec,
    IncompleteBundle,
    check_bundle,
    content_digests,
    detected_specs,
    specs_from_config,
)
from llmdr.repo.repository import Repository
from llmdr.repo.restore import restore_snapshot
from llmdr.repo.verify import damaged_objects
from llmdr.serving.endpoint import OpenAIEndpoint
from llmdr.serving.golden import GoldenReport, GoldenSet, check


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
                 golden: GoldenSet | Callable[[], GoldenSet], *, workers: int = 8,
                 gate: Any = None) -> RestoreTestResult:
    """Run the restore test; the scratch folder is removed afterwards whatever happens. ``golden``: the set, or a
    function that finds it once the snapshot restored complete (a ``UsageError`` / ``IntegrityError`` from it, e.g.
    no set for a new model version, fails the test with its message). ``gate``: how answers are judged (the config's
    ``golden_gate``; None: exact)."""
    from llmdr.serving.server import ModelService, make_server

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
        if callable(golden):
            try:
                golden = golden()
            except (UsageError, IntegrityError) as exc:
                res.problems.append(str(exc))
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
            res.golden = check(golden, OpenAIEndpoint(url).answer, gate)
        finally:
            httpd.shutdown()
            httpd.server_close()
            thread.join(timeout=10)
        if not res.golden.ok:
            differ = ", ".join(res.differing_components) or "none recorded"
            res.problems.append(
                f"{res.golden.passed}/{len(res.golden.results)} golden answers pass the {res.golden.gate.mode} gate "
                f"({res.golden.required} needed); components that differ from "
                f"the golden set's bundle: {differ}"
            )
        return res
    finally:
        shutil.rmtree(target, ignore_errors=True)
        res.duration_s = time.perf_counter() - t0


def run_restore_test(cfg: Config, ref: str, *, region: str | None = None, golden_path: Path | None = None):
    """Restore into scratch, check completeness, serve, compare with the golden set of that snapshot's content
    (``snapgolden.for_snapshot``; ``golden_path``, default the project's golden file, only for a snapshot from
    before per-snapshot sets). The region's own manifests are used (not this machine's cache); a 'latest' that
    cannot be decided, or a new model version without a golden set, fails the test, naming what to do."""
    from llmdr.serving.snapgolden import for_snapshot

    reg = cfg.region(region)
    repo = ops.open_repo(cfg, reg, read_only=True, cache=False)
    try:
        sid = ops.resolve_checked(cfg, repo, ref, lambda: ops.readable_others(cfg, reg))
    except IntegrityError as exc:
        return RestoreTestResult(ref, repo.location, problems=[str(exc)])
    path = None if golden_path is None else golden_path if golden_path.is_absolute() else cfg.base_dir / golden_path
    found: list = []

    def golden_set() -> GoldenSet:
        found.append(for_snapshot(cfg, repo, sid, fallback=path))
        return found[-1].golden

    res = restore_test(repo, sid, cfg.bundle_state_path / "scratch", specs_from_config(cfg.bundle.components),
                       golden_set, workers=cfg.transfer.download_workers, gate=cfg.golden_gate)
    if res.golden is not None and found:
        res.golden.basis = found[-1].to_json()
    return res


# --- the verdict of a verify-replicas run -------------------------------------------------------------------------


class ReplicasNotVerified(IntegrityError):
    """verify-replicas left a region with damaged chunks no region could repair, or a failing restore test."""

    exit_code = 6  # as `llmdr verify` when problems are left


def unverified_regions(checks: list[dict], tests: list[dict]) -> list[str]:
    """The regions (sorted, once each) whose read-back or restore test is not ok."""
    return sorted({c["region"] for c in checks if not c["ok"]} | {t["region"] for t in tests if not t["ok"]})


def unverified_notices(bundle: str, regions: list[str], *, snapshot: str, sample: str | None,
                       restore_test: bool) -> list:
    """One verification-failed notice per region left wrong."""
    from llmdr.notify import verification_failed_notice

    what = "verify-replicas (read-back" + (" and restore test)" if restore_test else ")")
    return [verification_failed_notice(bundle, region, what=what,
                                       details={"snapshot": snapshot, "sample": sample or "every chunk"})
            for region in regions]


def unverified_error(regions: list[str]) -> ReplicasNotVerified:
    return ReplicasNotVerified(f"verify-replicas: problems left in region(s) {', '.join(regions)}; see the artifact")
