"""The restore test against real SeaweedFS and a real (in-process) HTTP server: the good snapshot passes; the five
failures from the field each fail it, naming what went wrong."""

import json
import shutil

import pytest

from llmdr.repo.bundle import content_digests, detected_specs
from llmdr.repo.repository import Repository
from llmdr.repo.snapshot import take_snapshot
from llmdr.serving import golden
from llmdr.serving.endpoint import OpenAIEndpoint
from llmdr.serving.restoretest import restore_test
from llmdr.serving.tinymodel import write_demo_bundle
from llmdr.storage.factory import open_region
from tests.support.damage import corrupt_chunk
from tests.support.serving import serving


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """The known-good bundle, its component specs, and a golden set recorded from a real server serving it."""
    root = tmp_path_factory.mktemp("good") / "bundle"
    write_demo_bundle(root)
    specs = detected_specs(root)
    with serving(root) as url:
        gs = golden.record(golden.default_cases(), OpenAIEndpoint(url).answer,
                           {"components": content_digests(root, specs)})
    return root, specs, gs


@pytest.fixture
def repo(region_config):
    return Repository(open_region(region_config, region_config.secondaries[0]))


def snapshot_of(repo, tmp_path, good, change=None):
    root = tmp_path / "variant"
    shutil.copytree(good[0], root)
    if change:
        change(root)
    # no component spec here: the broken snapshot was taken by a misconfigured or older protector
    return take_snapshot(repo, root, bundle="tiny").snapshot_id


def run(repo, sid, tmp_path, good):
    return restore_test(repo, sid, tmp_path / "scratch", good[1], good[2])


def test_good_snapshot_passes(repo, tmp_path, good):
    res = run(repo, snapshot_of(repo, tmp_path, good), tmp_path, good)
    assert res.ok, res.problems
    assert res.golden.passed == len(golden.DEFAULT_PROMPTS) and res.differing_components == []
    assert not any((tmp_path / "scratch").iterdir())  # cleaned up


def test_missing_tokenizer(repo, tmp_path, good):
    sid = snapshot_of(repo, tmp_path, good, lambda r: (r / "tokenizer.json").unlink())
    res = run(repo, sid, tmp_path, good)
    assert not res.ok
    assert res.problems == ["incomplete: tokenizer: missing: tokenizer.json is not there"]


def test_swapped_tokenizer(repo, tmp_path, good):
    def swap(root):
        tok = json.loads((root / "tokenizer.json").read_text())
        vocab = tok["model"]["vocab"]
        words = sorted((w for w in vocab if not w.startswith("<")), key=vocab.get)
        ids = [vocab[w] for w in words]
        for w, i in zip(words, ids[1:] + ids[:1], strict=True):
            vocab[w] = i
        (root / "tokenizer.json").write_text(json.dumps(tok))

    res = run(repo, snapshot_of(repo, tmp_path, good, swap), tmp_path, good)
    assert not res.ok and res.golden.passed < len(res.golden.results)
    assert res.differing_components == ["tokenizer"]
    assert "components that differ from the golden set's bundle: tokenizer" in res.problems[0]


def test_changed_prompt_template(repo, tmp_path, good):
    def change(root):
        t = (root / "chat_template.jinja").read_text()
        (root / "chat_template.jinja").write_text(t.replace("<|{{ m.role }}|> ", ""))

    res = run(repo, snapshot_of(repo, tmp_path, good, change), tmp_path, good)
    assert not res.ok and res.differing_components == ["prompt_templates"]


def test_changed_generation_settings(repo, tmp_path, good):
    def change(root):
        g = json.loads((root / "generation_config.json").read_text())
        g["repetition_penalty"] = 1.0
        (root / "generation_config.json").write_text(json.dumps(g))

    res = run(repo, snapshot_of(repo, tmp_path, good, change), tmp_path, good)
    assert not res.ok and res.differing_components == ["generation_config"]


def test_bit_flip_in_a_weight_shard(repo, tmp_path, good):
    sid = snapshot_of(repo, tmp_path, good)
    entry = next(f for f in repo.load_manifest(sid).files if f.path.endswith(".safetensors"))
    victim = entry.chunks[0][0]
    pack = corrupt_chunk(repo, victim, at=repo.locate(victim).stored_length // 2)  # bit rot in the DR region's copy
    res = run(repo, sid, tmp_path, good)
    assert not res.ok and res.golden is None
    assert res.problems[0].startswith(f"restore failed: chunk {victim[:12]}") and entry.path in res.problems[0]
    assert pack in res.problems[0] and "do not match the chunk id (damaged)" in res.problems[0]
    assert f"damaged in {repo.location}: chunk {victim[:12]} in {pack} (corrupt)" in res.problems[1:]
