"""GPU hardware early warning: read each region's GPUs, learn every GPU's normal, and say early when one is heading
for trouble (issue #19, item 4).

- ``readings``: one GPU's numbers at one time (:class:`GpuReading`) and the parsers of what NVIDIA's tools print:
  ``nvidia-smi --query-gpu`` / ``--query-remapped-rows`` CSV, dcgm-exporter's Prometheus text, and kernel-log
  ``NVRM: Xid`` lines.
- ``sources``: where a region's readings come from (``regions[].hardware.source``): ``nvidia-smi`` run on this host,
  a ``dcgm-exporter`` scraped over HTTP, or a ``command`` that prints the nvidia-smi CSV. A source never raises for
  a missing tool, a dead exporter or garbage output: it returns a :class:`~llmdr.hardware.sources.Poll` with the
  reason, and the GPUs it could read.
- ``store``: the readings in an sqlite file next to the endpoint monitor's samples.
- ``detect``: the verdict per GPU (healthy / degraded / critical / unknown) with reasons, the trends behind them and
  a forecast of when a trend line reaches a known limit.
- ``monitor``: polls the sources in the background, keeps the readings, judges the GPUs and says which changed
  status (and whether that is worth a notice: once per GPU per ``notify_cooldown``, sooner when it gets worse).

Pure core: no Prefect. The endpoint monitor (:mod:`llmdr.failover.watch`) runs ``monitor`` and emits the events and
the notices.
"""
