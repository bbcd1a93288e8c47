"""The results of bench/datasets.py: its runs, rows per second, the memory and time ratios to the peers, the checks
and the Markdown report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness import Timed
from report import Check, check_table

if TYPE_CHECKING:
    from datasets import Bench

RSS_BOUND_MB = 600.0  # full validation's peak RSS, whatever the dataset's size (batches of 100,000 rows)


@dataclass
class Run(Timed):
    """One measured subprocess."""

    variant: str  # parquet | csv
    step: str
    tool: str


def find(b: Bench, variant: str, step: str) -> Run | None:
    return next((r for r in b.runs if (r.variant, r.step) == (variant, step)), None)


def summarise(b: Bench) -> dict:
    """Per variant and step: wall time, peak RSS, rows per second (rows of the dataset, or of the sample)."""
    out: dict = {}
    for variant in ("parquet", "csv"):
        shape = b.details.get(variant)
        if not shape:
            continue
        steps = {}
        for r in (r for r in b.runs if r.variant == variant):
            rows = r.data["rows"] if "rows" in r.data else shape["rows"]
            steps[r.step] = {"tool": r.tool, "wall_s": r.wall_s, "inproc_s": r.inproc_s, "peak_rss_mb": r.peak_rss_mb,
                             "rows": rows, "rows_per_s": round(rows / r.wall_s) if r.wall_s else None}
        out[variant] = {"dataset": shape, "steps": steps}
    return out


def checks(b: Bench, summary: dict) -> list[Check]:
    out: list[Check] = []
    for variant, s in summary.items():
        st = s["steps"]
        full, sample, whole = st.get("full"), st.get("sample"), st.get("peer: whole read")
        mb = s["dataset"]["bytes"] / 1e6
        if full:
            out.append(Check(f"{variant}: full validation peak RSS ({mb:.0f} MB dataset)", full["peak_rss_mb"], "<=",
                             RSS_BOUND_MB, "MB", f"batches of {b.args.batch_rows} rows"))
        if full and whole:
            out.append(Check(f"{variant}: full validation peak RSS ÷ {whole['tool']}",
                             full["peak_rss_mb"] / whole["peak_rss_mb"], "<=", 1.0, "x",
                             "the peer only loads the data; GE on that whole frame would need more"))
        if full and sample:
            out.append(Check(f"{variant}: sample ({b.args.sample_rows} rows) time ÷ full time",
                             sample["wall_s"] / full["wall_s"], "<=", 1.0, "x", "a sample is cheaper than every row"))
        scan = st.get("peer: streamed scan")
        if full and scan:
            out.append(Check(f"{variant}: full validation time ÷ {scan['tool']}", full["wall_s"] / scan["wall_s"],
                             "", None, "x", "what GE's checks cost beyond reading the bytes"))
    return out


def standing_notes(b: Bench) -> list[str]:
    return [
        "Peers: pandas reading the whole folder into one DataFrame is what validation did before #20 (load_frame, "
        "then GE on that frame), so its peak RSS is a lower bound of the old way's; a pyarrow dataset scan streaming "
        "the batches is the floor for reading the data at all.",
        "Each step is a fresh Python process (llmdr CLI or python -c) under bench/rusage_launcher.py: wall time "
        "includes start-up and imports (Great Expectations ~7-14 s here); peak RSS is the kernel's ru_maxrss.",
        "Rows per second: of the whole dataset for full validation and the peers, of the sample for sample mode.",
        "Sample mode still reads every partition (a priority reservoir over all rows, so the sample is uniform and the "
        "row count is exact); what it saves is the validation work.",
    ]


def render_markdown(b: Bench, meta: dict, summary: dict, cks: list[Check]) -> str:
    lines = [f"# Datasets at scale ({'smoke run' if b.smoke else meta['started_utc']})", "",
             f"{meta['cpus']} CPUs ({meta['cpu_model']}), Python {meta['python']}, llmdr {meta['llmdr_version']} "
             f"at {meta['git']}.", ""]
    for variant, s in summary.items():
        d = s["dataset"]
        lines += [f"## {variant}: {d['rows']:,} rows, {d['bytes'] / 1e6:,.0f} MB in {d['partitions']} partitions", "",
                  "| step | tool | wall s | in-process s | peak RSS MB | rows | rows/s | note |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        for step, x in s["steps"].items():
            run = find(b, variant, step)
            inproc = "" if x["inproc_s"] is None else f"{x['inproc_s']:.1f}"
            lines.append(f"| {step} | {x['tool']} | {x['wall_s']:.1f} | {inproc} | {x['peak_rss_mb']:.0f} | "
                         f"{x['rows']:,} | {x['rows_per_s'] or 0:,} | {run.note if run else ''} |")
        lines.append("")
    lines += ["## Checks", "", *check_table(cks, not_judged=b.smoke), "", "## Notes", "",
              *[f"- {n}" for n in standing_notes(b)]]
    if meta.get("warning"):
        lines += ["", f"**{meta['warning']}**"]
    return "\n".join(lines) + "\n"
