"""A dataset's data as partitions read in bounded batches: one file, or a folder of Parquet / CSV / JSON-lines files.

A folder dataset (``datasets[].path`` naming a folder, tracked by DVC as one ``.dir``) holds its partitions as files
anywhere below it; hive-style sub-folders (``year=2026/month=11/part-0.parquet``) are recognised and their
``key=value`` pairs recorded with each partition (they are not added as columns: the suite checks the files'
columns). Files and folders whose names start with ``.`` or ``_`` (``_SUCCESS``, ``.crc``, ``_metadata``) are not
data and are skipped, as Spark and pyarrow do. A file that is a symbolic link leading out of the folder is refused
(its values could end up in the evidence); links to folders are not followed.

``format: auto`` picks the format from the suffixes; a folder mixing formats, or holding a file with an unknown
suffix, is refused with the files named. Partitions are read in sorted order (by their path inside the folder), so
batches, samples and reports are the same on every run.

Reading is streamed: Parquet by ``pyarrow.ParquetFile.iter_batches`` with buffered page reads (so a file written as
one huge row group is not held whole), CSV and JSON lines by pandas chunks, never more
than ``batch_rows`` rows at a time (a ``.json`` records file, allowed only as a single-file dataset, is read whole).
:func:`sample_rows` draws a seeded sample across all partitions by priority reservoir (each row gets a random key
from one seeded generator, in partition order; the ``n`` smallest keys are kept), holding at most ``n`` + one batch
rows at once and giving the same rows for the same seed and data.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llmdr.errors import ConfigError, UsageError

if TYPE_CHECKING:
    import pandas as pd

# suffix -> (format, human name); the first three formats may make up a folder, .tsv/.json only a single file
SUFFIXES = {".parquet": ("parquet", "Parquet"), ".pq": ("parquet", "Parquet"), ".csv": ("csv", "CSV"),
            ".jsonl": ("jsonl", "JSON lines"), ".ndjson": ("jsonl", "JSON lines"), ".tsv": ("tsv", "TSV"),
            ".json": ("json", "JSON (a list of records)")}
FOLDER_FORMATS = ("parquet", "csv", "jsonl")
FORMATS = ("auto", *FOLDER_FORMATS)
_LIST = 5  # files named in an error message
_READ_BUFFER = 1 << 20  # Parquet: bytes read at a time from a column chunk


@dataclass
class Partition:
    """One data file of a dataset: its path, its name inside the dataset (``''`` for a single-file dataset... its
    file name), the hive ``key=value`` pairs of its folders, and its format."""

    path: Path
    name: str
    format: str
    keys: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"name": self.name, "format": self.format, "keys": self.keys}


def _names(paths: list[str]) -> str:
    more = f" and {len(paths) - _LIST} more" if len(paths) > _LIST else ""
    return ", ".join(paths[:_LIST]) + more


def _hidden(rel: Path) -> bool:
    return any(p.startswith((".", "_")) for p in rel.parts)


def hive_keys(rel: str) -> dict[str, str]:
    """The ``key=value`` pairs of a partition's folders, outermost first (``a=1/b=x/f.parquet`` -> a: 1, b: x)."""
    out: dict[str, str] = {}
    for part in rel.split("/")[:-1]:
        key, eq, value = part.partition("=")
        if eq and key:
            out[key] = value
    return out


def discover(path: Path, fmt: str = "auto", *, dataset: str = "") -> list[Partition]:
    """The partitions of the dataset at ``path`` (a file or a folder), sorted by name. Raises ``UsageError`` when it
    is missing or empty, ``ConfigError`` for unknown, mixed or mismatched formats (naming the files)."""
    path = Path(path)
    who = f"dataset '{dataset}': " if dataset else ""
    if fmt not in FORMATS:
        raise ConfigError(f"{who}format {fmt!r} is not one of {', '.join(FORMATS)}")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix not in SUFFIXES:
            raise ConfigError(f"{who}{path}: cannot validate a '{suffix or 'suffix-less'}' file; Great Expectations "
                              f"checks run on {', '.join(sorted(SUFFIXES))} files, or on a folder of Parquet, CSV or "
                              "JSON-lines partitions. Point datasets[].path at one of those.")
        got = SUFFIXES[suffix][0]
        if fmt != "auto" and got != fmt:
            raise ConfigError(f"{who}{path} is {SUFFIXES[suffix][1]}, but datasets[].format says {fmt}; fix one "
                              "of them (or set format: auto).")
        return [Partition(path, path.name, got)]
    if not path.is_dir():
        raise UsageError(f"{who}{path}: dataset file or folder not found. Check datasets[].path in llmdr.yaml, or "
                         "bring the data back with `dvc pull` first.")
    files = sorted((p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path))),
                   key=lambda p: p.relative_to(path).as_posix())
    outside = [p.relative_to(path).as_posix() for p in files
               if p.is_symlink() and not p.resolve().is_relative_to(path.resolve())]
    if outside:
        raise UsageError(f"{who}{path}: {len(outside)} file(s) are symbolic links leading out of the dataset folder: "
                         f"{_names(outside)}. Validation reads only the dataset's own files (their values can land "
                         "in the evidence): replace the links with the files, or remove them.")
    if not files:
        raise UsageError(f"{who}{path}: the dataset folder holds no data files (names starting with '.' or '_' are "
                         "skipped). Put its partitions there, or `dvc pull` it first.")
    by_format: dict[str, list[str]] = {}
    unknown: list[str] = []
    for p in files:
        rel = p.relative_to(path).as_posix()
        kind = SUFFIXES.get(p.suffix.lower(), (None,))[0]
        if kind in FOLDER_FORMATS:
            by_format.setdefault(kind, []).append(rel)
        else:
            unknown.append(rel)
    if unknown:
        raise ConfigError(f"{who}{path}: {len(unknown)} file(s) are not Parquet, CSV or JSON-lines partitions: "
                          f"{_names(unknown)}. Move them out of the dataset folder, or rename them to start with "
                          "'_' or '.' to have them skipped.")
    if fmt == "auto" and len(by_format) > 1:
        parts = "; ".join(f"{k}: {_names(v)}" for k, v in sorted(by_format.items()))
        raise ConfigError(f"{who}{path}: the folder mixes formats ({parts}). A dataset's partitions share one "
                          "format: convert or move the odd ones out.")
    if fmt != "auto" and set(by_format) != {fmt}:
        odd = [rel for k, v in sorted(by_format.items()) if k != fmt for rel in v]
        raise ConfigError(f"{who}{path}: datasets[].format is {fmt}, but these files are not: {_names(odd)}. Fix "
                          "the format, or move them out of the dataset folder.")
    return [Partition(path / rel, rel, kind, hive_keys(rel)) for kind, rels in by_format.items() for rel in rels]


def _has_parquet_engine() -> bool:
    return importlib.util.find_spec("pyarrow") is not None


def iter_batches(part: Partition, batch_rows: int) -> Iterator["pd.DataFrame"]:
    """The partition's rows as DataFrames of at most ``batch_rows`` rows (a ``.json`` records file: whole). A file
    that cannot be read raises ``UsageError`` naming it."""
    import pandas as pd

    human = SUFFIXES[part.path.suffix.lower()][1]
    if part.format == "parquet" and not _has_parquet_engine():
        raise UsageError(f"{part.path}: reading Parquet needs pyarrow, which is not installed. Install it "
                         "(`uv pip install pyarrow`) or store the dataset as CSV or JSON lines.")
    try:
        if part.format == "parquet":
            import pyarrow.parquet as pq

            # buffered page reads: without them pyarrow holds a row group's whole column chunks (a 127 MB file of
            # one row group: +160 MB over the baseline; buffered: +56 MB, as for any batch of that size)
            with pq.ParquetFile(part.path, buffer_size=_READ_BUFFER, pre_buffer=False) as pf:
                empty = True
                for rb in pf.iter_batches(batch_size=batch_rows):
                    empty = False
                    yield rb.to_pandas()
                if empty:
                    yield pf.schema_arrow.empty_table().to_pandas()
        elif part.format in ("csv", "tsv"):
            with pd.read_csv(part.path, chunksize=batch_rows, sep="\t" if part.format == "tsv" else ",") as reader:
                yield from reader
        elif part.format == "jsonl":
            with pd.read_json(part.path, lines=True, chunksize=batch_rows) as reader:
                yield from reader
        else:
            yield pd.read_json(part.path, orient="records")
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{part.path}: could not read it as {human} ({first}). Fix the file or its suffix; a "
                         "restored copy that cannot be read is as bad as a lost one.") from None
    except Exception as exc:  # pyarrow's own errors (ArrowInvalid...) are not ValueError subclasses everywhere
        if type(exc).__module__.startswith("pyarrow"):
            raise UsageError(f"{part.path}: could not read it as {human} ({exc}). Fix or replace the file; a "
                             "restored copy that cannot be read is as bad as a lost one.") from None
        raise


def sample_rows(parts: list[Partition], n: int, seed: int, batch_rows: int
                ) -> tuple[list[tuple[Partition, "pd.DataFrame"]], int, dict[str, int]]:
    """A seeded sample of ``n`` rows across ``parts`` (priority reservoir, module docstring): the sampled rows grouped
    by partition in their original order, the total row count, and the rows read per partition."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    kept: pd.DataFrame | None = None  # the reservoir: rows plus _llmdr_key, _llmdr_part, _llmdr_row
    rows: dict[str, int] = {}
    total = 0
    for i, part in enumerate(parts):
        seen = 0
        for batch in iter_batches(part, batch_rows):
            m = len(batch)
            b = batch.reset_index(drop=True).assign(_llmdr_key=rng.random(m), _llmdr_part=i,
                                                    _llmdr_row=np.arange(seen, seen + m))
            seen += m
            pool = b if kept is None else pd.concat([kept, b], ignore_index=True)
            kept = pool.nsmallest(n, "_llmdr_key", keep="first") if len(pool) > n else pool
        rows[part.name] = seen
        total += seen
    out: list[tuple[Partition, pd.DataFrame]] = []
    if kept is not None:
        kept = kept.sort_values(["_llmdr_part", "_llmdr_row"], kind="stable")
        for i, grp in kept.groupby("_llmdr_part", sort=True):
            out.append((parts[int(i)], grp.drop(columns=["_llmdr_key", "_llmdr_part", "_llmdr_row"])
                        .reset_index(drop=True)))
    return out, total, rows
