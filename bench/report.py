"""Where results go and how they are written, the machine they ran on, and the target checks every report shows.

A measuring run writes ``<name>-<UTC>.json|.md`` and ``<name>-latest.*`` into bench/results/ (or ``--results``,
or ``$LLMDR_BENCH_RESULTS``); a smoke run writes only ``<name>-smoke.*`` into its own folder, never bench/results/.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from harness import BENCH_DIR, REPO_DIR, first_line

RESULTS_DIR = BENCH_DIR / "results"


def results_dir(given: Path | None, smoke: bool, prefix: str) -> Path:
    """Where results go: ``given`` (``--results`` or $LLMDR_BENCH_RESULTS), else bench/results/; a smoke run never
    writes into bench/results/ (a new temporary folder when none is given)."""
    if given is None and os.environ.get("LLMDR_BENCH_RESULTS"):
        given = Path(os.environ["LLMDR_BENCH_RESULTS"])
    if not smoke:
        return given or RESULTS_DIR
    if given is None:
        return Path(tempfile.mkdtemp(prefix=f"llmdr-{prefix}smoke-"))
    if given.resolve() == RESULTS_DIR.resolve():
        sys.exit(f"a smoke run does not write into {RESULTS_DIR}: give --results another folder")
    return given


def write_files(folder: Path, files: list[tuple[str, str]]) -> None:
    """Each (name, text) written whole (a temporary file renamed over the old one)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files:
        tmp = folder / f"{name}.tmp"
        tmp.write_text(text)
        tmp.replace(folder / name)


def write_results(folder: Path, prefix: str, doc: dict, md: str, *, smoke: bool, started: str,
                  stamped: bool = True) -> Path:
    """``<prefix>smoke.json|.md`` for a smoke run; else ``<prefix><UTC>.*`` (when ``stamped``) and
    ``<prefix>latest.*``. Returns the first Markdown file."""
    stamp = started.replace("-", "").replace(":", "")
    names = ["smoke"] if smoke else [stamp, "latest"] if stamped else ["latest"]
    text = json.dumps(doc, indent=2) + "\n"
    write_files(folder, [(f"{prefix}{name}.{ext}", body) for name in names for ext, body in (("json", text),
                                                                                           ("md", md))])
    return folder / f"{prefix}{names[0]}.md"


def document(st, meta: dict, summary: dict, checks: list[Check], notes: list[str]) -> dict:
    """The JSON of a run on the local stack ``st`` (its steps, runs and details)."""
    return {"meta": meta, "steps": st.steps, "summary": summary, "checks": [c.to_json() for c in checks],
            "runs": [asdict(r) for r in st.runs], "details": st.details, "notes": notes}


def publish(folder: Path, prefix: str, doc: dict, md: str, *, smoke: bool, started: str, t0: float) -> Path:
    """``write_results``, then the report and where it went on the console (with the seconds since ``t0``)."""
    path = write_results(folder, prefix, doc, md, smoke=smoke, started=started)
    print("\n" + md)
    print(f"results: {path}" + ("" if smoke else f" (and {folder / f'{prefix}latest.md'})")
          + f"; total {time.perf_counter() - t0:.0f} s")
    return path


def conclude(st, folder: Path, prefix: str, meta: dict, rep, *, started: str, t0: float, keep: bool) -> Path:
    """The end of a run on the local stack ``st``: the llmdr/ digest compared (``code_at_end``), then ``rep`` (the
    script's report module: summarise, checks, render_markdown, standing_notes) summarised, checked, rendered and
    published; the work folder removed unless ``keep``."""
    code_at_end(meta)
    summary = rep.summarise(st)
    cks = rep.checks(st, summary)
    path = publish(folder, prefix, document(st, meta, summary, cks, rep.standing_notes(st)),
                   rep.render_markdown(st, meta, summary, cks), smoke=st.smoke, started=started, t0=t0)
    if not keep:
        shutil.rmtree(st.work)
    return path


# the machine -----------------------------------------------------------------------------------------------------------
def git_version() -> str:
    """The commit, marked when llmdr/ has uncommitted changes."""
    git = first_line(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"])
    dirty = first_line(["git", "-C", str(REPO_DIR), "status", "--porcelain", "--", "llmdr"])
    return git + ("+dirty llmdr/" if dirty not in ("", "?") else "")


def machine(env: dict[str, str], cwd: Path) -> dict:
    """CPUs, Python, llmdr and weed versions, the git commit."""
    import llmdr

    cpu_model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), platform.processor())
    return {"cpus": os.cpu_count(), "cpu_model": cpu_model, "python": platform.python_version(),
            "llmdr_version": llmdr.__version__, "git": git_version(),
            "weed": first_line([str(Path(sys.executable).parent / "weed"), "version"], env=env, cwd=cwd)}


def llmdr_code() -> str:
    """A digest of the llmdr/ sources as they are on disk: every measured command imports them afresh, so a change
    during the run (others work in the same tree) would mix two versions in one result."""
    h = hashlib.sha256()
    for p in sorted((REPO_DIR / "llmdr").rglob("*.py")):
        h.update(p.relative_to(REPO_DIR).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def environment(st, started: str, args, **extra) -> dict:
    """A run's meta: start time, the machine, the llmdr/ digest at the start, ``extra``, and the arguments."""
    return {"started_utc": started, **machine(st.base_env, st.work), "llmdr_code_at_start": llmdr_code(), **extra,
            "args": {k: str(v) for k, v in vars(args).items()}}


def code_at_end(meta: dict) -> None:
    """Put the llmdr/ digest at the end into ``meta``; when it differs from the start's, a warning too (and on the
    console): the measured commands did not all run the same code."""
    meta["llmdr_code_at_end"] = llmdr_code()
    if meta["llmdr_code_at_end"] != meta["llmdr_code_at_start"]:
        meta["warning"] = "llmdr/ changed during the run: the measured commands did not all run the same code"
        print(f"WARNING: {meta['warning']}", flush=True)


# targets ---------------------------------------------------------------------------------------------------------------
@dataclass
class Check:
    """A value the project targets (or only reports, when ``bound`` is None)."""

    metric: str
    value: float
    op: str  # ">=", "<=" or "" (report only)
    bound: float | None
    unit: str = "x"  # "x": a ratio, "%": a fraction shown as a percentage, "MB": an amount, "n": a count
    detail: str = ""

    def fmt(self, v: float) -> str:
        return {"x": f"{v:.2f}", "%": f"{v:.1%}", "MB": f"{v:.0f} MB", "n": f"{v:.0f}"}[self.unit]

    @property
    def verdict(self) -> str:
        if self.bound is None:
            return "report"
        ok = self.value >= self.bound if self.op == ">=" else self.value <= self.bound
        return "PASS" if ok else "FAIL"

    def to_json(self) -> dict:
        return asdict(self) | {"verdict": self.verdict}


def check_table(checks: list[Check], *, head: str = "target", not_judged: bool = False) -> list[str]:
    """The Markdown table of the checks; ``not_judged`` (a smoke run) shows no verdicts."""
    out = [f"| {head} | value | goal | verdict | detail |", "|---|---:|---|---|---|"]
    for c in checks:
        goal = "" if c.bound is None else f"{c.op} {c.fmt(c.bound)}"
        verdict = "not judged (smoke run)" if not_judged else c.verdict
        out.append(f"| {c.metric} | {c.fmt(c.value)} | {goal} | {verdict} | {c.detail} |")
    return out
