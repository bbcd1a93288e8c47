"""prewarm-standby: run by the automation on ``llmdr.endpoint.degraded`` of the active region (when
``failover.prewarm_on_degraded``), or by hand. Starts the failover target's replica from that region's own store
if it does not answer and llmdr can start it, then asks it a completion, so the failover that may follow is warm.
A no-op when the standby answers already; the run fails when the standby was started but does not answer."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import Field
from pydantic.json_schema import SkipJsonSchema

from flows.params import BUNDLE, CONFIG_PATH
from llmdr.artifacts import artifact_key
from llmdr.config import bundle_ref, load_config
from llmdr.errors import LlmdrError
from llmdr.failover.standby import prewarm_markdown
from tasks.standby import prewarm_standby as prewarm_task

DEGRADED = Field(description="The region whose endpoint degraded (a region name in llmdr.yaml); its failover "
                             "target's standby is warmed. The automation passes the active region.")
REASON = Field("", description="Why: the monitor's reasons (kept in the run's artifact).")


@flow(name="prewarm-standby")
def prewarm_standby(region: str = DEGRADED, reason: str = REASON, trigger: SkipJsonSchema[str] = "manual",
                    config_path: str = CONFIG_PATH, bundle: str | None = BUNDLE) -> dict:
    config_path = bundle_ref(config_path, bundle)
    cfg = load_config(config_path)
    get_run_logger().info("phase prewarm: %s degraded (%s); warming %s's failover target", region,
                          reason or "no reason given", cfg.bundle.name)
    out = prewarm_task(config_path, region)
    create_markdown_artifact(key=artifact_key("prewarm-standby", cfg.bundle.name),
                             markdown=prewarm_markdown(cfg.bundle.name, out, reason, trigger),
                             description="The newest pre-warm of the DR standby")
    if not out["ok"]:
        raise LlmdrError(f"the standby in {out['region']} was not made warm: {out['detail']}")
    return out
