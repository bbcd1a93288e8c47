"""protect-bundle with a dataset, for real (SeaweedFS regions, a git+DVC repository, a sqlite MLflow store, the
flow under the Prefect harness): the dataset is validated and pushed to every region before the snapshot, its md5
is in the snapshot's tags, the snapshot becomes a model version with the dataset tags, `llmdr lineage` shows the
whole chain; a corrupted dataset blocks the snapshot naming the failing expectation."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmdr.repo import ops
from tests.support.dvcproject import DVC, dvc_project, run

EXTRA = """\
datasets:
  - {{name: tickets, path: data/tickets.csv}}
tracking: {{uri: "sqlite:///{db}"}}
"""


def _write(path: Path, labels: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label"])
        for i in range(300):
            w.writerow([i, f"ticket {i}", labels[i % len(labels)]])


@pytest.fixture
def project(stack, tmp_path):
    return dvc_project(stack, tmp_path, track="data/tickets.csv", extra=EXTRA,
                       write_data=lambda root: _write(root / "data" / "tickets.csv", ["billing", "outage", "restore"]))


def test_protect_with_a_dataset_registers_the_whole_chain(prefect_harness, project):
    from flows.protect_bundle import protect_bundle
    from llmdr.lineage.datasets import present, version
    from llmdr.lineage.evidence import load_dataset_evidence

    cfg = project
    out = protect_bundle(config_path=str(cfg.source_file))
    ds = cfg.datasets[0]
    v = version(cfg, ds)
    assert out["validations"][0]["success"] and out["validations"][0]["suite_created"]
    assert cfg.suite_path(ds).exists()  # profiled once, editable, committed by the user
    assert all(present(cfg, ds, r.name, ver=v) for r in cfg.regions)
    sid = out["snapshot"]["snapshot_id"]
    manifest = ops.open_repo(cfg, "secondary", read_only=True).load_manifest(sid)
    assert manifest.tags["dataset.tickets.md5"] == v.md5
    evidence = load_dataset_evidence(ops.open_repo(cfg, "secondary", read_only=True), sid)
    assert evidence["datasets"][0]["md5"] == v.md5 and evidence["validations"][0]["result"]["success"] is True
    mv = out["model_version"]
    assert mv["name"] == "linbot" and "production" in mv["aliases"]

    r = subprocess.run([sys.executable, "-m", "llmdr.cli", "--config", str(cfg.source_file), "lineage",
                        "linbot@production", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["snapshot"]["id"] == sid
    assert {k: x["present"] for k, x in data["regions"].items()} == {"primary": True, "secondary": True}
    assert [(d["name"], d["md5"]) for d in data["datasets"]] == [("tickets", v.md5)]
    assert set(data["snapshot"]["components"]) >= {"weights", "tokenizer"}

    # remotes for people using dvc by hand: in the tracked config, keys only in config.local
    r = subprocess.run([sys.executable, "-m", "llmdr.cli", "--config", str(cfg.source_file), "datasets", "remotes"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "llmdr-primary, llmdr-secondary" in r.stdout, r.stdout + r.stderr
    tracked = (cfg.base_dir / ".dvc" / "config").read_text()
    assert "llmdr-secondary" in tracked and "secret_access_key" not in tracked
    assert "secret_access_key" in (cfg.base_dir / ".dvc" / "config.local").read_text()

    # the data goes bad (labels no one has seen, re-added to DVC): the next snapshot is refused
    _write(cfg.dataset_path(ds), ["spam", "ham"])
    run(DVC, "add", "-q", "data/tickets.csv", cwd=cfg.base_dir)
    with pytest.raises(Exception, match=r"expect_column_values_to_be_in_set\(label\)"):
        protect_bundle(config_path=str(cfg.source_file))
    assert len(ops.open_repo(cfg, "primary", read_only=True).snapshots(bundle="linbot")) == 1
