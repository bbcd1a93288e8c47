"""Running a bench script once with ``--smoke`` from a test: its own work and results folders, the committed results
untouched, the work folder removed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
COMMITTED = BENCH / "results"


def committed_results() -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in COMMITTED.glob("*")} if COMMITTED.exists() else {}


def run_smoke(script: str, tmp_path: Path, *args: str, timeout: float = 900) -> Path:
    """``bench/<script> --smoke`` in its own work and results folders; returns the results folder."""
    results = tmp_path / "results"
    before = committed_results()
    env = {k: v for k, v in os.environ.items() if k != "LLMDR_BENCH_RESULTS"}
    r = subprocess.run([sys.executable, str(BENCH / script), "--smoke", "--work", str(tmp_path / "work"),
                        "--results", str(results), *args], capture_output=True, text=True, timeout=timeout, env=env,
                       cwd=tmp_path)
    assert r.returncode == 0, f"{script} --smoke exited {r.returncode}:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    assert committed_results() == before, f"{script} --smoke changed files under {COMMITTED}"
    assert not (tmp_path / "work").exists(), "the work folder is removed without --keep"
    return results


def load(results: Path, name: str) -> dict:
    assert (results / f"{name}.md").stat().st_size > 0
    return json.loads((results / f"{name}.json").read_text())
