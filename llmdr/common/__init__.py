"""Small helpers every layer may use: ``files`` (atomic writes, bundled executables), ``gcpause`` (the garbage
collector paused while start-up builds many objects), ``net`` (is an endpoint reachable at all), ``process`` (local
helper processes: PID files checked against the command line, alive, terminate, log tails, ports), ``progress``
(progress reporting: a protocol, none, or periodic lines), ``runs`` (when protect, verify and readiness last
completed, read by the metrics exporter) and ``units`` (sizes and rates as people read them: MB).

Imports nothing from llmdr except ``llmdr.errors``.
"""
