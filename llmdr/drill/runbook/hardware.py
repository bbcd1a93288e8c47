"""The runbook's "GPU hardware early warning" part of section 3: which regions' GPUs are read and how, and what to do
on ``llmdr.hardware.degraded``: find the GPU, pre-warm the DR standby, drain, fail over by hand if the endpoint
follows, reset or replace the GPU."""

from __future__ import annotations

from llmdr.config.hardware import Hardware
from llmdr.drill.runbook.text import Context, code, console, dur, safe_url, table


def _source(hw: Hardware) -> str:
    if hw.source == "dcgm-exporter":
        return f"dcgm-exporter at {safe_url(hw.url or '')}"
    if hw.source == "command":
        return f"command `{' '.join(hw.command or [])[:60]}`"
    return "nvidia-smi on the monitor's host"


def hardware(c: Context) -> list[str]:
    cfg = c.cfg
    read = [(r, r.hardware) for r in cfg.regions if r.hardware is not None and r.hardware.source != "none"]
    lines = ["", "### GPU hardware early warning", ""]
    if not read:
        return lines + ["No region reads its GPUs' health (`regions[].hardware`): a GPU that overheats, throttles or "
                        "collects ECC errors is only seen once the endpoint degrades. Add e.g. `hardware: {source: "
                        "nvidia-smi}` (or `dcgm-exporter` with its url) to each GPU region."]
    lines += table(["region", "source", "read every", "temperature limit", "notices at most every"],
                   [[r.name, _source(hw), dur(hw.interval), f"{hw.temperature_limit:g} °C", dur(hw.notify_cooldown)]
                    for r, hw in read])
    t = c.target
    lines += ["",
              "The monitor learns each GPU's normal (temperature, power at the same load, corrected ECC rate) and "
              "flags a GPU **degraded** on a temperature creep whose trend line reaches the limit within the "
              "forecast horizon, hardware thermal or power-brake throttling, a rising corrected-ECC rate, pending "
              "retired pages or row remaps, Xid 63/92/94; **critical** on uncorrected ECC errors, pages retired for "
              "double-bit errors, a failed row remap, Xid 48/64/74/79/95/119/120/140, or a GPU no longer listed. "
              "Each becomes the event `llmdr.hardware.degraded` (Prefect UI → Events; resource "
              f"`llmdr.hardware.{c.bundle}.<region>.<GPU uuid>`) and a notice (severity warning / critical) with the "
              "reasons, the trend and the forecast.", "",
              "On `llmdr.hardware.degraded` in the active region (with `stack up --ui` and "
              "`failover.prewarm_on_degraded` on, an automation has already run the standby's pre-warm; check it):",
              ""]
    standby = [(c.cmd("hardware status --region <region>"), "which GPU, why, the trend, hours to the limit"),
               (c.cmd(f"replica start {t.name} --snapshot latest"), f"pre-warm the DR standby in {t.name}"),
               (c.cmd("status"), f"{t.name}'s replica: running, on the latest snapshot")]
    if t.serving:
        standby.append((c.cmd(f"golden check --url {safe_url(t.serving.url)}"), "the standby answers right"))
    lines += console(cfg, standby)
    by_hand = c.cmd(f"failover --to {t.name} --reason 'GPU critical in <region>'")
    lines += ["",
              "1. **Degraded** (early warning): pre-warm the standby (above), then drain the GPU before the "
              "forecast runs out: stop scheduling work on it (restart the replica without it, e.g. "
              "`CUDA_VISIBLE_DEVICES`, or `kubectl cordon` / `kubectl drain` its node), and look at the cause "
              "(airflow, fans, a neighbour's heat, the power supply).",
              "2. **Critical**: drain it now. If the endpoint it serves degrades or errors (`llmdr.endpoint.degraded` "
              f"/ `.down`), fail over by hand without waiting for the automation: {code(by_hand)} "
              "(section 4).",
              "3. Once drained: a pending row remap or page retirement is applied by a GPU reset "
              "(`nvidia-smi -r -i <index>`) or a reboot; a failed remap, repeated double-bit errors or Xid 79 mean "
              "replacing the GPU (RMA). Keep the kernel log (`journalctl -k | grep 'NVRM: Xid'`) for the vendor.",
              "4. The GPU is healthy again when `llmdr.hardware.recovered` arrives or "
              f"{code(c.cmd('hardware status'))} says so; fail back (section 6) if traffic moved."]
    return lines
