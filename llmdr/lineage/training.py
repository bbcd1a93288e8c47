"""Training runs: one MLflow run per protected checkpoint snapshot, in experiment ``training-runs``.

:func:`record_training_run` records params from the checkpoint's ``trainer_state.json`` / ``config.json`` (flattened),
the loss curve from ``log_history``, the dataset md5s (tags and MLflow dataset inputs) and the hardware;
:func:`record_checkpoint_runs` does it for every checkpoint protect-checkpoints has just protected.
:func:`find_training_run` finds the run of a checkpoint snapshot (the lineage query follows it).
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

from llmdr.config import Config
from llmdr.errors import UsageError
from llmdr.lineage import host
from llmdr.lineage.host import hardware_summary
from llmdr.lineage.tags import (
    HARDWARE_PARAM,
    T_BUNDLE,
    T_CHECKPOINT,
    T_HARDWARE,
    T_HARDWARE_SOURCE,
    T_KIND,
    T_SNAPSHOT,
    T_STEP,
    dataset_tags,
    mlflow_key,
    param_value,
    quote,
)
from llmdr.lineage.tracking import (
    ensure_experiment,
    mlflow_call,
    open_client,
    registry_target,
    store_exists,
    target_for,
)

log = logging.getLogger(__name__)

TRAINING_EXPERIMENT = "training-runs"


def hardware_params(hw: dict) -> dict[str, str]:
    """A machine description (:func:`llmdr.lineage.host.hardware`) as ``hardware.*`` params."""
    gpus = hw.get("gpus") or []
    flat = {k: v for k, v in hw.items() if k != "gpus"}
    if gpus:
        flat["gpus"] = "; ".join(f"{g.get('name')} ({g.get('memory_total')})" for g in gpus)
        flat["gpu_driver"] = ", ".join(sorted({str(g.get("driver_version")) for g in gpus}))
    return {f"{HARDWARE_PARAM}{k}": param_value(v) for k, v in flat.items() if v is not None}



def flatten_params(obj: dict, prefix: str = "") -> dict[str, str]:
    """Nested dicts as dotted keys (``config.rope_scaling.factor``); lists stay one JSON value."""
    out: dict[str, str] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten_params(v, key + "."))
        else:
            out[mlflow_key(key)] = param_value(v)
    return out


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read it as JSON ({exc}); fix or remove it") from exc
    return data if isinstance(data, dict) else None


# Settings a checkpoint folder may hold, by the prefix their params get. training_args.bin (a pickle) is never read.
_CHECKPOINT_FILES = {"trainer_state.json": "trainer_state.", "config.json": "config.",
                     "training_args.json": "training_args.", "adapter_config.json": "adapter_config.",
                     "generation_config.json": "generation_config."}


def checkpoint_params(folder: Path) -> tuple[dict[str, str], list[tuple[str, float, int]], int | None]:
    """From a checkpoint folder: params (``trainer_state.*``, ``config.*``, ...; ``log_history`` left out), metrics
    ``(key, value, step)`` from ``trainer_state.json``'s ``log_history`` and its ``global_step``."""
    params: dict[str, str] = {}
    metrics: list[tuple[str, float, int]] = []
    step = None
    for fname, prefix in _CHECKPOINT_FILES.items():
        data = _read_json(folder / fname)
        if data is None:
            continue
        if fname == "trainer_state.json":
            step = data.get("global_step") if isinstance(data.get("global_step"), int) else None
            for entry in data.get("log_history") or []:
                if not isinstance(entry, dict) or not isinstance(entry.get("step"), int):
                    continue
                for k, v in entry.items():
                    if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                        metrics.append((mlflow_key(k), float(v), entry["step"]))
            data = {k: v for k, v in data.items() if k != "log_history"}
        params.update(flatten_params(data, prefix))
    return params, metrics, step


def _find_training_run(client, exp_id: str, snapshot_id: str):
    runs = client.search_runs([exp_id], filter_string=f"tags.`{T_SNAPSHOT}` = '{quote(snapshot_id)}' and "
                                                      f"tags.`{T_KIND}` = 'training-run'", max_results=10)
    return runs[0] if runs else None


def find_training_run(cfg: Config, snapshot_id: str, *, tracking_uri: str | None = None) -> str | None:
    """The run id recorded for checkpoint snapshot ``snapshot_id`` (to pass to :func:`register_snapshot` when a
    bundle is exported from that checkpoint), or None."""
    target = registry_target(cfg, tracking_uri)
    if not store_exists(target):
        return None
    client = open_client(target)
    exp = client.get_experiment_by_name(TRAINING_EXPERIMENT)
    if exp is None:
        return None
    run = mlflow_call("search training runs", target, _find_training_run, client, exp.experiment_id, snapshot_id)
    return run.info.run_id if run else None


def record_training_run(cfg: Config, *, checkpoint: str, snapshot_id: str, step: int | None, params: dict,
                        datasets: list[dict], hardware: dict | None = None, tracking_uri: str | None = None) -> str:
    """Record the training run behind a protected checkpoint as an MLflow run in ``training-runs``; returns its id.

    ``checkpoint`` is the checkpoint folder (its name is the ``llmdr.checkpoint`` tag; when it exists here its
    ``trainer_state.json``, ``config.json``... give params and the ``log_history`` metrics, e.g. ``loss`` per step).
    ``params`` are added as given (they win over the files). ``hardware`` describes the training machine; None
    records this machine's (:func:`llmdr.lineage.host.hardware`) and says so in ``llmdr.hardware_source``. ``datasets``:
    ``[{name, md5, remotes: {region: url}}]`` as tags and MLflow dataset inputs. Idempotent per snapshot id: a
    finished run for it is returned as is; an unfinished one (an earlier attempt that failed) is replaced."""
    quote(snapshot_id)
    folder = Path(checkpoint)
    file_params, metrics, file_step = checkpoint_params(folder) if folder.is_dir() else ({}, [], None)
    if step is None:
        step = file_step
    if step is None:
        nums = re.findall(r"\d+", folder.name)
        step = int(nums[-1]) if nums else None
    hw_given = hardware is not None
    hw = hardware if hw_given else host.hardware()
    all_params = {**file_params, **flatten_params(params or {}), **hardware_params(hw)}
    if step is not None:
        all_params["step"] = str(step)
    tags = {T_KIND: "training-run", T_BUNDLE: cfg.bundle.name, T_CHECKPOINT: folder.name, T_SNAPSHOT: snapshot_id,
            T_HARDWARE: hardware_summary(hw),
            T_HARDWARE_SOURCE: "given" if hw_given else f"recorded on {hw.get('host')} by llmdr, not the trainer's"}
    if step is not None:
        tags[T_STEP] = str(step)
    tags |= dataset_tags(datasets)
    names = ", ".join(f"{d.get('name')} (md5 {d.get('md5')})" for d in datasets or []) or "none recorded"
    tags["mlflow.note.content"] = (f"Checkpoint {folder.name} of bundle '{cfg.bundle.name}'"
                                   f"{f' at step {step}' if step is not None else ''}; snapshot {snapshot_id}. "
                                   f"Datasets: {names}.")

    target = target_for(cfg, region=cfg.primary.name, tracking_uri=tracking_uri)
    client = open_client(target)

    def work() -> str:
        from mlflow.entities import Metric, Param, RunTag  # mlflow is imported by open_client already

        exp_id = ensure_experiment(target, TRAINING_EXPERIMENT)
        old = _find_training_run(client, exp_id, snapshot_id)
        if old is not None and old.info.status == "FINISHED":
            return old.info.run_id
        if old is not None:  # a half-written attempt: params may be missing, metrics would double
            client.delete_run(old.info.run_id)
        run = client.create_run(exp_id, run_name=f"{cfg.bundle.name} {folder.name}",
                                tags={T_KIND: "training-run", T_SNAPSHOT: snapshot_id})
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        items = sorted(all_params.items())
        for i in range(0, len(items), 100):  # MLflow: at most 100 params or tags per batch
            client.log_batch(run_id, params=[Param(k, v) for k, v in items[i:i + 100]])
        tag_items = sorted(tags.items())
        for i in range(0, len(tag_items), 100):
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tag_items[i:i + 100]])
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=[Metric(k, v, now, s) for k, v, s in metrics[i:i + 1000]])
        _log_dataset_inputs(client, run_id, datasets)
        client.set_terminated(run_id, status="FINISHED")
        return run_id

    run_id = mlflow_call(f"record the training run of checkpoint {folder.name}", target, work)
    log.info("checkpoint %s (snapshot %s): training run %s", folder.name, snapshot_id[:12], run_id)
    return run_id


def _log_dataset_inputs(client, run_id: str, datasets: list[dict] | None) -> None:
    """Datasets as MLflow run inputs (shown in the UI's "Datasets used"); digests over 36 characters stay tags only."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = []
    for ds in datasets or []:
        md5 = str(ds.get("md5") or "")
        if not md5 or len(md5) > 36:
            continue
        source = json.dumps(ds.get("remotes") or {}, sort_keys=True)
        inputs.append(DatasetInput(Dataset(name=str(ds["name"]), digest=md5, source_type="dvc", source=source),
                                   tags=[InputTag("mlflow.data.context", "training")]))
    if inputs:
        client.log_inputs(run_id, datasets=inputs)


def checkpoint_step(entry: dict) -> int | None:
    """The step protect-checkpoints recorded in a new checkpoint's ``tags`` (None when absent or not a number)."""
    tags = entry.get("tags")
    step = tags.get("step") if isinstance(tags, dict) else None
    return int(step) if step and step.lstrip("-").isdigit() else None


def record_checkpoint_runs(cfg: Config, new: list[dict]) -> list[dict]:
    """Each checkpoint protect-checkpoints has just protected (its ``new`` entries) as a training run, with the
    configured datasets' recorded versions; ``[]`` when the config registers no models or has no checkpoints.
    Returns ``[{checkpoint, snapshot_id, run_id}]``."""
    if not cfg.tracking.register_models or cfg.checkpoints is None:
        return []
    root = Path(cfg.checkpoints.path)
    root = root if root.is_absolute() else cfg.base_dir / root
    datasets = []
    if cfg.datasets:
        from llmdr.lineage.dvcrepo import remote_urls, version

        for d in cfg.datasets:
            v = version(cfg, d, check_workspace=False)
            datasets.append({"name": d.name, "md5": v.md5, "remotes": remote_urls(cfg)})
    out = []
    for n in new:
        run_id = record_training_run(cfg, checkpoint=str(root / n["checkpoint"]), snapshot_id=n["snapshot_id"],
                                     step=checkpoint_step(n), params={}, datasets=datasets,
                                     tracking_uri=cfg.tracking.uri)
        out.append({"checkpoint": n["checkpoint"], "snapshot_id": n["snapshot_id"], "run_id": run_id})
    return out
