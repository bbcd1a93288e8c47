"""The monitor's probes as live Prometheus counters and histograms.

The monitor (``llmdr monitor`` or the monitor-endpoints flow, another process) writes every probe to its sqlite
sample store; :class:`ProbeFeed` tails that store by row number and observes each new sample once. Counting starts
when the feed is made (an exporter restart is a counter reset, which ``rate()`` and ``increase()`` handle), so a
restart never replays a week of history as one burst.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from llmdr.failover.monitor import Sample, SampleStore
from llmdr.metrics.catalog import BY_NAME, LATENCY_BUCKETS, TOKEN_BUCKETS

log = logging.getLogger(__name__)


def error_reason(s: Sample) -> str | None:
    """The ``reason`` label of a failed probe (``ERROR_REASONS``), ``golden_mismatch`` for an answered probe whose
    answer was wrong, None for a good probe."""
    if s.ok:
        return "golden_mismatch" if s.golden_ok is False else None
    if (s.error or "").startswith("timeout"):
        return "timeout"
    if s.status is None:
        return "connection"
    if 400 <= s.status < 500:
        return "http_4xx"
    if s.status >= 500:
        return "http_5xx"
    return "bad_response"


class ProbeFeed:
    """Counters and histograms of the probes written to ``store`` after the feed was made (``from_row``: after that
    row instead, 0 for everything kept). ``update`` reads what is new; ``collect`` yields the families."""

    def __init__(self, store: SampleStore, bundle: str, *, from_row: int | None = None) -> None:
        from prometheus_client import Counter, Histogram

        self.store = store
        self.bundle = bundle
        self.row = store.last_row() if from_row is None else from_row
        self._lock = threading.Lock()

        def make(cls, name: str, **kw):
            d = BY_NAME[name]
            return cls(name, d.help, list(d.labels), registry=None, **kw)

        self.probes = make(Counter, "llmdr_endpoint_probes")
        self.errors = make(Counter, "llmdr_endpoint_probe_errors")
        self.latency = make(Histogram, "llmdr_endpoint_probe_latency_seconds", buckets=LATENCY_BUCKETS)
        self.tokens = make(Histogram, "llmdr_endpoint_completion_tokens", buckets=TOKEN_BUCKETS)

    def observe(self, s: Sample) -> None:
        labels = (self.bundle, s.target)
        self.probes.labels(*labels).inc()
        reason = error_reason(s)
        if reason is not None:
            self.errors.labels(*labels, reason).inc()
        if s.ok:
            if s.latency_s is not None:
                self.latency.labels(*labels).observe(s.latency_s)
            if s.tokens is not None:
                self.tokens.labels(*labels).observe(s.tokens)

    def update(self) -> int:
        """Observe every sample written since the last update; returns how many."""
        n = 0
        with self._lock:
            while True:
                rows = self.store.rows_after(self.row)
                for row, s in rows:
                    self.observe(s)
                    self.row = row
                n += len(rows)
                if len(rows) < 10_000:
                    return n

    def collect(self) -> Iterator:
        for metric in (self.probes, self.errors, self.latency, self.tokens):
            yield from metric.collect()
