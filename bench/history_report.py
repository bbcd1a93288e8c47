"""The results of bench/history.py: its runs, the ratios between history levels, the checks and the Markdown report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness import Timed
from report import Check, check_table

if TYPE_CHECKING:
    from history import History

COMMANDS = ("llmdr snapshot", "llmdr replicate", "llmdr snapshots", "llmdr restore")
RATIO_BOUND = 1.2  # issue #15: each command with the largest history ≤ 1.2× the same command with the smallest
RSS_BOUND_MB = 200.0


@dataclass
class Run(Timed):
    """One measured subprocess at one history level."""

    level: int  # the history level being measured (--steps)
    mode: str  # "cold": local cache emptied first; "warm": as the previous commands left it
    command: str
    snapshots: int  # snapshots taken in the primary when the command started


def find(h: History, level: int, mode: str, command: str) -> Run | None:
    """The median by wall time of the command's rounds at this level and mode (the lower one of an even count)."""
    runs = sorted((r for r in h.runs if (r.level, r.mode, r.command) == (level, mode, command)),
                  key=lambda r: r.wall_s)
    return runs[(len(runs) - 1) // 2] if runs else None


def summarise(h: History) -> dict:
    """Per command and mode: wall time, in-process time and peak RSS of the median round at each level, and each
    level ÷ the first."""
    levels = h.args.levels
    out: dict = {"levels": levels, "commands": {}}
    for command in COMMANDS:
        for mode in ("cold", "warm"):
            runs = [find(h, lv, mode, command) for lv in levels]
            if any(r is None for r in runs):
                continue
            base = runs[0]
            out["commands"][f"{command} ({mode})"] = {
                "rounds": sum(1 for r in h.runs if (r.level, r.mode, r.command) == (levels[0], mode, command)),
                "wall_s": {str(r.level): round(r.wall_s, 3) for r in runs},
                "inproc_s": {str(r.level): r.inproc_s for r in runs},
                "peak_rss_mb": {str(r.level): round(r.peak_rss_mb, 1) for r in runs},
                "ratio": {str(r.level): round(r.wall_s / base.wall_s, 3) for r in runs[1:]},
                "inproc_ratio": {str(r.level): round(r.inproc_s / base.inproc_s, 3) for r in runs[1:]
                                 if r.inproc_s is not None and base.inproc_s},
            }
    out["peak_rss_mb"] = max((r.peak_rss_mb for r in h.runs), default=0.0)
    out["build_s_per_snapshot"] = _build_rate(h.builds)
    out["build_in_process"] = _build_growth(h.builds)
    return out


def _build_growth(builds: list[dict]) -> dict | None:
    """Median in-process seconds of take_snapshot and replicate_snapshot over the first and the last 10 % (at least
    3) of the snapshots the builder took: the core functions' own growth with the history, warm."""
    import statistics

    snaps = [x for b in builds for x in b["snapshot_s"]]
    reps = [x for b in builds for x in b["replicate_s"]]
    if len(snaps) < 6 or len(reps) < 6:
        return None

    def ends(xs: list[float]) -> dict:
        k = max(3, len(xs) // 10)
        return {"first": round(statistics.median(xs[:k]), 4), "last": round(statistics.median(xs[-k:]), 4), "n": k}

    return {"take_snapshot_s": ends(snaps), "replicate_snapshot_s": ends(reps)}


def _build_rate(builds: list[dict]) -> float | None:
    added = sum(b["added"] for b in builds)
    return round(sum(b["seconds"] for b in builds) / added, 3) if added else None


def checks(h: History, summary: dict) -> list[Check]:
    levels = summary["levels"]
    first, last = levels[0], levels[-1]
    out = []
    for name, s in summary["commands"].items():
        ratio = s["ratio"][str(last)]
        out.append(Check(f"{name}: {last} ÷ {first} snapshots, wall time", ratio, "<=", RATIO_BOUND,
                         detail=f"{s['wall_s'][str(last)]:.2f} s / {s['wall_s'][str(first)]:.2f} s"))
    for name, s in summary["commands"].items():
        if str(last) in s["inproc_ratio"]:
            out.append(Check(f"{name}: {last} ÷ {first}, in-process duration_s", s["inproc_ratio"][str(last)], "",
                             None, detail=f"{s['inproc_s'][str(last)]:.2f} s / {s['inproc_s'][str(first)]:.2f} s"))
    worst = max(h.runs, key=lambda r: r.peak_rss_mb)
    out.append(Check("peak RSS, every command at every level", worst.peak_rss_mb, "<=", RSS_BOUND_MB, unit="MB",
                     detail=f"{worst.command} ({worst.level}, {worst.mode})"))
    return out


def standing_notes(h: History) -> list[str]:
    return [
        "History: a tiny bundle (the sample bundle, 2 safetensors shards of 64 KiB, tokenizer, configs, templates) "
        "and one small file (notes/history.txt, ~1 KB) rewritten before each snapshot, so every snapshot holds one "
        "new chunk. The history is built in-process by bench/history_build.py (take_snapshot, then "
        "replicate_snapshot to the secondary), not measured; its seconds per snapshot are in the JSON "
        "(details.builds).",
        "At each level, each round: one more snapshot taken in-process and not copied, then measured in this order: "
        "llmdr snapshot with nothing changed (primary), llmdr replicate latest --to secondary (the newest: record, "
        "tree, one chunk), llmdr snapshots --region secondary (every snapshot listed), llmdr restore latest --region "
        "secondary (tiny bundle, every file's SHA-256 checked). Cold: .llmdr/cache (catalog, records, trees, index "
        "copies, stat cache) deleted before each command, as on a fresh DR host; warm: as the commands before left "
        "it. The levels differ only in history length; the number of snapshots in the primary is in each run.",
        "Wall time: time.perf_counter() around each subprocess (interpreter start-up included: ~0.5-1 s of each "
        "command here, the same at every level). Peak RSS: ru_maxrss from os.wait4() under bench/rusage_launcher.py "
        f"(floor {h.details.get('rss_floor_mb', '?')} MB). Each level and mode is measured in "
        f"{h.args.repeats} round(s), each adding two snapshots (the in-process one and the measured snapshot); "
        "the ratios compare each command's median round (by wall time), every round is listed below. A shared "
        "2-core machine: read a ratio within ~10 % of its bound as a tie.",
    ]


def render_markdown(h: History, meta: dict, summary: dict, cks: list[Check]) -> str:
    levels = summary["levels"]
    head = " | ".join(f"{lv} snapshots" for lv in levels)
    lines = [
        f"# llmdr history bench — {'smoke run' if h.smoke else meta['started_utc']}",
        "",
        f"Commit {meta['git']}, llmdr {meta['llmdr_version']}, Python {meta['python']}, {meta['cpus']} CPUs "
        f"({meta['cpu_model']}), weed {meta['weed']}. Levels: {', '.join(map(str, levels))} snapshots.",
        "",
        f"| command (mode) | {head} | ratio {levels[-1]} ÷ {levels[0]} | peak RSS MB |",
        "|---|" + "---:|" * len(levels) + "---:|---:|",
    ]
    for name, s in summary["commands"].items():
        walls = " | ".join(f"{s['wall_s'][str(lv)]:.2f} s" for lv in levels)
        lines.append(f"| {name} | {walls} | {s['ratio'][str(levels[-1])]:.2f} | "
                     f"{max(s['peak_rss_mb'].values()):.0f} |")
    lines += ["", *check_table(cks, not_judged=h.smoke), "", "| level | mode | command | snapshots | wall s | "
              "in-process s | peak RSS MB | CPU s | servers CPU s | note |", "|---:|---|---|---:|---:|---:|---:|---:|"
              "---:|---|"]
    for r in h.runs:
        inproc = "" if r.inproc_s is None else f"{r.inproc_s:.2f}"
        lines.append(f"| {r.level} | {r.mode} | {r.command} | {r.snapshots} | {r.wall_s:.2f} | {inproc} | "
                     f"{r.peak_rss_mb:.0f} | {r.cpu_s:.2f} | {r.server_cpu_s:.2f} | {r.note} |")
    rate, growth = summary["build_s_per_snapshot"], summary["build_in_process"]
    lines += ["", f"History built in-process at {rate} s per snapshot (copy to the secondary included)."
              if rate is not None else ""]
    if growth is not None:
        ts, rs = growth["take_snapshot_s"], growth["replicate_snapshot_s"]
        lines += [f"While building it (warm, in-process, no start-up; median of the first and of the last {ts['n']}): "
                  f"take_snapshot {ts['first']:.3f} s → {ts['last']:.3f} s, replicate_snapshot {rs['first']:.3f} s → "
                  f"{rs['last']:.3f} s (every step's seconds in the JSON, details.builds)."]
    lines += ["", "Notes:", *[f"- {n}" for n in standing_notes(h)]]
    if meta.get("warning"):
        lines += [f"- WARNING: {meta['warning']}"]
    return "\n".join(lines) + "\n"
