"""Folder datasets at scale: partitions found (hive keys, skipped names, refused formats), validated in bounded
batches with failures naming their partition, a seeded sample recorded and repeatable, validation off on the record.
Real Great Expectations, real pyarrow and pandas readers; no S3 here (tests/test_dataset_folder_protect.py does the
DVC + SeaweedFS + protect-bundle part)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from llmdr.errors import ConfigError, UsageError
from llmdr.lineage import expectations as ex
from llmdr.lineage import partitions as pt
from tests.test_expectations import project

BETWEEN = "expect_column_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"
ROWS = "expect_table_row_count_to_be_between"
NOT_NULL = "expect_column_values_to_not_be_null"


def frame(n: int, start: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(start)
    return pd.DataFrame({"id": np.arange(start, start + n), "x": rng.random(n),
                         "label": np.array(["a", "b", "c"])[np.arange(n) % 3]})


def write_parts(root, fmt: str = "parquet", *, parts: int = 4, rows: int = 250) -> list[str]:
    """``root/day=N/part-0.<fmt>``, each ``rows`` rows; returns the partition names."""
    names = []
    for i in range(parts):
        rel = f"day={i}/part-0.{fmt}"
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        df = frame(rows, i * rows)
        if fmt == "parquet":
            df.to_parquet(p, index=False, row_group_size=64)
        elif fmt == "csv":
            df.to_csv(p, index=False)
        else:
            df.to_json(p, orient="records", lines=True)
        names.append(rel)
    return names


def folder_project(tmp_path, monkeypatch, fmt="parquet", **ds):
    monkeypatch.chdir(tmp_path)
    names = write_parts(tmp_path / "data" / "events", fmt)
    cfg, dss = project(tmp_path, {"events": "data/events"})
    d = dss["events"].model_copy(update={"batch_rows": 100, **ds})
    return cfg, d, names


def kinds(report) -> set[tuple[str, str | None]]:
    return {(f["expectation"], f["column"]) for f in report.failures}


# --- discovery -----------------------------------------------------------------------------------------------------

def test_partitions_are_found_sorted_with_hive_keys_and_non_data_names_skipped(tmp_path):
    root = tmp_path / "ds"
    write_parts(root, parts=2)
    (root / "_SUCCESS").write_text("")
    (root / "day=0" / ".part-0.parquet.crc").write_text("x")
    (root / "_tmp").mkdir()
    (root / "_tmp" / "half.parquet").write_text("not yet")
    (root / "plain").mkdir()
    frame(5).to_parquet(root / "plain" / "x.parquet")
    parts = pt.discover(root)
    assert [(p.name, p.keys, p.format) for p in parts] == [
        ("day=0/part-0.parquet", {"day": "0"}, "parquet"), ("day=1/part-0.parquet", {"day": "1"}, "parquet"),
        ("plain/x.parquet", {}, "parquet")]
    assert pt.hive_keys("year=2026/month=11/x/f.csv") == {"year": "2026", "month": "11"}


def test_mixed_unknown_and_mismatched_formats_are_refused_naming_the_files(tmp_path):
    root = tmp_path / "ds"
    write_parts(root, parts=2)
    frame(3).to_csv(root / "day=1" / "extra.csv", index=False)
    with pytest.raises(ConfigError, match=r"mixes formats \(csv: day=1/extra.csv; parquet: day=0/part-0.parquet"):
        pt.discover(root)
    with pytest.raises(ConfigError, match=r"format is parquet, but these files are not: day=1/extra.csv"):
        pt.discover(root, "parquet")
    (root / "day=1" / "extra.csv").unlink()
    (root / "README.md").write_text("about")
    with pytest.raises(ConfigError, match=r"1 file\(s\) are not Parquet, CSV or JSON-lines partitions: README.md"):
        pt.discover(root)
    (root / "README.md").unlink()
    with pytest.raises(ConfigError, match="is Parquet, but datasets\\[\\].format says csv"):
        pt.discover(root / "day=0" / "part-0.parquet", "csv")
    empty = tmp_path / "empty"
    (empty / "_logs").mkdir(parents=True)
    with pytest.raises(UsageError, match="holds no data files"):
        pt.discover(empty)
    with pytest.raises(UsageError, match="not found"):
        pt.discover(tmp_path / "missing")


def test_an_unreadable_partition_is_named(tmp_path, monkeypatch):
    cfg, ds, names = folder_project(tmp_path, monkeypatch)
    ex.ensure_suite(cfg, ds)
    (cfg.dataset_path(ds) / names[2]).write_bytes(b"PAR1 not really parquet")
    with pytest.raises(UsageError, match=r"day=2/part-0.parquet: could not read it as Parquet"):
        ex.validate(cfg, ds)


# --- full: batches, partitions ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_full_validation_reads_every_row_in_capped_batches(tmp_path, monkeypatch, fmt):
    cfg, ds, names = folder_project(tmp_path, monkeypatch, fmt)
    _, created = ex.ensure_suite(cfg, ds)
    assert created
    rep = ex.validate(cfg, ds)
    assert rep.success, rep.summary()
    assert (rep.mode, rep.format, rep.partitions, rep.partition_keys) == ("full", fmt, 4, ["day"])
    assert rep.rows == rep.total_rows == 1000
    # the memory bound, structurally: no batch above batch_rows; 250-row partitions in 100-row batches = 3 each
    assert rep.batch_rows == 100 and rep.max_batch_rows == 100 and rep.batches == 12
    assert "1000 rows in 4 partitions" in rep.summary()


def test_a_bad_partition_fails_validation_naming_that_partition(tmp_path, monkeypatch):
    cfg, ds, names = folder_project(tmp_path, monkeypatch)
    ex.ensure_suite(cfg, ds)
    bad = frame(250, 500).assign(label="zzz", x=lambda d: d["x"] * 1000)
    bad.to_parquet(cfg.dataset_path(ds) / names[2], index=False)
    rep = ex.validate(cfg, ds)
    assert not rep.success
    assert kinds(rep) == {(IN_SET, "label"), (BETWEEN, "x")}
    assert rep.failed_partitions == ["day=2/part-0.parquet"]
    for f in rep.failures:
        assert f["partitions"] == ["day=2/part-0.parquet"]
    in_set = next(f for f in rep.failures if f["expectation"] == IN_SET)
    assert in_set["unexpected_count"] == 250 and in_set["unexpected_sample"] == ["zzz"]
    assert "in day=2/part-0.parquet" in rep.summary()
    evidence = json.loads(json.dumps(rep.to_json(), allow_nan=False))
    assert evidence["result"]["statistics"]["unsuccessful_expectations"] == 2


def test_the_row_count_is_checked_on_the_whole_dataset_not_per_batch(tmp_path, monkeypatch):
    cfg, ds, names = folder_project(tmp_path, monkeypatch)
    ex.ensure_suite(cfg, ds)
    suite = json.loads(cfg.suite_path(ds).read_text())
    rows = next(e for e in suite["expectations"] if e["type"] == ROWS)["kwargs"]
    assert (rows["min_value"], rows["max_value"]) == (500, 2000)  # the total (1000), though each batch holds 100
    for n in names[1:]:
        (cfg.dataset_path(ds) / n).unlink()
    rep = ex.validate(cfg, ds)
    assert kinds(rep) == {(ROWS, None)} and "observed 250, expected 500..2000" in rep.summary()


def test_a_folder_profiles_as_the_same_data_in_one_file_would(tmp_path, monkeypatch):
    cfg, ds, names = folder_project(tmp_path, monkeypatch)
    whole = pd.concat([pd.read_parquet(cfg.dataset_path(ds) / n) for n in names], ignore_index=True)
    by_batches, rows = ex.profile_dataset(cfg.dataset_path(ds), ds)
    at_once = ex.profile_suite(whole, name=ds.name)
    strip = lambda s: [{k: v for k, v in e.items() if k != "meta"} for e in s["expectations"]]  # noqa: E731
    assert rows == 1000 and strip(by_batches) == strip(at_once)


def test_nulls_in_some_batches_only_do_not_fail_the_type_check(tmp_path, monkeypatch):
    """pandas reads an integer column as float64 where a chunk has nulls, as int64 where it has none; the whole
    file read at once is float64. Batches are judged as the whole file would be."""
    monkeypatch.chdir(tmp_path)
    df = frame(300).astype({"id": "float64"})
    df.loc[250:, "id"] = None
    df.loc[:199, "label"] = None  # a string column entirely null in the first two batches
    df.to_csv(tmp_path / "t.csv", index=False)
    cfg, dss = project(tmp_path, {"t": "t.csv"})
    d = dss["t"].model_copy(update={"batch_rows": 100})
    ex.ensure_suite(cfg, d)
    rep = ex.validate(cfg, d)
    assert rep.success, rep.summary()
    assert rep.batches == 3


def test_mostly_is_judged_over_all_rows_not_per_batch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    df = frame(400).astype({"x": "float64"})
    df.loc[::10, "x"] = None  # 10 % nulls, profiled as mostly 0.85
    df.to_csv(tmp_path / "t.csv", index=False)
    cfg, dss = project(tmp_path, {"t": "t.csv"})
    d = dss["t"].model_copy(update={"batch_rows": 100})
    ex.ensure_suite(cfg, d)
    df.loc[0:39, "x"] = None  # batch 1 now 100 % ... no: 40 + 6 of 100 null (46 %), overall 19 %
    df.to_csv(tmp_path / "t.csv", index=False)
    rep = ex.validate(cfg, d)
    assert kinds(rep) == {(NOT_NULL, "x")}
    f = rep.failures[0]
    assert f["unexpected_count"] == int(df["x"].isna().sum()) and f["partitions"] == ["t.csv"]
    df.loc[0:39, "x"] = 0.5
    df.loc[0:9, "x"] = None  # batch 1: 10 + 9 null (19 %), over 15 % there, but 46 of 400 (11.5 %) overall
    df.to_csv(tmp_path / "t.csv", index=False)
    assert ex.validate(cfg, d).success


# --- sample ---------------------------------------------------------------------------------------------------------

def test_sample_mode_records_size_and_seed_and_is_deterministic(tmp_path, monkeypatch):
    cfg, ds, names = folder_project(tmp_path, monkeypatch, validation="sample", sample_rows=120, seed=7)
    ex.ensure_suite(cfg, ds)
    a, b = ex.validate(cfg, ds), ex.validate(cfg, ds)
    assert a.success and a.mode == "sample"
    assert a.sample == {"rows": 120, "requested": 120, "seed": 7, "method": "priority reservoir"}
    assert (a.rows, a.total_rows, a.max_batch_rows <= 100) == (120, 1000, True)
    assert "sample of 120 of 1000 rows (seed 7)" in a.summary()
    drop = {"duration_s"}
    assert {k: v for k, v in a.to_json().items() if k not in drop} == \
        {k: v for k, v in b.to_json().items() if k not in drop}

    parts = pt.discover(cfg.dataset_path(ds))
    ids = lambda seed: [int(i) for _, df in pt.sample_rows(parts, 120, seed, 100)[0] for i in df["id"]]  # noqa: E731
    first = ids(7)
    assert first == ids(7) and first != ids(8)
    assert len(set(first)) == 120 and first == sorted(first)  # distinct rows, in partition then row order
    assert {i // 250 for i in first} == {0, 1, 2, 3}  # drawn across every partition
    _, total, per_part = pt.sample_rows(parts, 5000, 1, 100)
    assert total == 1000 and per_part == dict.fromkeys(names, 250)


def test_a_sample_finds_a_bad_partition_and_names_it(tmp_path, monkeypatch):
    cfg, ds, names = folder_project(tmp_path, monkeypatch, validation="sample", sample_rows=80, seed=3)
    ex.ensure_suite(cfg, ds)
    frame(250, 250).assign(label="zzz").to_parquet(cfg.dataset_path(ds) / names[1], index=False)
    rep = ex.validate(cfg, ds)
    assert kinds(rep) == {(IN_SET, "label")} and rep.failed_partitions == [names[1]]


# --- off ------------------------------------------------------------------------------------------------------------

def test_off_is_on_the_record_and_reads_nothing(tmp_path, monkeypatch):
    cfg, ds, names = folder_project(tmp_path, monkeypatch, validation="off")
    (cfg.dataset_path(ds) / names[0]).write_bytes(b"garbage")  # would fail if anything read it
    assert ex.ensure_suite(cfg, ds) == (cfg.suite_path(ds), False) and not cfg.suite_path(ds).exists()
    rep = ex.validate(cfg, ds)
    assert rep.success and rep.mode == "off" and rep.note == "validation off by config"
    assert rep.to_json()["result"] == {"success": None, "note": "validation off by config"}
    assert "validation off by config" in rep.summary()

    from llmdr.artifacts import protect_summary_markdown

    md = protect_summary_markdown("b", _snap(), [], [], [rep.to_json()],
                                  [{"name": "events", "md5": "abc.dir", "pushes": []}])
    assert "**validation off by config**" in md


def _snap() -> dict:
    return {"snapshot_id": "0" * 64, "region": "primary", "created": "2026-12-04T12:00:00Z", "bytes_deduplicated": 0, "bytes_total": 1, "bytes_new": 1, "bytes_read": 1,
            "files": 1, "files_unchanged": 0, "chunks_total": 1, "chunks_new": 1, "duration_s": 0.1}


def test_config_refuses_bad_validation_settings(tmp_path):
    from llmdr.config import Dataset

    for bad in ({"validation": "some"}, {"format": "xlsx"}, {"sample_rows": 0}, {"batch_rows": 5}, {"seed": -1}):
        with pytest.raises(ValueError):
            Dataset(name="d", path="d", **bad)
    d = Dataset(name="d", path="d.csv")
    assert (d.validation, d.format, d.batch_rows) == ("full", "auto", 100_000)


def test_an_unquoted_yaml_off_means_off(tmp_path):
    from llmdr.config import parse_config
    from tests.test_expectations import CONFIG

    text = CONFIG.format(datasets="  - {name: d, path: d.csv, validation: off}")
    assert parse_config(text, source=tmp_path / "llmdr.yaml").datasets[0].validation == "off"


def test_a_column_with_text_in_one_batch_only_profiles_and_validates_as_the_whole_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    df = frame(300).astype({"id": "object"})
    df.loc[250, "id"] = "n/a"  # only the third batch has text: read whole, the column is text
    df.to_csv(tmp_path / "t.csv", index=False)
    cfg, dss = project(tmp_path, {"t": "t.csv"})
    d = dss["t"].model_copy(update={"batch_rows": 100})
    ex.ensure_suite(cfg, d)
    types = {e["kwargs"]["column"]: e["kwargs"]["type_"] for e in json.loads(cfg.suite_path(d).read_text())[
        "expectations"] if e["type"] == "expect_column_values_to_be_of_type"}
    assert types["id"] == ex._ge_type(pd.read_csv(tmp_path / "t.csv")["id"].dtype)
    rep = ex.validate(cfg, d)
    assert rep.success and rep.batches == 3, rep.summary()


def test_a_symbolic_link_out_of_the_folder_is_refused(tmp_path):
    root = tmp_path / "ds"
    write_parts(root, "csv", parts=1)
    secret = tmp_path / "secret.csv"
    secret.write_text("token\nabc123\n")
    (root / "day=0" / "leak.csv").symlink_to(secret)
    with pytest.raises(UsageError, match=r"symbolic links leading out of the dataset folder: day=0/leak.csv"):
        pt.discover(root)
    (root / "day=0" / "leak.csv").unlink()
    (root / "day=0" / "inside.csv").symlink_to(root / "day=0" / "part-0.csv")  # a link inside: fine
    assert [p.name for p in pt.discover(root)] == ["day=0/inside.csv", "day=0/part-0.csv"]
