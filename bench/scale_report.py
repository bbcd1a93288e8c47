"""The results of bench/scale.py: its runs, the summary of the series, the checks and its Markdown report."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness import MB, Timed
from report import Check, check_table
from scale_tree import SHARDS

if TYPE_CHECKING:
    from scale import Scale


@dataclass
class Run(Timed):
    """One measured subprocess."""

    part: str
    step: str
    tool: str


def find(s: Scale, part: str, step: str, tool: str) -> Run | None:
    return next((r for r in s.runs if r.part == part and r.step == step and r.tool == tool), None)


def summarise(s: Scale) -> dict:
    series = s.details["series"]
    snap_walls = [x["snapshot_wall_s"] for x in series[1:]] or [series[0]["snapshot_wall_s"]]
    rep_walls = [x["replicate_wall_s"] for x in series[1:]] or [series[0]["replicate_wall_s"]]

    def mmm(xs: list[float]) -> dict:
        return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}

    out = {
        "incremental_snapshot_wall_s": mmm(snap_walls),
        "incremental_snapshot_inproc_s": mmm([x["snapshot_inproc_s"] for x in series[1:]] or [0.0]),
        "replicate_wall_s": mmm(rep_walls),
        "snapshot_rss_mb": mmm([x["snapshot_rss_mb"] for x in series]),
        "replicate_rss_mb": mmm([x["replicate_rss_mb"] for x in series]),
        "bytes_new_per_step": mmm([x["bytes_new"] for x in series[1:]] or [0]),
        "files_read_per_step": mmm([x["files"] - x["files_unchanged"] for x in series[1:]] or [0]),
    }
    # like with like: steps that also rewrite a shard region read and hold more, so they are left out here
    plain = [x for x in series[1:] if x["step"] % s.shard_every] or series[1:]
    if len(plain) > 1:
        k = max(1, min(5, len(plain) // 2))
        first, last = plain[:k], plain[-k:]

        def med(xs: list[dict], key: str) -> float:
            return statistics.median(x[key] for x in xs)

        out["ends_steps"] = {"first": [x["step"] for x in first], "last": [x["step"] for x in last]}
        out["rss_first_incremental_mb"] = med(first, "snapshot_rss_mb")
        out["rss_last_mb"] = med(last, "snapshot_rss_mb")
        out["rss_growth_per_snapshot_mb"] = ((out["rss_last_mb"] - out["rss_first_incremental_mb"])
                                             / max(1, last[-1]["step"] - first[0]["step"]))
        out["inproc_first_incremental_s"] = med(first, "snapshot_inproc_s")
        out["inproc_last_s"] = med(last, "snapshot_inproc_s")
    if "restic_wall_s" in series[0]:
        out["restic_backup_wall_s"] = mmm([x["restic_wall_s"] for x in series[1:]] or [series[0]["restic_wall_s"]])
        out["restic_rss_mb"] = mmm([x["restic_rss_mb"] for x in series])
    return out


def checks(s: Scale, summary: dict) -> list[Check]:
    out: list[Check] = []

    def add(metric: str, value: float, op: str, bound: float | None, unit: str = "x", detail: str = "") -> None:
        out.append(Check(metric, value, op, bound, unit, detail))

    llmdr_rss = max(r.peak_rss_mb for r in s.runs if r.tool.startswith("llmdr"))
    worst = max((r for r in s.runs if r.tool.startswith("llmdr")), key=lambda r: r.peak_rss_mb)
    add("peak RSS of every llmdr command", llmdr_rss, "<=", 300, "MB", f"highest: {worst.tool}, {worst.part} {worst.step}")
    if "rss_last_mb" in summary:
        ends = summary["ends_steps"]
        steps = f"steps {ends['first'][0]}-{ends['first'][-1]} -> {ends['last'][0]}-{ends['last'][-1]}"
        add("snapshot peak RSS, last ÷ first incremental (medians)",
            summary["rss_last_mb"] / summary["rss_first_incremental_mb"], "<=", 1.25, "x",
            f"{summary['rss_first_incremental_mb']:.0f} MB -> {summary['rss_last_mb']:.0f} MB, {steps} without a "
            f"shard rewrite ({summary['rss_growth_per_snapshot_mb']:+.2f} MB per snapshot in the history)")
        add("snapshot in-process time, last ÷ first incremental (medians)",
            summary["inproc_last_s"] / summary["inproc_first_incremental_s"], "", None, "x",
            f"{summary['inproc_first_incremental_s']:.2f} s -> {summary['inproc_last_s']:.2f} s, {steps}")
    warm, cold = find(s, "a", "warm (no change)", "llmdr snapshot"), find(s, "a", "cold", "llmdr snapshot")
    add("warm no-change ÷ cold snapshot (wall)", warm.wall_s / cold.wall_s, "", None, "%",
        f"{warm.wall_s:.2f} s / {cold.wall_s:.2f} s for {s.details['bundle']['files']} files")
    for step in ("cold", "warm (no change)", "restore"):
        ours = find(s, "a", step, "llmdr snapshot" if step != "restore" else "llmdr restore")
        peer = find(s, "a", step, "restic backup" if step != "restore" else "restic restore")
        if peer is not None:
            add(f"(a) {step}: restic wall ÷ llmdr wall", peer.wall_s / ours.wall_s, "", None, "x",
                f"llmdr {ours.wall_s:.2f} s, restic {peer.wall_s:.2f} s (>1: llmdr faster)")
    if "restic_backup_wall_s" in summary:
        ours, peer = summary["incremental_snapshot_wall_s"]["median"], summary["restic_backup_wall_s"]["median"]
        add("(b) median incremental: restic backup ÷ llmdr snapshot", peer / ours, "", None, "x",
            f"llmdr {ours:.2f} s (+ replicate {summary['replicate_wall_s']['median']:.2f} s), restic {peer:.2f} s")
    steps = s.args.steps
    ls_ours = find(s, "b", f"list ({steps} snapshots)", "llmdr snapshots")
    ls_peer = find(s, "b", f"list ({steps} snapshots)", "restic snapshots")
    if ls_peer is not None:
        add(f"(b) listing {steps} snapshots: restic ÷ llmdr (both caches warm)", ls_peer.wall_s / ls_ours.wall_s, "",
            None, "x", f"llmdr {ls_ours.wall_s:.2f} s, restic {ls_peer.wall_s:.2f} s")
    verified = [r for r in s.runs if r.tool == "llmdr restore"]
    add("restores byte-identical", sum(1 for r in verified if r.data.get("verified", {}).get("identical")), ">=",
        len(verified), "n", "every file's SHA-256 against the expected tree")
    return out


def render_markdown(s: Scale, meta: dict, summary: dict, cks: list[Check]) -> str:
    b = s.details["bundle"]
    steps = s.args.steps
    out = [f"# llmdr scale benchmark, {meta['started_utc']}", "",
           f"Bundle: {b['files']} files, {b['bytes'] / MB:.0f} MB: {SHARDS} safetensors shards of {s.shard_mib} MiB, the "
           f"tokenizer and configs, and {b['small_files']} small files of 1-64 KB ({b['small_bytes'] / MB:.0f} MB: "
           f"{', '.join(f'{v} {k}' for k, v in b['small_by_kind'].items())}). Machine: {meta['cpus']} CPUs, "
           f"{meta['cpu_model']}; llmdr {meta['llmdr_version']} ({meta['git']}); restic {meta['restic']}. "
           "Single runs; two `weed mini` servers on 127.0.0.1.", "",
           *([f"**WARNING: {meta['warning']}.**", ""] if meta.get("warning") else []),
           "## (a) one bundle of many files", "",
           "| step | tool | wall s | llmdr duration_s | peak RSS MB | CPU s | servers CPU s | note |",
           "|---|---|---:|---:|---:|---:|---:|---|"]
    out += [_row(r) for r in s.runs if r.part == "a"]
    series = s.details["series"]
    out += ["", f"## (b) {steps} successive snapshots of a changing bundle", "",
            f"Each step after the first changes {s.args.change_pct:g} % of the files "
            "(40 % of those modified, 20 % added, 20 % deleted, 20 % renamed); every 10th step also rewrites 8 MiB in "
            "the middle of one shard. Each snapshot is replicated to the secondary at once.", "",
            "| per step (steps 2..N) | min | median | max |", "|---|---:|---:|---:|"]
    for key, label, unit in (("incremental_snapshot_wall_s", "llmdr snapshot, wall s", "s"),
                             ("incremental_snapshot_inproc_s", "llmdr snapshot, duration_s", "s"),
                             ("replicate_wall_s", "llmdr replicate, wall s", "s"),
                             ("restic_backup_wall_s", "restic backup, wall s", "s"),
                             ("snapshot_rss_mb", "llmdr snapshot peak RSS MB (all steps)", "mb"),
                             ("replicate_rss_mb", "llmdr replicate peak RSS MB (all steps)", "mb"),
                             ("restic_rss_mb", "restic backup peak RSS MB (all steps)", "mb"),
                             ("files_read_per_step", "files read (not in the stat cache)", "n"),
                             ("bytes_new_per_step", "new bytes uploaded, MB", "bytes")):
        if key not in summary:
            continue
        v = summary[key]
        f = {"s": lambda x: f"{x:.2f}", "mb": lambda x: f"{x:.0f}", "n": lambda x: f"{x:.0f}",
             "bytes": lambda x: f"{x / MB:.1f}"}[unit]
        out.append(f"| {label} | {f(v['min'])} | {f(v['median'])} | {f(v['max'])} |")
    out += ["", "| step | files | read | new MB | snapshot wall s | duration_s | RSS MB | replicate wall s | RSS MB "
            "| restic backup s |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    shown = {1, 2, 3, steps} | {x for x in range(10, steps + 1, 10)} | set(s.details["restored_steps"])
    for x in series:
        if x["step"] not in shown:
            continue
        out.append(f"| {x['step']} | {x['files']} | {x['files'] - x['files_unchanged']} | {x['bytes_new'] / MB:.1f} | "
                   f"{x['snapshot_wall_s']:.2f} | {x['snapshot_inproc_s']:.2f} | {x['snapshot_rss_mb']:.0f} | "
                   f"{x['replicate_wall_s']:.2f} | {x['replicate_rss_mb']:.0f} | "
                   f"{x.get('restic_wall_s', float('nan')):.2f} |")
    out += ["", "(every step is in the JSON under details.series)", "",
            "| step | tool | wall s | llmdr duration_s | peak RSS MB | CPU s | servers CPU s | note |",
            "|---|---|---:|---:|---:|---:|---:|---|"]
    out += [_row(r) for r in s.runs if r.part == "b" and not r.step.startswith("step ")]
    out += ["", "## Checks", "", *check_table(cks, head="check")]
    out += ["", "Notes:", *[f"- {n}" for n in standing_notes(s)]]
    return "\n".join(out) + "\n"


def _row(r: Run) -> str:
    inproc = "" if r.inproc_s is None else f"{r.inproc_s:.2f}"
    return (f"| {r.step} | {r.tool} | {r.wall_s:.2f} | {inproc} | {r.peak_rss_mb:.0f} | {r.cpu_s:.1f} | "
            f"{r.server_cpu_s:.1f} | {r.note} |")


def standing_notes(s: Scale) -> list[str]:
    return [
        "Wall time: time.perf_counter() around each subprocess, Python start-up included; llmdr's own duration_s "
        "(from --json, the core function only) beside it. Peak RSS: ru_maxrss from os.wait4() of the command, "
        f"spawned by bench/rusage_launcher.py (floor {s.details.get('rss_floor_mb', '?')} MB). CPU s: the "
        "command's user+system time; servers CPU s: both weed processes.",
        "`sync` and a short pause (1 s in (a), 0.2 s within the series) before every measured command. The bundle "
        "was just written, so it is in the page cache for every tool alike.",
        "Restores are checked file by file: SHA-256 of every restored file against a {path: SHA-256} map the "
        "harness kept of the tree at that step (no copies of the bundle are kept).",
        "The regions are configured as `llmdr init` writes them: the secondary with Object Lock (COMPLIANCE, "
        "30 d) and client-side encryption, manifests signed (HMAC); the primary plain.",
        "Forget runs with --grace 0s (the default 6 h keeps every pack written in the last 6 h, so a bench "
        "would free nothing) on the primary only: nothing in the secondary may be deleted before its lock ends. "
        "Repository format v2 prunes in two phases: forget's prune marks the unused packs (a plan), and the "
        "measured `llmdr prune --safety-time 0s` after it deletes them (a real deployment waits the safety time).",
        "Repository format v2 stores chunks inside packs (packs/), not one object per chunk (v1's chunks/): the "
        "chunk counts shown are chunks inside packs; the objects deleted by prune are packs.",
        "restic runs against a bucket on the same primary server (its repository v2, compression auto), without "
        "AWS_CA_BUNDLE (PLATFORM.md). Its restore is from the primary server; llmdr's from the secondary.",
    ]

