"""The vocabulary llmdr writes into MLflow: tag names on model versions and runs, and how keys, values and dataset
records are encoded in them.

Every tag is a name, id, digest or number: no secrets reach the tracking store. The registry
(:mod:`llmdr.lineage.registry`), training runs (:mod:`llmdr.lineage.training`) and the lineage query
(:mod:`llmdr.lineage.query`) read and write the same names from here.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from llmdr.errors import UsageError
from llmdr.repo.manifest import Manifest

T_KIND = "llmdr.kind"
T_BUNDLE = "llmdr.bundle"
T_SNAPSHOT = "llmdr.snapshot_id"
T_MANIFEST = "llmdr.manifest_digest"
T_CREATED = "llmdr.snapshot_created"
T_CONTENT = "llmdr.content_digest"
T_SNAPSHOTS = "llmdr.snapshots"  # ",id1,id2," every snapshot id of this content, oldest first
T_REGION = "llmdr.snapshot."  # + region name -> id present there
T_COMPONENT = "llmdr.component."  # + kind -> component digest
T_DATASET = "llmdr.dataset."  # + name + ".md5" / ".remote.<region>"
T_TRAINING = "llmdr.training_run_id"
T_CHECKPOINT = "llmdr.checkpoint"
T_STEP = "llmdr.step"
T_LAST_DRILL = "llmdr.last_drill_id"
T_LAST_RESULT = "llmdr.last_drill_result"
T_LAST_DRILL_RUN = "llmdr.last_drill_mlflow_run_id"
T_HARDWARE = "llmdr.hardware"
T_HARDWARE_SOURCE = "llmdr.hardware_source"

HARDWARE_PARAM = "hardware."  # prefix of a training run's hardware params
_KEY_OK = re.compile(r"[^\w.\- /]")  # characters MLflow accepts in param, metric and tag keys


def quote(value: str) -> str:
    """A value for an MLflow filter string; one holding a quote or backslash cannot be searched for."""
    if "'" in value or "\\" in value:
        raise UsageError(f"{value!r} cannot be searched for in MLflow: it contains a quote or backslash")
    return value


def mlflow_key(name: str) -> str:
    """A key MLflow accepts (param, metric, tag): other characters become ``_``; at most 250 characters."""
    out = _KEY_OK.sub("_", str(name))
    if len(out) > 250:
        out = out[:240] + "-" + hashlib.sha256(out.encode()).hexdigest()[:9]
    return out


def param_value(v: Any, limit: int = 6000) -> str:
    """A param value: scalars as ``str``, lists and dicts as compact JSON, cut to MLflow's 6000 characters."""
    if isinstance(v, (list, tuple, dict)):
        text = json.dumps(v, sort_keys=True, separators=(",", ":"), default=str)
    else:
        text = str(v)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def dataset_tags(datasets: list[dict] | None) -> dict[str, str]:
    """``[{name, md5, remotes: {region: url}}]`` as ``llmdr.dataset.<name>.md5`` / ``.remote.<region>`` tags."""
    tags: dict[str, str] = {}
    for ds in datasets or []:
        name = str(ds.get("name") or "")
        if not name:
            raise UsageError(f"dataset record {ds!r} has no name: pass {{name, md5, remotes: {{region: url}}}}")
        if ds.get("md5"):
            tags[f"{T_DATASET}{mlflow_key(name)}.md5"] = str(ds["md5"])
        for region, url in sorted((ds.get("remotes") or {}).items()):
            tags[f"{T_DATASET}{mlflow_key(name)}.remote.{mlflow_key(region)}"] = str(url)
    return tags


def datasets_from_tags(tags: dict[str, str]) -> list[dict]:
    """The dataset records :func:`dataset_tags` wrote, sorted by name."""
    out: dict[str, dict] = {}
    for k, v in tags.items():
        if not k.startswith(T_DATASET):
            continue
        rest = k[len(T_DATASET):]
        if rest.endswith(".md5"):
            out.setdefault(rest[:-4], {"remotes": {}})["md5"] = v
        elif ".remote." in rest:
            name, _, region = rest.partition(".remote.")
            out.setdefault(name, {"remotes": {}})["remotes"][region] = v
    return [{"name": n, "md5": d.get("md5"), "remotes": dict(sorted(d["remotes"].items()))}
            for n, d in sorted(out.items())]


def snapshot_dataset_tags(datasets: list[dict]) -> dict[str, str] | None:
    """The snapshot tags that tie a snapshot to the dataset versions it was protected with (``dataset.<name>.md5``,
    read back by ``datasets_from_manifest``); None without datasets."""
    return {f"dataset.{d['name']}.md5": d["md5"] for d in datasets} or None


def datasets_from_manifest(manifest: Manifest) -> list[dict]:
    """``dataset.<name>.md5`` tags of a snapshot (protect-bundle writes them); remotes are not in the manifest."""
    return [{"name": k[len("dataset."):-len(".md5")], "md5": v, "remotes": {}}
            for k, v in sorted(manifest.tags.items()) if k.startswith("dataset.") and k.endswith(".md5")]


def snapshot_ids(tags: dict[str, str]) -> list[str]:
    """Every snapshot id of a version's content (``llmdr.snapshots``), oldest first."""
    return [i for i in (tags.get(T_SNAPSHOTS) or "").split(",") if i]
