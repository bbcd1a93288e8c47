"""A folder dataset of hive-partitioned Parquet files, for real: `dvc add` of the folder in a git+DVC repository,
protect-bundle (SeaweedFS regions, the flow under the Prefect harness) validates it in bounded batches and pushes the
folder's .dir and every partition to both regions, the evidence kept beside the snapshot names its partitions; the
folder pulled back from the secondary validates; a bad partition blocks the next snapshot, naming that partition."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from llmdr.repo import ops
from tests.support.dvcproject import DVC, dvc_project, run

EXTRA = """\
datasets:
  - {{name: events, path: data/events, batch_rows: 100}}
tracking: {{uri: "sqlite:///{db}"}}
"""
DAYS = 4


def part(i: int, rows: int = 250, label: str | None = None) -> pd.DataFrame:
    ids = np.arange(i * rows, (i + 1) * rows)
    return pd.DataFrame({"id": ids, "score": (ids % 97) / 97.0,
                         "label": label or np.array(["billing", "outage", "restore"])[ids % 3]})


def _days(root) -> None:
    for i in range(DAYS):
        p = root / "data" / "events" / f"day={i}" / "part-0.parquet"
        p.parent.mkdir(parents=True)
        part(i).to_parquet(p, index=False)
    (root / "data" / "events" / "_SUCCESS").write_text("")


@pytest.fixture
def project(stack, tmp_path):
    return dvc_project(stack, tmp_path, write_data=_days, track="data/events", extra=EXTRA)


def test_a_partitioned_folder_is_validated_pushed_restored_and_a_bad_partition_blocks(prefect_harness, project,
                                                                                      tmp_path):
    from flows.protect_bundle import protect_bundle
    from llmdr.lineage.datasets import present, pull, version
    from llmdr.lineage.evidence import load_dataset_evidence
    from llmdr.lineage.expectations import validate

    cfg = project
    ds = cfg.datasets[0]
    out = protect_bundle(config_path=str(cfg.source_file))
    v = out["validations"][0]
    assert v["success"] and v["suite_created"] and v["mode"] == "full"
    assert (v["partitions"], v["partition_keys"], v["rows"], v["max_batch_rows"]) == (DAYS, ["day"], 1000, 100)
    ver = version(cfg, ds)
    assert ver.md5.endswith(".dir") and ver.nfiles == DAYS + 1  # DVC tracks _SUCCESS too; validation skips it
    assert all(present(cfg, ds, r.name, ver=ver) for r in cfg.regions)
    sid = out["snapshot"]["snapshot_id"]
    evidence = load_dataset_evidence(ops.open_repo(cfg, "secondary", read_only=True), sid)
    assert evidence["datasets"][0]["md5"] == ver.md5
    assert evidence["validations"][0]["partitions"] == DAYS and evidence["validations"][0]["result"]["success"]

    restored = tmp_path / "restored-events"
    pull(cfg, ds, "secondary", target=restored)
    assert sorted(p.relative_to(restored).as_posix() for p in restored.rglob("*.parquet")) == [
        f"day={i}/part-0.parquet" for i in range(DAYS)]
    rep = validate(cfg, ds, path=restored)
    assert rep.success and rep.rows == 1000, rep.summary()

    # one day goes bad and is re-added to DVC: the next snapshot is refused, naming that partition
    part(2, label="spam").to_parquet(cfg.dataset_path(ds) / "day=2" / "part-0.parquet", index=False)
    run(DVC, "add", "-q", "data/events", cwd=cfg.base_dir)
    with pytest.raises(Exception, match=r"expect_column_values_to_be_in_set\(label\).* in day=2/part-0.parquet"):
        protect_bundle(config_path=str(cfg.source_file))
    assert len(ops.open_repo(cfg, "primary", read_only=True).snapshots(bundle="linbot")) == 1
