"""Schedules derived from the objectives, and the check of a schedule someone set explicitly (#20 item 6).

Pure arithmetic on durations; ``deployments/configure.py`` reads the deployments from Prefect, asks this module what
each one's schedule must be, refuses the whole deploy when an explicit schedule cannot meet the objectives, and only
then writes. The rules, stated so an operator can check them:

- **protect-bundle** (``objectives.rpo``): a snapshot taken at ``t`` is in the DR region at ``t + c`` (``c``: the
  copy time: from the run's scheduled time, through the wait for a worker, to the verified copy); the next one is taken at ``t + I`` and lands at ``t + I + c``, so
  just before it lands the newest DR copy is ``I + c`` old. It stays within the RPO when ``I + c ≤ RPO``. Derived:
  ``I = min(RPO/2, RPO − c)`` with ``c`` the longest of the deployment's last completed runs when Prefect has any;
  without a measurement ``c`` is unknown and half the RPO is reserved for it: ``I = RPO/2``. An explicit schedule
  whose longest gap ``G`` has ``G + c > RPO`` (``c`` measured, else ``RPO/2``) is refused.
- **protect-checkpoints** (``objectives.training.rpo``; 24 h when ``objectives.training`` is not set): the same
  rule with the training RPO, derived only when ``checkpoints:`` is configured (otherwise the deployment is removed).
- **dr-drill** (``objectives.drill_interval``): readiness FAILs once the last passing drill is older than the
  interval and WARNs within ``margin = min(15 % of it, 14 d)`` of that. Derived: every ``drill_interval − margin``
  (whole days, at 06:00 UTC), so a drill that fails leaves the margin to fix and re-run it. An explicit schedule with
  a gap longer than the interval is refused; one longer than ``interval − margin`` is accepted with a warning.
  (The old quarterly cron leaves 92 days between 1 July and 1 October: more than a 90-day interval.)
- **verify-replicas** (explicit crons in prefect.yaml, checked): every chunk of every region is read back within
  ``min(7 d, drill_interval / 2)`` (a daily run of ``sample: 7`` reads 1/7 a day: a cycle of 7 × its gap), so a
  drill never relies on a DR copy read back fewer than twice in its interval. Refused when every scheduled
  verify deployment's cycle is longer.

Deployments exist only for what the config enables (``not_enabled``): protect-checkpoints needs ``checkpoints:``,
monitor-endpoints a serving endpoint to watch.

Schedules that configure.py owns carry the slug ``llmdr-derived``; any other active schedule on a deployment is
explicit (prefect.yaml or the UI) and wins over the derived one once it passes the check.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from llmdr.config.model import Config
from llmdr.config.values import format_duration
from llmdr.errors import ConfigError

DERIVED_SLUG = "llmdr-derived"  # the slug of a schedule configure.py derives and may replace
DEFAULT_TRAINING_RPO = timedelta(hours=24)  # the seed's training RPO, when objectives.training is not set
DRILL_MARGIN_SHARE = 0.15  # readiness's warning window before a drill is due (llmdr.drill.readiness.checks)
DRILL_MARGIN_MAX = timedelta(days=14)
DRILL_HOUR_UTC = 6  # a derived drill starts at 06:00 UTC, like the quarterly cron did
VERIFY_CYCLE_MAX = timedelta(days=7)

PROTECT_FLOWS = ("protect-bundle", "protect-checkpoints")
DERIVED_FLOWS = (*PROTECT_FLOWS, "dr-drill")


@dataclass(frozen=True)
class Derived:
    """A schedule derived for one deployment: every ``interval_s`` seconds, anchored at ``anchor_hour`` UTC when
    set (whole days), with the arithmetic behind it."""

    flow: str
    interval_s: int
    why: str
    anchor_hour: int | None = None
    warning: str = ""

    @property
    def every(self) -> str:
        return human(self.interval_s)


@dataclass(frozen=True)
class Verdict:
    """An explicit schedule checked against the objectives: ``refused`` (configure exits non-zero with ``message``),
    else accepted, with ``message`` a warning when not empty."""

    refused: bool
    message: str


def human(seconds: float) -> str:
    """``300`` → ``300 s (5m)``, ``6566400`` → ``76d``: whole seconds under an hour, the short form above."""
    s = int(round(seconds))
    short = format_duration(timedelta(seconds=s))
    if s >= 3600:
        return short
    return f"{s} s" if s < 60 else f"{s} s ({short})"


def training_rpo(cfg: Config) -> timedelta:
    """``objectives.training.rpo`` when the config has it, else the seed's 24 h."""
    training = cfg.objectives.training
    return DEFAULT_TRAINING_RPO if training is None else training.rpo


def objective_of(cfg: Config, flow: str) -> tuple[str, float]:
    """The objective a protect flow's schedule serves: (its name in llmdr.yaml, seconds)."""
    if flow == "protect-checkpoints":
        name = "objectives.training.rpo" if cfg.objectives.training is not None else \
            "training rpo (objectives.training.rpo, default 24h)"
        return name, training_rpo(cfg).total_seconds()
    return "objectives.rpo", cfg.objectives.rpo.total_seconds()


def drill_margin(cfg: Config) -> float:
    """Seconds before a drill is due in which readiness already warns: min(15 % of the interval, 14 d)."""
    d = cfg.objectives.drill_interval.total_seconds()
    return min(DRILL_MARGIN_SHARE * d, DRILL_MARGIN_MAX.total_seconds())


def verify_cycle_limit(cfg: Config) -> float:
    """Seconds within which every chunk must be read back: min(7 d, drill_interval / 2)."""
    return min(VERIFY_CYCLE_MAX.total_seconds(), cfg.objectives.drill_interval.total_seconds() / 2)


def _copy_text(copy_s: float | None, objective_s: float) -> str:
    if copy_s is None:
        return f"copy time {human(objective_s / 2)} (not measured yet: half the objective reserved)"
    return f"copy time {human(math.ceil(copy_s))} (the longest of its last completed runs, scheduled time to end)"


def derive(cfg: Config, flow: str, copy_s: float | None = None) -> Derived | None:
    """The schedule derived for a deployment of ``flow`` (None: nothing to derive). ``copy_s``: the longest
    recent run of that deployment, seconds, when Prefect has one."""
    if flow in PROTECT_FLOWS:
        if flow == "protect-checkpoints" and cfg.checkpoints is None:
            return None
        name, obj = objective_of(cfg, flow)
        half = obj / 2
        interval = half if copy_s is None else min(half, obj - math.ceil(copy_s))
        warning = ""
        if interval < 1:
            took = (f"its runs take {human(math.ceil(copy_s))}, as long as {name} {human(obj)} or longer"
                    if copy_s is not None else f"{name} {human(obj)} leaves no time for a run")
            warning = (f"{flow}: {took}: no schedule keeps the DR copy within it; scheduled every "
                       f"{human(max(1, half))} anyway. Make the copy faster (transfer.workers, bandwidth) or raise "
                       f"{name}")
            interval = max(1.0, half)
        i = max(1, math.floor(interval))
        c = obj / 2 if copy_s is None else math.ceil(copy_s)
        why = (f"{name} {human(obj)}: newest DR copy at most interval {human(i)} + {_copy_text(copy_s, obj)} = "
               f"{human(i + c)} <= {human(obj)}")
        return Derived(flow, i, why, warning=warning)
    if flow == "dr-drill":
        d = cfg.objectives.drill_interval.total_seconds()
        margin = drill_margin(cfg)
        every = d - margin
        anchor = None
        if every >= 86400:
            every = math.floor(every / 86400) * 86400
            anchor = DRILL_HOUR_UTC
        i = max(1, math.floor(every))
        why = (f"objectives.drill_interval {human(d)} - margin {human(margin)} (readiness warns that long before a "
               f"drill is due: min(15 %, 14 d); time to re-run a failed drill) -> every {human(i)}"
               + (f" at {DRILL_HOUR_UTC:02d}:00 UTC" if anchor is not None else ""))
        return Derived(flow, i, why, anchor_hour=anchor)
    return None


def check_explicit(cfg: Config, flow: str, deployment: str, gap_s: float, what: str,
                   copy_s: float | None = None, sample: str | None = None) -> Verdict:
    """Check an explicit schedule of ``deployment`` (a deployment of ``flow``) whose longest gap between two runs
    is ``gap_s`` seconds (``what``: the schedule as written, e.g. ``every 300 s`` or ``cron '0 6 1 1,4,7,10 *'``).
    verify-replicas is checked per deployment here; ``configure.py`` refuses only when none of them passes."""
    if flow in PROTECT_FLOWS:
        name, obj = objective_of(cfg, flow)
        c = obj / 2 if copy_s is None else math.ceil(copy_s)
        worst = gap_s + c
        if worst > obj:
            derived = derive(cfg, flow, copy_s)
            fix = (f"remove the schedule (configure.py then derives every {derived.every}) or set one of at most "
                   f"{human(max(0, obj - c))}" if derived else f"set one of at most {human(max(0, obj - c))}")
            return Verdict(True, f"{deployment} {what} cannot keep the DR copy within {name} {human(obj)}: the "
                           f"newest DR copy is up to interval {human(gap_s)} + {_copy_text(copy_s, obj)} = "
                           f"{human(worst)} old > {human(obj)}; {fix}")
        return Verdict(False, "")
    if flow == "dr-drill":
        d = cfg.objectives.drill_interval.total_seconds()
        margin = drill_margin(cfg)
        if gap_s > d:
            return Verdict(True, f"{deployment} {what} leaves up to {human(gap_s)} between drills > "
                           f"objectives.drill_interval {human(d)}: readiness FAILs before the next drill; remove the "
                           f"schedule (configure.py then derives every {derive(cfg, flow).every}) or run drills at "
                           f"least every {human(d - margin)}")
        if gap_s > d - margin:
            return Verdict(False, f"{deployment} {what} leaves up to {human(gap_s)} between drills: within the "
                           f"{human(margin)} before objectives.drill_interval {human(d)} runs out, so a failed "
                           "drill cannot be re-run before readiness FAILs")
        return Verdict(False, "")
    if flow == "verify-replicas":
        limit = verify_cycle_limit(cfg)
        cycle, how = verify_cycle(gap_s, sample)
        if cycle is None or cycle > limit:
            took = how if cycle is None or cycle == gap_s else f"{how} = {human(cycle)}"
            return Verdict(True, f"{deployment} {what} reads every chunk back only {took}; every chunk must be read "
                           f"back within {human(limit)} (min(7 d, objectives.drill_interval / 2))")
        return Verdict(False, "")
    return Verdict(False, "")


def verify_cycle(gap_s: float, sample: str | None) -> tuple[float | None, str]:
    """How long verify-replicas runs ``gap_s`` apart take to read every chunk back, and how that was worked out.
    ``sample``: None reads every chunk in each run (the cycle is the gap); ``"T"`` reads today's 1/T (the share
    rotates by calendar day), so runs ``g`` whole days apart see every share only when g and T have no common factor,
    in ``T × g`` days; ``"N/T"`` reads a fixed subset and never the rest (None: never)."""
    text = str(sample).strip() if sample not in (None, "") else ""
    if not text or text in ("1", "1/1"):
        return gap_s, f"every {human(gap_s)}"
    if "/" in text:
        n, _, t = text.partition("/")
        if n.strip() == t.strip():
            return gap_s, f"every {human(gap_s)}"
        return None, f"never whole: sample {text} reads the same {text} of the chunks every time"
    try:
        t = int(text)
    except ValueError:
        return None, f"never: sample {text!r} is not N/T or T"
    days = max(1, math.ceil(gap_s / 86400 - 1e-9))
    if math.gcd(days, t) != 1:
        return None, (f"never whole: runs every {days} d with sample {t} (today's 1/{t}) keep meeting the same "
                      f"shares (gcd {math.gcd(days, t)})")
    return float(t * days * 86400), f"every {days} d x sample {t} (today's 1/{t})"


def not_enabled(cfg: Config, flow: str) -> str:
    """Why the config does not enable deployments of ``flow`` (empty: it does): protect-checkpoints needs a
    ``checkpoints:`` section (its runs fail without one); monitor-endpoints needs a serving endpoint in some region
    of the bundle (of some bundle, for the whole of a project with ``bundles:``), as ``llmdr stack up`` assumes."""
    where = cfg.source_file.name if cfg.source_file else "llmdr.yaml"
    if flow == "protect-checkpoints" and cfg.checkpoints is None:
        return (f"{where} has no checkpoints: section, so its runs would fail; `prefect deploy` creates it again "
                "from prefect.yaml, configure.py removes it again")
    if flow == "monitor-endpoints":
        views = cfg.views() if cfg.multi_bundle else [cfg]
        if not any(r.serving is not None for v in views for r in v.regions):
            who = f"bundle {cfg.bundle.name}" if not cfg.multi_bundle else "any bundle"
            return f"{where} gives {who} no serving endpoint to watch in any region"
    return ""


def flow_of_entrypoint(entrypoint: str) -> str:
    """prefect.yaml's ``flows/dr_drill.py:dr_drill`` → the flow's name, ``dr-drill``."""
    return entrypoint.rpartition(":")[2].replace("_", "-")


def is_derived(s: Any) -> bool:
    """A deployment schedule configure.py owns (slug ``llmdr-derived``)."""
    return getattr(s, "slug", None) == DERIVED_SLUG


@dataclass
class SchedulePlan:
    """What configure.py does with one deployment's schedules, decided before anything is written."""

    deployment: str
    flow: str
    derived: Derived | None = None  # the schedule derived for it, when it has one
    active: bool = True  # the derived schedule runs (no explicit schedule overrides it)
    explicit: str = ""  # the explicit schedules, as they read
    refused: str = ""
    warning: str = ""
    verify_ok: bool | None = None  # verify-replicas: its explicit schedule reads every chunk back in time

    def line(self) -> str:
        if self.derived is not None and self.active:
            return f"schedule every {self.derived.every} (derived: {self.derived.why})"
        if self.explicit:
            checked = self.flow in (*DERIVED_FLOWS, "verify-replicas")
            return f"schedule {self.explicit} (explicit{', meets the objectives' if checked else ''})"
        return "no schedule"


def plan_schedules(cfg: Config, flow_name: str, name: str, schedules: list[Any], parameters: dict[str, Any] | None,
                   copy_s: float | None, gap: Callable[[list[Any]], tuple[float, str]]) -> SchedulePlan:
    """Decide one deployment's schedules. ``schedules``: its deployment schedules (objects with ``schedule``,
    ``active`` and ``slug``, from the API or prefect.yaml); ``gap``: the longest time between two runs of a list
    of schedules and how they read (configure.py unrolls them with Prefect's scheduler). A derived one, or none at
    all on a protect deployment, gets ``derive``'s schedule; any other active schedule is explicit: it wins, once
    ``check_explicit`` passes it."""
    explicit = [s.schedule for s in schedules if s.active and not is_derived(s)]
    managed = any(is_derived(s) for s in schedules) or (flow_name in PROTECT_FLOWS and not explicit)
    plan = SchedulePlan(name, flow_name)
    if managed:
        plan.derived = derive(cfg, flow_name, copy_s)
        plan.warning = plan.derived.warning if plan.derived else ""
    if explicit:
        plan.active = False
        gap_s, plan.explicit = gap(explicit)
        v = check_explicit(cfg, flow_name, name, gap_s, plan.explicit, copy_s=copy_s,
                           sample=(parameters or {}).get("sample"))
        if flow_name == "verify-replicas":
            plan.verify_ok, plan.warning = not v.refused, v.message
        elif v.refused:
            plan.refused = v.message
        else:
            plan.warning = v.message
    return plan


def refusals(plans: list[SchedulePlan]) -> list[str]:
    """Every reason to refuse: an explicit protect or drill schedule that cannot meet the objectives, and
    verify-replicas schedules none of which reads every chunk back in time."""
    out = [p.refused for p in plans if p.refused]
    verify = [p for p in plans if p.verify_ok is not None]
    if verify and not any(p.verify_ok for p in verify):
        out += [p.warning for p in verify]
    return out


def refuse(reasons: list[str], where: str) -> None:
    """Raise ``ConfigError`` (exit 2) listing every reason, when there is one."""
    if reasons:
        raise ConfigError(f"refused: {len(reasons)} schedule(s) in {where} cannot meet the objectives of "
                          "llmdr.yaml; nothing was changed:\n  - " + "\n  - ".join(reasons))


def run_lag_s(run: Any) -> float:
    """How long after its scheduled time a run finished, seconds: the wait for a worker (its poll, the process
    start, a concurrency slot) plus the run itself, all of which the DR copy ages by; its run time when it has no
    end or expected start."""
    if run.end_time is not None and run.expected_start_time is not None:
        return max(0.0, (run.end_time - run.expected_start_time).total_seconds())
    return run.total_run_time.total_seconds() if run.total_run_time else 0.0


def same_schedule(a: Any, b: Any) -> bool:
    """Two Prefect schedules (interval, cron or rrule) that make the same runs."""
    keys = ("interval", "anchor_date", "cron", "rrule", "timezone")
    return type(a).__name__ == type(b).__name__ and all(
        getattr(a, k, None) == getattr(b, k, None) for k in keys if k != "timezone" or hasattr(a, "cron"))


def check_deployments(cfg: Config, deployments: list[tuple[str, str, list[Any], dict[str, Any]]],
                      gap: Callable[[list[Any]], tuple[float, str]], where: str) -> list[str]:
    """Check the schedules of ``deployments`` (name, flow, schedules, parameters: prefect.yaml's, before `prefect
    deploy`) against the config, each bundle's objectives for ``bundles:`` (its copy named ``<name>-<bundle>``);
    raises ``ConfigError`` with the arithmetic when one cannot meet them. One line per deployment (and bundle)."""
    out, plans = [], []
    views = cfg.views() if cfg.multi_bundle else [cfg]
    for name, flow_name, scheds, params in deployments:
        for view in views:
            label = f"{name}-{view.bundle.name}" if cfg.multi_bundle else name
            why = not_enabled(view, flow_name)
            if why:
                out.append(f"{label}: not deployed for this config ({why})")
                continue
            plan = plan_schedules(view, flow_name, label, scheds, params, None, gap)
            plans.append(plan)
            out.append(f"{label}: {plan.line()}" + (f"; WARNING: {plan.warning}" if plan.warning else ""))
    refuse(refusals(plans), where)
    return out


def drill_schedule(cfg: Config) -> str:
    """The scheduled drill's cadence in words, for the runbook: ``every 76d at 06:00 UTC (objectives.drill_interval
    90d - 13d12h margin)``."""
    d = derive(cfg, "dr-drill")
    at = f" at {d.anchor_hour:02d}:00 UTC" if d.anchor_hour is not None else ""
    margin = human(drill_margin(cfg))
    return f"every {d.every}{at} (objectives.drill_interval {human(cfg.objectives.drill_interval.total_seconds())} - " \
        f"{margin} margin; unless prefect.yaml sets its own)"


def plan_lines(cfg: Config) -> list[str]:
    """The derived schedules of this config, one line each (for `llmdr plan`-like summaries and the docs)."""
    out = []
    for flow in DERIVED_FLOWS:
        d = derive(cfg, flow)
        if d is None:
            out.append(f"{flow}: not deployed ({not_enabled(cfg, flow)})")
        else:
            out.append(f"{flow}: every {d.every}: {d.why}")
    out.append(f"verify-replicas: every chunk read back within {human(verify_cycle_limit(cfg))} "
               "(min(7 d, objectives.drill_interval / 2); prefect.yaml's daily 1/7 and weekly full runs are checked)")
    return out
