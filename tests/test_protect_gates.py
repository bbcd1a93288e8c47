"""The protect procedure's decisions, as the core functions the protect-bundle tasks call: a complete bundle
passes the gate, an incomplete one is refused before anything is uploaded, a copy missing chunks is an
IntegrityError naming the region, and the configured retention runs only when llmdr.yaml sets one."""

from __future__ import annotations

import pytest

from llmdr.errors import IntegrityError, SnapshotNotFound
from llmdr.repo import ops
from llmdr.repo.bundle import IncompleteBundle
from llmdr.serving.tinymodel import write_demo_bundle
from tests.support.config import two_regions
from tests.support.damage import chunks_in_same_pack, remove_chunk

COMPONENTS = ("{name: testbundle, path: model, components: {weights: {paths: ['*.safetensors']}, "
              "tokenizer: {paths: ['tokenizer.json']}}}")


def _cfg(stack, tmp_path, bundle=COMPONENTS, **kw):
    if not (tmp_path / "model").exists():
        write_demo_bundle(tmp_path / "model")
    return two_regions(stack, tmp_path, bundle=bundle, **kw)


def test_complete_bundle_passes_and_an_incomplete_one_is_refused(stack, tmp_path):
    cfg = _cfg(stack, tmp_path)
    report = ops.require_complete(cfg)
    assert report is not None and report.complete
    (tmp_path / "model" / "tokenizer.json").write_text("{ not json")
    with pytest.raises(IncompleteBundle, match="tokenizer"):
        ops.require_complete(cfg)
    assert ops.open_repo(cfg).snapshot_ids() == []  # refused before anything was written


def test_no_components_means_nothing_to_check(stack, tmp_path):
    cfg = _cfg(stack, tmp_path, bundle="{name: testbundle, path: model}")
    assert ops.require_complete(cfg) is None


def test_a_copy_lacking_chunks_is_an_integrity_error_naming_the_region(stack, tmp_path):
    cfg = _cfg(stack, tmp_path)
    sid = ops.snapshot_bundle(cfg).snapshot_id
    with pytest.raises(SnapshotNotFound, match="secondary"):
        ops.require_copy(cfg, sid, "secondary")  # nothing was replicated yet
    ops.replicate(cfg, sid, to="secondary")
    assert ops.require_copy(cfg, sid, "secondary").ok
    dr = ops.open_repo(cfg, "secondary")
    chunks = dr.load_manifest(sid).chunk_set()
    victim = sorted(chunks)[0]
    lost = chunks_in_same_pack(dr, victim) & set(chunks)  # deleting its pack takes every chunk packed with it
    remove_chunk(dr, victim)
    with pytest.raises(IntegrityError, match=f"copy of {sid[:12]} in secondary lacks {len(lost)} chunk"):
        ops.require_copy(cfg, sid, "secondary")


def test_retention_runs_only_when_configured(stack, tmp_path):
    cfg = _cfg(stack, tmp_path)
    assert ops.apply_configured_retention(cfg, "primary") is None
    kept = _cfg(stack, tmp_path, prefix=None, extra="retention: {keep_last: 1, prune: true, grace: 0s}")
    first = ops.snapshot_bundle(kept).snapshot_id
    (tmp_path / "model" / "generation_config.json").write_text('{"temperature": 0.5}')
    second = ops.snapshot_bundle(kept).snapshot_id
    res = ops.apply_configured_retention(kept, "primary")
    assert res is not None
    assert ops.open_repo(kept).snapshot_ids() == [second] and first != second
