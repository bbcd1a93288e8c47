"""The lineage decisions the protect flows call, as plain functions: no network, no MLflow server, no DVC. Evidence
goes through repositories on the memory store."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmdr.config import parse_config
from llmdr.errors import ObjectNotFound, UsageError
from llmdr.lineage.datasets import DatasetVersion, PushResult, dataset_named
from llmdr.lineage.evidence import (
    DatasetInvalid,
    dataset_evidence,
    dataset_record,
    load_dataset_evidence,
    refuse_invalid,
    store_dataset_evidence,
)
from llmdr.lineage.expectations import ValidationReport
from llmdr.lineage.host import hardware_summary
from llmdr.lineage.render import render_lineage
from llmdr.lineage.tags import dataset_tags, datasets_from_tags, mlflow_key, param_value, quote
from llmdr.lineage.training import checkpoint_step, record_checkpoint_runs
from llmdr.repo.repository import Repository
from llmdr.storage.memory import MemoryStore
from tests.support.config import two_region_yaml

SID = "ab" * 32


@pytest.fixture
def cfg(tmp_path):
    extra = "datasets:\n  - {name: tickets, path: data/tickets.csv}\n  - {name: notes, path: n.csv, block_on_failure: false}"
    return parse_config(two_region_yaml(9, 10, extra=extra), source=tmp_path / "llmdr.yaml")


def report(success: bool, name: str = "tickets") -> ValidationReport:
    failures = [] if success else [{"expectation": "expect_column_values_to_be_in_set", "column": "label",
                                    "detail": "2 unexpected values"}]
    return ValidationReport(dataset=name, path="data/tickets.csv", suite="expectations/tickets.json",
                            success=success, evaluated=5, failed=0 if success else 1, failures=failures)


def test_a_failing_dataset_blocks_the_snapshot_unless_it_only_flags(cfg):
    blocking, flagging = dataset_named(cfg, "tickets"), dataset_named(cfg, "notes")
    with pytest.raises(DatasetInvalid, match=r"expect_column_values_to_be_in_set\(label\).*the snapshot was not taken"):
        refuse_invalid(blocking, report(False), Path("expectations/tickets.json"))
    assert DatasetInvalid.exit_code == 4
    refuse_invalid(flagging, report(False, "notes"), Path("expectations/notes.json"))  # flagged, not blocked
    refuse_invalid(blocking, report(True), Path("expectations/tickets.json"))


def test_an_unknown_dataset_is_named_with_the_known_ones(cfg):
    with pytest.raises(UsageError, match=r"no dataset named 'images'.*known: tickets, notes"):
        dataset_named(cfg, "images")


def test_dataset_evidence_is_kept_beside_the_snapshot_in_every_region(cfg):
    repos = {r.name: Repository(MemoryStore(r.name)) for r in cfg.regions}
    validations = [report(True).to_json() | {"suite_created": True}]
    datasets = [{"name": "tickets", "md5": "0" * 32, "remotes": {"secondary": "s3://b/dvc", "primary": "s3://a/dvc"}}]
    assert store_dataset_evidence(cfg, SID, validations, datasets, repos=repos) == ["primary", "secondary"]
    for repo in repos.values():
        got = load_dataset_evidence(repo, SID)
        assert got == {"snapshot_id": SID, "datasets": datasets, "validations": validations}
    # deterministic bytes: the same records in another key order give the same file
    shuffled = [{k: datasets[0][k] for k in reversed(list(datasets[0]))}]
    assert dataset_evidence(SID, validations, shuffled) == repos["primary"].load_evidence(SID, "datasets.json")
    with pytest.raises(ObjectNotFound):
        load_dataset_evidence(repos["primary"], "cd" * 32)
    with pytest.raises(UsageError, match="not a snapshot id"):
        store_dataset_evidence(cfg, "latest", validations, datasets, repos=repos)


def test_the_record_of_a_pushed_dataset(cfg):
    ver = DatasetVersion("tickets", "data/tickets.csv", "f" * 32, 1234, 1, "/repo")
    pushes = [PushResult("tickets", "primary", "s3://llmdr-primary/dvc", ver.md5, 1, False, 0.5),
              PushResult("tickets", "secondary", "s3://llmdr-secondary/dvc", ver.md5, 0, True, 0.1)]
    rec = dataset_record(cfg, ver, pushes)
    assert rec == {"name": "tickets", "md5": "f" * 32, "size": 1234, "path": "data/tickets.csv",
                   "remotes": {"primary": "s3://llmdr-primary/dvc", "secondary": "s3://llmdr-secondary/dvc"},
                   "pushes": [{"region": "primary", "pushed": 1, "already": False, "duration_s": 0.5},
                              {"region": "secondary", "pushed": 0, "already": True, "duration_s": 0.1}]}
    # what the model version and the training runs record of it
    tags = dataset_tags([rec])
    assert tags == {"llmdr.dataset.tickets.md5": "f" * 32,
                    "llmdr.dataset.tickets.remote.primary": "s3://llmdr-primary/dvc",
                    "llmdr.dataset.tickets.remote.secondary": "s3://llmdr-secondary/dvc"}
    assert datasets_from_tags(tags) == [{"name": "tickets", "md5": "f" * 32, "remotes": rec["remotes"]}]


def test_checkpoint_runs_are_recorded_only_when_models_are_registered(cfg, tmp_path):
    assert cfg.checkpoints is None
    assert record_checkpoint_runs(cfg, [{"checkpoint": "checkpoint-1", "snapshot_id": SID}]) == []
    off = parse_config(two_region_yaml(9, 10, extra="checkpoints: {path: ckpts}\ntracking: {register_models: false}"),
                       source=tmp_path / "llmdr.yaml")
    assert record_checkpoint_runs(off, [{"checkpoint": "checkpoint-1", "snapshot_id": SID}]) == []
    assert [checkpoint_step(e) for e in ({"tags": {"step": "200"}}, {"tags": {"step": "-1"}}, {"tags": {"step": "x"}},
                                          {"tags": None}, {})] == [200, -1, None, None, None]


def test_mlflow_keys_values_and_filters():
    assert mlflow_key("bad key(!)") == "bad key___"
    long = mlflow_key("k" * 300)
    assert len(long) == 250 and long.startswith("k" * 240 + "-")
    assert param_value({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
    assert len(param_value("x" * 7000)) == 6000 and param_value("x" * 7000).endswith("…")
    with pytest.raises(UsageError, match="quote or backslash"):
        quote("it's")
    hw = {"cpu_model": "EPYC", "cpu_count": 8, "memory_gib": 31.0, "gpus": [{"name": "H100"}, {"name": "H100"}]}
    assert hardware_summary(hw) == "EPYC (8 cores), 31.0 GiB, 2 x H100"
    assert hardware_summary({**hw, "gpus": []}).endswith("no GPU")


def test_render_lineage_of_an_unregistered_snapshot():
    data = {"model": None, "snapshot": {"id": SID, "kind": "checkpoint", "created": "2026-12-01T00:00:00Z",
                                        "components": {"weights": "d" * 64}},
            "regions": {"primary": {"present": True, "complete": True, "snapshot_id": SID},
                        "secondary": {"present": None, "error": "unreachable"}},
            "datasets": [], "training_run": None, "drills": []}
    text = render_lineage(data)
    assert text.splitlines()[0].startswith(f"checkpoint snapshot {SID} (created 2026-12-01T00:00:00Z; not registered")
    assert f"primary: present, complete, snapshot {SID[:12]}" in text
    assert "secondary: NOT CHECKED - unreachable" in text and "training run: none recorded" in text


def test_snapshot_dataset_tags_round_trip_through_a_manifest():
    from llmdr.lineage.tags import datasets_from_manifest, snapshot_dataset_tags
    from llmdr.repo.chunking import DEFAULT_CHUNKER
    from llmdr.repo.manifest import Manifest

    assert snapshot_dataset_tags([]) is None
    tags = snapshot_dataset_tags([{"name": "train", "md5": "a" * 32}, {"name": "eval", "md5": "b" * 32}])
    assert tags == {"dataset.train.md5": "a" * 32, "dataset.eval.md5": "b" * 32}
    manifest = Manifest(bundle="b", source="/b", host="h", started="2026-12-03T00:00:00Z", created="2026-12-03T00:00:01Z",
                        tool_version="0", chunker=DEFAULT_CHUNKER, files=(), tags=tags)
    assert [d["name"] for d in datasets_from_manifest(manifest)] == ["eval", "train"]
