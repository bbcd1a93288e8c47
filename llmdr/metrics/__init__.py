"""Prometheus metrics for SREs: what the monitor measures (probe latency, errors, tokens, the anomaly score and each
endpoint's status), how old each region's newest snapshot is (RPO age), when protect, verify, readiness and the last
DR drill last succeeded, failovers and their RTO.

``catalog`` (every metric: name, type, labels, HELP), ``probes`` (the monitor's probes as live counters and
histograms), ``collector`` (reads the rest at scrape time, with a short cache), ``server`` (the HTTP server:
/metrics, an HTML view, /healthz) and ``service`` (the exporter `llmdr stack up` starts and `stack down` stops).

Sits above ``llmdr.drill`` (it reads the drill reports and readiness records) and below ``tasks``; imports neither
Prefect nor boto3.
"""
