"""The report's building blocks, read by both the HTML and the PDF renderer: :class:`Table`, :class:`Section` and
:func:`kv` (a labelled two-column list)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llmdr.drill.report.labels import DASH, nobreak


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    widths: list[float]  # relative column widths (PDF)
    caption: str = ""
    status_col: int | None = None  # PASS/FAIL column, coloured
    mono_cols: tuple[int, ...] = ()  # ids and digests
    num_cols: tuple[int, ...] = ()  # numbers and times: never wrapped
    headings: bool = True  # False: a key/value list (first column bold)


@dataclass
class Section:
    title: str
    anchor: str
    blocks: list[Any] = field(default_factory=list)  # Table | str (paragraph) | ("image", name) | ("list", [...])


def cell(v: Any) -> str:
    if v is None or v == "":
        return DASH
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    return nobreak(str(v))


def kv(pairs: list[tuple[str, Any]], caption: str = "", mono: bool = False) -> Table:
    """Label/value rows (values already text, or plain scalars)."""
    return Table(["", ""], [[k, cell(v)] for k, v in pairs], [1, 3], caption, mono_cols=(1,) if mono else (),
                 headings=False)
