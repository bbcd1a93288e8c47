"""Create the automations of deployments/automations.yaml on the Prefect API in $PREFECT_API_URL.

Idempotent: an automation with the same name is replaced. A run-deployment action's ``deployment:`` name is
resolved to that server's deployment id. ``failover.auto: false`` in $LLMDR_CONFIG creates the failover
automation disabled (visible in the UI, enabled there or by setting auto: true and running this again);
``failover.prewarm_on_degraded: false`` does the same to the two pre-warm automations (on ``llmdr.endpoint.degraded``
of the active region, and on ``llmdr.hardware.degraded`` of one of its GPUs, they run ``prewarm-standby``, which
starts the DR standby so a failover that may follow is warm).

A project with several bundles (``bundles:``) gets one failover automation per bundle instead
(``llmdr-failover-when-active-region-down-<bundle>``): it matches only that bundle's endpoint events (the monitor's
resource carries ``llmdr.bundle``) and runs that bundle's copy of the failover deployment (``failover/failover-<b>``,
made by deployments/configure.py, which must therefore run first); the pre-warm automation likewise. Per-bundle
automations of bundles no longer configured, and the single one of a project that now has several bundles (or the
reverse), are deleted.
"""

from __future__ import annotations

import asyncio
import copy
import os
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
FAILOVER = "llmdr-failover-when-active-region-down"  # llmdr.drill.runbook.AUTOMATION
PREWARM = "llmdr-prewarm-standby-when-active-region-degraded"
PREWARM_GPU = "llmdr-prewarm-standby-when-active-region-gpu-degraded"  # the same run on llmdr.hardware.degraded
PER_BUNDLE = (FAILOVER, PREWARM, PREWARM_GPU)  # made once per bundle, each enabled by its own setting


def _is_per_bundle(name: str) -> bool:
    return any(name == base or name.startswith(base + "-") for base in PER_BUNDLE)


def _base(name: str) -> str:
    return next(base for base in PER_BUNDLE if name == base or name.startswith(base + "-"))


def automation_specs(spec: dict[str, Any], bundles: dict[str, bool] | None, auto: bool = True,
                     prewarm: bool | dict[str, bool] = True) -> list[dict[str, Any]]:
    """The automations to create (pure: no API): SPEC's, with the failover one disabled unless ``auto`` and the
    pre-warm one unless ``prewarm``; with ``bundles`` (bundle name → its ``failover.auto``; ``prewarm`` then maps
    bundle name → its ``failover.prewarm_on_degraded``, a missing bundle: on) both once per bundle, scoped to its
    endpoint events and its own deployment."""
    out = []
    for raw in spec.get("automations", []):
        if not _is_per_bundle(raw["name"]):
            out.append(copy.deepcopy(raw))
            continue
        is_prewarm = raw["name"] in (PREWARM, PREWARM_GPU)
        if bundles is None:
            one = copy.deepcopy(raw)
            on = (bool(prewarm) if not isinstance(prewarm, dict) else True) if is_prewarm else auto
            one["enabled"] = bool(one.get("enabled", True)) and on
            out.append(one)
            continue
        for b, b_auto in bundles.items():
            on = (prewarm.get(b, True) if isinstance(prewarm, dict) else bool(prewarm)) if is_prewarm else b_auto
            one = copy.deepcopy(raw)
            one["name"] = f"{raw['name']}-{b}"
            one["description"] = f"[bundle {b}] " + (raw.get("description") or "")
            one["enabled"] = bool(raw.get("enabled", True)) and on
            match = one["trigger"].setdefault("match", {})
            kind = str(match.get("prefect.resource.id", "llmdr.endpoint.*")).split(".")[1]  # endpoint | hardware
            match["prefect.resource.id"] = f"llmdr.{kind}.{b}.*"
            match["llmdr.bundle"] = b
            for action in one.get("actions", []):
                if action.get("type") == "run-deployment" and action.get("deployment"):
                    action["deployment"] = f"{action['deployment']}-{b}"
                    action.setdefault("parameters", {})["bundle"] = b
            out.append(one)
    return out


def stale_failover_automations(existing: list[str], wanted: list[str]) -> list[str]:
    """Failover and pre-warm automations on the server that SPECS no longer make: a removed bundle's, the single
    one of a project that now has ``bundles:``, or the per-bundle ones of a project back to one bundle."""
    return sorted(n for n in existing if _is_per_bundle(n) and n not in wanted)


async def _apply(specs: list[dict[str, Any]]) -> list[str]:
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    made = []
    async with get_client() as client:
        existing = {a.name: a for a in await client.read_automations()}
        # every deployment resolved before anything is replaced: a missing one changes nothing
        ready, missing = [], []
        for raw in specs:
            raw = dict(raw)
            actions = []
            for action in raw.pop("actions", []):
                action = dict(action)
                name = action.pop("deployment", None)
                if name:
                    try:
                        action["deployment_id"] = str((await client.read_deployment_by_name(name)).id)
                    except ObjectNotFound:
                        missing.append(f"{raw['name']} runs {name}")
                actions.append(action)
            ready.append(Automation.model_validate(raw | {"actions": actions}) if not missing else None)
        if missing:
            raise SystemExit(f"deployments/automations.py: this Prefect server lacks deployments the automations run "
                             f"({'; '.join(missing)}); nothing was changed: deploy first (`prefect deploy --all`), "
                             "then `python deployments/configure.py` (it makes each bundle's copy), then this")
        for auto_obj in ready:
            if auto_obj.name in existing:
                await client.delete_automation(existing[auto_obj.name].id)
            await auto_obj.acreate()
            made.append(f"{auto_obj.name} ({'enabled' if auto_obj.enabled else 'disabled'})")
        per_bundle = any(s["name"].startswith(FAILOVER + "-") for s in specs)
        for name in stale_failover_automations(list(existing), [s["name"] for s in specs]):
            await client.delete_automation(existing[name].id)
            why = ("its bundle is no longer in llmdr.yaml" if name != _base(name) and per_bundle else
                   "llmdr.yaml now has several bundles, each its own" if per_bundle else
                   "llmdr.yaml now has one bundle")
            made.append(f"{name} deleted ({why})")
    return made


def main() -> int:
    auto, bundles, prewarm = True, None, True
    cfg_path = os.environ.get("LLMDR_CONFIG")
    if cfg_path and Path(cfg_path).exists():
        from llmdr.config import load_config

        cfg = load_config(cfg_path, whole=True)
        if cfg.multi_bundle:
            bundles = {v.bundle.name: v.failover.auto for v in cfg.views()}
            prewarm = {v.bundle.name: v.failover.prewarm_on_degraded for v in cfg.views()}
        else:
            auto, prewarm = cfg.failover.auto, cfg.failover.prewarm_on_degraded
    specs = automation_specs(yaml.safe_load((HERE / "automations.yaml").read_text()), bundles, auto, prewarm)
    for line in asyncio.run(_apply(specs)):
        print(f"automation {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
