"""Readiness check ``automation``: would an outage of the primary be failed over automatically, by something that
does not die with the primary region?

It reads the Prefect API the flows use ($PREFECT_API_URL or the Prefect profile's, else the local stack's server when
it runs): the failover
automation for this bundle (a trigger on ``llmdr.endpoint.down`` that matches the bundle's primary endpoint), the
deployment it runs, that deployment's work pool and queue, and when a worker (or the warm failover runner) last
polled that queue. FAIL when the automation is missing or disabled (with ``failover.auto: true``), when it runs a
deployment that is gone, serves another bundle or sits on the primary region's pool, and when nothing has polled
its queue lately (a failover run would wait there until someone starts a worker). ``judge`` is pure; ``check_automation``
does the reading.
"""

from __future__ import annotations

import fnmatch
import os
from typing import Any

from llmdr.config import Config
from llmdr.config.pools import region_pool
from llmdr.drill.readiness.report import FAIL, PASS, WARN, Check, ago

CID, TITLE = "automation", "Automatic failover path outside the primary"
DOWN_EVENT = "llmdr.endpoint.down"


def prefect_api(cfg: Config) -> tuple[str | None, str]:
    """The Prefect API URL the flows use and where it came from; (None, why) when there is none."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"], "$PREFECT_API_URL"
    from llmdr.devstack import orchestration
    from llmdr.integrations.prefect import configured_api_url

    url = configured_api_url()  # the Prefect profile's, or the run's inside a flow
    if url:
        return url, "the Prefect profile's PREFECT_API_URL"

    if orchestration.running(cfg):
        return orchestration.status(cfg).url + "/api", "the local stack's Prefect server"
    return None, "no PREFECT_API_URL is set (environment or Prefect profile) and the local stack's Prefect server is not running"


def _values(v: Any) -> list[str]:
    return [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)]


def watches(automation: dict[str, Any], bundle: str, region: str) -> bool:
    """Does this automation's trigger fire on BUNDLE's endpoint in REGION going down?"""
    if DOWN_EVENT not in automation.get("expect", []):
        return False
    match = automation.get("match") or {}
    resource = f"llmdr.endpoint.{bundle}.{region}"
    labels = {"prefect.resource.id": resource, "llmdr.bundle": bundle, "llmdr.region": region}
    for label, want in match.items():
        if label in labels and not any(fnmatch.fnmatchcase(labels[label], p) for p in _values(want)):
            return False
    return True


def judge(cfg: Config, automations: list[dict[str, Any]], now: float, api: str) -> Check:
    """The verdict from what ``integrations.prefect.failover_paths`` read (pure)."""
    bundle, primary = cfg.bundle.name, cfg.primary.name
    auto = cfg.failover.auto
    ours = [a for a in automations if watches(a, bundle, primary)
            and any(d.get("flow") == "failover" or d.get("missing") for d in a["deployments"])]
    data: dict[str, Any] = {"api": api, "automations": ours, "failover_auto": auto}
    if not auto:
        return Check(CID, TITLE, PASS, "failover.auto is false: an outage is failed over by a person (`llmdr "
                     f"failover --to {cfg.failover_target().name}` or the failover deployment)", data=data)
    if not ours:
        return Check(CID, TITLE, FAIL, f"no automation on {api} runs a failover when {bundle}'s endpoint in {primary} "
                     "goes down", "create it: `python deployments/automations.py` (after `prefect deploy --all` and "
                     "deployments/configure.py), or `llmdr stack up --ui` locally", data)
    enabled = [a for a in ours if a["enabled"]]
    if not enabled:
        return Check(CID, TITLE, FAIL, f"the failover automation {ours[0]['name']} is disabled although "
                     "failover.auto is true", "enable it in the Prefect UI (Automations) or run "
                     "`python deployments/automations.py` again", data)
    problems, good = [], []
    primary_pool = region_pool(primary)
    for a in enabled:
        for d in a["deployments"]:
            where = f"{a['name']} → {d.get('flow', '?')}/{d.get('name', d['id'])}"
            if d.get("missing"):
                problems.append(f"{where}: the deployment no longer exists")
            elif cfg.multi_bundle and d.get("bundle") not in (bundle,):
                problems.append(f"{where}: runs the failover of {d.get('bundle') or 'no bundle'}, not of {bundle}")
            elif d["pool"] == primary_pool:
                problems.append(f"{where}: on {primary_pool}, the primary region's pool, whose workers are lost with "
                                "the region")
            elif d.get("queue_paused") or d.get("queue_status") != "READY":
                polled = (f"last polled {ago(now - d['last_polled'])} ago" if d.get("last_polled")
                          else "never polled")
                problems.append(f"{where}: nothing serves {d['pool']}/{d['queue']} ({d.get('queue_status')}, "
                                f"{polled}{', paused' if d.get('queue_paused') else ''})")
            else:
                good.append(f"{where} on {d['pool']}/{d['queue']}, polled {ago(now - d['last_polled'])} ago"
                            + (" (deployment paused)" if d.get("paused") else ""))
    if good and not problems:
        status = WARN if any("(deployment paused)" in g for g in good) else PASS
        return Check(CID, TITLE, status, "; ".join(good), "resume the deployment" if status == WARN else "", data)
    if good:  # one path works: the others are worth a look, not a failed check
        return Check(CID, TITLE, WARN, "; ".join(good) + "; but " + "; ".join(problems),
                     "remove or fix the broken automation", data)
    dr = region_pool(cfg.failover_target().name)
    return Check(CID, TITLE, FAIL, "; ".join(problems),
                 f"start the warm runner (`python deployments/warm_runner.py --pool {dr} --queue failover`) or a "
                 f"worker (`prefect worker start --pool {dr} --work-queue failover`) in the DR region (the local stack: "
                 "`llmdr stack up --ui` starts what is missing), and run deployments/configure.py so the failover "
                 "deployment is on that pool", data)


def check_automation(cfg: Config, now: float) -> Check:
    api, where = prefect_api(cfg)
    if api is None:
        if not cfg.failover.auto:
            return Check(CID, TITLE, PASS, "failover.auto is false: an outage is failed over by a person")
        return Check(CID, TITLE, WARN, f"not checked: {where}; automatic failover needs the Prefect server, its "
                     "automation and a worker in the DR region", "set PREFECT_API_URL to the server the flows use "
                     "(or run the check from a flow), then run readiness again")
    from llmdr.integrations.prefect import failover_paths

    try:
        automations = failover_paths(api, timeout=10.0)
    except Exception as exc:  # noqa: BLE001 - any failure to read the API is the finding
        return Check(CID, TITLE, FAIL, f"the Prefect API at {api} ({where}) did not answer: "
                     f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}",
                     "start the Prefect server or fix PREFECT_API_URL: without it nothing fails over automatically")
    return judge(cfg, automations, now, api)
