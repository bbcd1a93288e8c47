"""The tiny real model: deterministic, complete as a bundle, and its answers depend on every component."""

import json
import shutil
from pathlib import Path

import pytest

from llmdr.repo.bundle import check_bundle, detected_specs
from llmdr.serving.tinymodel import TinyModel, write_demo_bundle

PROMPTS = ["what is the capital of the north region ?", "tell me a story about a dog", "how do I restore a snapshot ?",
           "name three colors", "why is the sea blue ?"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny") / "bundle"
    write_demo_bundle(root)
    return root


def answers(folder: Path) -> list[str]:
    m = TinyModel(folder)
    return [m.chat([{"role": "user", "content": p}])[0] for p in PROMPTS]


def variant(bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "variant"
    shutil.copytree(bundle, copy)
    return copy


def test_deterministic_and_small(bundle, tmp_path):
    again = tmp_path / "again"
    write_demo_bundle(again)
    for f in bundle.rglob("*"):
        if f.is_file():
            assert (again / f.relative_to(bundle)).read_bytes() == f.read_bytes(), f
    assert sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file()) < 5 * 1024 * 1024
    first = answers(bundle)
    assert first == answers(again)
    assert len(set(first)) == len(PROMPTS) and all(a.strip() for a in first)


def test_demo_bundle_is_complete(bundle):
    specs = detected_specs(bundle)
    assert {s.kind.value for s in specs} >= {"weights", "tokenizer", "model_config", "generation_config",
                                             "prompt_templates", "serving_config", "security_rules"}
    assert check_bundle(bundle, specs).complete


def test_generation_settings_change_the_answers(bundle, tmp_path):
    v = variant(bundle, tmp_path)
    g = json.loads((v / "generation_config.json").read_text())
    g["repetition_penalty"] = 1.0
    (v / "generation_config.json").write_text(json.dumps(g))
    assert answers(v) != answers(bundle)


def test_template_changes_the_answers(bundle, tmp_path):
    v = variant(bundle, tmp_path)
    t = (v / "chat_template.jinja").read_text()
    (v / "chat_template.jinja").write_text(t.replace("<|{{ m.role }}|> ", ""))
    assert answers(v) != answers(bundle)


def test_swapped_tokenizer_changes_the_answers(bundle, tmp_path):
    v = variant(bundle, tmp_path)
    tok = json.loads((v / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    words = sorted((w for w in vocab if not w.startswith("<")), key=vocab.get)
    ids = [vocab[w] for w in words]
    for w, i in zip(words, ids[1:] + ids[:1], strict=True):  # same size and tokens, other ids: another model's tokenizer
        vocab[w] = i
    (v / "tokenizer.json").write_text(json.dumps(tok))
    assert answers(v) != answers(bundle)


def test_changed_weights_change_the_answers(bundle, tmp_path):
    v = variant(bundle, tmp_path)
    shard = v / "model-00001-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 4096, 4):
        data[i + 3] ^= 0x01  # nudge a run of float32 values
    shard.write_bytes(bytes(data))
    assert answers(v) != answers(bundle)


def test_tokenizer_from_another_model_is_refused(bundle, tmp_path):
    v = variant(bundle, tmp_path)
    from llmdr.devstack.samples import word_tokenizer_json

    (v / "tokenizer.json").write_text(word_tokenizer_json(100))
    with pytest.raises(ValueError, match="do not belong together"):
        TinyModel(v)
