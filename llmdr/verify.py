"""The restore test: restore a snapshot into a scratch folder, check the bundle is complete, serve it, and ask it
the golden set. It fails, naming what went wrong, when a chunk is corrupt, a component is missing or broken, or the
answers differ from the golden ones (then listing which components differ from the golden set's bundle)."""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .bundle import ComponentSpec, IncompleteBundle, check_bundle, content_digests, detected_specs
from .endpoint import OpenAIEndpoint
from .errors import IntegrityError
from .golden import GoldenReport, GoldenSet, check
from .repository import Repository
from .restore import restore_snapshot


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
        except (IntegrityError, IncompleteBundle) as exc:
            res.problems.append(f"restore failed: {exc}")
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
