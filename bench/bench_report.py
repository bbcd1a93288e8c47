"""The results of bench/bench.py: its rows, the targets judged on them, and its Markdown report."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from harness import MB, MiB
from report import Check, check_table

AES_OPEN = "AES-256-GCM open (llmdr blob cipher)"  # the micro-bench row (bench.measure_micro) _restore_cpu reads

RCLONE_TRANSFERS = 8                # same parallelism as llmdr's default transfer.workers


@dataclass
class Row:
    """One measured subprocess."""

    step: str
    tool: str
    nbytes: int  # the bytes the tool had to move (the basis of MB/s); 0 when a rate means nothing
    wall_s: float
    peak_rss_mb: float
    cpu_s: float  # user + system CPU of the tool's process (and any children it waited for)
    sys_s: float  # the system (kernel) part of cpu_s: page cache, sockets
    server_cpu_s: float  # CPU the two weed servers spent during the run
    other_cpu_s: float  # CPU anything else on the machine spent meanwhile (kernel threads, other processes)
    steal_s: float  # CPU time the hypervisor took away from this VM meanwhile
    inproc_s: float | None = None  # llmdr's own duration_s from --json (no interpreter start-up)
    note: str = ""

    @property
    def mb_s(self) -> float | None:
        return self.nbytes / MB / self.wall_s if self.nbytes and self.wall_s > 0 else None

    def to_json(self) -> dict:
        return asdict(self) | {"mb_s": None if self.mb_s is None else round(self.mb_s, 2)}

@dataclass
class Micro:
    name: str
    gb_s: float  # decimal GB/s, best of the repeats
    note: str = ""


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    micro: list[Micro] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # raw --json output of the llmdr runs, sizes, verification
    notes: list[str] = field(default_factory=list)

    def row(self, tool: str) -> Row:
        return next(r for r in self.rows if r.tool == tool)

    def find(self, tool: str) -> Row | None:
        return next((r for r in self.rows if r.tool == tool), None)



# targets ---------------------------------------------------------------------------------------------------------------
def compute_checks(r: Results) -> None:
    """The targets, each from the rows it needs; a target whose peer did not run (a smoke run without it) is left
    out."""
    cold = r.row("llmdr snapshot (cold)")
    warm = r.row("llmdr snapshot (warm)")
    inc = r.row("llmdr snapshot (1 shard rewritten)")
    inc_small = r.row("llmdr snapshot (1 region rewritten)")
    rep = r.row("llmdr replicate (cold)")
    rclone = r.find(f"rclone copy ({RCLONE_TRANSFERS} transfers)")
    rest = r.row("llmdr restore")
    s5_up, s5_down = r.find("s5cmd cp (upload)"), r.find("s5cmd cp (download)")
    restic = r.find("restic backup (cold)")
    c = r.checks
    if s5_up:
        c.append(Check("cold snapshot ÷ s5cmd upload (MB/s)", cold.mb_s / s5_up.mb_s, ">=", 1.0))
    if restic:
        c.append(Check("cold snapshot ÷ restic backup (MB/s)", cold.mb_s / restic.mb_s, ">=", 2.0))
    c.append(Check("cold snapshot ÷ boto3 upload_file (MB/s)",
                   cold.mb_s / r.row("boto3 upload_file (8 thr, 16 MiB)").mb_s, "", None))
    c.append(Check("warm no-change ÷ cold, CLI wall time", warm.wall_s / cold.wall_s, "<=", 0.02, "%",
                   f"{warm.wall_s:.2f} s / {cold.wall_s:.2f} s"))
    c.append(Check("warm no-change ÷ cold, in-process duration_s", warm.inproc_s / cold.inproc_s, "<=", 0.02, "%",
                   f"{warm.inproc_s:.2f} s / {cold.inproc_s:.2f} s"))
    expected = r.details["incremental_rewrite"]["expected_s"]
    c.append(Check("incremental (1 shard rewritten) ÷ (changed bytes ÷ cold rate)", inc.wall_s / expected, "<=", 1.3,
                   detail=f"{inc.wall_s:.2f} s vs {expected:.2f} s for {inc.nbytes / MB:.0f} MB at {cold.mb_s:.0f} MB/s"))
    expected = r.details["incremental_region"]["expected_s"]
    c.append(Check("incremental (1 region rewritten) ÷ (changed bytes ÷ cold rate)", inc_small.wall_s / expected, "",
                   None, detail=f"{inc_small.wall_s:.2f} s vs {expected:.2f} s; the whole shard is re-read and start-up is fixed"))
    if rclone:
        c.append(Check("replicate ÷ rclone copy (MB/s)", rep.mb_s / rclone.mb_s, ">=", 1.0))
    if s5_down:
        c.append(Check("restore ÷ s5cmd download (MB/s)", rest.mb_s / s5_down.mb_s, ">=", 1.0))
        _restore_cpu(r, rest, s5_down)
    alt = next((x for x in r.rows if x.tool.startswith("llmdr restore (fsync")), None)
    if alt is not None and s5_down:
        c.append(Check(f"{alt.tool.removeprefix('llmdr ')} ÷ s5cmd download (MB/s)", alt.mb_s / s5_down.mb_s, "",
                       None))
    snap_rss = max(x.peak_rss_mb for x in r.rows if x.tool.startswith("llmdr snapshot"))
    c.append(Check("peak RSS, llmdr snapshot (max of all runs)", snap_rss, "<=", 300, "MB"))
    rest_rss = max([x.peak_rss_mb for x in r.rows if x.tool.startswith("llmdr restore")]
                   + [x["peak_rss_mb"] for tool, xs in r.details.get("samples", {}).items()
                      if tool.startswith("llmdr restore") for x in xs])
    c.append(Check("peak RSS, llmdr restore (max of all runs)", rest_rss, "<=", 300, "MB"))


def _restore_cpu(r: Results, rest: Row, s5_down: Row) -> None:
    """Where the restore's extra CPU goes, beside the ratio: the client CPU llmdr uses beyond s5cmd's, against what
    proving every byte (SHA-256) and, from an encrypted region, opening it (AES-256-GCM) cost at the micro-bench
    rates; and the ratio the CPU alone allows on this machine (tool + servers CPU ÷ cores is a floor for the wall
    time when both share the cores)."""
    rates = {m.name: m.gb_s for m in r.micro}
    sha = rates.get("SHA-256 (hashlib)")
    if not sha:
        return
    gb = rest.nbytes / 1e9
    crypto = gb / sha
    parts = f"SHA-256 {gb / sha:.2f} s"
    if r.details.get("restore_region_encrypted") and rates.get(AES_OPEN):
        crypto += gb / rates[AES_OPEN]
        parts += f" + AES-256-GCM {gb / rates[AES_OPEN]:.2f} s (the region is encrypted)"
    extra = rest.cpu_s - s5_down.cpu_s
    r.checks.append(Check("restore client CPU beyond s5cmd's ÷ verifying every byte at the micro-bench rates",
                          extra / crypto, "", None,
                          detail=f"{rest.cpu_s:.1f} − {s5_down.cpu_s:.1f} = {extra:.1f} CPU-s more; {parts}"))
    cores = os.cpu_count() or 1
    floor = (rest.cpu_s + rest.server_cpu_s) / cores
    peer_floor = (s5_down.cpu_s + s5_down.server_cpu_s) / cores
    r.checks.append(Check("restore ÷ s5cmd download, as far as CPU allows (CPU-s floors, tool + servers)",
                          peer_floor / floor, "", None,
                          detail=f"{peer_floor:.2f} s vs {floor:.2f} s on {cores} cores"))


def fmt_rate(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} MB/s"


def render_markdown(r: Results, steps: list[dict], meta: dict) -> str:
    b = r.details["bundle"]
    out = [f"# llmdr benchmark, {meta['started_utc']}", "",
           f"Bundle: {b['files']} files, {b['bytes'] / MB:.0f} MB ({b['shards']} shards of {b['shard_size'] / MiB:.1f} "
           f"MiB + small files). Machine: {meta['cpus']} CPUs, {meta['cpu_model']}; llmdr {meta['llmdr_version']} "
           f"({meta['git']}). One run of each (restores: the fastest of the runs in the note); all tools on the same "
           "two `weed mini` servers on 127.0.0.1.", "",
           "| step | tool | wall s | llmdr duration_s | MB | MB/s | peak RSS MB | CPU s (sys) | servers CPU s | other CPU s "
           "| note |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for x in r.rows:
        inproc = "" if x.inproc_s is None else f"{x.inproc_s:.2f}"
        mb = f"{x.nbytes / MB:.0f}" if x.nbytes else ""
        rate = "" if x.mb_s is None else f"{x.mb_s:.0f}"
        out.append(f"| {x.step} | {x.tool} | {x.wall_s:.2f} | {inproc} | {mb} | {rate} | {x.peak_rss_mb:.0f} | "
                   f"{x.cpu_s:.1f} ({x.sys_s:.1f}) | {x.server_cpu_s:.1f} | {x.other_cpu_s:.1f} | {x.note} |")
    out += ["", *check_table(r.checks, not_judged=meta.get("smoke", False))]
    out += ["", f"| micro-bench ({meta.get('micro_mib', 256)} MiB buffer, 1 thread, best of "
            f"{meta.get('micro_repeats', 3)}) | GB/s | note |", "|---|---:|---|"]
    out += [f"| {m.name} | {m.gb_s:.2f} | {m.note} |" for m in r.micro]
    skipped = [x for x in steps if x["status"] == "skipped"]
    if skipped:
        out += ["", "Skipped (smoke run): " + "; ".join(f"{x['tool']} ({x['reason']})" for x in skipped) + "."]
    out += ["", "Notes:"] + [f"- {n}" for n in r.notes]
    return "\n".join(out) + "\n"



def standing_notes(r: Results, bytecode_cache: bool) -> list[str]:
    return [
        "Wall time: time.perf_counter() around each subprocess (posix_spawn to exit), interpreter start-up "
        "included. Peak RSS: ru_maxrss from os.wait4() of that subprocess, i.e. the kernel's resident-set "
        "high-water mark of the process (all threads). It is taken in bench/rusage_launcher.py, a ~8 MB process, "
        "because ru_maxrss also counts the parent's image the child held before exec: values at the floor "
        f"({r.details.get('rss_floor_mb', '?')} MB, `true`) mean 'at most that'; anything above is exact. "
        "CPU s: the tool's user+system time from the same rusage (system part in brackets). Servers CPU s: CPU time of both weed PIDs "
        "(psutil), after minus before. Other CPU s: the machine's busy time (/proc/stat) minus both, i.e. kernel "
        "threads (page reclaim, writeback) and any other process; steal time is in the JSON. On 2 cores, the "
        "tool's plus the servers' CPU seconds ÷ 2 is a floor for the wall time.",
        "Page cache: the bundle is read once before the runs, so it is in the page cache for every tool alike (the "
        "harness cannot drop caches without root). `sync` + 1 s pause before every measured command so one tool's "
        "writeback does not slow the next.",
        "Python tools run with a bytecode cache (PYTHONPYCACHEPREFIX under the work folder, warmed first) as an "
        "installed tool would; pass --no-bytecode-cache to run with this environment's PYTHONDONTWRITEBYTECODE=1."
        if bytecode_cache else
        "Python tools ran WITHOUT a bytecode cache (PYTHONDONTWRITEBYTECODE=1): every start-up recompiles imports.",
        "Incremental: '1 shard rewritten' replaces every tensor byte of one shard (header kept) with new random bytes; "
        "changed bytes = that shard's tensor bytes; expected time = changed bytes ÷ the cold snapshot's wall-clock "
        "rate. '1 region rewritten' overwrites 16 MiB (at most a quarter shard) in the middle of another shard "
        "(report only: the whole shard is re-read).",
        "Replicate copies the chunks of the latest (incremental) snapshot to the empty secondary; rclone copies the "
        "s5cmd-uploaded bucket (the original bundle, same size). Restore: llmdr from the secondary region; s5cmd "
        "downloads the rclone-copied bucket from the same secondary server. Restores are the noisiest step on "
        "this VM (page-cache allocation cost swings), so each restore tool runs --restore-repeats times, "
        "interleaved, after an unmeasured priming download, each restore deleted once checked; the fastest run "
        "of each is kept and all are listed in its note.",
        "Repository format v2: chunks are stored inside packs (packs/, a few per snapshot), not one object each "
        "(v1's chunks/); the chunk counts are chunks inside packs, and the objects the repository holds after the "
        "cold snapshot and after the replicate are in the JSON (details.repository_objects_after_*).",
        "MB = 10^6 bytes; MB/s = bytes moved ÷ wall time. Single runs: upload rates varied by up to ±20 % between "
        "identical runs on this 2-core machine; read ratios near 1.0 as a tie.",
    ]


def document(r: Results, steps: list[dict], meta: dict) -> dict:
    return {"meta": meta, "steps": steps, "rows": [x.to_json() for x in r.rows],
            "checks": [c.to_json() for c in r.checks], "micro": [asdict(m) for m in r.micro], "details": r.details,
            "notes": r.notes}
