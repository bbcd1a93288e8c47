"""Golden sets: file format errors, exact and similarity comparison, and record/check against a real server."""

import json
import subprocess
import sys
import time
import urllib.request

import pytest

from llmdr.errors import UsageError
from llmdr.serving import golden
from llmdr.serving.tinymodel import write_demo_bundle
from tests.support.ports import free_port

LLMDR = [sys.executable, "-m", "llmdr.cli"]


def test_round_trip_and_compare(tmp_path):
    cases = golden.default_cases(["a b", "c d"])
    gs = golden.record(cases, lambda c: c.messages[0]["content"].upper(), {"model": "m"})
    gs.save(tmp_path / "g.jsonl")
    back = golden.GoldenSet.load(tmp_path / "g.jsonl")
    assert back.header == {"model": "m"} and [c.expected for c in back.cases] == ["A B", "C D"]
    report = golden.check(back, lambda c: "A B" if c.id == "chat-1" else "C X")
    assert not report.ok and report.passed == 1
    assert report.results[1].similarity == pytest.approx(0.5)
    failing = golden.check(back, lambda c: (_ for _ in ()).throw(RuntimeError("endpoint down")))
    assert [r.error for r in failing.results] == ["endpoint down", "endpoint down"]


@pytest.mark.parametrize("content,message", [
    ('{"golden": 1}\n{"id": "x", "expected": "y"', ":2: not valid JSON"),
    ('{"id": "x", "prompt": "p"}', ":1: a case needs 'expected'"),
    ('{"id": "x", "prompt": "p", "messages": [], "expected": "y"}', ":1: a case has either messages or prompt"),
    ('{"golden": 1}', "holds no cases"),
])
def test_bad_golden_files(tmp_path, content, message):
    p = tmp_path / "g.jsonl"
    p.write_text(content)
    with pytest.raises(UsageError, match=message):
        golden.GoldenSet.load(p)


def test_missing_golden_file_says_how_to_record(tmp_path):
    with pytest.raises(UsageError, match="llmdr golden record"):
        golden.GoldenSet.load(tmp_path / "none.jsonl")


def _serve(bundle):
    port = free_port()
    proc = subprocess.Popen(LLMDR + ["serve", str(bundle), "--port", str(port)], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("server did not start")


def test_record_then_check_against_real_servers(tmp_path):
    good = tmp_path / "good"
    write_demo_bundle(good)
    changed = tmp_path / "changed"
    write_demo_bundle(changed)
    g = json.loads((changed / "generation_config.json").read_text())
    g["repetition_penalty"] = 1.0
    (changed / "generation_config.json").write_text(json.dumps(g))
    p1, url1 = _serve(good)
    p2, url2 = _serve(changed)
    try:
        out = tmp_path / "golden.jsonl"
        r = subprocess.run(LLMDR + ["golden", "record", "--url", url1, "--out", str(out)], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert len(out.read_text().splitlines()) == 1 + len(golden.DEFAULT_PROMPTS)
        r = subprocess.run(LLMDR + ["golden", "check", "--url", url1, "--golden", str(out)], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0 and f"{len(golden.DEFAULT_PROMPTS)}/{len(golden.DEFAULT_PROMPTS)}" in r.stdout
        r = subprocess.run(LLMDR + ["golden", "check", "--url", url2, "--golden", str(out), "--json"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 5
        rep = json.loads(r.stdout)
        assert not rep["ok"] and rep["passed"] < rep["total"]
    finally:
        for p in (p1, p2):
            p.terminate()
            p.wait(timeout=10)
    r = subprocess.run(LLMDR + ["golden", "check", "--url", url1, "--golden", str(out)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "cannot reach" in r.stderr and "Traceback" not in r.stderr
