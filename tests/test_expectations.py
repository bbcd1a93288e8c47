"""Great Expectations suites per dataset: profiled once, never overwritten, validated against the dataset file or a
restored copy; corrupted data fails with the failing expectation and column named. Real GE, real files."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from llmdr.config import parse_config
from llmdr.errors import ConfigError, UsageError
from llmdr.lineage import expectations as ex
from tests.support.requirements import need

ROOT = Path(__file__).parent.parent
HAS_PARQUET = ex._has_parquet_engine()
LABELS = ["billing", "bug", "feature", "account"]
WORDS = ["printer", "login", "refund", "crash", "slow", "invoice", "password", "export", "timeout", "upgrade"]
IN_SET, NOT_NULL, OF_TYPE = ("expect_column_values_to_be_in_set", "expect_column_values_to_not_be_null",
                             "expect_column_values_to_be_of_type")
BETWEEN, COLUMNS, ROWS = ("expect_column_values_to_be_between", "expect_table_columns_to_match_ordered_list",
                          "expect_table_row_count_to_be_between")

CONFIG = """\
version: 1
bundle: {{name: b, path: bundle}}
regions:
  - {{name: primary, role: primary, endpoint: "http://127.0.0.1:9000", bucket: ge-primary,
     credentials: {{access_key_env: A, secret_key_env: B}}}}
  - {{name: secondary, role: secondary, endpoint: "http://127.0.0.1:9100", bucket: ge-secondary,
     credentials: {{access_key_env: A, secret_key_env: B}}}}
datasets:
{datasets}
"""


def tickets(n: int = 300) -> pd.DataFrame:
    """Support tickets: id, free text, a label from a small set, a score with exactly 10% nulls, a date."""
    rng = random.Random(7)
    return pd.DataFrame({
        "id": range(1, n + 1),
        "text": [f"ticket {i}: " + " ".join(rng.choice(WORDS) for _ in range(6)) for i in range(n)],
        "label": [rng.choice(LABELS) for _ in range(n)],
        "score": [None if i % 10 == 3 else round(rng.uniform(0.05, 0.99), 3) for i in range(n)],
        "created": [f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}" for _ in range(n)],
    })


def project(tmp: Path, files: dict[str, str]):
    """llmdr.yaml in ``tmp`` naming one dataset per entry (name -> path relative to tmp)."""
    lines = "\n".join(f"  - {{name: {name}, path: {path}}}" for name, path in files.items())
    text = CONFIG.format(datasets=lines)
    (tmp / "llmdr.yaml").write_text(text)
    cfg = parse_config(text, source=tmp / "llmdr.yaml")
    return cfg, {d.name: d for d in cfg.datasets}


@pytest.fixture(scope="module")
def ge_import_s() -> float:
    """Time the first import of Great Expectations in this process (0 when another test module imported it)."""
    t0 = time.monotonic()
    ex._import_gx()
    return time.monotonic() - t0


@pytest.fixture
def tickets_project(tmp_path, monkeypatch):
    """A project folder holding data/tickets.csv; the working directory is the project, as for the CLI."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    tickets().to_csv(tmp_path / "data" / "tickets.csv", index=False)
    cfg, ds = project(tmp_path, {"support-tickets": "data/tickets.csv"})
    return cfg, ds["support-tickets"]


def kinds(report) -> set[tuple[str, str | None]]:
    return {(f["expectation"], f["column"]) for f in report.failures}


# --- import cost ---------------------------------------------------------------------------------------------------

def test_importing_the_module_loads_neither_great_expectations_nor_pandas():
    code = ("import sys, llmdr.lineage.expectations; heavy = [m for m in ('great_expectations', 'pandas') if m in sys.modules];"
            " print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- profile -------------------------------------------------------------------------------------------------------

def test_profile_follows_the_documented_rules_and_ge_loads_it(ge_import_s):
    from great_expectations.core import ExpectationSuite

    suite = ex.profile_suite(tickets(), name="support-tickets")
    by = {(e["type"], e["kwargs"].get("column")): e["kwargs"] for e in suite["expectations"]}
    assert suite["name"] == "support-tickets"
    assert by[(COLUMNS, None)] == {"column_list": ["id", "text", "label", "score", "created"]}
    assert by[(ROWS, None)] == {"min_value": 150, "max_value": 600}
    assert by[(OF_TYPE, "id")]["type_"] == "int64" and by[(OF_TYPE, "score")]["type_"] == "float64"
    assert by[(NOT_NULL, "text")] == {"column": "text"}  # no nulls observed: none allowed
    assert by[(NOT_NULL, "score")]["mostly"] == pytest.approx(0.85)  # 10% observed + 5% margin
    assert by[(IN_SET, "label")]["value_set"] == sorted(LABELS)
    assert (IN_SET, "text") not in by and (IN_SET, "created") not in by  # too many distinct values
    assert by[("expect_column_values_to_match_regex", "created")]["regex"] == ex.ISO_DATE
    assert by[(BETWEEN, "id")] == {"column": "id", "min_value": 0, "max_value": 330}  # 1..300 widened, not < 0
    lo, hi = by[(BETWEEN, "score")]["min_value"], by[(BETWEEN, "score")]["max_value"]
    assert 0 <= lo < tickets()["score"].min() and tickets()["score"].max() < hi < 1.1
    assert all(e["meta"]["llmdr"].startswith("profiled ") and e["meta"]["llmdr"].endswith("Z")
               for e in suite["expectations"])
    loaded = ExpectationSuite(**json.loads(json.dumps(suite, allow_nan=False)))
    assert len(loaded.expectations) == len(suite["expectations"])


def test_profile_bounds_are_readable_and_never_infinite():
    df = pd.DataFrame({"x": [0.1, 0.2, 0.3], "y": [1.0, float("inf"), 2.0], "k": ["a", "a", "b"]})
    suite = ex.profile_suite(df, name="t")
    between = {e["kwargs"]["column"]: e["kwargs"] for e in suite["expectations"] if e["type"] == BETWEEN}
    assert between == {"x": {"column": "x", "min_value": 0.08, "max_value": 0.32}}  # y holds inf: no range
    json.dumps(suite, allow_nan=False)


def test_suite_is_created_once_and_a_user_edit_survives(tickets_project):
    cfg, ds = tickets_project
    path, created = ex.ensure_suite(cfg, ds)
    assert created and path == cfg.base_dir / "expectations" / "support-tickets.json"
    suite = json.loads(path.read_text())
    for e in suite["expectations"]:
        if e["type"] == IN_SET and e["kwargs"]["column"] == "label":
            e["kwargs"]["value_set"].append("spam")  # the user accepts a new label
    path.write_text(json.dumps(suite, indent=2))
    edited = path.read_bytes()

    assert ex.ensure_suite(cfg, ds) == (path, False)
    assert ex.ensure_suite(cfg, ds, tickets(40)) == (path, False)  # not even with other data at hand
    assert path.read_bytes() == edited

    spam = tickets()
    spam.loc[:11, "label"] = "spam"
    spam.to_csv(cfg.dataset_path(ds), index=False)
    assert ex.validate(cfg, ds).success  # the edited suite is the one in force


# --- validate ------------------------------------------------------------------------------------------------------

def test_the_profiled_data_validates_and_ge_writes_nothing_in_the_project(tickets_project, ge_import_s, capsys):
    cfg, ds = tickets_project
    t0 = time.monotonic()
    ex.ensure_suite(cfg, ds)
    profile_s = time.monotonic() - t0
    report = ex.validate(cfg, ds)
    n = len(json.loads(cfg.suite_path(ds).read_text())["expectations"])

    assert report.success and report.failed == 0 and report.failures == []
    assert report.evaluated == n == 16
    assert report.summary() == f"support-tickets: {n}/{n} expectations passed"
    assert report.path == str(cfg.dataset_path(ds)) and report.suite == str(cfg.suite_path(ds))
    evidence = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert evidence["result"]["success"] is True
    assert evidence["result"]["statistics"]["evaluated_expectations"] == n
    written = sorted(p.relative_to(cfg.base_dir).as_posix() for p in cfg.base_dir.rglob("*"))
    assert written == ["data", "data/tickets.csv", "expectations", "expectations/support-tickets.json", "llmdr.yaml"]
    assert not (ROOT / "gx").exists() and not (ROOT / "great_expectations.yml").exists()
    with capsys.disabled():
        print(f"\n[timing] import great_expectations {ge_import_s:.2f}s (0 = imported earlier), profile + write "
              f"{profile_s:.3f}s, validate 300 rows x {n} expectations {report.duration_s:.3f}s")


def _labels_outside_set(df):
    df.loc[::25, "label"] = "spam"  # 12 rows
    return df


def _nulls_injected(df):
    df.loc[:29, "text"] = None
    df.loc[df.index % 2 == 0, "score"] = None
    return df


CORRUPTIONS = {
    "labels outside the set": (_labels_outside_set, {(IN_SET, "label")}),
    "column dropped": (lambda df: df.drop(columns=["label"]),
                       {(COLUMNS, None), (OF_TYPE, "label"), (NOT_NULL, "label"), (IN_SET, "label")}),
    "column renamed": (lambda df: df.rename(columns={"label": "category"}),
                       {(COLUMNS, None), (OF_TYPE, "label"), (NOT_NULL, "label"), (IN_SET, "label")}),
    "nulls injected": (_nulls_injected, {(NOT_NULL, "text"), (NOT_NULL, "score")}),
    "rows cut far below the range": (lambda df: df.iloc[:75], {(ROWS, None)}),
    "scores rescaled out of range": (lambda df: df.assign(score=df["score"] * 100), {(BETWEEN, "score")}),
    "ids turned into strings": (lambda df: df.assign(id="T-" + df["id"].astype(str)),
                                {(OF_TYPE, "id"), (BETWEEN, "id")}),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_a_corrupted_copy_fails_naming_each_failing_expectation_and_column(tickets_project, kind):
    cfg, ds = tickets_project
    ex.ensure_suite(cfg, ds)
    mutate, expected = CORRUPTIONS[kind]
    bad = cfg.base_dir / "restored" / "tickets.csv"
    bad.parent.mkdir()
    mutate(tickets()).to_csv(bad, index=False)

    report = ex.validate(cfg, ds, path=bad)

    assert not report.success
    assert kinds(report) == expected
    assert report.failed == len(report.failures) == len(expected)
    assert report.result["success"] is False
    summary = report.summary()
    assert summary.startswith(f"support-tickets: {report.evaluated - report.failed}/{report.evaluated} expectations")
    for f in report.failures[:3]:
        assert f"FAILED {ex._label(f)} — {f['detail']}" in summary


def test_failure_details_carry_the_evidence(tickets_project):
    cfg, ds = tickets_project
    ex.ensure_suite(cfg, ds)
    bad = cfg.base_dir / "bad.csv"
    _labels_outside_set(tickets()).to_csv(bad, index=False)
    (f,) = ex.validate(cfg, ds, path=bad).failures
    assert f["unexpected_count"] == 12 and f["unexpected_sample"] == ["spam"]
    assert f["kwargs"] == {"column": "label", "value_set": sorted(LABELS)}

    tickets().drop(columns=["label"]).to_csv(bad, index=False)
    report = ex.validate(cfg, ds, path=bad)
    details = {(f["expectation"], f["column"]): f["detail"] for f in report.failures}
    assert details[(COLUMNS, None)] == "missing ['label']"
    assert details[(OF_TYPE, "label")] == "column 'label' is missing from the data"
    assert "FAILED expect_table_columns_to_match_ordered_list — missing ['label']" in report.summary()


def test_row_count_range_is_half_to_twice_the_profiled_count(tickets_project):
    cfg, ds = tickets_project
    ex.ensure_suite(cfg, ds)
    copy = cfg.base_dir / "copy.csv"
    tickets().iloc[:150].to_csv(copy, index=False)
    assert ex.validate(cfg, ds, path=copy).success
    tickets().iloc[:149].to_csv(copy, index=False)
    report = ex.validate(cfg, ds, path=copy)
    assert kinds(report) == {(ROWS, None)}
    assert "observed 149, expected 150..600" in report.summary()


def test_a_restored_copy_elsewhere_is_validated_via_path(tickets_project):
    cfg, ds = tickets_project
    ex.ensure_suite(cfg, ds)
    restored = cfg.base_dir / "restore-target" / "2025-11-27" / "tickets.csv"
    restored.parent.mkdir(parents=True)
    shutil.copyfile(cfg.dataset_path(ds), restored)
    report = ex.validate(cfg, ds, path=restored)
    assert report.success and report.path == str(restored)

    _labels_outside_set(tickets()).to_csv(restored, index=False)  # only the copy goes bad
    assert kinds(ex.validate(cfg, ds, path=restored)) == {(IN_SET, "label")}
    assert ex.validate(cfg, ds).success


# --- formats -------------------------------------------------------------------------------------------------------

def _write(df: pd.DataFrame, path: Path) -> None:
    suffix = path.suffix
    if suffix == ".parquet":
        df.to_parquet(path, index=False)
    elif suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    elif suffix == ".json":
        df.to_json(path, orient="records")
    elif suffix == ".tsv":
        df.to_csv(path, sep="\t", index=False)


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".json", ".tsv"])
def test_other_formats_load_profile_and_validate(tmp_path, monkeypatch, suffix):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / f"tickets{suffix}"
    cfg, ds = project(tmp_path, {"t": path.name})
    if suffix == ".parquet" and not HAS_PARQUET:
        tickets().to_csv(path)  # content is irrelevant: the engine check comes first
        with pytest.raises(UsageError, match="pyarrow"):
            ex.load_frame(path)
        return
    _write(tickets(), path)
    df = ex.load_frame(path)
    assert list(df.columns) == ["id", "text", "label", "score", "created"] and len(df) == 300
    assert int(df["score"].isna().sum()) == 30
    assert ex.ensure_suite(cfg, ds["t"])[1]
    assert ex.validate(cfg, ds["t"]).success
    bad = tmp_path / f"bad{suffix}"
    _write(_labels_outside_set(tickets()), bad)
    assert kinds(ex.validate(cfg, ds["t"], path=bad)) == {(IN_SET, "label")}


def test_parquet_without_an_engine_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "t.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setattr(ex, "_has_parquet_engine", lambda: False)
    with pytest.raises(UsageError, match=r"t\.parquet: reading Parquet needs pyarrow.*CSV or JSON lines"):
        ex.load_frame(path)


def test_richer_dtypes_round_trip_through_the_type_expectations(tmp_path, monkeypatch):
    need(HAS_PARQUET, "needs pyarrow (in uv.lock) to keep these dtypes")
    monkeypatch.chdir(tmp_path)
    df = pd.DataFrame({
        "kind": pd.Categorical(["a", "b", "a", "c"] * 10),
        "at": pd.date_range("2025-01-01", periods=40, freq="h", tz="UTC"),
        "count": pd.array([1, None, 3, 4] * 10, dtype="Int64"),
        "flag": [True, False] * 20,
    })
    df.to_parquet(tmp_path / "rich.parquet", index=False)
    cfg, ds = project(tmp_path, {"rich": "rich.parquet"})
    ex.ensure_suite(cfg, ds["rich"])
    report = ex.validate(cfg, ds["rich"])
    assert report.success, report.summary()
    types = {f["kwargs"]["column"]: f["kwargs"]["type_"] for f in
             json.loads(cfg.suite_path(ds["rich"]).read_text())["expectations"] if f["type"] == OF_TYPE}
    assert types["kind"] == "CategoricalDtypeType"  # what GE's pandas check compares, not str(dtype)
    df.assign(kind=df["kind"].astype(str)).to_parquet(tmp_path / "plain.parquet", index=False)
    assert (OF_TYPE, "kind") in kinds(ex.validate(cfg, ds["rich"], path=tmp_path / "plain.parquet"))


# --- errors --------------------------------------------------------------------------------------------------------

def test_missing_unsupported_and_unreadable_dataset_files(tmp_path):
    with pytest.raises(UsageError, match=r"nope\.csv: dataset file not found.*dvc pull"):
        ex.load_frame(tmp_path / "nope.csv")
    (tmp_path / "t.xlsx").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"t\.xlsx: cannot validate a '\.xlsx' file"):
        ex.load_frame(tmp_path / "t.xlsx")
    (tmp_path / "t.jsonl").write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(UsageError, match=r"t\.jsonl: could not read it as JSON lines"):
        ex.load_frame(tmp_path / "t.jsonl")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(UsageError, match=r"empty\.csv: could not read it as CSV"):
        ex.load_frame(tmp_path / "empty.csv")
    if HAS_PARQUET:
        (tmp_path / "t.parquet").write_bytes(b"not parquet at all")
        with pytest.raises(UsageError, match=r"t\.parquet: could not read it as Parquet"):
            ex.load_frame(tmp_path / "t.parquet")


BAD_SUITES = {
    "not json": ('{"name": "t", "expectations": [', r"support-tickets\.json:1:\d+: .*not valid JSON"),
    "no name": ('{"expectations": []}', r"a JSON object with a \"name\""),
    "expectations not a list": ('{"name": "t", "expectations": {}}', r"\"expectations\" must be a list"),
    "entry without type": ('{"name": "t", "expectations": [{"kwargs": {}}]}', r"expectations\[0\] must be an object"),
    "unknown type": ('{"name": "t", "expectations": [{"type": "expect_colum_values_to_be_in_set", '
                     '"kwargs": {"column": "label"}}]}', r"expectations\[0\]: 'expect_colum_values_to_be_in_set' is "
                                                         r"not a Great Expectations expectation type"),
    "missing kwarg": ('{"name": "t", "expectations": [{"type": "expect_column_values_to_be_in_set", '
                      '"kwargs": {"column": "label"}}]}', r"rejected the suite: .*value_set"),
    "unknown key": ('{"name": "t", "expectations": [], "extra": 1}', r"unknown top-level key\(s\) \['extra'\]"),
}


@pytest.mark.parametrize("case", list(BAD_SUITES))
def test_a_broken_suite_file_is_a_config_error_naming_the_file(tickets_project, case):
    cfg, ds = tickets_project
    text, pattern = BAD_SUITES[case]
    path = cfg.suite_path(ds)
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(ConfigError, match=pattern) as info:
        ex.validate(cfg, ds)
    assert str(path) in str(info.value)


def test_validating_without_a_suite_says_how_to_get_one(tickets_project):
    cfg, ds = tickets_project
    with pytest.raises(UsageError, match=r"no expectation suite for dataset 'support-tickets'.*profiles one"):
        ex.validate(cfg, ds)
