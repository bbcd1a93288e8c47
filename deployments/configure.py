"""Fit llmdr's deployments on the Prefect API in $PREFECT_API_URL to the project's llmdr.yaml ($LLMDR_CONFIG).

Run after `prefect deploy --all` (deployments/deploy.sh and `llmdr stack up --ui` do): a deploy builds the
Custom-run form from the flows' signatures, before any llmdr.yaml is read, so what depends on the project is added
here, on every deployment tagged ``llmdr``:

- tags ``bundle:<bundle name>`` and ``region:<name>`` for each region the deployment acts on by default
  (failover: its target; failback: the primary; restore-bundle: the region it reads from; the others: every
  region), beside prefect.yaml's ``llmdr`` and ``kind:...``;
- the configured region names as the choices of the region fields (restore-bundle's ``region``, failover's
  ``to``), so the form offers a list instead of a free text box;
- restore-bundle's default ``region`` set to the failover target when prefect.yaml's default names no configured
  region;
- the work pool: one process pool per region, ``llmdr-<region>``, created here if missing, and each deployment
  bound to the pool of the region it acts in (the rule is ``llmdr.config.pools.pool_region``; failover and the
  monitor on the DR pool's ``failover`` queue, served by the warm runner);
- pools named ``llmdr-...`` that no configured region has (a region renamed or removed, or the old single-pool
  ``llmdr-process``/``llmdr-failover``) are reported with their deployments, online workers and waiting runs;
  ``--prune`` deletes those nothing uses any more;
- the schedules: each placeholder schedule (slug ``llmdr-derived``) replaced by the one derived from the objectives
  (``llmdr.config.schedules``: protect every min(RPO/2, RPO - measured copy time), the drill every drill_interval -
  margin), every explicit schedule checked against them; when one cannot meet them the whole run is refused (exit 2,
  the arithmetic on stderr) before anything is written. ``--check`` / ``--pools`` check prefect.yaml the same way
  before `prefect deploy`;
- only the deployments the config enables: protect-checkpoints without ``checkpoints:`` and monitor-endpoints
  without a serving endpoint (per bundle) are deleted, with a line saying why.

Idempotent: tags it added before are replaced, so running it again (or after a config change) is safe.

    python deployments/configure.py             # after `prefect deploy --all`
    eval "$(python deployments/configure.py --pools)"   # before it: check the schedules, create the pools, export
    python deployments/configure.py --check     # only check prefect.yaml's schedules (no API)
"""

from __future__ import annotations

import copy
import os
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from llmdr.config import Config, load_config
from llmdr.config.pools import (
    FAILOVER_QUEUE,
    deploy_env,
    pool_queue,
    pool_region,
    region_pool,
    region_pools,
    stale_pools,
)
from llmdr.config.schedules import (
    DERIVED_SLUG,
    PROTECT_FLOWS,
    Derived,
    SchedulePlan,
    check_deployments,
    flow_of_entrypoint,
    human,
    is_derived,
    not_enabled,
    plan_schedules,
    refusals,
    refuse,
    run_lag_s,
    same_schedule,
)
from llmdr.errors import ConfigError, LlmdrError
from llmdr.integrations.prefect import retry_api

MANAGED_TAG_PREFIXES = ("bundle:", "region:")
REGION_FIELDS = {"restore-bundle": "region", "failover": "to"}  # flow name → its region parameter


def region_tags(cfg: Config, flow_name: str, parameters: dict[str, Any]) -> list[str]:
    """The regions a deployment of ``flow_name`` acts on with its default parameters, as ``region:`` tags."""
    names = [r.name for r in cfg.regions]
    if flow_name == "failover":
        names = [parameters.get("to") or cfg.failover_target().name]
    elif flow_name == "failback":
        names = [cfg.primary.name]
    elif flow_name == "restore-bundle":
        names = [parameters.get("region") or cfg.failover_target().name]
    return [f"region:{n}" for n in names]


def fitted(cfg: Config, flow_name: str, tags: list[str], parameters: dict[str, Any],
           schema: dict[str, Any]) -> dict[str, Any]:
    """The new ``tags``, ``parameters`` and ``parameter_openapi_schema`` of one deployment (pure: no API)."""
    names = [r.name for r in cfg.regions]
    parameters = dict(parameters)
    schema = copy.deepcopy(schema)
    field = REGION_FIELDS.get(flow_name)
    if flow_name == "restore-bundle" and parameters.get("region") not in names:
        parameters["region"] = cfg.failover_target().name
    if field and field in schema.get("properties", {}):
        prop = schema["properties"][field]
        prop["enum"] = ([""] if flow_name == "failover" else []) + names  # failover: "" = failover.target
        if field in parameters:
            prop["default"] = parameters[field]
        elif prop.get("default") not in prop["enum"]:
            prop.pop("default", None)
    kept = [t for t in tags if not t.startswith(MANAGED_TAG_PREFIXES)]
    new_tags = [*kept, f"bundle:{cfg.bundle.name}", *region_tags(cfg, flow_name, parameters)]
    return {"tags": new_tags, "parameters": parameters, "parameter_openapi_schema": schema}


def ensure_pools(cfg: Config) -> list[str]:
    """Create each region's process work pool and its ``failover`` queue where missing; one line per pool."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    out = []
    with get_client(sync_client=True) as client:
        for region, pool in region_pools(cfg).items():
            try:
                retry_api(client.read_work_pool, pool)
                made = False
            except ObjectNotFound:
                try:
                    retry_api(client.create_work_pool, WorkPoolCreate(
                        name=pool, type="process", description=f"llmdr: flows that act in region {region}",
                        base_job_template=ProcessWorker.get_default_base_job_template()))
                    made = True
                except ObjectAlreadyExists:  # created at the same moment by another configure
                    made = False
            queues = {q.name for q in retry_api(client.read_work_queues, work_pool_name=pool)}
            if FAILOVER_QUEUE not in queues:
                try:
                    retry_api(client.create_work_queue, FAILOVER_QUEUE, work_pool_name=pool, priority=1,
                              description="failover and the monitor: served by deployments/warm_runner.py first")
                except ObjectAlreadyExists:
                    pass
            out.append(f"{pool} (region {region}): {'created' if made else 'exists'}")
    return out


def apply(cfg: Config, *, pools_ready: bool = False) -> list[str]:
    """Update every deployment tagged ``llmdr`` (tags, form, work pool); one line per deployment for the log. The
    region pools are created first unless ``pools_ready`` (a deployment cannot be bound to a missing pool). A project
    with ``bundles:`` gets one copy of each per bundle instead (``apply_bundles``)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags

    if not pools_ready:
        ensure_pools(cfg)
    out = []
    with get_client(sync_client=True) as client:
        deps = retry_api(client.read_deployments,
                         deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=["llmdr"])))
        flows = {d.flow_id: retry_api(client.read_flow, d.flow_id).name for d in deps}
        if cfg.multi_bundle:
            return apply_bundles(client, cfg, deps, flows)
        copies = [d for d in deps if is_bundle_copy(d.name, d.parameters)]  # left from a project with bundles:
        deps = [d for d in deps if not is_bundle_copy(d.name, d.parameters)]
        off = [d for d in deps if not_enabled(cfg, flows[d.flow_id])]
        deps = [d for d in deps if not not_enabled(cfg, flows[d.flow_id])]
        # every schedule is decided (and refused) before anything is written
        plans = {d.id: plan_schedules(cfg, flows[d.flow_id], d.name, list(d.schedules or []), d.parameters,
                                      measured_copy_s(client, d.id) if flows[d.flow_id] in PROTECT_FLOWS else None,
                                      schedule_gap)
                 for d in deps}
        refuse(refusals(list(plans.values())), "the deployments on the Prefect API")
        for d in copies:
            retry_api(client.delete_deployment, d.id)
            out.append(f"{flows[d.flow_id]}/{d.name}: deleted (a copy for bundles: that {cfg.source_file} no longer "
                       "has)")
        for d in off:
            retry_api(client.delete_deployment, d.id)
            out.append(f"{flows[d.flow_id]}/{d.name}: deleted ({not_enabled(cfg, flows[d.flow_id])})")
        for d in deps:
            flow_name = flows[d.flow_id]
            new = fitted(cfg, flow_name, list(d.tags), dict(d.parameters or {}),
                         dict(d.parameter_openapi_schema or {}))
            pool = region_pool(pool_region(cfg, flow_name, new["parameters"]))
            queue = pool_queue(flow_name)
            moved = (d.work_pool_name, d.work_queue_name) != (pool, queue)
            # a change of pool also drops the deployment's future scheduled runs; the scheduler makes new ones
            retry_api(client.update_deployment, d.id,
                      DeploymentUpdate(**new, **({"work_pool_name": pool, "work_queue_name": queue} if moved else {})))
            sched = write_schedules(client, d, plans[d.id])
            was = f" (was {d.work_pool_name}/{d.work_queue_name})" if moved else ""
            paused = "; PAUSED (by a project with bundles:? `prefect deployment resume` it)" if d.paused else ""
            out.append(f"{flow_name}/{d.name}: pool {pool}/{queue}{was}; tags {', '.join(new['tags'])}; {sched}"
                       f"{paused}")
            if plans[d.id].warning:
                out.append(f"WARNING: {plans[d.id].warning}")
    return out


def stale(cfg: Config, prune: bool = False) -> list[str]:
    """Say which ``llmdr-...`` pools no configured region has, what still uses them, and (``prune``) delete those
    no deployment is bound to. One warning line per pool."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.objects import StateType, WorkerStatus

    out = []
    with get_client(sync_client=True) as client:
        names = [p.name for p in retry_api(client.read_work_pools)]
        for pool in stale_pools(cfg, names):
            only = WorkPoolFilter(name=WorkPoolFilterName(any_=[pool]))
            deps = retry_api(client.read_deployments, work_pool_filter=only)
            workers = [w.name for w in retry_api(client.read_workers_for_work_pool, pool)
                       if w.status == WorkerStatus.ONLINE]
            waiting = retry_api(client.read_flow_runs, work_pool_filter=only, flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING]))))
            what = (f"work pool {pool} belongs to no region in llmdr.yaml (regions: {', '.join(region_pools(cfg))}; "
                    f"renamed or removed?): {len(deps)} deployment(s), {len(workers)} online worker(s), "
                    f"{len(waiting)} waiting run(s)")
            if deps:
                what += f" [{', '.join(sorted(d.name for d in deps))}: not llmdr's, or not configured]"
            if waiting:
                what += "; its waiting runs will not move: cancel them, or start them again on the new pool"
            if prune and not (deps or workers or waiting):
                retry_api(client.delete_work_pool, pool)
                what += "; deleted"
            else:
                if workers:
                    what += "; stop its workers (start them on the new region's pool)"
                what += ("; not deleted: something still uses it" if prune else
                         f"; once unused, delete it: `prefect work-pool delete {pool}` or configure.py --prune")
            out.append(what)
    return out


# Schedules (llmdr.config.schedules: derived from the objectives; explicit ones checked) ---------------------------
SCHEDULE_HORIZON = timedelta(days=800)  # how far a cron/rrule is unrolled to find its longest gap (covers quarters)
SCHEDULE_SAMPLES = 5000  # at most this many runs per schedule (a frequent cron: its gaps within that window)
ANCHOR = datetime(2026, 1, 1, tzinfo=timezone.utc)  # derived schedules are anchored here: re-running changes nothing


def schedule_gap(schedules: list[Any]) -> tuple[float, str]:
    """The longest time between two runs of these (active) Prefect schedules together, in seconds, found by
    unrolling them with Prefect's own scheduler code, and how they read (``every 300 s``, ``cron '...' (UTC)``).
    One interval schedule: its interval. Nothing within the horizon: the horizon."""
    import asyncio

    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
    from prefect.server.schemas import schedules as server

    texts = []
    for s in schedules:
        if isinstance(s, IntervalSchedule):
            texts.append(f"every {human(s.interval.total_seconds())}")
        elif isinstance(s, CronSchedule):
            texts.append(f"cron '{s.cron}' ({s.timezone or 'UTC'})")
        else:
            texts.append(f"rrule '{getattr(s, 'rrule', s)}'")
    what = " + ".join(texts)
    if len(schedules) == 1 and isinstance(schedules[0], IntervalSchedule):
        return schedules[0].interval.total_seconds(), what
    start = datetime.now(timezone.utc)
    end = start + SCHEDULE_HORIZON
    dates: list[datetime] = []
    for s in schedules:
        kind = {"IntervalSchedule": server.IntervalSchedule, "CronSchedule": server.CronSchedule}.get(
            type(s).__name__, server.RRuleSchedule)
        got = asyncio.run(kind(**s.model_dump(exclude_none=True)).get_dates(n=SCHEDULE_SAMPLES, start=start, end=end))
        if got:  # Prefect caps how many dates it unrolls: beyond a schedule's last one, the union is not known
            end = min(end, got[-1])
        dates += got
    times = sorted({d.timestamp() for d in dates if d <= end} | {start.timestamp()})
    if len(times) < 2:
        return SCHEDULE_HORIZON.total_seconds(), what
    return max(b - a for a, b in zip(times, times[1:], strict=False)), what


def measured_copy_s(client: Any, deployment_id: Any) -> float | None:
    """The copy time of a protect deployment: the longest ``run_lag_s`` of its last 10 completed runs (from the
    scheduled time to the verified DR copy, plus retention), seconds, as the Prefect server timed them; None before
    it has run."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    runs = retry_api(client.read_flow_runs, deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                     flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                         any_=[StateType.COMPLETED]))), sort=FlowRunSort.END_TIME_DESC, limit=10)
    lags = [run_lag_s(r) for r in runs]
    return max(lags) if any(lags) else None


def derived_schedule(d: Derived) -> Any:
    """The Prefect interval schedule of a derived one (anchored at a fixed time: the same config gives the same
    schedule, so a re-run keeps the runs already scheduled)."""
    from prefect.client.schemas.schedules import IntervalSchedule

    anchor = ANCHOR.replace(hour=d.anchor_hour) if d.anchor_hour is not None else ANCHOR
    return IntervalSchedule(interval=timedelta(seconds=d.interval_s), anchor_date=anchor, timezone="UTC")


def write_schedules(client: Any, d: Any, plan: SchedulePlan) -> str:
    """Apply ``plan`` to deployment ``d``: its derived schedule updated in place (or created), extra derived ones
    deleted; explicit ones are left as they are. Returns what was done, for the log."""
    from prefect.client.schemas.actions import DeploymentScheduleCreate

    if plan.derived is None:
        return plan.line()
    want = derived_schedule(plan.derived)
    mine = [s for s in d.schedules or [] if is_derived(s)]
    if mine and same_schedule(mine[0].schedule, want) and mine[0].active == plan.active:
        state = "kept"
    elif mine:
        retry_api(client.update_deployment_schedule, d.id, mine[0].id, schedule=want, active=plan.active)
        state = "updated"
    else:
        retry_api(client.create_deployment_schedules, d.id,
                  [DeploymentScheduleCreate(schedule=want, active=plan.active, slug=DERIVED_SLUG)])
        state = "created"
    for extra in mine[1:]:
        retry_api(client.delete_deployment_schedule, d.id, extra.id)
    return plan.line() + ("" if plan.active else f"; derived every {plan.derived.every} kept inactive") + \
        f" [{state}]"


def yaml_schedules(path: Path) -> list[tuple[str, str, list[Any], dict[str, Any]]]:
    """prefect.yaml's deployments as (name, flow name, schedules, parameters), each schedule read by `prefect
    deploy`'s own code into what it would create (``schedule``, ``active``, ``slug``), to check before it does."""
    from types import SimpleNamespace

    import yaml
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule as read_schedule

    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot be read as YAML: {e}") from None
    out = []
    for dep in doc.get("deployments") or []:
        scheds = []
        for i, raw in enumerate(dep.get("schedules") or []):
            try:
                s = read_schedule(dict(raw))
            except (ValueError, TypeError, AttributeError) as e:
                raise ConfigError(f"{path.name}: deployment {dep.get('name')} schedule {i + 1}: {e}") from None
            scheds.append(SimpleNamespace(schedule=s["schedule"], active=s.get("active", True) is not False,
                                          slug=s.get("slug")))
        out.append((dep.get("name", "?"), flow_of_entrypoint(dep.get("entrypoint", "")), scheds,
                    dep.get("parameters") or {}))
    return out


def check_prefect_yaml(cfg: Config, path: Path) -> list[str]:
    """Check prefect.yaml's schedules against the config (each bundle's objectives, for ``bundles:``) before they
    are deployed; raises ``ConfigError`` with the arithmetic when one cannot meet them. One line per deployment."""
    return check_deployments(cfg, yaml_schedules(path), schedule_gap, str(path))


# Several bundles (bundles: in llmdr.yaml) ---------------------------------------------------------------------------
def bundle_deployment_name(base: str, bundle: str) -> str:
    """The name of BUNDLE's copy of the deployment BASE (``protect-bundle`` → ``protect-bundle-support-bot``)."""
    return f"{base}-{bundle}"


def is_bundle_copy(name: str, parameters: dict[str, Any] | None) -> bool:
    """A deployment made by ``apply_bundles``: its ``bundle`` parameter set and its name ending ``-<bundle>``."""
    b = (parameters or {}).get("bundle")
    return bool(b) and name.endswith(f"-{b}")


def per_bundle(cfg: Config, flow_name: str, name: str, tags: list[str], parameters: dict[str, Any],
               schema: dict[str, Any]) -> list[dict[str, Any]]:
    """One deployment per bundle of ``cfg`` from the base deployment NAME of prefect.yaml (pure: no API): the
    bundle's name, its ``bundle`` parameter, its view's tags and region choices (``fitted``), and its work pool and
    queue by the same rule as a one-bundle project's deployments (``pool_region`` of the view and the copy's
    parameters: e.g. a bundle's restore-bundle copy that reads from another region lands on that region's pool)."""
    out = []
    for view in cfg.views():
        b = view.bundle.name
        new = fitted(view, flow_name, tags, {**parameters, "bundle": b}, schema)
        prop = new["parameter_openapi_schema"].get("properties", {}).get("bundle")
        if prop is not None:  # the form shows the bundle this deployment is for
            prop["default"] = b
        out.append({"name": bundle_deployment_name(name, b), "bundle": b, **new,
                    "work_pool_name": region_pool(pool_region(view, flow_name, new["parameters"])),
                    "work_queue_name": pool_queue(flow_name)})
    return out


def apply_bundles(client: Any, cfg: Config, deps: list[Any], flows: dict[Any, str]) -> list[str]:
    """Create or update each bundle's copy of every base deployment (one without a ``bundle`` parameter), with the
    base's schedules, concurrency limit and pull steps and its own pool (``per_bundle``); pause the base (a run of it would not know which
    bundle), delete copies of bundles no longer configured, and create the global concurrency limits the flows take
    (``llmdr-protect-<bundle>``: 1 slot, ``llmdr-transfer-<region>``: transfer.region_slots)."""
    from prefect.client.schemas.actions import DeploymentScheduleCreate, DeploymentUpdate

    from llmdr.integrations.prefect import ensure_concurrency_limit, protect_limit_name, transfer_limit_name

    out = []
    names = set(cfg.bundle_names())
    copies = {d.name: d for d in deps if "bundle" in (d.parameters or {})}
    bases = [d for d in deps if "bundle" not in (d.parameters or {})]
    off = [d for d in bases if not_enabled(cfg, flows[d.flow_id])]  # for no bundle at all
    bases = [d for d in bases if not not_enabled(cfg, flows[d.flow_id])]
    planned = []  # (base, its copy's fields, the copy's schedule plan): decided (and refused) before any write
    wanted = set()
    for d in bases:
        flow_name = flows[d.flow_id]
        for new, view in zip(per_bundle(cfg, flow_name, d.name, list(d.tags), dict(d.parameters or {}),
                                        dict(d.parameter_openapi_schema or {})), cfg.views(), strict=True):
            if not_enabled(view, flow_name):  # e.g. the monitor of a bundle with no serving endpoint
                continue
            wanted.add(new["name"])
            mine = copies.get(new["name"])
            copy_s = measured_copy_s(client, mine.id) if mine is not None and flow_name in PROTECT_FLOWS else None
            planned.append((d, new, plan_schedules(view, flow_name, new["name"], list(d.schedules or []),
                                                   d.parameters, copy_s, schedule_gap)))
    refuse(refusals([p for _, _, p in planned]), "the deployments on the Prefect API")
    for d in deps:
        b = (d.parameters or {}).get("bundle")
        if b is not None and b not in names:
            retry_api(client.delete_deployment, d.id)
            out.append(f"{flows[d.flow_id]}/{d.name}: deleted (bundle {b} is no longer in {cfg.source_file})")
        elif b is not None and d.name not in wanted and not_enabled(cfg.for_bundle(b), flows[d.flow_id]):
            retry_api(client.delete_deployment, d.id)
            out.append(f"{flows[d.flow_id]}/{d.name}: deleted ({not_enabled(cfg.for_bundle(b), flows[d.flow_id])})")
    for d in off:
        retry_api(client.delete_deployment, d.id)
        out.append(f"{flows[d.flow_id]}/{d.name}: deleted ({not_enabled(cfg, flows[d.flow_id])})")
    for d, new, plan in planned:
        flow_name = flows[d.flow_id]
        # the base's explicit schedules, and the derived one of this bundle's objectives
        schedules = [DeploymentScheduleCreate(schedule=s.schedule, active=s.active, slug=s.slug)
                     for s in d.schedules or [] if not is_derived(s)]
        if plan.derived is not None:
            schedules.append(DeploymentScheduleCreate(schedule=derived_schedule(plan.derived), active=plan.active,
                                                      slug=DERIVED_SLUG))
        limit = d.global_concurrency_limit.limit if d.global_concurrency_limit else None  # prefect.yaml's
        retry_api(client.create_deployment, d.flow_id, new["name"], schedules=schedules, concurrency_limit=limit,
                  concurrency_options=d.concurrency_options,
                  parameters=new["parameters"], description=d.description,
                  work_queue_name=new["work_queue_name"], work_pool_name=new["work_pool_name"],
                  tags=new["tags"], path=d.path, entrypoint=d.entrypoint,
                  parameter_openapi_schema=new["parameter_openapi_schema"], pull_steps=d.pull_steps,
                  enforce_parameter_schema=d.enforce_parameter_schema, job_variables=d.job_variables)
        out.append(f"{flow_name}/{new['name']}: pool {new['work_pool_name']}/{new['work_queue_name']}; tags "
                   f"{', '.join(new['tags'])}; {plan.line()}")
        if plan.warning:
            out.append(f"WARNING: {plan.warning}")
    for d in bases:
        if not d.paused:
            retry_api(client.update_deployment, d.id, DeploymentUpdate(paused=True))
        out.append(f"{flows[d.flow_id]}/{d.name}: paused (one copy per bundle runs instead)")
    for b in cfg.bundle_names():
        out.append(f"concurrency limit {protect_limit_name(b)}: {ensure_concurrency_limit(protect_limit_name(b), 1)}")
    for r in cfg.regions:
        name = transfer_limit_name(r.name)
        out.append(f"concurrency limit {name}: {ensure_concurrency_limit(name, cfg.transfer.region_slots)}")
    return out


PREFECT_YAML = Path(__file__).resolve().parent.parent / "prefect.yaml"


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pools", action="store_true", help="check prefect.yaml's schedules against the objectives "
                    "(--check), create the region pools and print, as shell exports, the pool variables prefect.yaml "
                    "needs (run before `prefect deploy`)")
    ap.add_argument("--check", nargs="?", const=str(PREFECT_YAML), metavar="PREFECT_YAML", help="only check the "
                    "schedules of prefect.yaml (default: the one beside deployments/) against llmdr.yaml's "
                    "objectives, without the Prefect API; exit 2 with the arithmetic when one cannot meet them")
    ap.add_argument("--prune", action="store_true", help="delete the stale llmdr-... pools no deployment, online "
                    "worker or waiting run uses")
    args = ap.parse_args(argv)
    path = os.environ.get("LLMDR_CONFIG") or "llmdr.yaml"
    if not Path(path).exists():
        print(f"deployments/configure.py: {path} not found: set LLMDR_CONFIG to the project's llmdr.yaml",
              file=sys.stderr)
        return 2
    try:
        cfg = load_config(path, whole=True)
        if args.check is not None or args.pools:
            lines = check_prefect_yaml(cfg, Path(args.check or PREFECT_YAML))
            if args.check is not None:
                for line in lines:
                    print(line)
                return 0
            for line in lines:
                print(f"# schedule {line}")
            for line in ensure_pools(cfg):
                print(f"# work pool {line}")
            for k, v in deploy_env(cfg).items():
                print(f"export {k}={v}")
            return 0
        for line in ensure_pools(cfg):
            print(f"work pool {line}")
        for line in apply(cfg, pools_ready=True):
            print(line if line.startswith("WARNING: ") else f"deployment {line}",
                  file=sys.stderr if line.startswith("WARNING: ") else sys.stdout)
    except LlmdrError as e:
        print(f"deployments/configure.py: {e}", file=sys.stderr)
        return e.exit_code
    warnings = stale(cfg, prune=args.prune)
    for line in warnings:
        print(f"WARNING: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
