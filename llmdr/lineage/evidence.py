"""What protect-bundle decides and keeps about a snapshot's datasets.

Before the snapshot, each dataset is checked against its expectation suite (:func:`check_dataset`; a failing dataset
with ``block_on_failure`` raises :class:`DatasetInvalid` and no snapshot is taken) and its version pushed to every
region (:func:`push_dataset`, which returns the dataset record the snapshot's tags, the model version and the evidence
carry). After the copies are verified, the records and full validation results are kept beside the snapshot in every
region as ``evidence/<snapshot id>/datasets.json`` (:func:`store_dataset_evidence`), through the repository.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llmdr.config import Config, Dataset
from llmdr.errors import LlmdrError

if TYPE_CHECKING:
    from llmdr.lineage.datasets import DatasetVersion, PushResult
    from llmdr.lineage.expectations import ValidationReport
    from llmdr.repo.repository import Repository

DATASETS_EVIDENCE = "datasets.json"


class DatasetInvalid(LlmdrError):
    """A dataset failed its expectation suite and blocks the snapshot (datasets[].block_on_failure)."""

    exit_code = 4


@dataclass
class DatasetCheck:
    """A dataset checked before a snapshot: the validation report and the suite it ran (``suite_created`` when it
    was profiled from the data just now)."""

    report: ValidationReport
    suite: Path
    suite_created: bool

    def to_json(self) -> dict:
        return self.report.to_json() | {"suite_created": self.suite_created}


def refuse_invalid(ds: Dataset, report: ValidationReport, suite: Path) -> None:
    """Raise :class:`DatasetInvalid` when the dataset failed its suite and blocks the snapshot; a dataset with
    ``block_on_failure: false`` is only flagged (the report says it failed)."""
    if not report.success and ds.block_on_failure:
        raise DatasetInvalid(f"{report.summary()}; the snapshot was not taken. Fix the data or the suite "
                             f"({suite}); datasets[].block_on_failure: false only flags it")


def check_dataset(cfg: Config, name: str) -> DatasetCheck:
    """Validate dataset ``name`` against its expectation suite (profiled from the data on first backup, then
    user-editable); :class:`DatasetInvalid` when it fails and blocks the snapshot."""
    from llmdr.lineage.dvcrepo import dataset_named
    from llmdr.lineage.expectations import ensure_suite, validate

    ds = dataset_named(cfg, name)
    suite, created = ensure_suite(cfg, ds)
    report = validate(cfg, ds)
    refuse_invalid(ds, report, suite)
    return DatasetCheck(report, suite, created)


def dataset_record(cfg: Config, ver: DatasetVersion, pushes: list[PushResult]) -> dict:
    """The record of a pushed dataset: name, md5, size, path, every region's remote, and what each push did."""
    from llmdr.lineage.dvcrepo import remote_urls

    return {"name": ver.name, "md5": ver.md5, "size": ver.size, "path": ver.path, "remotes": remote_urls(cfg),
            "pushes": [{"region": p.region, "pushed": p.pushed, "already": p.already, "duration_s": p.duration_s}
                       for p in pushes]}


def push_dataset(cfg: Config, name: str) -> dict:
    """Push the recorded version of dataset ``name`` (its DVC md5) into every region's DVC remote; returns its
    :func:`dataset_record`. Refuses a workspace that differs from the record (``DatasetChanged``)."""
    from llmdr.lineage.datasets import dataset_named, push_all, version

    ds = dataset_named(cfg, name)
    ver = version(cfg, ds)
    return dataset_record(cfg, ver, push_all(cfg, ds))


def dataset_evidence(snapshot_id: str, validations: list[dict], datasets: list[dict]) -> bytes:
    """The evidence file's bytes: deterministic (sorted keys), so the same records give the same bytes."""
    return json.dumps({"snapshot_id": snapshot_id, "datasets": datasets, "validations": validations},
                      sort_keys=True, default=str).encode()


def store_dataset_evidence(cfg: Config, snapshot_id: str, validations: list[dict], datasets: list[dict], *,
                           repos: Mapping[str, Repository] | None = None) -> list[str]:
    """Keep the datasets' records and full validation results beside ``snapshot_id`` in every region (each DR region
    keeps its own copy); returns the regions written, in config order. ``repos`` (region name → repository) replaces
    opening each configured region."""
    data = dataset_evidence(snapshot_id, validations, datasets)
    done = []
    for region in cfg.regions:
        if repos is not None:
            repo = repos[region.name]
        else:
            from llmdr.repo import ops

            repo = ops.open_repo(cfg, region)
        repo.save_evidence(snapshot_id, DATASETS_EVIDENCE, data)
        done.append(region.name)
    return done


def load_dataset_evidence(repo: Repository, snapshot_id: str) -> dict:
    """The dataset evidence kept beside ``snapshot_id`` in ``repo``; ``ObjectNotFound`` when there is none."""
    return json.loads(repo.load_evidence(snapshot_id, DATASETS_EVIDENCE))
