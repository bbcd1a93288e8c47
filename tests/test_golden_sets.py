"""Golden sets kept per answer-relevant content (``llmdr.repo.goldens``, ``llmdr.serving.snapgolden``), against the
memory store: which files count, sealing (refused when unsigned, edited or moved), copying, which set judges a
snapshot, and recording one from a snapshot served by ``llmdr serve``."""

from __future__ import annotations

import json
import shutil

import pytest

from llmdr.config.values import ComponentKind
from llmdr.repo import goldens
from llmdr.repo.bundle import ComponentSpec
from llmdr.repo.repository import Repository
from llmdr.repo.snapshot import take_snapshot
from llmdr.serving import golden
from llmdr.serving.snapgolden import PROJECT_FILE, NoGoldenSet, for_snapshot, prompts_for, record_from_snapshot
from llmdr.serving.tinymodel import write_demo_bundle
from llmdr.storage.memory import MemoryStore
from tests.support.config import OFFLINE_CONFIG, write_config

KEY_ENV = "LLMDR_T_GOLDSETS_KEY"
SPECS = [ComponentSpec(ComponentKind.weights, ("*.safetensors", "model.safetensors.index.json")),
         ComponentSpec(ComponentKind.datasets, ("data/*",)),
         ComponentSpec(ComponentKind.checkpoints, ("ckpt/*",))]


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k" * 40)
    return write_config(tmp_path / "llmdr.yaml", OFFLINE_CONFIG +
                        f"manifest_signing: {{method: hmac, hmac_key_env: {KEY_ENV}}}\n")


@pytest.fixture
def bundle(tmp_path):
    root = tmp_path / "model"
    write_demo_bundle(root)
    (root / "data").mkdir()
    (root / "data" / "train.csv").write_text("a,b\n1,2\n")
    (root / "ckpt").mkdir()
    (root / "ckpt" / "step-1.bin").write_bytes(b"\1" * 64)
    return root


def _snap(repo: Repository, root, tags=None) -> str:
    return take_snapshot(repo, root, bundle="b", components=SPECS, tags=tags).snapshot_id


def _digest(repo: Repository, sid: str) -> str:
    return goldens.answer_digest(repo.load_manifest(sid))


def test_only_datasets_and_checkpoints_leave_the_answer_digest_unchanged(bundle):
    repo = Repository(MemoryStore())
    base = _digest(repo, _snap(repo, bundle))
    (bundle / "data" / "train.csv").write_text("a,b\n1,2\n3,4\n")
    (bundle / "ckpt" / "step-2.bin").write_bytes(b"\2" * 64)
    assert _digest(repo, _snap(repo, bundle)) == base, "new data and checkpoints: the set carries over"
    for change in (lambda: (bundle / "generation_config.json").write_text('{"max_new_tokens": 3}\n'),
                   lambda: (bundle / "security" / "denylist.txt").write_text("story\n"),
                   lambda: (bundle / "README.md").write_text("unclaimed files count\n")):
        change()
        new = _digest(repo, _snap(repo, bundle))
        assert new != base, "an answer-relevant change gives a new content"
        base = new
    # a file that is both a dataset and answer-relevant (claimed by weights too) counts
    shutil.copy(bundle / "model-00001-of-00002.safetensors", bundle / "data" / "x.safetensors")
    assert _digest(repo, _snap(repo, bundle)) != base


def test_a_stored_set_is_sealed_and_refused_when_unsigned_edited_or_moved(cfg, bundle, tmp_path):
    repo = Repository(MemoryStore())
    sid = _snap(repo, bundle)
    digest = _digest(repo, sid)
    text = golden.GoldenSet([golden.GoldenCase("c1", "yes", prompt="p")]).to_text()
    data = goldens.golden_record(cfg, digest, text, snapshot=sid, how="manual", source="test")
    assert json.loads(data)["llmdr_signature"]["method"] == "hmac"
    repo.save_golden("b", digest, data)
    got = goldens.read_golden(cfg, repo, digest)
    assert got.text == text and got.snapshot == sid and got.how == "manual"
    assert goldens.read_golden(cfg, repo, "0" * 64) is None

    edited = json.loads(data)
    edited["golden"] = text.replace('"yes"', '"no"')
    repo.save_golden("b", digest, json.dumps(edited).encode())
    with pytest.raises(goldens.GoldenRefused, match=r"refused: its hmac signature .* does not verify.*golden record "
                                                    r"--snapshot"):
        goldens.read_golden(cfg, repo, digest)
    unsigned = {k: v for k, v in json.loads(data).items() if k != "llmdr_signature"}
    repo.save_golden("b", digest, json.dumps(unsigned).encode())
    with pytest.raises(goldens.GoldenRefused, match="not signed"):
        goldens.read_golden(cfg, repo, digest)
    other = "1" * 64  # a valid record moved to another content's key
    repo.save_golden("b", other, data)
    with pytest.raises(goldens.GoldenRefused, match="does not verify"):
        goldens.read_golden(cfg, repo, other)
    repo.save_golden("b", digest, b"\0garbage")
    with pytest.raises(goldens.GoldenRefused, match="not a readable record"):
        goldens.read_golden(cfg, repo, digest)
    # without signing the same record reads, but one naming another content is still refused
    plain = write_config(tmp_path / "plain" / "llmdr.yaml", OFFLINE_CONFIG)
    repo.save_golden("b", digest, json.dumps(unsigned).encode())
    assert goldens.read_golden(plain, repo, digest).text == text
    repo.save_golden("b", other, json.dumps(unsigned).encode())
    with pytest.raises(goldens.GoldenRefused, match="moved or forged"):
        goldens.read_golden(plain, repo, other)


def test_which_set_judges_a_snapshot(cfg, bundle):
    repo = Repository(MemoryStore())
    old = _snap(repo, bundle)  # untagged: from before per-snapshot sets
    with pytest.raises(Exception, match="no golden set .*predates per-snapshot golden sets"):
        for_snapshot(cfg, repo, old)
    golden.GoldenSet([golden.GoldenCase("c1", "old answer", prompt="p")]).save(cfg.golden_path)
    r = for_snapshot(cfg, repo, old)
    assert r.source == PROJECT_FILE and "predates" in r.note

    (bundle / "generation_config.json").write_text('{"max_new_tokens": 3}\n')
    new = _snap(repo, bundle, tags=goldens.versioned_tags())
    with pytest.raises(NoGoldenSet, match=f"snapshot {new[:12]} .* no golden set of its own.*llmdr golden record "
                                          f"--snapshot {new[:12]}"):
        for_snapshot(cfg, repo, new)
    data = goldens.golden_record(cfg, _digest(repo, new), golden.GoldenSet(
        [golden.GoldenCase("c1", "new answer", prompt="p")]).to_text(), snapshot=new, how="manual", source="t")
    repo.save_golden("b", _digest(repo, new), data)
    r = for_snapshot(cfg, repo, new)
    assert r.source == "snapshot" and r.golden.cases[0].expected == "new answer" and r.snapshot == new
    # a later snapshot of the same content (new data only) finds it for free
    (bundle / "data" / "more.csv").write_text("x\n")
    again = _snap(repo, bundle, tags=goldens.versioned_tags())
    assert for_snapshot(cfg, repo, again).golden.cases[0].expected == "new answer"
    assert prompts_for(cfg, repo, "f" * 64)[1] == f"the prompts of snapshot {again[:12]}'s set"
    # sets no live snapshot needs are listed for prune
    repo.save_golden("b", "2" * 64, data)
    assert goldens.unused_digests(repo, "b") == ["2" * 64]


def test_copy_golden_goes_with_the_snapshot_and_never_copies_a_forgery(cfg, bundle):
    src, dst = Repository(MemoryStore()), Repository(MemoryStore())
    sid = _snap(src, bundle, tags=goldens.versioned_tags())
    manifest = src.load_manifest(sid)
    assert not goldens.copy_golden(cfg, src, dst, manifest), "nothing to copy"
    digest = goldens.answer_digest(manifest)
    data = goldens.golden_record(cfg, digest, golden.GoldenSet([golden.GoldenCase("c", "a", prompt="p")]).to_text(),
                                 snapshot=sid, how="manual", source="t")
    src.save_golden("b", digest, data)
    assert goldens.copy_golden(cfg, src, dst, manifest)
    assert dst.load_golden("b", digest) == data
    assert not goldens.copy_golden(cfg, src, dst, manifest), "already there"
    forged = json.loads(data) | {"golden": '{"golden": 1}\n{"id": "c", "prompt": "p", "expected": "forged"}\n'}
    src.save_golden("b", digest, json.dumps(forged).encode())
    other = Repository(MemoryStore())
    with pytest.raises(goldens.GoldenRefused):
        goldens.copy_golden(cfg, src, other, manifest)
    assert other.golden_digests("b") == []


def test_record_from_snapshot_serves_that_exact_snapshot(cfg, bundle, tmp_path):
    repo = Repository(MemoryStore())
    sid = _snap(repo, bundle)
    cases = golden.default_cases()[:2]
    gs = record_from_snapshot(cfg, repo, sid, cases, tmp_path / "scratch")
    assert [c.id for c in gs.cases] == ["chat-1", "chat-2"] and all(c.expected for c in gs.cases)
    assert gs.header["snapshot"] == sid and gs.header["model"] == "llmdr-tiny"
    assert not any((tmp_path / "scratch").iterdir()), "the scratch restore is removed"
    # the bundle folder changed after the snapshot: the recording is still the snapshot's
    (bundle / "generation_config.json").write_text('{"max_new_tokens": 2}\n')
    assert record_from_snapshot(cfg, repo, sid, cases, tmp_path / "scratch").cases[0].expected == \
        gs.cases[0].expected


def test_a_model_llmdr_cannot_serve_is_said_before_any_restore(cfg, bundle, tmp_path):
    from llmdr.serving.snapgolden import CannotServe

    repo = Repository(MemoryStore())
    conf = json.loads((bundle / "config.json").read_text()) | {"model_type": "llama"}
    (bundle / "config.json").write_text(json.dumps(conf))
    sid = _snap(repo, bundle)
    with pytest.raises(CannotServe, match="holds a 'llama' model; `llmdr serve` runs the llmdr-tiny demo model only"):
        record_from_snapshot(cfg, repo, sid, golden.default_cases()[:1], tmp_path / "scratch")
    assert not (tmp_path / "scratch").exists(), "nothing was restored"


@pytest.mark.parametrize("args, message", [
    (["golden", "record"], "give --url URL (a known-good endpoint) or --snapshot ID|latest"),
    (["golden", "record", "--url", "http://127.0.0.1:9", "--region", "primary"], "--region goes with --snapshot"),
    (["golden", "check"], "give --url URL or --region REGION (one of them)"),
    (["golden", "check", "--url", "http://127.0.0.1:9", "--region", "primary"], "one of them"),
    (["golden", "check", "--region", "primary"], "has no serving: section"),
])
def test_golden_commands_refuse_bad_input_clearly(cfg, args, message):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "llmdr.cli", "--config", str(cfg.source_file), *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not cfg.golden_path.exists(), "nothing written"
