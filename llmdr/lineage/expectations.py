"""Great Expectations suites for the datasets named in ``llmdr.yaml``: profile, keep, validate.

The first backup of a dataset writes a suite profiled from its data to ``expectations/<name>.json`` (GE's own suite
JSON, meant to be committed and edited); later runs never overwrite it. Validation runs at backup and after every
restore or drill, against the dataset file or a restored copy, and returns a ``ValidationReport`` whose ``result`` is
GE's JSON for the snapshot's evidence.

Profile rules (see ``profile_suite``):

- schema: the columns, in order (``expect_table_columns_to_match_ordered_list``), and each column's dtype;
- row count between half and twice the profiled count (``ceil(0.5 n)`` .. ``2 n``);
- nulls: a column without nulls must stay without; otherwise its null fraction may rise at most ``NULL_MARGIN``
  (absolute) above the profiled one;
- string columns with at most ``MAX_SET`` distinct values (and some repetition) keep to that value set;
- string columns whose values all look like ISO dates keep that shape;
- numeric columns stay within the profiled min..max widened by ``RANGE_WIDEN`` of the span on each side (never
  below 0 when the data was never negative).

Great Expectations is imported inside the functions that need it: it takes 7-14 s to import here, and ``import
llmdr`` must stay fast. GE runs with an ephemeral context and writes nothing to disk.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmdr.errors import ConfigError, UsageError
from llmdr.lineage.batches import BatchChecker
from llmdr.lineage.partitions import Partition, discover, iter_batches, sample_rows
from llmdr.lineage.profile import (  # noqa: F401 - the profile's constants are part of this module's API
    ISO_DATE,
    MAX_SET,
    NULL_MARGIN,
    RANGE_WIDEN,
    ROW_COUNT_HIGH,
    ROW_COUNT_LOW,
    batch_stats,
    ge_type,
    merge,
    suite_from_stats,
)

if TYPE_CHECKING:
    import pandas as pd

    from llmdr.config import Config, Dataset

log = logging.getLogger(__name__)

SAMPLE = 5
_FORMATS = {".csv": "CSV", ".tsv": "TSV", ".parquet": "Parquet", ".pq": "Parquet", ".jsonl": "JSON lines",
            ".ndjson": "JSON lines", ".json": "JSON (a list of records)"}


# --- loading -------------------------------------------------------------------------------------------------------

def _has_parquet_engine() -> bool:
    return any(importlib.util.find_spec(m) is not None for m in ("pyarrow", "fastparquet"))


def load_frame(path: Path) -> "pd.DataFrame":
    """Read a dataset file into a DataFrame, choosing the reader by suffix (csv, tsv, parquet, jsonl/ndjson,
    json records)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        raise ConfigError(f"{path}: cannot validate a '{suffix or 'suffix-less'}' file; Great Expectations checks "
                          f"run on {', '.join(sorted(_FORMATS))} files. Point datasets[].path at one of those.")
    if not path.is_file():
        raise UsageError(f"{path}: dataset file not found. Check datasets[].path in llmdr.yaml, or bring the data "
                         "back with `dvc pull` first.")
    if _FORMATS[suffix] == "Parquet" and not _has_parquet_engine():
        raise UsageError(f"{path}: reading Parquet needs pyarrow, which is not installed. Install it "
                         "(`uv pip install pyarrow`) or store the dataset as CSV or JSON lines.")
    import pandas as pd

    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix == ".tsv":
            return pd.read_csv(path, sep="\t")
        if _FORMATS[suffix] == "Parquet":
            return pd.read_parquet(path)
        if suffix in (".jsonl", ".ndjson"):
            return pd.read_json(path, lines=True)
        return pd.read_json(path, orient="records")
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path}: could not read it as {_FORMATS[suffix]} ({first}). Fix the file or its suffix; "
                         "a restored copy that cannot be read is as bad as a lost one.") from None


# --- profiling -----------------------------------------------------------------------------------------------------

_ge_type = ge_type


def _utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ge_version() -> str | None:
    try:
        return metadata.version("great-expectations")
    except metadata.PackageNotFoundError:
        return None


def profile_suite(df: "pd.DataFrame", *, name: str) -> dict:
    """An expectation suite profiled from ``df`` (rules in the module docstring), as plain JSON in GE's suite
    format: ``{"name", "id", "expectations": [{"type", "kwargs", "meta"}], "meta", "notes"}``."""
    return suite_from_stats(batch_stats(df), name=name, rows=len(df), stamp=_utc_now(), ge_version=_ge_version())


def profile_dataset(data: Path, ds: "Dataset") -> tuple[dict, int]:
    """The suite profiled from every partition of the dataset at ``data``, one batch in memory at a time (same rules
    and, for data that fits one batch, the same suite as :func:`profile_suite`); and the rows profiled."""
    stats = None
    rows = 0
    for part in discover(data, ds.format, dataset=ds.name):
        for batch in iter_batches(part, ds.batch_rows):
            rows += len(batch)
            stats = merge(stats, batch_stats(batch, stats))
    suite = suite_from_stats(stats or {}, name=ds.name, rows=rows, stamp=_utc_now(), ge_version=_ge_version())
    return suite, rows


def ensure_suite(cfg: "Config", ds: "Dataset", df: "pd.DataFrame | None" = None) -> tuple[Path, bool]:
    """The dataset's suite file, profiled from its data when missing (``created`` is True then). An existing file
    is the user's and is never rewritten, not even when a concurrent run creates it first."""
    path = cfg.suite_path(ds)
    if path.exists() or ds.validation == "off":  # off: nothing reads the suite, so no reason to read the data
        return path, False
    if df is None:
        suite, rows = profile_dataset(cfg.dataset_path(ds), ds)
    else:
        suite, rows = profile_suite(df, name=ds.name), len(df)
    text = json.dumps(suite, indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    try:
        os.link(tmp, path)  # fails if the file appeared meanwhile: never replace a suite
    except FileExistsError:
        return path, False
    except OSError:  # no hard links on this filesystem: exclusive create instead
        try:
            with open(path, "x", encoding="utf-8") as fh:
                fh.write(text)
        except FileExistsError:
            return path, False
    finally:
        tmp.unlink(missing_ok=True)
    log.info("profiled %s (%d rows) into %s", ds.name, rows, path)
    return path, True


# --- validation ----------------------------------------------------------------------------------------------------

@dataclass
class ValidationReport:
    """A dataset (a file or a folder of partitions) checked against its suite. ``failures`` name each failing
    expectation, column and the partitions where it failed; ``result`` is GE's JSON shape aggregated over every batch
    (:mod:`llmdr.lineage.batches`), kept as evidence. ``mode`` is full, sample or off; ``rows`` the rows checked,
    ``total_rows`` the dataset's; ``sample`` the sample's size and seed (sample mode); ``batches`` and
    ``max_batch_rows`` show the batch cap (``batch_rows``) was kept."""

    dataset: str
    path: str
    suite: str
    success: bool
    evaluated: int
    failed: int
    failures: list[dict] = field(default_factory=list)
    result: dict = field(default_factory=dict)
    duration_s: float = 0.0
    mode: str = "full"
    format: str | None = None
    partitions: int = 0
    partition_keys: list[str] = field(default_factory=list)  # the hive keys seen (year, month...)
    failed_partitions: list[str] = field(default_factory=list)
    rows: int = 0
    total_rows: int = 0
    sample: dict | None = None
    batch_rows: int = 0
    batches: int = 0
    max_batch_rows: int = 0
    note: str = ""

    def to_json(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        if self.mode == "off":
            return f"{self.dataset}: validation off by config (datasets[].validation: off); nothing was checked"
        what = (f"sample of {self.rows} of {self.total_rows} rows (seed {self.sample['seed']})" if self.sample
                else f"{self.rows} rows")
        head = (f"{self.dataset}: {self.evaluated - self.failed}/{self.evaluated} expectations passed"
                + (f" ({what} in {self.partitions} partitions)" if self.partitions > 1 or self.sample else ""))
        if not self.failures:
            return head
        parts = [f"FAILED {_label(f)} — {f['detail']}" + _where(f) for f in self.failures[:3]]
        if len(self.failures) > 3:
            parts.append(f"and {len(self.failures) - 3} more")
        return head + "; " + "; ".join(parts)


def _where(f: dict) -> str:
    parts = f.get("partitions") or []
    if not parts or parts == [""]:
        return ""
    more = f" and {len(parts) - 3} more" if len(parts) > 3 else ""
    return f" in {', '.join(parts[:3])}{more}"


def _label(f: dict) -> str:
    return f"{f['expectation']}({f['column']})" if f.get("column") else f["expectation"]


def _read_suite(path: Path, ds_name: str) -> dict:
    if not path.is_file():
        raise UsageError(f"{path}: no expectation suite for dataset '{ds_name}'. The first backup profiles one "
                         "(ensure_suite); or write it by hand, or set datasets[].suite in llmdr.yaml.")
    try:
        suite = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f":{exc.lineno}:{exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise ConfigError(f"{path}{where}: the expectation suite is not valid JSON ({exc}). Fix it, or delete it "
                          "to have it profiled again at the next backup.") from None
    if not isinstance(suite, dict) or not isinstance(suite.get("name"), str) or not suite["name"]:
        raise ConfigError(f"{path}: an expectation suite is a JSON object with a \"name\" and an \"expectations\" "
                          "list (Great Expectations' suite format). Fix it, or delete it to have it profiled again.")
    exps = suite.get("expectations", [])
    if not isinstance(exps, list):
        raise ConfigError(f"{path}: \"expectations\" must be a list of {{\"type\": ..., \"kwargs\": {{...}}}}")
    for i, e in enumerate(exps):
        if not (isinstance(e, dict) and isinstance(e.get("type"), str) and isinstance(e.get("kwargs", {}), dict)):
            raise ConfigError(f"{path}: expectations[{i}] must be an object with a \"type\" string and a \"kwargs\" "
                              "object")
    return suite


def _import_gx() -> Any:
    """Great Expectations, imported on first use with its usage analytics off (the variable is read at import)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations

    # GE pins some of its module loggers to INFO (data_context.types.base announces every temporary docs folder):
    # noise in a backup's output unless the caller asked for INFO logs
    if not logging.getLogger().isEnabledFor(logging.INFO):
        import great_expectations.data_context.types.base  # noqa: F401 - the module that pins its level

        for name in ("great_expectations", "great_expectations.data_context.types.base"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return great_expectations


def _build_suite(suite: dict, path: Path) -> Any:
    """GE's ExpectationSuite from the JSON, refusing what GE would otherwise skip silently: an unknown expectation
    type is only logged and dropped by ``ExpectationSuite(**d)``, which would turn a typo into a missing check."""
    _import_gx()
    from great_expectations.core import ExpectationSuite
    from great_expectations.expectations.registry import get_expectation_impl

    for i, e in enumerate(suite.get("expectations", [])):
        try:
            get_expectation_impl(e["type"])
        except Exception:
            raise ConfigError(f"{path}: expectations[{i}]: '{e['type']}' is not a Great Expectations expectation "
                              "type; check its spelling (e.g. expect_column_values_to_be_in_set).") from None
    known = {"name", "id", "expectations", "meta", "notes", "suite_parameters"}
    extra = set(suite) - known
    if extra:
        raise ConfigError(f"{path}: unknown top-level key(s) {sorted(extra)}; a suite has {sorted(known)}")
    try:
        built = ExpectationSuite(**suite)
    except Exception as exc:
        msg = " ".join(str(exc).split())
        raise ConfigError(f"{path}: Great Expectations rejected the suite: {msg}. Fix the expectation named "
                          "there, or delete the file to have it profiled again.") from None
    if len(built.expectations) != len(suite.get("expectations", [])):
        raise ConfigError(f"{path}: Great Expectations dropped {len(suite['expectations']) - len(built.expectations)}"
                          " of its expectations while loading the suite; check each entry's type and kwargs.")
    return built


def _jsonable(v: Any) -> Any:
    """Plain JSON: non-finite floats become None (json.dumps would write NaN, which is not JSON)."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    if hasattr(v, "item"):
        return _jsonable(v.item())
    return str(v)


def _failure(r: dict, columns: set[str]) -> dict:
    cfg = r.get("expectation_config") or {}
    kwargs = {k: v for k, v in (cfg.get("kwargs") or {}).items() if k != "batch_id"}
    res = r.get("result") or {}
    info = r.get("exception_info") or {}
    # GE 1.x nests exception info per metric ({metric_id: {...}}) when a metric raised, flat otherwise
    raised = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    error = next((str(i.get("exception_message") or "raised an exception").strip()
                  for i in raised if i.get("raised_exception")), None)
    f = {"expectation": cfg.get("type"), "column": kwargs.get("column"), "kwargs": kwargs,
         "observed": res.get("observed_value"), "unexpected_count": res.get("unexpected_count"),
         "unexpected_percent": res.get("unexpected_percent"),
         "unexpected_sample": _sample(res), "error": error}
    if f["column"] is not None and f["column"] not in columns:
        # GE's own message for a missing column depends on the expectation ("list index out of range" for types)
        f["error"] = f["detail"] = f"column {f['column']!r} is missing from the data"
    else:
        f["detail"] = _detail(f)
    return f


def _sample(res: dict) -> list:
    """A few distinct unexpected values, most frequent first when GE counted them."""
    counts = res.get("partial_unexpected_counts") or []
    values = [c.get("value") for c in counts if isinstance(c, dict)] or list(res.get("partial_unexpected_list") or [])
    out: list = []
    for v in values:
        if v not in out:
            out.append(v)
    return out[:SAMPLE]


def _detail(f: dict) -> str:
    kw = f["kwargs"]
    if f["error"]:
        return f"error: {f['error'].splitlines()[0]}"
    if f["expectation"] == "expect_table_columns_to_match_ordered_list" and isinstance(f["observed"], list):
        want, got = kw.get("column_list") or [], f["observed"]
        missing = [c for c in want if c not in got]
        extra = [c for c in got if c not in want]
        bits = ([f"missing {missing}"] if missing else []) + ([f"unexpected {extra}"] if extra else [])
        return ", ".join(bits) or f"columns out of order: {got}"
    if f["unexpected_count"] is not None:
        n, pct = f["unexpected_count"], f["unexpected_percent"] or 0.0
        if f["expectation"] == "expect_column_values_to_not_be_null":
            allowed = (1 - kw.get("mostly", 1)) * 100
            return f"{n} null values ({pct:.1f}%, allowed {allowed:.1f}%)"
        return f"{n} unexpected values e.g. {f['unexpected_sample']}"
    text = f"observed {f['observed']!r}"
    if "min_value" in kw or "max_value" in kw:
        text += f", expected {kw.get('min_value')}..{kw.get('max_value')}"
    elif "type_" in kw:
        text += f", expected {kw['type_']}"
    return text


def _ge_runner() -> Any:
    """A function validating one DataFrame against a built suite with GE, its ephemeral context made once."""
    gx = _import_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")  # in memory: no gx/ folder, no great_expectations.yml
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_def = (ctx.data_sources.add_pandas("llmdr").add_dataframe_asset("dataset")
                 .add_batch_definition_whole_dataframe("whole"))

    def run(df: "pd.DataFrame", suite: Any) -> dict:
        return _jsonable(batch_def.get_batch(batch_parameters={"dataframe": df}).validate(suite).to_json_dict())

    return run


def _checked(ds: "Dataset", parts: list[Partition], checker: BatchChecker) -> tuple[int, dict | None]:
    """Feed the checker per ``ds.validation``: every row (full) or the seeded sample; returns the dataset's total rows
    and the sample record."""
    if ds.validation == "full":
        for part in parts:
            for batch in iter_batches(part, ds.batch_rows):
                checker.add(part, batch)
        return checker.rows, None
    groups, total, _ = sample_rows(parts, ds.sample_rows, ds.seed, ds.batch_rows)
    for part, df in groups:
        for i in range(0, len(df), ds.batch_rows):
            checker.add(part, df.iloc[i:i + ds.batch_rows].reset_index(drop=True))
    return total, {"rows": checker.rows, "requested": ds.sample_rows, "seed": ds.seed, "method": "priority reservoir"}


def validate(cfg: "Config", ds: "Dataset", *, path: Path | None = None) -> ValidationReport:
    """Check the dataset (a file or a folder of partitions; or ``path``, e.g. a restored copy) against its suite, as
    ``datasets[].validation`` says: every row in bounded batches (full), a seeded sample (sample), or not at all but
    on the record (off)."""
    t0 = time.monotonic()
    data_path = Path(path) if path is not None else cfg.dataset_path(ds)
    suite_path = cfg.suite_path(ds)
    if ds.validation == "off":
        report = ValidationReport(dataset=ds.name, path=str(data_path), suite=str(suite_path), success=True,
                                  evaluated=0, failed=0, mode="off", note="validation off by config",
                                  result={"success": None, "note": "validation off by config"})
        log.warning("%s", report.summary())
        return report
    suite_json = _read_suite(suite_path, ds.name)
    parts = discover(data_path, ds.format, dataset=ds.name)
    built = _build_suite(suite_json, suite_path)
    checker = BatchChecker(suite_json, built, _ge_runner())
    total, sample = _checked(ds, parts, checker)
    result = _jsonable(checker.result(total))
    if not suite_json.get("expectations"):
        log.warning("%s: the suite %s holds no expectations, so validation cannot fail", ds.name, suite_path)
    columns = checker.columns or set()
    failures = []
    for r in result.get("results", []):
        if not r.get("success"):
            f = _failure(r, columns)
            f["partitions"] = r.get("partitions") or []
            failures.append(f)
    stats = result.get("statistics") or {}
    keys = sorted({k for p in parts for k in p.keys})
    report = ValidationReport(dataset=ds.name, path=str(data_path), suite=str(suite_path),
                              success=bool(result.get("success")),
                              evaluated=int(stats.get("evaluated_expectations") or 0),
                              failed=int(stats.get("unsuccessful_expectations") or 0), failures=failures,
                              result=result, duration_s=round(time.monotonic() - t0, 3), mode=ds.validation,
                              format=parts[0].format, partitions=len(parts), partition_keys=keys,
                              failed_partitions=sorted({p for f in failures for p in f["partitions"]}),
                              rows=checker.rows, total_rows=total, sample=sample, batch_rows=ds.batch_rows,
                              batches=checker.batches, max_batch_rows=checker.max_batch_rows)
    log.info("%s", report.summary())
    return report
