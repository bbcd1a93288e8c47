"""The Prometheus exporter, scraped over HTTP as Prometheus would: RPO age from the real regions' catalogs, the
monitor's real probes as histograms, the run records, drill reports and failover history, the readiness score; the
exporter `llmdr stack up` starts; and the alert rules and Grafana dashboard in docs/, which may only name metrics the
exporter exports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from llmdr.config import parse_config
from llmdr.drill.record import DrillRecord, drills_dir
from llmdr.errors import ConfigError, StackError
from llmdr.failover.steps import FailoverRecord, append_history
from llmdr.metrics.catalog import METRICS, family_of
from llmdr.metrics.server import open_exporter
from llmdr.repo import ops
from llmdr.serving.tinymodel import write_demo_bundle
from tests.support.config import OFFLINE_CONFIG, copy_keys, fresh_prefix, two_region_yaml, two_regions, write_config
from tests.support.ports import free_port
from tests.support.serving import serving

ROOT = Path(__file__).resolve().parent.parent
LLMDR = [sys.executable, "-m", "llmdr.cli"]


def scrape(url: str) -> dict:
    """``{family name: family}`` of one scrape of ``url``/metrics, parsed by prometheus_client's own parser."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict, sample: str, **labels: str) -> float | None:
    """The value of the sample named ``sample`` whose labels include ``labels``; None when there is none."""
    fam = family_of(sample)
    assert fam is not None, f"{sample} is not in the catalogue"
    got = [s.value for s in (fams[fam.name].samples if fam.name in fams else [])
           if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(got) <= 1, f"{sample}{labels}: {len(got)} samples"
    return got[0] if got else None


def drill(cfg, started_ts: float, passed: bool, rto_s: float | None) -> None:
    rec = DrillRecord(bundle=cfg.bundle.name, started_ts=started_ts, started_by={"kind": "cli"}, tool_version="t",
                      scope={}, ended_ts=started_ts + 60, passed=passed,
                      measurements={"rto_s": rto_s, "rpo_s": 42.0})
    folder = drills_dir(cfg) / rec.id
    folder.mkdir(parents=True)
    (folder / "evidence.json").write_text(json.dumps(rec.to_json()))


@pytest.fixture
def bundle_dir(tmp_path) -> Path:
    write_demo_bundle(tmp_path / "model")
    return tmp_path / "model"


def served_project(stack, tmp_path, url: str, *, extra: str = "metrics: {cache: 0s}"):
    """A fresh-prefix project on the session's regions with its own state folder: the primary's endpoint is
    ``url`` (a real model server), the secondary's a closed port."""
    copy_keys(stack, tmp_path / ".llmdr")
    return two_regions(stack, tmp_path, bundle="{name: testbundle, path: model}", state=tmp_path / ".llmdr",
                       primary=f'    serving: {{url: "{url}"}}',
                       secondary=f'    serving: {{url: "http://127.0.0.1:{free_port()}"}}',
                       extra=extra)


def test_scrape_over_http_reports_what_llmdr_knows(stack, tmp_path, bundle_dir):
    from llmdr.drill.readiness import run_checks
    from llmdr.failover.watch import Watcher

    with serving(bundle_dir) as url:
        cfg = served_project(stack, tmp_path, url)
        sid = ops.snapshot_bundle(cfg).snapshot_id  # the primary holds one snapshot, the secondary none
        assert ops.verify(cfg, "latest", region="primary", hidden={}).ok  # as `llmdr verify` calls it: recorded
        rep = run_checks(cfg)  # a full readiness run records its score
        now = time.time()
        drill(cfg, now - 7200, False, None)
        drill(cfg, now - 3600, True, 12.5)
        append_history(cfg, FailoverRecord("failover", cfg.bundle.name, "primary", "secondary", "automation", "down",
                                           started_ts=now - 600, ok=True, rto_s=4.25))
        watcher = Watcher(cfg, emit=lambda *a: True)  # the monitor's own loop, one round at a time
        exporter = open_exporter(cfg, "127.0.0.1", 0)
        exporter.start_thread()
        try:
            for _ in range(3):
                watcher.run_round()
            fams = scrape(exporter.url)
            with urllib.request.urlopen(f"{exporter.url}/", timeout=30) as r:
                page = r.read().decode()
            with urllib.request.urlopen(f"{exporter.url}/healthz", timeout=5) as r:
                assert r.read() == b"ok\n"
            with pytest.raises(urllib.error.HTTPError) as nf:
                urllib.request.urlopen(f"{exporter.url}/nothing", timeout=5)
            assert nf.value.code == 404
        finally:
            exporter.shutdown()
            exporter.close()
            watcher.store.close()

    # every family is in the catalogue, with its HELP text, type and the bundle label
    known = {m.name: m for m in METRICS}
    for name, fam in fams.items():
        assert name in known and fam.documentation == known[name].help and fam.type == known[name].kind, name
        assert all(s.labels["bundle"] == "testbundle" for s in fam.samples), name
    # RPO age: small and sane where the snapshot is fresh; absent where the region holds none (documented)
    age = value(fams, "llmdr_rpo_age_seconds", region="primary")
    assert age is not None and 0 <= age < 120
    assert value(fams, "llmdr_rpo_age_seconds", region="secondary") is None
    assert value(fams, "llmdr_region_has_snapshot", region="primary") == 1
    assert value(fams, "llmdr_region_has_snapshot", region="secondary") == 0
    assert value(fams, "llmdr_region_catalog_up", region="secondary") == 1
    assert value(fams, "llmdr_rpo_objective_seconds") == 300
    # the monitor's probes: three rounds, each probing both endpoints
    assert value(fams, "llmdr_endpoint_probes_total", endpoint="primary") == 3
    assert value(fams, "llmdr_endpoint_probe_latency_seconds_count", endpoint="primary") == 3
    assert 0 < value(fams, "llmdr_endpoint_probe_latency_seconds_sum", endpoint="primary") < 30
    assert value(fams, "llmdr_endpoint_probe_latency_seconds_bucket", endpoint="primary", le="+Inf") == 3
    assert value(fams, "llmdr_endpoint_completion_tokens_count", endpoint="primary") == 3
    assert value(fams, "llmdr_endpoint_probe_errors_total", endpoint="primary", reason="connection") is None
    assert value(fams, "llmdr_endpoint_probe_errors_total", endpoint="secondary", reason="connection") == 3
    assert value(fams, "llmdr_endpoint_probe_latency_seconds_count", endpoint="secondary") in (None, 0)
    assert value(fams, "llmdr_endpoint_status", endpoint="secondary", status="down") == 1  # down_after: 3
    assert value(fams, "llmdr_endpoint_status", endpoint="primary", status="unknown") == 1  # 3 of 10 samples
    assert value(fams, "llmdr_endpoint_error_ratio", endpoint="secondary") == 1
    assert now - 60 < value(fams, "llmdr_endpoint_last_probe_timestamp_seconds", endpoint="primary") <= time.time()
    assert value(fams, "llmdr_endpoint_anomaly_score", endpoint="primary", signal="latency") is None  # no baseline
    assert value(fams, "llmdr_endpoint_anomaly_threshold") == 4.0
    # histories and run records
    assert now - 300 < value(fams, "llmdr_verify_last_success_timestamp_seconds", region="primary") <= time.time()
    assert value(fams, "llmdr_verify_last_success_timestamp_seconds", region="secondary") is None
    assert value(fams, "llmdr_readiness_score") == pytest.approx(rep.score / 100)
    assert value(fams, "llmdr_readiness_checks", status="FAIL") == len(rep.failed) > 0  # the secondary is empty
    assert value(fams, "llmdr_drill_last_success_timestamp_seconds") == pytest.approx(now - 3600)
    assert value(fams, "llmdr_drill_last_run_timestamp_seconds") == pytest.approx(now - 3600)
    assert value(fams, "llmdr_drills_total", result="passed") == 1
    assert value(fams, "llmdr_drills_total", result="failed") == 1
    assert value(fams, "llmdr_drill_last_rto_seconds") == 12.5
    assert value(fams, "llmdr_failover_last_rto_seconds") == 4.25
    assert value(fams, "llmdr_failovers_total", kind="failover", result="ok") == 1
    assert value(fams, "llmdr_protect_last_success_timestamp_seconds") is None  # no protect-bundle run here
    # the HTML view shows the same values
    assert "llmdr_rpo_age_seconds" in page and "llmdr metrics: bundle testbundle" in page and sid not in page
    assert re.search(r"<td class=n>\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ \(\d+ s ago\)</td>", page)  # times as times


def test_unreachable_region_is_a_value_and_the_cache_spares_the_stores(stack, tmp_path):
    from llmdr.metrics.collector import LlmdrCollector

    copy_keys(stack, tmp_path / ".llmdr")
    closed = free_port()
    cfg = two_regions(stack, tmp_path, state=tmp_path / ".llmdr", secondary_endpoint=f"http://127.0.0.1:{closed}",
                      extra="metrics: {cache: 1h}")
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "a.bin").write_bytes(b"x" * 1000)
    first_sid = ops.snapshot_bundle(cfg).snapshot_id
    collector = LlmdrCollector(cfg, region_timeout=60)
    exporter = open_exporter(cfg, "127.0.0.1", 0, collector=collector)
    exporter.start_thread()
    try:
        t0 = time.monotonic()
        first = scrape(exporter.url)
        assert time.monotonic() - t0 < 30
        assert value(first, "llmdr_region_catalog_up", region="secondary") == 0
        assert value(first, "llmdr_region_has_snapshot", region="secondary") is None
        assert value(first, "llmdr_rpo_age_seconds", region="secondary") is None
        assert value(first, "llmdr_region_catalog_up", region="primary") == 1
        (tmp_path / "bundle" / "b.bin").write_bytes(b"y" * 1000)
        newer = ops.snapshot_bundle(cfg).snapshot_id  # not seen until the cache expires
        time.sleep(1.1)
        second = scrape(exporter.url)
        stamp = "llmdr_metrics_refresh_timestamp_seconds"
        assert value(second, stamp) == value(first, stamp)  # the regions were not read again
        # the age grows at every scrape all the same (computed from the cached snapshot time)
        assert value(second, "llmdr_rpo_age_seconds", region="primary") >= \
            value(first, "llmdr_rpo_age_seconds", region="primary") + 1
        assert collector.reading().regions["primary"].snapshot == first_sid
        assert collector.refresh().regions["primary"].snapshot == newer != first_sid  # the next read sees it
    finally:
        exporter.shutdown()
        exporter.close()


def test_damaged_records_cost_their_own_metrics_not_the_scrape(tmp_path):
    """Hand-edited or torn run records, drill reports and failover history, and regions nothing answers on: each
    leaves out only its own values; the scrape still answers with everything else."""
    from prometheus_client import CollectorRegistry, generate_latest

    from llmdr.metrics.collector import LlmdrCollector

    cfg = write_config(tmp_path / "llmdr.yaml", OFFLINE_CONFIG)  # nothing listens on its regions' ports
    runs = cfg.state_path / "runs"
    runs.mkdir(parents=True)
    (runs / "readiness.json").write_text(json.dumps({"operation": "readiness", "region": None, "ts": 1e9,
                                                     "detail": {"score": "high", "checks": "all"}}))
    (runs / "protect.json").write_text("{torn")
    (runs / "verify@secondary.json").write_text(json.dumps({"operation": "verify", "region": "secondary",
                                                            "ts": 1.5e9, "detail": {}}))
    drill(cfg, 1.6e9, True, "fast")  # a measurement that is not a number
    (drills_dir(cfg) / "torn").mkdir()
    (drills_dir(cfg) / "torn" / "evidence.json").write_text("{not json")
    (cfg.state_path / "failover").mkdir()
    (cfg.state_path / "failover" / "history.jsonl").write_text("garbage\n")
    collector = LlmdrCollector(cfg, region_timeout=30)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        fams = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    finally:
        collector.close()
    assert value(fams, "llmdr_readiness_last_run_timestamp_seconds") == 1e9
    assert value(fams, "llmdr_readiness_score") is None and "llmdr_readiness_checks" not in fams
    assert value(fams, "llmdr_protect_last_success_timestamp_seconds") is None
    assert value(fams, "llmdr_verify_last_success_timestamp_seconds", region="secondary") == 1.5e9
    assert value(fams, "llmdr_drill_last_success_timestamp_seconds") == 1.6e9
    assert value(fams, "llmdr_drill_last_rto_seconds") is None and value(fams, "llmdr_drill_last_rpo_seconds") == 42
    assert "llmdr_failovers" not in fams
    assert value(fams, "llmdr_region_catalog_up", region="primary") == 0
    assert value(fams, "llmdr_rpo_objective_seconds") == 300


def test_bad_listen_addresses_and_taken_ports_are_refused(tmp_path):
    for bad, why in (("http://127.0.0.1:18309", "no scheme"), ("127.0.0.1", "host:port"),
                     ("127.0.0.1:99999", "1 to 65535"), (":18309", "host:port")):
        with pytest.raises(ConfigError, match=rf"metrics\.listen(?s:.*){re.escape(why)}"):
            parse_config(OFFLINE_CONFIG + f"metrics: {{listen: '{bad}'}}\n", source=tmp_path / "llmdr.yaml")
    v6 = parse_config(OFFLINE_CONFIG + "metrics: {listen: '[::1]:9100'}\n", source=tmp_path / "a.yaml").metrics
    assert (v6.host, v6.port, v6.listen) == ("::1", 9100, "[::1]:9100")
    # a local stack whose region already uses the exporter's port
    text = two_region_yaml(18300, 18400, local=True, extra="metrics: {listen: '127.0.0.1:18305'}")
    with pytest.raises(ConfigError, match="metrics.listen .* wants port 18305, already used by primary"):
        parse_config(text, source=tmp_path / "b.yaml")
    cfg = parse_config(OFFLINE_CONFIG, source=tmp_path / "llmdr.yaml")
    first = open_exporter(cfg, "127.0.0.1", 0)
    try:
        with pytest.raises(StackError, match=r"the port is in use .* set metrics\.listen .* --listen HOST:PORT"):
            open_exporter(cfg, "127.0.0.1", first.httpd.server_address[1])
    finally:
        first.close()
    path = write_config(tmp_path / "llmdr.yaml", OFFLINE_CONFIG).source_file
    r = subprocess.run([*LLMDR, "--config", str(path), "metrics", "serve", "--listen", "localhost"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--listen 'localhost' is not host:port" in r.stderr and "Traceback" not in r.stderr


def test_stack_up_starts_the_exporter_and_status_shows_it(stack, tmp_path):
    """`llmdr stack up` on the session's running regions (idempotent for them) starts the exporter detached on
    metrics.listen; `stack status` shows it; it is stopped by PID (what `stack down` calls)."""
    from llmdr.common.process import alive
    from llmdr.metrics import service

    port = free_port()
    text = two_region_yaml(stack.primary.port, stack.secondaries[0].port, prefix=fresh_prefix(), local=True,
                           state_dir=stack.state_path, extra=f"metrics: {{listen: '127.0.0.1:{port}', cache: 0s}}")
    cfg = write_config(tmp_path / "llmdr.yaml", text)
    try:
        r = subprocess.run([*LLMDR, "--config", str(cfg.source_file), "stack", "up", "--no-serving", "--json"],
                           capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr
        ex = json.loads(r.stdout)["metrics"]
        assert ex["healthy"] and ex["started"] and ex["url"] == f"http://127.0.0.1:{port}" and not ex["error"]
        fams = scrape(ex["url"])  # the detached exporter reads the regions with the keys of local.env
        assert value(fams, "llmdr_region_catalog_up", region="primary") == 1
        assert value(fams, "llmdr_region_has_snapshot", region="primary") == 0
        r = subprocess.run([*LLMDR, "--config", str(cfg.source_file), "stack", "status"], capture_output=True,
                           text=True, timeout=60)
        assert re.search(rf"^metrics +serving +{ex['pid']} +http://127\.0\.0\.1:{port}/metrics", r.stdout, re.M)
        again = service.start(cfg)  # idempotent
        assert again.pid == ex["pid"] and not again.started
    finally:
        stopped = service.stop(cfg)
    assert stopped == ex["pid"] and not alive(stopped) and service.status(cfg).pid is None


def test_exporter_started_with_the_stack_stops_when_the_stack_is_gone(tmp_path):
    from llmdr.metrics.server import stop_with_stack

    text = two_region_yaml(free_port(), free_port(), local=True, state_dir=tmp_path / ".llmdr")  # never started
    cfg = parse_config(text, source=tmp_path / "llmdr.yaml")
    exporter = open_exporter(cfg, "127.0.0.1", 0)
    try:
        thread = exporter.start_thread()
        stop_with_stack(cfg, exporter, every=0.1)
        thread.join(timeout=10)
        assert not thread.is_alive()
    finally:
        exporter.close()
    no_local = parse_config(OFFLINE_CONFIG, source=tmp_path / "x.yaml")
    assert stop_with_stack(no_local, exporter) is None  # no local region: nothing to watch


def test_every_failed_probe_gets_one_reason_from_the_fixed_set():
    from llmdr.failover.monitor import Sample
    from llmdr.metrics.catalog import ERROR_REASONS
    from llmdr.metrics.probes import error_reason

    def s(ok, status, error, golden_ok=None):
        return Sample(0.0, "primary", "http://127.0.0.1:1", ok, 0.1, status, error, 3 if ok else None, golden_ok)

    cases = {"timeout": s(False, None, "timeout"), "connection": s(False, None, "connection refused"),
             "http_4xx": s(False, 404, "HTTP 404: no such model"), "http_5xx": s(False, 503, "HTTP 503: busy"),
             "bad_response": s(False, 200, "bad response: no choices[0] text"),
             "golden_mismatch": s(True, 200, "golden case g1: answer differs", golden_ok=False)}
    assert {k: error_reason(v) for k, v in cases.items()} == {k: k for k in cases}
    assert set(cases) == set(ERROR_REASONS)
    assert error_reason(s(False, 200, "timeout (answered after 2.5 s)")) == "timeout"
    assert error_reason(s(True, 200, None, golden_ok=True)) is None and error_reason(s(True, 200, None)) is None


# --------------------------------------------------------------------------------------- docs that cannot rot
PROMQL_WORDS = {"time", "absent", "rate", "increase", "sum", "by", "on", "group_left", "histogram_quantile", "max",
                "min", "unless", "or", "and", "le", "abs", "vector", "up", "job", "bool", "clamp_min", "without",
                "changes"}


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bllmdr_[a-z0-9_]+", expr))


def test_alert_rules_parse_and_name_exported_metrics():
    doc = yaml.safe_load((ROOT / "docs" / "prometheus" / "llmdr-alerts.yml").read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    by_name = {r["alert"]: r for r in rules}
    for r in rules:
        assert set(r) >= {"alert", "expr", "labels", "annotations"} and r["labels"]["severity"] in (
            "critical", "warning"), r
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        names = _metric_names(r["expr"])
        assert names, f"{r['alert']}: its expr names no llmdr metric"
        unknown = [n for n in names if family_of(n) is None]
        assert not unknown, f"{r['alert']}: {unknown} are not exported"
        assert r["expr"].count("(") == r["expr"].count(")"), r["alert"]
        calls = set(re.findall(r"\b([a-z_]+)\s*\(", r["expr"])) - names  # functions and operators before "("
        assert calls <= PROMQL_WORDS, f"{r['alert']}: {calls - PROMQL_WORDS}"
    wanted = {"LlmdrRPOExceeded": "llmdr_rpo_age_seconds", "LlmdrNoRecentDrill": "100 * 86400",
              "LlmdrReadinessBelowFull": "llmdr_readiness_score < 1", "LlmdrEndpointDown": 'status="down"',
              "LlmdrEndpointAnomaly": "llmdr_endpoint_anomaly_score"}
    for alert, needle in wanted.items():
        assert needle in by_name[alert]["expr"], alert


def test_dashboard_queries_name_exported_metrics():
    board = json.loads((ROOT / "docs" / "grafana" / "llmdr.json").read_text())
    panels = [p for p in board["panels"] if p.get("type") != "row"]
    titles = " | ".join(p["title"] for p in panels)
    for needle in ("RPO age", "latency p50", "p95", "errors", "Anomaly score", "drill", "verify", "RTO"):
        assert needle.lower() in titles.lower(), needle
    used = set()
    for p in panels:
        assert p["targets"], p["title"]
        for t in p["targets"]:
            names = _metric_names(t["expr"])
            assert names, f"{p['title']}: {t['expr']}"
            assert all(family_of(n) for n in names), f"{p['title']}: {names}"
            used |= {family_of(n).name for n in names}
    assert "llmdr_endpoint_probe_latency_seconds" in used and "llmdr_rpo_age_seconds" in used


def test_guide_documents_every_metric():
    guide = (ROOT / "docs" / "guide" / "metrics.md").read_text()
    missing = [m.name for m in METRICS if f"`{m.name}_total`" not in guide and f"`{m.name}`" not in guide]
    assert not missing, f"docs/guide/metrics.md does not document {missing}"


def test_a_refresh_finds_the_probe_targets_without_walking_every_sample(tmp_path):
    """The exporter lists the monitor's targets at every refresh; a week of 2 s probes is ~300,000 samples per target.
    Work is counted in SQLite VM steps (deterministic), not in seconds."""
    from llmdr.failover.monitor import Sample, SampleStore

    store = SampleStore(tmp_path / "samples.sqlite")
    assert store.targets() == []
    names = ["secondary", "primary", "dr-west"]
    store.add(Sample(float(i), names[i % 3], "http://x", True, 0.1, 200, None, 12, None, None) for i in range(60_000))
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    with store._connect() as con:
        con.set_progress_handler(count, 100)  # called every 100 VM steps
    try:
        assert store.targets() == sorted(names)
    finally:
        with store._connect() as con:
            con.set_progress_handler(None, 100)
        store.close()
    assert steps < 20, f"{steps * 100} SQLite steps to list 3 targets of 60,000 samples: a walk over every sample"


def test_a_silent_connection_to_the_exporter_is_closed(tmp_path, monkeypatch):
    """Each connection has a thread: an idle or trickling client must not keep it forever."""
    import socket

    from llmdr.metrics import server

    monkeypatch.setattr(server, "READ_TIMEOUT_S", 1.0)
    cfg = parse_config(OFFLINE_CONFIG, source=tmp_path / "llmdr.yaml")
    exporter = open_exporter(cfg, "127.0.0.1", 0)
    exporter.start_thread()
    try:
        with socket.create_connection(("127.0.0.1", exporter.httpd.server_address[1]), timeout=30) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
            assert s.recv(4096) == b""  # closed by the server (a socket timeout here fails the test)
        with urllib.request.urlopen(f"{exporter.url}/healthz", timeout=30) as r:  # others are still served
            assert r.status == 200
    finally:
        exporter.shutdown()
        exporter.close()
