"""Every metric the exporter serves: name, type, labels and HELP text, in one table.

The collector builds its families from here, docs/guide/metrics.md documents each one, and the tests check that the
alert rules (docs/prometheus/llmdr-alerts.yml) and the Grafana dashboard (docs/grafana/llmdr.json) only name metrics
listed here, so none of them can drift from what is exported.

Conventions (https://prometheus.io/docs/practices/naming/): the ``llmdr_`` prefix, base units (``_seconds``),
``_total`` on counters, ``_timestamp_seconds`` for Unix times; labels ``bundle`` (every metric), ``region`` (a
configured region), ``endpoint`` (a monitored target: a region's name, or ``router``).
"""

from __future__ import annotations

from dataclasses import dataclass

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"

# latency of one probe (a short completion) and completion tokens per answer
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKEN_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# why a probe failed, as the errors counter's ``reason`` label (a fixed set: the full text is in the monitor's store)
ERROR_REASONS = ("timeout", "connection", "http_4xx", "http_5xx", "bad_response", "golden_mismatch")


@dataclass(frozen=True)
class MetricDef:
    name: str  # the family name; a counter's samples add _total, a histogram's _bucket, _sum and _count
    kind: str
    labels: tuple[str, ...]
    help: str
    source: str  # where the value comes from, for the guide

    @property
    def sample_names(self) -> tuple[str, ...]:
        if self.kind == COUNTER:
            return (f"{self.name}_total",)
        if self.kind == HISTOGRAM:
            return tuple(f"{self.name}_{s}" for s in ("bucket", "sum", "count"))
        return (self.name,)


B, BR, BE = ("bundle",), ("bundle", "region"), ("bundle", "endpoint")
BRG = ("bundle", "region", "gpu")  # gpu: the GPU's uuid, as its health source reports it

METRICS: tuple[MetricDef, ...] = (
    # live, from the monitor's probes (counted since this exporter started; rate() and increase() handle restarts)
    MetricDef("llmdr_endpoint_probes", COUNTER, BE,
              "Probes of the endpoint made by the monitor (llmdr monitor / monitor-endpoints).", "probe store"),
    MetricDef("llmdr_endpoint_probe_errors", COUNTER, (*BE, "reason"),
              "Failed probes of the endpoint, by reason: timeout, connection, http_4xx, http_5xx, bad_response, "
              "golden_mismatch (answered, but not the recorded golden answer).", "probe store"),
    MetricDef("llmdr_endpoint_probe_latency_seconds", HISTOGRAM, BE,
              "Time from request to complete answer of the endpoint's answered probes.", "probe store"),
    MetricDef("llmdr_endpoint_completion_tokens", HISTOGRAM, BE,
              "Completion tokens per answered probe (usage.completion_tokens).", "probe store"),
    # the monitor's verdict, recomputed from its sample store
    MetricDef("llmdr_endpoint_status", GAUGE, (*BE, "status"),
              "1 for the endpoint's current status (healthy, degraded, down, unknown), 0 for the others.",
              "monitor verdict"),
    MetricDef("llmdr_endpoint_anomaly_score", GAUGE, (*BE, "signal"),
              "Robust z-score of the recent window against the learned baseline: signal latency (slower is "
              "positive) or tokens (absolute, either way). At or above llmdr_endpoint_anomaly_threshold the "
              "monitor calls the endpoint degraded. Absent until the baseline has enough samples.",
              "monitor verdict"),
    MetricDef("llmdr_endpoint_anomaly_threshold", GAUGE, B,
              "The monitor's z_threshold: the anomaly score from which an endpoint is degraded.", "config"),
    MetricDef("llmdr_endpoint_error_ratio", GAUGE, BE,
              "Share of failed probes in the monitor's recent window (0 to 1).", "monitor verdict"),
    MetricDef("llmdr_endpoint_last_probe_timestamp_seconds", GAUGE, BE,
              "Unix time of the endpoint's newest probe (an old one means the monitor is not running).",
              "monitor verdict"),
    MetricDef("llmdr_active_region", GAUGE, BR,
              "1 for the region the router sends traffic to (as the router's switch record says), 0 for the others.",
              "router record"),
    # GPU health, from the monitor's hardware store (regions[].hardware); judged as `llmdr hardware status` does
    MetricDef("llmdr_gpu_status", GAUGE, (*BRG, "status"),
              "1 for the GPU's current health (healthy, degraded, critical, unknown), 0 for the others: ECC and Xid "
              "errors, throttling, a temperature or power creep against the GPU's own baseline.", "hardware store"),
    MetricDef("llmdr_gpu_temperature_celsius", GAUGE, BRG,
              "The GPU's temperature in its newest reading.", "hardware store"),
    MetricDef("llmdr_gpu_power_watts", GAUGE, BRG,
              "The GPU's power draw in its newest reading.", "hardware store"),
    MetricDef("llmdr_gpu_hours_to_limit", GAUGE, BRG,
              "Forecast hours until the GPU's rising trend (temperature) reaches its limit; absent without a rising "
              "trend.", "hardware store"),
    MetricDef("llmdr_gpu_last_reading_timestamp_seconds", GAUGE, BRG,
              "Unix time of the GPU's newest reading (an old one: the monitor or the health source is not running).",
              "hardware store"),
    # the regions' stores, read at most once per cache period
    MetricDef("llmdr_rpo_age_seconds", GAUGE, BR,
              "Age of the newest snapshot of the bundle in the region (by the store's clock when the writer's runs "
              "ahead). Absent when the region holds none or cannot be read: see llmdr_region_has_snapshot and "
              "llmdr_region_catalog_up.", "catalog head"),
    MetricDef("llmdr_region_has_snapshot", GAUGE, BR,
              "1 when the region holds at least one snapshot of the bundle, 0 when it holds none; absent when the "
              "region cannot be read.", "catalog head"),
    MetricDef("llmdr_region_catalog_up", GAUGE, BR,
              "1 when the region's snapshot catalog was read at the last refresh, 0 when it failed (unreachable, "
              "credentials, damaged catalog).", "catalog head"),
    MetricDef("llmdr_rpo_objective_seconds", GAUGE, B, "objectives.rpo: the most the newest DR copy may lag.",
              "config"),
    MetricDef("llmdr_rto_objective_seconds", GAUGE, B, "objectives.rto: the time allowed from outage to correct "
              "answers from the DR region.", "config"),
    MetricDef("llmdr_drill_interval_seconds", GAUGE, B, "objectives.drill_interval: a passing DR drill is due at "
              "least this often.", "config"),
    # histories on disk
    MetricDef("llmdr_protect_last_success_timestamp_seconds", GAUGE, B,
              "Unix time the last protect-bundle run (snapshot, copies verified, retention) succeeded.",
              "run records"),
    MetricDef("llmdr_verify_last_success_timestamp_seconds", GAUGE, BR,
              "Unix time of the last verify that read the region's snapshot back and found it sound.", "run records"),
    MetricDef("llmdr_readiness_score", GAUGE, B,
              "Score of the last full readiness run, 0 to 1 (share of checks passed, a WARN counts half).",
              "run records"),
    MetricDef("llmdr_readiness_last_run_timestamp_seconds", GAUGE, B, "Unix time the last full readiness run "
              "started.", "run records"),
    MetricDef("llmdr_readiness_checks", GAUGE, (*B, "status"),
              "Checks of the last full readiness run by status (PASS, WARN, FAIL).", "run records"),
    MetricDef("llmdr_drill_last_success_timestamp_seconds", GAUGE, B,
              "Unix time the newest passing DR drill started (its signed report is on disk).", "drill reports"),
    MetricDef("llmdr_drill_last_run_timestamp_seconds", GAUGE, B, "Unix time the newest DR drill started, passed "
              "or not.", "drill reports"),
    MetricDef("llmdr_drills", COUNTER, (*B, "result"), "DR drills with a report on disk, by result (passed, "
              "failed).", "drill reports"),
    MetricDef("llmdr_drill_last_rto_seconds", GAUGE, B, "RTO measured by the newest drill that recovered (as its "
              "report defines it).", "drill reports"),
    MetricDef("llmdr_drill_last_rpo_seconds", GAUGE, B, "RPO measured by the newest drill: age of the DR copy at "
              "the outage.", "drill reports"),
    MetricDef("llmdr_failovers", COUNTER, (*B, "kind", "result"),
              "Failovers and failbacks in the failover history, by kind (failover, failback) and result (ok, "
              "failed, noop).", "failover history"),
    MetricDef("llmdr_failover_last_rto_seconds", GAUGE, B,
              "RTO of the newest successful failover: first failed probe (or run start) to the first "
              "golden-correct answer through the router.", "failover history"),
    MetricDef("llmdr_failover_last_timestamp_seconds", GAUGE, (*B, "kind"),
              "Unix time the newest failover or failback started.", "failover history"),
    # the exporter itself
    MetricDef("llmdr_metrics_refresh_timestamp_seconds", GAUGE, B,
              "Unix time the exporter last read the stores and histories (scrapes in between reuse it).", "exporter"),
    MetricDef("llmdr_metrics_refresh_duration_seconds", GAUGE, B, "How long that read took.", "exporter"),
)

BY_NAME = {m.name: m for m in METRICS}


def family_of(sample_name: str) -> MetricDef | None:
    """The metric a sample name (as written in PromQL: ``_total``, ``_bucket``... included) belongs to."""
    for m in METRICS:
        if sample_name in m.sample_names or sample_name == m.name:
            return m
    return None
