"""Create the automations of deployments/automations.yaml on the Prefect API in $PREFECT_API_URL.

Idempotent: an automation with the same name is replaced. A run-deployment action's ``deployment:`` name is
resolved to that server's deployment id. ``failover.auto: false`` in $LLMDR_CONFIG creates the failover
automation disabled (visible in the UI, enabled there or by setting auto: true and running this again).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


async def _apply(path: Path, auto: bool) -> list[str]:
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client

    spec = yaml.safe_load(path.read_text())
    made = []
    async with get_client() as client:
        existing = {a.name: a for a in await client.read_automations()}
        for raw in spec.get("automations", []):
            raw = dict(raw)
            actions = []
            for action in raw.pop("actions", []):
                action = dict(action)
                name = action.pop("deployment", None)
                if name:
                    dep = await client.read_deployment_by_name(name)
                    action["deployment_id"] = str(dep.id)
                actions.append(action)
            if "failover" in raw["name"] and not auto:
                raw["enabled"] = False
            auto_obj = Automation.model_validate(raw | {"actions": actions})
            if raw["name"] in existing:
                await client.delete_automation(existing[raw["name"]].id)
            await auto_obj.acreate()
            made.append(f"{raw['name']} ({'enabled' if auto_obj.enabled else 'disabled'})")
    return made


def main() -> int:
    auto = True
    cfg_path = os.environ.get("LLMDR_CONFIG")
    if cfg_path and Path(cfg_path).exists():
        from llmdr.config import load_config

        auto = load_config(cfg_path).failover.auto
    for line in asyncio.run(_apply(HERE / "automations.yaml", auto)):
        print(f"automation {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
