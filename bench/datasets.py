"""Datasets at scale (issue #20 item 4): validating a ~1 GB folder of Parquet partitions, full and sampled, with
bounded memory.

    uv run python bench/datasets.py                          # ~1 GB Parquet + ~128 MB CSV; ~10-20 min on 2 cores
    uv run python bench/datasets.py --gb 0.25                # a quicker run
    uv run python bench/datasets.py --smoke --results DIR    # a few MB, every step once: the harness

A synthetic dataset is written in-process (unmeasured): ``--partitions`` hive-style folders ``day=NN/part-0.parquet``
of random rows (id, a timestamp string, a label from 8 values, two floats one with 1 % nulls, an integer, a 48-char
text), about ``--gb`` GB on disk; and a CSV variant of ``--csv-fraction`` of that size. Each step is a subprocess under
bench/rusage_launcher.py (wall time, exact peak RSS):

1. ``llmdr datasets validate`` with no suite yet: profiles the suite from every batch, then validates (first backup);
2. ``llmdr datasets validate``, validation: full (every row, batches of ``--batch-rows``);
3. ``llmdr datasets validate``, validation: sample (``--sample-rows``, seed 1);
4. the peers: pandas ``read_parquet`` of the whole folder (what loading a dataset into one DataFrame, the way
   validation worked before #20, costs in memory: a floor, since GE then works on that frame), and a pyarrow dataset
   scan streaming every batch (the floor for reading the bytes at all);
5. the same for the CSV variant (pandas ``read_csv`` of every partition concatenated as its peer).

Checks: peak RSS of full validation ≤ ``RSS_BOUND_MB`` whatever the size, and well under the whole-read peer's;
sample validation faster than full. Results: bench/results/datasets-<UTC>.json|.md and datasets-latest.* (a smoke
run: datasets-smoke.* in --results only). Only files under --work are written; no server is started.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import datasets_report
from datasets_report import Run
from harness import BENCH_DIR, CommandFailed, common_args, parse, prepare_work, run_measured, utc_now
from report import conclude, environment, results_dir

WORK_MARKER = ".llmdr-datasets-work"
CONFIG = """\
version: 1
bundle: {{name: b, path: bundle}}
regions:
  - {{name: primary, role: primary, endpoint: "http://127.0.0.1:9", bucket: bench-primary,
     credentials: {{access_key_env: A, secret_key_env: B}}}}
  - {{name: secondary, role: secondary, endpoint: "http://127.0.0.1:9", bucket: bench-secondary,
     credentials: {{access_key_env: A, secret_key_env: B}}}}
datasets:
  - {{name: {name}, path: {path}, validation: {mode}, sample_rows: {sample}, seed: 1, batch_rows: {batch},
     suite: expectations/{name}.json}}
"""
PEER_PANDAS_PARQUET = "import pandas as pd, sys; df = pd.read_parquet(sys.argv[1]); print(len(df))"
PEER_ARROW_SCAN = ("import pyarrow.dataset as ds, sys; n = sum(b.num_rows for b in ds.dataset(sys.argv[1], "
                   "format='parquet', partitioning='hive').to_batches(batch_size=int(sys.argv[2]))); print(n)")
PEER_PANDAS_CSV = ("import pandas as pd, sys, pathlib; df = pd.concat([pd.read_csv(p) for p in "
                   "sorted(pathlib.Path(sys.argv[1]).rglob('*.csv'))], ignore_index=True); print(len(df))")


class Bench:
    """The work folder, the environment of the measured commands, and what ran."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = args.work.resolve()
        self.smoke = args.smoke
        self.logs = self.work / "logs"
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LLMDR_"))}
        self.base_env["PYTHONPYCACHEPREFIX"] = str(self.work / "pycache")
        self.base_env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.base_env["PYTHONPATH"] = str(BENCH_DIR.parent)
        self.steps: list[dict] = []
        self.runs: list[Run] = []
        self.details: dict = {}

    def measure(self, variant: str, step: str, tool: str, cmd: list[str], *, as_json: bool) -> Run:
        fin = run_measured(cmd, env=self.base_env, cwd=self.work, log=self.logs / f"{variant}-{step}")
        data = json.loads(fin.stdout) if as_json else {"stdout": fin.stdout.strip()}
        inproc = data.get("duration_s") if as_json else None
        run = Run(variant=variant, step=step, tool=tool, wall_s=round(fin.wall_s, 3),
                  peak_rss_mb=round(fin.peak_rss_kib * 1024 / 1e6, 1), cpu_s=round(fin.cpu_s, 3), server_cpu_s=0.0,
                  inproc_s=inproc, data=data)
        self.runs.append(run)
        self.steps.append({"variant": variant, "step": step, "tool": tool, "status": "ran"})
        print(f"  {variant:<8} {step:<22} {tool:<40} {run.line()}", flush=True)
        return run


# the synthetic data -------------------------------------------------------------------------------------------------
def write_dataset(folder: Path, *, fmt: str, target_bytes: int, partitions: int, seed: int) -> dict:
    """``partitions`` hive folders of random rows, together about ``target_bytes`` on disk; returns its shape."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    labels = np.array(["billing", "bug", "feature", "account", "outage", "refund", "login", "export"])
    alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789", dtype="S1")
    bytes_per_row = 83 if fmt == "parquet" else 150  # measured on this generator (random text, floats)
    rows = max(partitions * 10, target_bytes // bytes_per_row // partitions)
    written = total_rows = 0
    t0 = time.perf_counter()
    for i in range(partitions):
        ids = np.arange(i * rows, (i + 1) * rows)
        value = rng.normal(100.0, 15.0, rows)
        value[rng.random(rows) < 0.01] = np.nan
        text = rng.choice(alphabet, size=(rows, 48)).view("S48").ravel().astype(str)
        ts = np.datetime64("2026-01-01T00:00:00") + (ids % 86_400_000).astype("timedelta64[s]")
        df = pd.DataFrame({
            "id": ids,
            "ts": np.datetime_as_string(ts, unit="s"),
            "label": labels[rng.integers(0, len(labels), rows)],
            "score": rng.random(rows),
            "value": value,
            "count": rng.integers(0, 1000, rows),
            "text": text,
        })
        path = folder / f"day={i:03d}" / f"part-0.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "parquet":
            df.to_parquet(path, index=False, row_group_size=min(rows, 262_144))
        else:
            df.to_csv(path, index=False)
        written += path.stat().st_size
        total_rows += rows
    return {"format": fmt, "partitions": partitions, "rows": total_rows, "bytes": written,
            "write_s": round(time.perf_counter() - t0, 1)}


def write_config(b: Bench, name: str, path: str, mode: str) -> Path:
    cfg = b.work / f"llmdr-{name}-{mode}.yaml"
    cfg.write_text(CONFIG.format(name=name, path=path, mode=mode, sample=b.args.sample_rows,
                                 batch=b.args.batch_rows))
    return cfg


def llmdr_validate(config: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "llmdr.cli", "--config", str(config), "datasets", "validate", name, "--json"]


def check_validation(run: Run, mode: str, shape: dict) -> None:
    """The command validated what it was asked to: every row (full) or the sample, in capped batches."""
    j = run.data
    if not j.get("success"):
        raise CommandFailed(f"{run.tool}: the synthetic data failed its own profile: {j.get('failures')}")
    if j["mode"] != mode or j["total_rows"] != shape["rows"] or j["partitions"] != shape["partitions"]:
        raise CommandFailed(f"{run.tool}: validated {j['mode']} {j['total_rows']} rows in {j['partitions']} "
                            f"partitions, expected {mode} {shape['rows']} in {shape['partitions']}")
    if j["max_batch_rows"] > j["batch_rows"]:
        raise CommandFailed(f"{run.tool}: a batch of {j['max_batch_rows']} rows exceeded batch_rows")
    run.note = (f"{j['rows']} rows checked in {j['batches']} batches (≤ {j['max_batch_rows']} rows each), "
                f"{j['evaluated'] - j['failed']}/{j['evaluated']} expectations passed")


def variant(b: Bench, fmt: str, target_bytes: int, partitions: int, peers: list[tuple[str, str, list[str]]]) -> None:
    name = f"events-{fmt}"
    folder = b.work / "data" / name
    shape = write_dataset(folder, fmt=fmt, target_bytes=target_bytes, partitions=partitions, seed=7)
    b.details[fmt] = shape
    print(f"{fmt}: {shape['rows']} rows, {shape['bytes'] / 1e6:.0f} MB in {shape['partitions']} partitions "
          f"(written in {shape['write_s']} s)", flush=True)
    full, sample = write_config(b, name, f"data/{name}", "full"), write_config(b, name, f"data/{name}", "sample")
    first = b.measure(fmt, "profile + validate", "llmdr datasets validate (no suite yet)",
                      llmdr_validate(full, name), as_json=True)
    check_validation(first, "full", shape)
    b.details[f"{fmt}_suite_expectations"] = first.data["evaluated"]
    check_validation(b.measure(fmt, "full", "llmdr datasets validate (full)", llmdr_validate(full, name),
                               as_json=True), "full", shape)
    check_validation(b.measure(fmt, "sample", "llmdr datasets validate (sample)", llmdr_validate(sample, name),
                               as_json=True), "sample", shape)
    for step, tool, code in peers:
        run = b.measure(fmt, step, tool, [sys.executable, "-c", code, str(folder), str(b.args.batch_rows)],
                        as_json=False)
        if int(run.data["stdout"].splitlines()[-1]) != shape["rows"]:
            raise CommandFailed(f"{tool} counted {run.data['stdout']} rows, not {shape['rows']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_args(ap, work=BENCH_DIR / "work" / "datasets", smoke="a few MB, every step once")
    ap.add_argument("--gb", type=float, default=1.0, help="size of the Parquet dataset on disk (default 1.0)")
    ap.add_argument("--partitions", type=int, default=64, help="Parquet partitions (default 64)")
    ap.add_argument("--csv-fraction", type=float, default=0.125, help="CSV variant's size ÷ the Parquet's")
    ap.add_argument("--batch-rows", type=int, default=100_000, help="datasets[].batch_rows (default 100000)")
    ap.add_argument("--sample-rows", type=int, default=100_000, help="datasets[].sample_rows (default 100000)")
    args = parse(ap, argv, {"gb": 0.002, "partitions": 3, "batch_rows": 5_000, "sample_rows": 1_000})
    started, t0 = utc_now(), time.perf_counter()
    folder = results_dir(args.results, args.smoke, "datasets-")
    b = Bench(args)
    prepare_work(b.work, WORK_MARKER, "bench/datasets.py")
    meta = environment(b, started, args)
    pq_bytes = int(args.gb * 1e9)
    variant(b, "parquet", pq_bytes, args.partitions, [
        ("peer: whole read", "pandas read_parquet (whole folder)", PEER_PANDAS_PARQUET),
        ("peer: streamed scan", "pyarrow dataset scan (batches)", PEER_ARROW_SCAN)])
    variant(b, "csv", int(pq_bytes * args.csv_fraction), max(2, args.partitions // 4), [
        ("peer: whole read", "pandas read_csv (every partition, concat)", PEER_PANDAS_CSV)])
    conclude(b, folder, "datasets-", meta, datasets_report, started=started, t0=t0, keep=args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
