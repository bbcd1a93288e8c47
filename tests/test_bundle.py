"""The bundle spec and completeness check: each way a bundle can be broken is named, file and component."""

import hashlib
import json
import struct
from pathlib import Path

import pytest

from llmdr.devstack.samples import MiB, write_sample_bundle
from llmdr.errors import ConfigError
from llmdr.repo.bundle import ComponentKind, ComponentSpec, IncompleteBundle, check_bundle, detected_specs
from llmdr.repo.manifest import FileEntry, Manifest
from llmdr.repo.repository import Repository
from llmdr.repo.restore import restore_snapshot
from llmdr.repo.snapshot import take_snapshot
from llmdr.repo.tree import build_tree, record_bytes
from llmdr.storage.memory import MemoryStore
from tests.support.trees import write_tree

K = ComponentKind


def sample(tmp_path: Path) -> tuple[Path, list[ComponentSpec]]:
    root = tmp_path / "bundle"
    write_sample_bundle(root, shards=2, shard_size=MiB // 4)
    specs = detected_specs(root)
    return root, specs


def problems(root, specs):
    return [str(p) for p in check_bundle(root, specs).problems]


def test_sample_bundle_is_complete(tmp_path):
    root, specs = sample(tmp_path)
    assert {s.kind for s in specs} >= {K.weights, K.tokenizer, K.model_config, K.generation_config,
                                      K.prompt_templates, K.serving_config, K.security_rules}
    report = check_bundle(root, specs)
    assert report.complete, report.problems


def test_missing_tokenizer_named(tmp_path):
    root, specs = sample(tmp_path)
    (root / "tokenizer.json").unlink()
    assert problems(root, specs) == ["tokenizer: missing: tokenizer.json is not there"]


def test_empty_file_named(tmp_path):
    root, specs = sample(tmp_path)
    (root / "prompts" / "system.jinja").write_text("")
    assert problems(root, specs) == ["prompt_templates prompts/system.jinja: is empty"]


def test_bad_json_named_with_position(tmp_path):
    root, specs = sample(tmp_path)
    (root / "generation_config.json").write_text('{"temperature": 0.2,\n "top_p": }')
    [p] = problems(root, specs)
    assert p.startswith("generation_config generation_config.json: is not valid JSON (line 2")


def test_tokenizer_that_does_not_load(tmp_path):
    root, specs = sample(tmp_path)
    (root / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "Nonsense"}}))
    [p] = problems(root, specs)
    assert p.startswith("tokenizer tokenizer.json: does not load as a tokenizer")


def test_safetensors_header_that_does_not_parse(tmp_path):
    root, specs = sample(tmp_path)
    shard = root / "model-00001-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[8] = ord("x")  # the header no longer starts a JSON object
    shard.write_bytes(bytes(data))
    [p] = problems(root, specs)
    assert p.startswith("weights model-00001-of-00002.safetensors: has a safetensors header that is not valid JSON")


def test_truncated_shard(tmp_path):
    root, specs = sample(tmp_path)
    shard = root / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    [p] = problems(root, specs)
    assert "model-00002-of-00002.safetensors" in p and "past the" in p


def test_header_length_that_does_not_fit(tmp_path):
    root, specs = sample(tmp_path)
    shard = root / "model-00001-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(struct.pack("<Q", 2**40) + data[8:])
    [p] = problems(root, specs)
    assert "header length" in p


def test_index_points_at_missing_shard(tmp_path):
    root, specs = sample(tmp_path)
    (root / "model-00002-of-00002.safetensors").unlink()
    specs = [ComponentSpec(K.weights, ("*.safetensors", "model.safetensors.index.json"))] + \
        [s for s in specs if s.kind != K.weights]
    assert problems(root, specs) == [
        "weights model.safetensors.index.json: points at shard model-00002-of-00002.safetensors, which is missing"]


def test_bad_jinja_template(tmp_path):
    root, specs = sample(tmp_path)
    (root / "prompts" / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }")
    [p] = problems(root, specs)
    assert p.startswith("prompt_templates prompts/chat_template.jinja: is not a valid Jinja template (line 1")


def test_optional_component_is_a_warning(tmp_path):
    root, specs = sample(tmp_path)
    specs = [s if s.kind != K.security_rules else ComponentSpec(K.security_rules, ("security/*",), False)
             for s in specs]
    (root / "security" / "denylist.txt").unlink()
    report = check_bundle(root, specs)
    assert report.complete
    assert [str(w) for w in report.warnings] == ["security_rules: missing: no file matches security/*"]


def test_incomplete_bundle_refused_before_any_upload(tmp_path):
    root, specs = sample(tmp_path)
    (root / "tokenizer.json").unlink()
    store = MemoryStore()
    with pytest.raises(IncompleteBundle, match="tokenizer: missing: tokenizer.json") as e:
        take_snapshot(Repository(store), root, bundle="b", components=specs)
    assert "nothing was uploaded" in str(e.value)
    assert [i.key for i in store.list("") if i.key != "config.json"] == []  # no pack, index, tree, record, entry


def test_manifest_records_component_digests(tmp_path):
    root, specs = sample(tmp_path)
    repo = Repository(MemoryStore())
    first = take_snapshot(repo, root, bundle="b", components=specs).manifest.components
    assert first["tokenizer"]["files"] == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    tok = json.loads((root / "tokenizer.json").read_text())
    tok["model"]["vocab"]["extra"] = len(tok["model"]["vocab"])
    (root / "tokenizer.json").write_text(json.dumps(tok))
    second = take_snapshot(repo, root, bundle="b", components=specs).manifest.components
    assert second["tokenizer"]["digest"] != first["tokenizer"]["digest"]
    assert second["weights"]["digest"] == first["weights"]["digest"]  # "which tokenizer went with which weights"


def test_restore_checks_completeness(tmp_path):
    root, specs = sample(tmp_path)
    repo = Repository(MemoryStore())
    good = take_snapshot(repo, root, bundle="b", components=specs)
    res = restore_snapshot(repo, good.snapshot_id, tmp_path / "ok")
    assert res.complete is True
    # A snapshot whose record says tokenizer.json belongs to it, but whose files lack it.
    m = good.manifest
    forged = Manifest(**{**{k: getattr(m, k) for k in m.__dataclass_fields__},
                         "files": tuple(f for f in m.files if f.path != "tokenizer.json")})
    tree = build_tree(forged.files)
    repo.save_tree(tree)
    data = record_bytes(forged, tree.root)
    sid = hashlib.sha256(data).hexdigest()
    repo.save_record(sid, data)
    with pytest.raises(IncompleteBundle, match="tokenizer: missing: tokenizer.json"):
        restore_snapshot(repo, sid, tmp_path / "bad")
    assert isinstance(m.files[0], FileEntry)


def test_config_refuses_unknown_component_kind(tmp_path):
    from llmdr.config import parse_config

    (tmp_path / "b").mkdir()
    write_tree(tmp_path / "b", {"config.json": b"{}"})
    from llmdr.repo.scaffold import render_config

    text = render_config(tmp_path / "b", name=None, config_path=tmp_path / "llmdr.yaml", primary_port=1000,
                         secondary_port=2000)
    cfg = parse_config(text, source=tmp_path / "llmdr.yaml")
    assert list(cfg.bundle.components) == [K.model_config]
    bad = text.replace("    model_config:", "    modle_config:")
    with pytest.raises(ConfigError, match="bundle.components.modle_config"):
        parse_config(bad, source=tmp_path / "llmdr.yaml")


def test_unchanged_files_are_not_parsed_again_but_a_changed_one_is(tmp_path, monkeypatch):
    """Snapshots remember which files passed their own check (CheckMemo, beside the stat cache): an unchanged
    template is not parsed again, a template broken since (same size, even) is, and the snapshot is refused."""
    import jinja2

    root, specs = sample(tmp_path)
    repo = Repository(MemoryStore())
    cache = tmp_path / "cache" / "stat-x.json"
    parsed: list[str] = []
    real = jinja2.Environment.parse
    monkeypatch.setattr(jinja2.Environment, "parse", lambda self, text, *a, **k: parsed.append(text) or
                        real(self, text, *a, **k))
    take_snapshot(repo, root, bundle="b", components=specs, stat_cache=cache)
    assert parsed and (tmp_path / "cache" / "checks-x.json").exists()
    parsed.clear()
    take_snapshot(repo, root, bundle="b", components=specs, stat_cache=cache)
    assert parsed == []  # nothing changed: nothing parsed
    template = root / "prompts" / "chat_template.jinja"
    good = template.read_text()
    template.write_text(good[:-2] + "{{")  # as long as before, no longer valid
    with pytest.raises(IncompleteBundle, match="chat_template.jinja: is not a valid Jinja template"):
        take_snapshot(repo, root, bundle="b", components=specs, stat_cache=cache)
    assert len(parsed) == 1
