"""Endpoint monitoring: the anomaly rules on seeded synthetic series evaluated sample by sample, probes against a real
tiny model server and small http.server stand-ins for broken ones, and the sqlite sample store shared by processes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest

from llmdr.config import Monitor
from llmdr.failover.monitor import Assessment, Sample, SampleStore, assess, assess_all, probe, samples_frame
from llmdr.serving.endpoint import OpenAIEndpoint
from llmdr.serving.golden import Gate, GoldenCase
from llmdr.serving.tinymodel import write_demo_bundle
from tests.support.ports import free_port
from tests.support.serving import serving

SETTINGS = Monitor()  # the defaults: down after 3, baseline 120, recent 10, z 4, error rate 20 %
T0 = 1_800_000_000.0
STEP = 2.0  # seconds between probes
WINDOW = 2 * SETTINGS.baseline_window + SETTINGS.recent_window  # what assess_all reads per target


# ------------------------------------------------------------------------------------------- synthetic series


def series(latency, ok=None, tokens=None, golden=None, target="primary"):
    """A probe history: one sample every STEP seconds; failed samples carry no tokens."""
    n = len(latency)
    ok = np.ones(n, bool) if ok is None else np.asarray(ok, bool)
    tokens = np.full(n, 8) if tokens is None else np.asarray(tokens)
    golden = [None] * n if golden is None else golden
    return [Sample(ts=T0 + STEP * i, target=target, url="http://127.0.0.1:1", ok=bool(ok[i]),
                   latency_s=float(latency[i]), status=200 if ok[i] else None,
                   error=None if ok[i] else "timeout", tokens=int(tokens[i]) if ok[i] else None,
                   golden_ok=golden[i]) for i in range(n)]


def replay(samples, settings=SETTINGS) -> list[Assessment]:
    """assess() after every sample, on the newest WINDOW samples, as assess_all would see them."""
    frame = samples_frame(samples)
    return [assess(frame.iloc[max(0, i + 1 - WINDOW): i + 1], settings) for i in range(len(frame))]


def noisy_latency(rng, n, median=0.05, sigma=0.2):
    """Lognormal jitter around ``median`` plus a heavy tail: 2 % of requests take 3-6x longer (GC, cold cache)."""
    lat = median * rng.lognormal(0.0, sigma, n)
    spikes = rng.random(n) < 0.02
    lat[spikes] *= rng.uniform(3, 6, spikes.sum())
    return lat


def first(statuses, wanted, start=0):
    return next(i for i, a in enumerate(statuses) if i >= start and a.status in wanted)


def test_steady_noise_with_spikes_and_isolated_errors_is_never_flagged():
    rng = np.random.default_rng(20261127)
    n = 500
    ok = np.ones(n, bool)
    ok[np.arange(37, n, 50)] = False  # a lone failed probe every 50: 10 % of a window, under the 20 % threshold
    tokens = rng.integers(6, 9, n)  # a short completion that sometimes stops early
    statuses = replay(series(noisy_latency(rng, n), ok, tokens))
    assert [a.status for a in statuses[:SETTINGS.recent_window - 1]] == ["unknown"] * (SETTINGS.recent_window - 1)
    late = statuses[SETTINGS.recent_window - 1:]
    assert {a.status for a in late} == {"healthy"}
    assert all(a.reasons == [] for a in late)
    # the anomaly checks did run (the test would pass vacuously if they were always skipped)
    zs = [a.evidence["latency"]["z"] for a in late if "z" in a.evidence["latency"]]
    assert len(zs) > 400 and max(zs) < SETTINGS.z_threshold
    assert statuses[-1].evidence["error_rate"] == 0.1 or statuses[-1].evidence["error_rate"] == 0.0


def test_latency_creep_is_flagged_before_the_first_error():
    rng = np.random.default_rng(7)
    n, creep_from = 420, 300
    k = np.arange(n)
    latency = noisy_latency(rng, n) * np.where(k >= creep_from, 1.02 ** (k - creep_from), 1.0)
    # the client's patience is 3x normal: past that, some requests fail, then all do
    trend = 1.02 ** np.maximum(k - creep_from, 0)
    ok = ~((trend > 3) & (rng.random(n) < 0.4))
    ok[trend > 4] = False
    first_error = int(np.flatnonzero(~ok)[0])
    statuses = replay(series(latency, ok))

    flagged = first(statuses, {"degraded", "down"})
    assert creep_from < flagged < first_error, (creep_from, flagged, first_error)
    lead = first_error - flagged
    assert lead >= 10  # samples of warning: 20 s at the default 2 s interval
    assert "latency median" in statuses[flagged].reasons[0] and "above baseline" in statuses[flagged].reasons[0]
    assert statuses[flagged].evidence["latency"]["z"] >= SETTINGS.z_threshold
    assert statuses[flagged].evidence["recent_errors"] == 0  # not a single error yet
    assert all(a.status in ("degraded", "down") for a in statuses[flagged:])  # stays flagged as it worsens
    assert statuses[-1].status == "down"


def test_error_burst_degrades_then_downs_then_recovers():
    rng = np.random.default_rng(11)
    n, burst, burst_len = 260, 200, 10
    ok = np.ones(n, bool)
    ok[burst: burst + burst_len] = False
    samples = series(noisy_latency(rng, n), ok)
    statuses = replay(samples)
    assert [a.status for a in statuses[burst - 1: burst + 3]] == ["healthy", "healthy", "degraded", "down"]
    assert "2 of the last 10 probes failed" in statuses[burst + 1].reasons[0]
    down = statuses[burst + burst_len - 1]
    assert down.status == "down" and down.evidence["consecutive_failures"] == burst_len
    assert down.evidence["first_failure_ts"] == samples[burst].ts  # the RTO clock starts at the first failure
    assert "the last 10 probes failed" in down.reasons[0] and "timeout" in down.reasons[0]
    # recovery: the window still holds >= 2 failures for 8 samples, then it is clean enough
    after = burst + burst_len
    assert {a.status for a in statuses[after: after + 8]} == {"degraded"}
    assert statuses[after].evidence["first_failure_ts"] is None
    assert {a.status for a in statuses[after + 8:]} == {"healthy"}


@pytest.mark.parametrize("new_tokens,direction", [((0, 2), "below"), ((240, 257), "above")])
def test_tokens_per_response_anomaly_both_ways(new_tokens, direction):
    rng = np.random.default_rng(3)
    n, change = 320, 300
    tokens = rng.integers(20, 40, n)  # chat answers of varying length
    tokens[change:] = rng.integers(*new_tokens, n - change)  # then empty (or runaway) answers, still HTTP 200
    statuses = replay(series(noisy_latency(rng, n), tokens=tokens))
    assert {a.status for a in statuses[SETTINGS.recent_window - 1: change]} == {"healthy"}
    flagged = first(statuses, {"degraded"})
    assert change <= flagged <= change + SETTINGS.recent_window // 2
    assert any(f"robust z {direction} baseline" in r and r.startswith("tokens per response") for r in
               statuses[flagged].reasons)


def test_flat_baseline_does_not_make_jitter_infinite():
    n, step_at = 260, 240
    latency = np.full(n, 0.050)  # MAD = 0: every sample identical
    latency[200:step_at] = 0.050 + np.tile([0.0005, 0.001, 0.0015, 0.002], 10)  # sub-ms jitter appears
    latency[step_at:] = 0.100  # then a real slowdown
    statuses = replay(series(latency))
    quiet = statuses[SETTINGS.recent_window - 1: step_at]
    assert {a.status for a in quiet} == {"healthy"}
    assert all(np.isfinite(a.evidence["latency"]["z"]) for a in quiet if "z" in a.evidence["latency"])
    assert statuses[step_at - 1].evidence["latency"]["baseline_mad"] == 0
    slow = statuses[-1]
    assert slow.status == "degraded" and np.isfinite(slow.evidence["latency"]["z"])
    assert slow.evidence["latency"]["z"] >= SETTINGS.z_threshold


def test_golden_failure_stays_flagged_until_a_check_passes():
    rng = np.random.default_rng(5)
    n = 260
    golden = [None] * n
    for i in range(0, n, SETTINGS.golden_every):
        golden[i] = i not in (200,)  # the spot-check at 200 fails, the one at 210 passes again
    statuses = replay(series(noisy_latency(rng, n), golden=golden))
    assert {a.status for a in statuses[SETTINGS.recent_window: 200]} == {"healthy"}
    assert {a.status for a in statuses[200: 210]} == {"degraded"}
    assert any("golden spot-check" in r for r in statuses[205].reasons)
    assert {a.status for a in statuses[210:]} == {"healthy"}
    assert statuses[209].evidence["golden"] == {"recent_checks": 1, "recent_failed": 1, "last_ts": T0 + 400.0,
                                                "last_ok": False}
    # with golden checks rarer than the window, a wrong model stays flagged until the next check passes
    rare = [None] * n
    rare[100], rare[200] = True, False
    late = replay(series(noisy_latency(rng, n), golden=rare))[-1]
    assert late.status == "degraded" and "latest golden spot-check failed" in late.reasons[0]


def test_first_failure_ts_is_the_start_of_the_current_streak():
    ok = [True, False, True, False, False, False]
    samples = series(np.full(6, 0.05), ok)
    a = assess(samples_frame(samples), SETTINGS)
    assert a.status == "down" and a.evidence["first_failure_ts"] == samples[3].ts
    assert a.evidence["consecutive_failures"] == 3
    assert json.loads(json.dumps(a.to_json()))["evidence"]["first_failure_ts"] == samples[3].ts


def test_too_little_data_is_unknown_but_down_is_declared_early():
    few = assess(samples_frame(series(np.full(5, 0.05))), SETTINGS)
    assert few.status == "unknown" and "5 samples so far" in few.reasons[0]
    assert assess(samples_frame([]), SETTINGS).status == "unknown"
    two = assess(samples_frame(series(np.full(2, 0.05), [False, False])), SETTINGS)
    assert two.status == "unknown" and two.evidence["consecutive_failures"] == 2
    three = assess(samples_frame(series(np.full(3, 0.05), [False] * 3)), SETTINGS)
    assert three.status == "down" and three.evidence["first_failure_ts"] == T0
    # a custom down_after is honoured
    assert assess(samples_frame(series(np.full(2, 0.05), [False] * 2)), Monitor(down_after=2)).status == "down"


# ------------------------------------------------------------------------------------------------- probes


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    bundle = tmp_path_factory.mktemp("monitor") / "tiny"
    write_demo_bundle(bundle)
    with serving(bundle) as url:
        yield url


class _Broken(BaseHTTPRequestHandler):
    """Endpoints that fail in the ways real ones do, chosen by path prefix."""

    release = threading.Event()
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status, body: bytes, ctype="application/json", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/slow/"):
            self.release.wait(10)  # longer than any probe timeout here
            self._send(200, b"{}")
        elif self.path.startswith("/trickle/"):  # each byte in time, the whole answer too late
            body = json.dumps({"choices": [{"index": 0, "text": "pong"}], "usage": {"completion_tokens": 1}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for i in range(0, len(body), 8):
                self.wfile.write(body[i: i + 8])
                self.wfile.flush()
                self.release.wait(0.1)
        elif self.path.startswith("/unavailable/"):
            self._send(503, json.dumps({"error": {"message": "no replica ready"}}).encode(),
                       headers=[("X-Llmdr-Region", "secondary")])
        elif self.path.startswith("/garbage/"):
            self._send(200, b"<html>maintenance</html>", "text/html")
        elif self.path.startswith("/routed/"):
            body = {"choices": [{"index": 0, "text": "pong", "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
            self._send(200, json.dumps(body).encode(), headers=[("X-Llmdr-Region", "secondary")])
        else:
            self._send(404, b"{}")


@pytest.fixture(scope="module")
def broken():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Broken)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        _Broken.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def test_probe_a_real_model_server(tiny):
    s = probe("primary", tiny, timeout=10, model="llmdr-tiny")
    assert s.ok and s.status == 200 and s.error is None and s.golden_ok is None and s.region is None
    assert 0 < s.tokens <= 8 and s.latency_s > 0
    assert s.target == "primary" and s.url == tiny
    assert set(s.to_json()) == {"ts", "target", "url", "ok", "latency_s", "status", "error", "tokens", "golden_ok",
                                "region"}


def test_probe_wrong_model_is_a_failed_sample(tiny):
    s = probe("primary", tiny, timeout=10, model="gpt-9")
    assert not s.ok and s.status == 404 and s.error.startswith("HTTP 404: The model 'gpt-9' does not exist")


@pytest.mark.parametrize("case", [
    GoldenCase("chat", "", messages=[{"role": "user", "content": "how do I restore a snapshot ?"}]),
    GoldenCase("text", "", prompt="the river and", max_tokens=5),
])
def test_golden_probe_passes_with_the_recorded_answer_and_fails_with_another(tiny, case):
    case.expected = OpenAIEndpoint(tiny).answer(case)  # record, as `llmdr golden record` does
    good = probe("primary", tiny, timeout=10, golden=case)
    assert good.ok and good.golden_ok is True and good.error is None and good.tokens > 0
    wrong = GoldenCase(case.id, case.expected + " and more", case.messages, case.prompt, case.max_tokens)
    bad = probe("primary", tiny, timeout=10, golden=wrong)
    assert bad.ok and bad.golden_ok is False  # the endpoint answered; the answer is wrong
    assert f"golden case {case.id}: answer differs (similarity" in bad.error
    # the bundle's golden_gate judges the spot-check as it judges a failover: a near answer passes a similarity gate
    near = probe("primary", tiny, timeout=10, golden=wrong, gate=Gate("similarity", threshold=0.5))
    assert near.golden_ok is True and near.error is None
    strict = probe("primary", tiny, timeout=10, golden=wrong, gate=Gate("similarity", threshold=0.99))
    assert strict.golden_ok is False and "answer differs (similarity score " in strict.error and "< 0.99)" in strict.error


def test_probe_closed_port():
    s = probe("secondary", f"http://127.0.0.1:{free_port()}", timeout=2)
    assert not s.ok and s.status is None and s.tokens is None and "refused" in s.error


def test_probe_timeout(broken):
    s = probe("primary", broken + "/slow", timeout=0.3)
    assert not s.ok and s.error == "timeout" and s.status is None and s.latency_s is not None


def test_probe_answer_trickling_past_the_timeout(broken):
    s = probe("primary", broken + "/trickle", timeout=0.4)  # the socket timeout alone is per read: never trips here
    assert not s.ok and s.error.startswith("timeout") and s.tokens is None


def test_probe_503(broken):
    s = probe("router", broken + "/unavailable", timeout=2)
    assert not s.ok and s.status == 503 and s.error == "HTTP 503: no replica ready" and s.region == "secondary"


def test_probe_malformed_answer(broken):
    s = probe("primary", broken + "/garbage", timeout=2)
    assert not s.ok and s.status == 200 and s.error.startswith("bad response")


def test_probe_records_the_region_behind_the_router(broken):
    s = probe("router", broken + "/routed", timeout=2)
    assert s.ok and s.region == "secondary" and s.tokens == 1


def test_probe_raises_for_programming_errors():
    with pytest.raises(ValueError):
        probe("primary", "not a url", timeout=1)
    with pytest.raises(ValueError):
        probe("primary", "http://127.0.0.1:1", timeout=0)


# -------------------------------------------------------------------------------------------------- store


def test_store_round_trip(tmp_path):
    store = SampleStore(tmp_path / "monitor" / "samples.sqlite")
    samples = [
        Sample(T0, "primary", "http://127.0.0.1:1", True, 0.05, 200, None, 8, None),
        Sample(T0 + 1, "primary", "http://127.0.0.1:1", True, 0.07, 200, "golden case c: answer differs", 5, False),
        Sample(T0 + 2, "router", "http://127.0.0.1:2", True, 0.06, 200, None, 8, True, region="secondary"),
        Sample(T0 + 3, "primary", "http://127.0.0.1:1", False, None, None, "connection refused", None, None),
    ]
    store.add(reversed(samples))  # insertion order does not matter: frames are in time order
    back = store.frame()
    rows = [{k: None if pd.isna(v) else v for k, v in r.items()} for r in back.astype(object).to_dict("records")]
    assert rows == [s.to_json() for s in samples]
    assert back["ok"].dtype == bool and str(back["golden_ok"].dtype) == "boolean"
    assert store.targets() == ["primary", "router"]
    assert list(store.frame("primary")["ts"]) == [T0, T0 + 1, T0 + 3]
    assert list(store.frame("primary", limit=2)["ts"]) == [T0 + 1, T0 + 3]  # the newest two, oldest first
    assert list(store.frame(since=T0 + 2)["ts"]) == [T0 + 2, T0 + 3]
    assert store.prune(older_than=T0 + 2) == 2
    assert list(store.frame()["ts"]) == [T0 + 2, T0 + 3]
    assert store.prune(older_than=T0) == 0


def test_two_stores_on_one_file(tmp_path):
    path = tmp_path / "samples.sqlite"
    a, b = SampleStore(path), SampleStore(path)
    a.add(series(np.full(3, 0.05), target="primary"))
    b.add(series(np.full(2, 0.06), target="secondary"))
    assert a.targets() == b.targets() == ["primary", "secondary"]
    assert len(b.frame("primary")) == 3 and len(a.frame("secondary")) == 2


def test_concurrent_writer_process(tmp_path):
    """Another process writes while this one writes and reads: nothing lost, no 'database is locked'."""
    path = tmp_path / "samples.sqlite"
    SampleStore(path)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from llmdr.failover.monitor import Sample, SampleStore\n"
        "store = SampleStore(Path(sys.argv[1]))\n"
        "for i in range(100):\n"
        "    store.add([Sample(1e9 + i, 'other', 'u', True, 0.01, 200, None, 8, None)])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)])
    store = SampleStore(path)
    for i in range(100):
        store.add([Sample(1e9 + i, "mine", "u", True, 0.01, 200, None, 8, None)])
        store.frame("other")  # reads interleaved with the other process's writes
    assert proc.wait(timeout=60) == 0
    assert len(store.frame("mine")) == 100 and len(store.frame("other")) == 100


def test_assess_all(tmp_path):
    store = SampleStore(tmp_path / "samples.sqlite")
    rng = np.random.default_rng(1)
    store.add(series(noisy_latency(rng, 40), target="primary"))
    ok = np.ones(40, bool)
    ok[10:] = False  # a 30-sample streak: longer than the frame assess_all reads with these settings
    secondary = series(noisy_latency(rng, 40), ok, target="secondary")
    store.add(secondary)
    settings = Monitor(baseline_window=10, recent_window=3)
    now = T0 + STEP * 40
    result = assess_all(store, settings, now=now)
    assert {t: a.status for t, a in result.items()} == {"primary": "healthy", "secondary": "down"}
    assert result["secondary"].evidence["first_failure_ts"] == secondary[10].ts
    assert result["secondary"].evidence["consecutive_failures"] == 30
    assert "the last 30 probes failed" in result["secondary"].reasons[0]
    assert result["primary"].evidence["age_s"] == pytest.approx(STEP)
    # nobody has probed for an hour: the last verdict says nothing about now
    stale = assess_all(store, settings, now=now + 3600)
    assert {a.status for a in stale.values()} == {"unknown"}
    assert stale["secondary"].evidence["stale_status"] == "down" and "is the monitor running" in \
        stale["secondary"].reasons[0]
