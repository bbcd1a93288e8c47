"""The readiness report: each check's result (PASS, WARN or FAIL, what was found, what to do), the verdict and
score, its text and markdown renderings, and what the readiness-check flow does with it: the notice when a check
failed, and :class:`ReadinessFailed` (exit 9) so the run shows Failed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from llmdr.config import format_duration
from llmdr.errors import LlmdrError

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
EXIT_FAIL = 9  # `llmdr readiness` exit code when any check fails


@dataclass
class Check:
    id: str  # "credentials/primary", "bandwidth/secondary", "drill"
    title: str
    status: str  # PASS | WARN | FAIL
    summary: str  # what was found, with the numbers
    action: str = ""  # what to do about it (empty when it passed)
    data: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0


@dataclass
class Readiness:
    bundle: str
    started_utc: str
    checks: list[Check] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def warned(self) -> list[Check]:
        return [c for c in self.checks if c.status == WARN]

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def score(self) -> int:
        if not self.checks:
            return 0
        points = sum(1.0 if c.status == PASS else 0.5 if c.status == WARN else 0.0 for c in self.checks)
        return round(100 * points / len(self.checks))

    @property
    def verdict(self) -> str:
        return FAIL if self.failed else WARN if self.warned else PASS

    def to_json(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "started_utc": self.started_utc, "verdict": self.verdict, "score": self.score,
                "passed": sum(c.status == PASS for c in self.checks), "warnings": len(self.warned),
                "failures": len(self.failed), "duration_s": round(self.duration_s, 3),
                "checks": [asdict(c) for c in self.checks]}

    def table_rows(self) -> list[dict[str, str]]:
        return [{"check": c.title, "status": c.status, "found": c.summary, "what to do": c.action or "-"}
                for c in self.checks]


def utc_text(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def ago(seconds: float) -> str:
    return format_duration(timedelta(seconds=max(0, int(seconds))))


def gigabytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def render_text(rep: Readiness, width: int = 110) -> str:
    import textwrap

    lines = [f"Readiness of {rep.bundle} at {rep.started_utc}: {rep.verdict}, score {rep.score}/100 "
             f"({sum(c.status == PASS for c in rep.checks)} pass, {len(rep.warned)} warn, {len(rep.failed)} fail; "
             f"{rep.duration_s:.1f} s)", ""]
    name_w = min(40, max(len(c.title) for c in rep.checks)) if rep.checks else 10
    for c in rep.checks:
        head = f"{c.status:<4}  {c.title:<{name_w}}  "
        body = textwrap.wrap(c.summary, width - len(head)) or [""]
        lines.append(head + body[0])
        lines += [" " * len(head) + b for b in body[1:]]
        if c.action:
            for i, a in enumerate(textwrap.wrap("→ " + c.action, width - len(head))):
                lines.append(" " * len(head) + ("" if i == 0 else "  ") + a)
    return "\n".join(lines)


def render_markdown(rep: Readiness) -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    icon = {PASS: "✅ PASS", WARN: "⚠️ WARN", FAIL: "❌ FAIL"}
    out = [f"# Readiness: {rep.bundle} — {icon[rep.verdict]} (score {rep.score}/100)", "",
           f"Checked {rep.started_utc} in {rep.duration_s:.1f} s: {sum(c.status == PASS for c in rep.checks)} pass, "
           f"{len(rep.warned)} warn, {len(rep.failed)} fail.", "",
           "| check | status | found | what to do |", "|---|---|---|---|"]
    out += [f"| {cell(c.title)} | {icon[c.status]} | {cell(c.summary)} | {cell(c.action or '-')} |"
            for c in rep.checks]
    return "\n".join(out) + "\n"


def artifact_content(rep: Readiness) -> dict[str, Any]:
    """The report's JSON with the Prefect artifacts' content: ``markdown`` and the ``table`` rows."""
    return rep.to_json() | {"markdown": render_markdown(rep), "table": rep.table_rows()}


# --- what the readiness-check flow does with a report ----------------------------------------------------------------
class ReadinessFailed(LlmdrError):
    """At least one readiness check failed. The message names each failing check and what it found."""

    exit_code = EXIT_FAIL

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        self.report = report
        super().__init__(message)

    def __reduce__(self):  # Prefect pickles exceptions into states
        return (ReadinessFailed, (str(self), self.report))


def _with_status(rep: dict[str, Any], status: str) -> list[dict[str, Any]]:
    return [c for c in rep["checks"] if c["status"] == status]


def failure_notice(rep: dict[str, Any]) -> dict[str, Any] | None:
    """The notice to send for a report (its JSON) with a failing check; None when nothing failed."""
    failed = _with_status(rep, FAIL)
    if not failed:
        return None
    from llmdr.notify import readiness_notice

    n = readiness_notice(rep["bundle"], verdict=rep["verdict"], score=rep["score"], failed=failed,
                         warned=_with_status(rep, WARN))
    return {"kind": n.kind, "title": n.title, "body": n.body, "severity": n.severity, "data": n.data}


def raise_if_failed(rep: dict[str, Any]) -> dict[str, Any]:
    """``rep`` (a report's JSON) when no check failed; :class:`ReadinessFailed` naming the failures otherwise."""
    failed = _with_status(rep, FAIL)
    if failed:
        raise ReadinessFailed(f"readiness FAIL (score {rep['score']}/100): "
                              + "; ".join(f"{c['title']}: {c['summary']}" for c in failed), rep)
    return rep
