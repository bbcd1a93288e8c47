"""An expectation suite applied batch by batch, its results aggregated over the whole dataset.

Great Expectations validates one in-memory DataFrame; a dataset of any size is fed to it in batches of at most
``datasets[].batch_rows`` rows (:mod:`llmdr.lineage.partitions`), and :class:`BatchChecker` folds the per-batch results
into one result per expectation, in GE's own JSON shape (``expectation_config``, ``success``, ``result``) plus the
partitions where it failed:

- the row-count expectation (``expect_table_row_count_to_be_between``) is checked by llmdr against the dataset's total
  row count (all partitions; in sample mode too), never per batch;
- a column-map expectation with ``mostly`` succeeds when the unexpected share over all checked rows stays within
  ``1 - mostly`` (GE's rule, applied to the sums); any other expectation succeeds when it succeeded in every batch;
- unexpected counts and element counts are summed; a few unexpected values are kept, most frequent first;
- a column missing from any batch counts as missing.

Before a batch is validated, two read artefacts are undone so a batch is judged as the whole file would be: an
integer column read as integers where the suite expects floats (a batch without the nulls that make pandas read the
whole column as float64) is widened to the expected float type; a column holding only numbers in this batch where the
suite expects text (``object``/``str``: text in other batches) is read as text; and a column that is entirely null in
this batch is cast to the expected type. Any other type difference is a real one and fails.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from llmdr.lineage.partitions import Partition

ROWS = "expect_table_row_count_to_be_between"
OF_TYPE = "expect_column_values_to_be_of_type"
NOT_NULL = "expect_column_values_to_not_be_null"
_KEEP = 20  # unexpected values kept per expectation


def _matches(want: dict, got: dict) -> bool:
    """GE echoes an expectation's kwargs with its own additions and spellings (0 as 0.0, defaults filled in): the
    suite's kwargs must each be there with an equal value."""
    return all(k in got and got[k] == v for k, v in want.items())


def _raised(info: dict) -> bool:
    """Whether GE's exception info says a metric raised (flat, or nested per metric in GE 1.x)."""
    if "raised_exception" in info:
        return bool(info["raised_exception"])
    return any(isinstance(v, dict) and v.get("raised_exception") for v in info.values())


def conform(df: "pd.DataFrame", types: dict[str, str]) -> "pd.DataFrame":
    """Undo the two per-batch read artefacts described in the module docstring; anything else is left as read."""
    import numpy as np
    from pandas.api import types as pdt

    for col, want in types.items():
        if col not in df.columns:
            continue
        s = df[col]
        try:
            target = np.dtype(want)
        except TypeError:
            target = None
        if target is not None and target.kind == "f" and pdt.is_integer_dtype(s.dtype) and not pdt.is_bool_dtype(
                s.dtype):
            df[col] = s.astype(target)
        elif want in ("object", "str") and (pdt.is_numeric_dtype(s.dtype) or pdt.is_bool_dtype(s.dtype)):
            df[col] = s.astype(want).where(s.notna(), None)  # text elsewhere, only numbers in this batch
        elif len(s) and s.isna().all() and str(s.dtype) != want:
            try:
                df[col] = s.astype(want)
            except (TypeError, ValueError):
                pass
    return df


class BatchChecker:
    """Feed it batches (:meth:`add`), then read the aggregated GE-shaped result (:meth:`result`)."""

    def __init__(self, suite_json: dict, built_suite: Any, run_ge: Any) -> None:
        self.exps = list(suite_json.get("expectations", []))
        self.types = {e["kwargs"]["column"]: e["kwargs"]["type_"] for e in self.exps
                      if e["type"] == OF_TYPE and "column" in e.get("kwargs", {}) and "type_" in e["kwargs"]}
        self.suite = built_suite
        self._run_ge = run_ge  # (df, suite) -> GE's JSON result
        self.agg: dict[int, dict] = {}  # by the expectation's position in the suite
        self.batches = 0
        self.rows = 0
        self.max_batch_rows = 0
        self.columns: set[str] | None = None
        self.partitions: dict[str, int] = {}  # rows checked per partition

    def add(self, part: "Partition", df: "pd.DataFrame") -> None:
        df = conform(df, self.types)
        self.batches += 1
        self.rows += len(df)
        self.max_batch_rows = max(self.max_batch_rows, len(df))
        self.partitions[part.name] = self.partitions.get(part.name, 0) + len(df)
        cols = {str(c) for c in df.columns}
        self.columns = cols if self.columns is None else self.columns & cols
        used: set[int] = set()
        for r in self._run_ge(df, self.suite).get("results", []):
            cfg = r.get("expectation_config") or {}
            if cfg.get("type") == ROWS:
                continue  # checked on the total
            key = self._index(cfg, used)
            used.add(key)
            self._fold(r, part.name, key)

    def _index(self, cfg: dict, used: set[int]) -> int:
        """The position in the suite of the expectation a GE result is about (a duplicate: the next unused one)."""
        got = cfg.get("kwargs") or {}
        for i, e in enumerate(self.exps):
            if i not in used and e["type"] == cfg.get("type") and _matches(e.get("kwargs") or {}, got):
                return i
        return -1 - len(used)  # not from this suite (not seen with GE 1.x): kept apart

    def _fold(self, r: dict, part: str, key: int) -> None:
        cfg = r.get("expectation_config") or {}
        res = r.get("result") or {}
        a = self.agg.get(key)
        if a is None:
            a = self.agg[key] = {"expectation_config": {"type": cfg.get("type"), "kwargs": {
                k: v for k, v in (cfg.get("kwargs") or {}).items() if k != "batch_id"}},
                "success": True, "result": {}, "exception_info": {}, "partitions": [], "_counts": {},
                "_elements": 0, "_missing": 0, "_unexpected": None}
        if not r.get("success"):
            a["success"] = False
            if part not in a["partitions"]:
                a["partitions"].append(part)
            if not a["exception_info"] and _raised(r.get("exception_info") or {}):
                a["exception_info"] = r["exception_info"]
            if "observed_value" not in a["result"] and "observed_value" in res:
                a["result"]["observed_value"] = res["observed_value"]
        if "element_count" in res:
            a["_elements"] += int(res.get("element_count") or 0)
            a["_missing"] += int(res.get("missing_count") or 0)
        if res.get("unexpected_count") is not None:
            a["_unexpected"] = (a["_unexpected"] or 0) + int(res["unexpected_count"])
            counts = res.get("partial_unexpected_counts") or [{"value": v, "count": 1}
                                                              for v in res.get("partial_unexpected_list") or []]
            for c in counts:
                if isinstance(c, dict):
                    k = repr(c.get("value"))
                    prev = a["_counts"].get(k, (c.get("value"), 0))
                    a["_counts"][k] = (prev[0], prev[1] + int(c.get("count") or 1))
        if "observed_value" in res and "observed_value" not in a["result"] and r.get("success"):
            a["result"]["first_observed_value"] = res["observed_value"]

    def result(self, total_rows: int) -> dict:
        """GE-shaped JSON over everything added: ``success``, ``statistics`` and one ``results`` entry per
        expectation of the suite, in the suite's order, each with the ``partitions`` where it failed."""
        results = []
        for i, e in enumerate(self.exps):
            if e["type"] == ROWS:
                results.append(self._rows(e, total_rows))
                continue
            a = self.agg.get(i)
            if a is None:  # no batch at all (an empty dataset): nothing could be checked
                results.append({"expectation_config": {"type": e["type"], "kwargs": e.get("kwargs", {})},
                                "success": False, "result": {"observed_value": "no rows to check"},
                                "exception_info": {}, "partitions": []})
                continue
            results.append(self._finish(copy.deepcopy(a)))
        ok = sum(1 for r in results if r["success"])
        n = len(results)
        return {"success": ok == n, "results": results,
                "statistics": {"evaluated_expectations": n, "successful_expectations": ok,
                               "unsuccessful_expectations": n - ok,
                               "success_percent": (100.0 * ok / n) if n else None}}

    def _finish(self, a: dict) -> dict:
        res = a["result"]
        kwargs = a["expectation_config"]["kwargs"]
        if a["_unexpected"] is not None:
            n = a["_unexpected"]
            base = a["_elements"] if a["expectation_config"]["type"] == NOT_NULL else a["_elements"] - a["_missing"]
            res.update(element_count=a["_elements"], missing_count=a["_missing"], unexpected_count=n,
                       unexpected_percent=(100.0 * n / base) if base else 0.0,
                       partial_unexpected_counts=[{"value": v, "count": c} for v, c in sorted(
                           a["_counts"].values(), key=lambda vc: -vc[1])][:_KEEP])
            mostly = kwargs.get("mostly")
            if mostly is not None and not a["exception_info"]:
                a["success"] = (n / base if base else 0.0) <= 1 - float(mostly) + 1e-12
        if "observed_value" not in res and "first_observed_value" in res:
            res["observed_value"] = res["first_observed_value"]
        res.pop("first_observed_value", None)
        for k in ("_counts", "_elements", "_missing", "_unexpected"):
            a.pop(k)
        if a["success"]:
            a["partitions"] = []
        return a

    @staticmethod
    def _rows(e: dict, total: int) -> dict:
        kw = e.get("kwargs") or {}
        lo, hi = kw.get("min_value"), kw.get("max_value")
        ok = (lo is None or total >= lo) and (hi is None or total <= hi)
        return {"expectation_config": {"type": ROWS, "kwargs": kw}, "success": ok,
                "result": {"observed_value": total}, "exception_info": {}, "partitions": []}
