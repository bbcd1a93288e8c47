"""A region's ``hardware:`` field: where the monitor reads that region's GPUs from, and the limits the hardware
early warning judges them by (docs/guide/serving-and-failover.md, "GPU hardware early warning")."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from llmdr.config.values import StrictModel, http_url, parse_duration


class Hardware(StrictModel):
    """GPU health for the hardware early warning: a source that lists the region's GPUs with their temperature,
    power, clock-event (throttle) reasons, ECC counters, retired pages and remapped rows, and the limits a GPU is
    judged by. ``nvidia-smi`` and ``command`` run on the host that runs the monitor (put a monitor on the GPU host,
    or use dcgm-exporter, which is read over HTTP)."""

    # nvidia-smi: run `nvidia-smi --query-gpu=... --format=csv,noheader,nounits` (and --query-remapped-rows) here;
    # dcgm-exporter: GET url (NVIDIA's dcgm-exporter, Prometheus text); command: run command, which prints
    # nvidia-smi's --query-gpu CSV (with its header line, or the default fields without); none: no GPU health.
    source: Literal["none", "nvidia-smi", "dcgm-exporter", "command"] = "none"
    # The dcgm-exporter metrics URL, e.g. http://gpu-node-1:9400/metrics (source: dcgm-exporter only).
    url: str | None = None
    # The command's argv, e.g. [ssh, gpu-node-1, nvidia-smi, --query-gpu=..., --format=csv,nounits] (source:
    # command only). Its standard output is parsed (one block is stamped with the poll time; a longer series keeps
    # its timestamp column, read as UTC); a non-zero exit is a failed poll.
    command: list[str] | None = None
    # A command printing the kernel log, for Xid events (not a --query-gpu field), e.g. [journalctl, -k, -o,
    # short-iso, --since, -2h] or [dmesg, -T]; its NVRM Xid lines are matched to GPUs by PCI bus id. Null: Xids
    # only from dcgm-exporter's DCGM_FI_DEV_XID_ERRORS.
    xid_command: list[str] | None = None
    # Time between two reads of the source by the monitor.
    interval: timedelta = timedelta(seconds=30)
    # How long one read may take (command, HTTP request); a slower one is a failed poll.
    timeout: timedelta = timedelta(seconds=10)
    # The temperature (°C) that the forecast counts the hours to: a few degrees under the GPU's slowdown
    # temperature (`nvidia-smi -q -d TEMPERATURE`: GPU Slowdown Temp; about 90 °C on A100/H100 boards). At or above
    # it a GPU is degraded.
    temperature_limit: float = Field(default=85.0, gt=0, le=150)
    # A rise of the temperature trend (°C per hour, least squares over trend_window, or over its second half when
    # steeper) from which a GPU whose recent temperature is also above its baseline (robust z >= z_threshold) is
    # degraded.
    temperature_rise_per_hour: float = Field(default=3.0, gt=0)
    # How far back the trend lines (temperature, corrected ECC errors) are drawn.
    trend_window: timedelta = timedelta(hours=2)
    # Degraded when a trend line reaches temperature_limit within this time (the early warning).
    forecast_horizon: timedelta = timedelta(hours=6)
    # Robust z-score (median and MAD, as the endpoint monitor's) of recent temperature or power against the GPU's
    # baseline from which it counts as changed.
    z_threshold: float = Field(default=4.0, gt=0)
    # Corrected (single-bit) ECC errors per hour, over the last hour, from which a GPU is degraded (at least 3, and
    # 4 times the rate before): a rising rate comes before uncorrectable errors.
    corrected_ecc_per_hour: float = Field(default=10.0, gt=0)
    # Readings that make a GPU's baseline: the last N before the recent window.
    baseline_window: int = Field(default=120, ge=10)
    # The newest N readings: their medians are judged against the baseline.
    recent_window: int = Field(default=10, ge=3)
    # After a notice about a GPU, no other notice about it for this long unless it gets worse (degraded ->
    # critical).
    notify_cooldown: timedelta = timedelta(hours=1)

    @field_validator("interval", "timeout", "trend_window", "forecast_horizon", "notify_cooldown", mode="before")
    @classmethod
    def _dur(cls, v: Any) -> timedelta:
        return parse_duration(v)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and urlsplit(v).username is not None:  # the value is not repeated: it holds a password
            raise ValueError("must not carry user:password@ (not shown here): credentials never go in llmdr.yaml; "
                             "keep dcgm-exporter on a network only the monitor reaches")
        return None if v is None else http_url(v, "http://gpu-node-1:9400/metrics")

    @model_validator(mode="after")
    def _source_needs(self) -> "Hardware":
        if self.source == "dcgm-exporter" and not self.url:
            raise ValueError("source: dcgm-exporter needs url, e.g. http://gpu-node-1:9400/metrics")
        if self.source != "dcgm-exporter" and self.url:
            raise ValueError("url is for source: dcgm-exporter only")
        if self.source == "command" and not self.command:
            raise ValueError("source: command needs command, an argv list printing nvidia-smi --query-gpu CSV")
        if self.source != "command" and self.command:
            raise ValueError("command is for source: command only")
        if self.command is not None and not all(isinstance(a, str) and a for a in self.command):
            raise ValueError("command must be a list of non-empty strings (an argv)")
        if self.xid_command is not None and not (self.xid_command and all(self.xid_command)):
            raise ValueError("xid_command must be a non-empty argv list, e.g. [journalctl, -k, -o, short-iso]")
        if self.interval.total_seconds() < 1 or self.timeout.total_seconds() <= 0:
            raise ValueError("interval must be at least 1s and timeout more than 0s")
        return self
