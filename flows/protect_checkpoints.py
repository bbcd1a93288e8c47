"""protect-checkpoints: back up new training checkpoints incrementally, copy them to every DR region, keep the
last N (and every Mth) of them, and record each new one as an MLflow training run (parameters, dataset versions,
hardware, step, snapshot id). Only complete checkpoints are taken (``checkpoints.layout``); incomplete ones are
listed in the artifact with the file and the reason, and looked at again on the next run; a checkpoint the trainer
rewrote is taken again."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.params import BUNDLE, CONFIG_PATH
from llmdr.artifacts import artifact_key, checkpoints_summary_markdown, checkpoints_table
from llmdr.config import bundle_ref, load_config
from tasks.checkpoints import protect_new_checkpoints, record_training_runs


@flow(name="protect-checkpoints")
def protect_checkpoints(config_path: str = CONFIG_PATH, bundle: str | None = BUNDLE) -> dict:
    config_path = bundle_ref(config_path, bundle)  # tasks load this bundle's view
    cfg = load_config(config_path)
    log = get_run_logger()
    log.info("phase snapshot and replicate: new checkpoints of %s", cfg.bundle.name)
    out = protect_new_checkpoints(config_path)
    if out["incomplete"]:
        log.warning("%d incomplete checkpoint(s) not taken: %s", len(out["incomplete"]),
                    ", ".join(c["checkpoint"] for c in out["incomplete"]))
    log.info("phase record: %d new checkpoint(s) as MLflow training runs", len(out["new"]))
    out["training_runs"] = record_training_runs(config_path, out["new"])
    create_markdown_artifact(key=artifact_key("protect-checkpoints", cfg.bundle.name),
                             markdown=checkpoints_summary_markdown(out), description="Newest protect-checkpoints run")
    create_table_artifact(key=f"{artifact_key('protect-checkpoints', cfg.bundle.name)}-table",
                          table=checkpoints_table(out), description="protect-checkpoints transfers")
    return out
