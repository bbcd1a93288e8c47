"""Profiling a dataset into an expectation suite from per-batch statistics, so a dataset of any size is profiled
with one batch in memory at a time and gives the same suite as profiling it whole.

Each batch yields :class:`ColumnStats` per column (dtype, rows, nulls, min/max, up to ``MAX_SET + 1`` distinct
strings, whether every string looks like an ISO date); :func:`merge` combines them and :func:`suite_from_stats`
applies the rules documented in :mod:`llmdr.lineage.expectations`. A column read as integers in one batch and as
floats in another (pandas turns an integer column with nulls into float64) is a float64 column, as it is when the
whole file is read at once; a batch where a column is all null does not decide its dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

ROW_COUNT_LOW = 0.5
ROW_COUNT_HIGH = 2.0
NULL_MARGIN = 0.05
MAX_SET = 20
RANGE_WIDEN = 0.1
ISO_DATE = r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?$"


@dataclass
class ColumnStats:
    dtype: Any  # the pandas dtype: of the first batch, until a batch with a value in this column decides it
    decided: bool = False  # a batch with a non-null value set the dtype
    rows: int = 0
    nulls: int = 0
    lo: Any = None  # numeric min / max over the non-null values
    hi: Any = None
    all_str: bool = True  # every non-null value is a str
    distinct: set | None = field(default_factory=set)  # None once more than MAX_SET distinct strings were seen
    iso: bool = True  # every non-null string matches ISO_DATE


def _num(v: Any) -> int | float:
    v = v.item() if hasattr(v, "item") else v
    return int(v) if isinstance(v, int) else float(v)


def batch_stats(df: "pd.DataFrame", prev: dict[str, ColumnStats] | None = None) -> dict[str, ColumnStats]:
    """Statistics of one batch, by column name (in the frame's order). ``prev`` (the statistics merged so far) skips
    the string checks already settled: a column known to hold non-strings, too many values, or non-dates."""
    import pandas as pd
    from pandas.api import types as pdt

    out: dict[str, ColumnStats] = {}
    for col in df.columns:
        s = df[col]
        values = s.dropna()
        st = ColumnStats(dtype=s.dtype, decided=bool(len(values)), rows=len(s), nulls=int(len(s) - len(values)))
        if not values.empty and not pdt.is_bool_dtype(s.dtype):
            if pdt.is_numeric_dtype(s.dtype):
                st.lo, st.hi = _num(values.min()), _num(values.max())
            elif isinstance(s.dtype, pd.CategoricalDtype) or pdt.is_string_dtype(s.dtype) or pdt.is_object_dtype(s.dtype):
                known = (prev or {}).get(str(col))
                if known is not None and not known.all_str:
                    st.all_str = False
                else:
                    st.all_str = isinstance(s.dtype, pd.StringDtype) or all(isinstance(v, str) for v in values)
                if st.all_str:
                    if known is not None and known.distinct is None:
                        st.distinct = None
                    else:
                        uniq = values.unique()
                        st.distinct = set(uniq.tolist()) if len(uniq) <= MAX_SET else None
                    st.iso = (False if known is not None and not known.iso
                              else bool(values.str.fullmatch(ISO_DATE).all()))
        out[str(col)] = st
    return out


def _merge_dtype(a: ColumnStats, b: ColumnStats) -> Any:
    from pandas.api import types as pdt

    if not b.decided:
        return a.dtype
    if not a.decided:
        return b.dtype
    a, b = a.dtype, b.dtype
    if a == b:
        return a
    if pdt.is_integer_dtype(a) and pdt.is_float_dtype(b):
        return b
    if pdt.is_float_dtype(a) and pdt.is_integer_dtype(b):
        return a
    # numbers in some batches, text in others: the whole file read at once gives the text column's dtype
    if pdt.is_numeric_dtype(a) and not pdt.is_numeric_dtype(b):
        return b
    return a  # text then numbers (kept), or two different non-numeric types: validation flags the odd batches


def merge(into: dict[str, ColumnStats] | None, new: dict[str, ColumnStats]) -> dict[str, ColumnStats]:
    """``into`` updated with a further batch's statistics (columns of the first batch decide the column list)."""
    if into is None:
        return new
    for col, b in new.items():
        a = into.get(col)
        if a is None:
            continue
        a.dtype = _merge_dtype(a, b)
        a.decided = a.decided or b.decided
        a.rows += b.rows
        a.nulls += b.nulls
        if b.lo is not None:
            a.lo = b.lo if a.lo is None else min(a.lo, b.lo)
            a.hi = b.hi if a.hi is None else max(a.hi, b.hi)
        a.all_str = a.all_str and b.all_str
        if a.distinct is not None:
            a.distinct = None if b.distinct is None else a.distinct | b.distinct
            if a.distinct is not None and len(a.distinct) > MAX_SET:
                a.distinct = None
        a.iso = a.iso and b.iso
    return into


def ge_type(dtype: Any) -> str:
    """The ``type_`` GE's pandas check accepts for this dtype: it compares ``dtype.type`` with ``np.dtype(type_)``
    (or a pandas type of that name), so 'category' must be written 'CategoricalDtypeType' and so on."""
    import numpy as np

    name = str(dtype)
    try:
        if np.dtype(name).type is dtype.type:
            return name
    except TypeError:
        pass
    return dtype.type.__name__


def suite_from_stats(stats: dict[str, ColumnStats], *, name: str, rows: int, stamp: str,
                     ge_version: str | None) -> dict:
    """The suite (GE's JSON format) the profile rules give for these statistics over ``rows`` rows."""
    import pandas as pd
    from pandas.api import types as pdt

    n = rows
    exps: list[dict] = []

    def expect(expectation: str, /, **kwargs: Any) -> None:
        exps.append({"type": expectation, "kwargs": kwargs, "meta": {"llmdr": f"profiled {stamp}"}})

    expect("expect_table_columns_to_match_ordered_list", column_list=list(stats))
    expect("expect_table_row_count_to_be_between", min_value=math.ceil(ROW_COUNT_LOW * n),
           max_value=math.floor(ROW_COUNT_HIGH * n))
    for c, st in stats.items():
        dtype = st.dtype
        expect("expect_column_values_to_be_of_type", column=c, type_=ge_type(dtype))
        nulls = st.nulls / n if n else 0.0
        if nulls == 0:
            expect("expect_column_values_to_not_be_null", column=c)
        elif nulls + NULL_MARGIN < 1:
            # round down to 4 decimals, so float noise cannot fail the profile
            mostly = math.floor((1 - nulls - NULL_MARGIN) * 10_000) / 10_000
            expect("expect_column_values_to_not_be_null", column=c, mostly=mostly)
        if st.rows == st.nulls or pdt.is_bool_dtype(dtype):
            continue
        if pdt.is_numeric_dtype(dtype):
            if st.lo is None:
                continue
            lo, hi = st.lo, st.hi
            if not (math.isfinite(lo) and math.isfinite(hi)):
                continue
            pad = (hi - lo) * RANGE_WIDEN if hi > lo else max(abs(hi) * RANGE_WIDEN, 1)
            low, high = lo - pad, hi + pad
            if lo >= 0:
                low = max(low, 0)
            if pdt.is_integer_dtype(dtype):
                low, high = math.floor(low), math.ceil(high)
            else:  # outward to 6 decimals, so the file reads 1.097 rather than 1.0970000000000002
                low, high = math.floor(low * 1e6) / 1e6, math.ceil(high * 1e6) / 1e6
            expect("expect_column_values_to_be_between", column=c, min_value=_num(low), max_value=_num(high))
        elif isinstance(dtype, pd.CategoricalDtype) or pdt.is_string_dtype(dtype) or pdt.is_object_dtype(dtype):
            if not st.all_str:
                continue
            if st.distinct is not None and len(st.distinct) < st.rows - st.nulls:
                expect("expect_column_values_to_be_in_set", column=c, value_set=sorted(st.distinct))
            elif st.iso:
                expect("expect_column_values_to_match_regex", column=c, regex=ISO_DATE)
    return {
        "name": name,
        "id": None,
        "expectations": exps,
        "meta": {"great_expectations_version": ge_version,
                 "llmdr": {"profiled": stamp, "rows": n,
                           "rules": f"row count {ROW_COUNT_LOW}x..{ROW_COUNT_HIGH}x; null fraction <= observed + "
                                    f"{NULL_MARGIN}; value sets for string columns with <= {MAX_SET} values; numeric "
                                    f"ranges widened by {RANGE_WIDEN:.0%} of the span"}},
        "notes": "Profiled by llmdr at the first backup. Edit freely: llmdr never overwrites this file.",
    }
