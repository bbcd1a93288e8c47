"""bench/fleet.py's Markdown report: protect throughput by worker count, warm RTO by topology, the checks."""

from __future__ import annotations


def _f(v, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def slot_waits(waited: dict[str, float]) -> dict[str, float]:
    """Seconds waited per concurrency limit, the per-bundle protect limits summed as one."""
    out: dict[str, float] = {}
    for name, secs in sorted(waited.items()):
        key = "protect-(each bundle)" if name.startswith("llmdr-protect-") else name.removeprefix("llmdr-")
        out[key] = out.get(key, 0.0) + secs
    return out


def protect_lines(p: dict) -> list[str]:
    mb = p["total_bytes"] / 1e6
    lines = ["## A. Protect throughput by worker count", "",
             f"{len(p['bundles'])} bundles ({', '.join(p['bundles'])}), {mb:.1f} MB in all, one project with "
             f"`bundles:`; Prefect server on {p['database']}; control plane started in "
             f"{_f(p.get('control_plane_start_s'), '.0f')} s. One run of every `protect-bundle-<b>` created at once "
             "through the API at each level, into new repositories (fresh key prefix, caches deleted): cold "
             f"protects of the same content. `transfer.region_slots` {p['transfer_region_slots']} (Prefect's global "
             "limit `llmdr-transfer-<region>`).", "",
             "| workers | completed | wall s | bundles/min | MB/s | most protecting at once (task spans) | most runs "
             "running at once | first run started after s | runs per worker | waited for slots, s (all runs) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for lv in p["levels"]:
        per = ", ".join(f"{k} {v}" for k, v in sorted(lv["runs_per_worker"].items()))
        waits = ", ".join(f"{k} {v:.1f}" for k, v in slot_waits(lv["slot_wait_s"]).items())
        lines.append(f"| {lv['workers']} | {lv['completed']}/{lv['runs_created']} | {_f(lv['wall_s'])} | "
                     f"{_f(lv['bundles_per_min'])} | {_f(lv['mb_s'], '.1f')} | {lv['overlap_protecting']} | "
                     f"{lv['overlap_runs']} | {_f(lv['first_start_s'])} | {per} | {waits or '-'} |")
    bad = [(lv["workers"], r) for lv in p["levels"] for r in lv["runs"] if r["state"] != "Completed"]
    for n, r in bad:
        lines.append(f"\nNOT COMPLETED ({n} workers): {r['bundle']} {r['state']}: {r.get('message') or ''}")
    return lines


def rto_lines(r: dict) -> list[str]:
    lines = ["## B. Warm failover RTO: DR region's runner vs one worker", "",
             f"bench/rto.py's stack and trials (tiny model, {r['bundle_mb']} MB; monitor every 1 s, down after 2 "
             f"failed probes; client through the router every 100 ms); Prefect server on {r['database']}.", ""]
    for key, title in (("dr_runner", "(i) today"), ("single_worker", "(ii) old")):
        lines.append(f"- {title}: {r[key]['topology']}.")
    lines += ["", "| topology | trial | RTO s | detection s | dispatch s (automation + pickup) | recovery s | "
              "client requests failed | answers after from DR |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for key, name in (("dr_runner", "DR runner"), ("single_worker", "single worker")):
        for i, t in enumerate(r[key]["trials"], 1):
            lines.append(f"| {name} | {i} | {_f(t['rto_s'])} | {_f(t.get('detection_s'))} | {_f(t.get('dispatch_s'))} "
                         f"({_f(t.get('automation_s'))} + {_f(t.get('pickup_s'))}) | {_f(t.get('recovery_s'))} | "
                         f"{t['client_failed_during']}/{t['client_requests_during']} | "
                         f"{'all ok' if t['client_ok_after'] else 'FAILURES'} |")
    lines += ["", "| topology | median RTO s | detection s | dispatch s | automation s | pickup s | recovery s |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for key, name in (("dr_runner", "DR runner"), ("single_worker", "single worker")):
        m = r[key].get("median") or {}
        lines.append(f"| {name} | {_f(m.get('rto_s'))} | {_f(m.get('detection_s'))} | {_f(m.get('dispatch_s'))} | "
                     f"{_f(m.get('automation_s'))} | {_f(m.get('pickup_s'))} | {_f(m.get('recovery_s'))} |")
    d = r.get("dead_worker")
    if d:
        runs = ", ".join(d["failover_runs_created"]) or "none"
        lines += ["", f"(iii) The lone worker lost with the region (replica, S3 server and the worker with its flow "
                  f"runs, the monitor among them): waited {d['waited_s']:.0f} s (`objectives.rto`, a drill's wait) → "
                  f"failover started: **{'yes' if d['failover_started'] else 'no'}**; failover runs created: {runs}; "
                  f"router still on `{d['router_active_after']}`; last monitor round "
                  f"{d['last_monitor_round_after_outage_s']:+.1f} s from the outage; client requests failed "
                  f"{d['client_failed']}/{d['client_requests']}."]
    return lines


def render_markdown(res: dict) -> str:
    m = res["machine"]
    load = lambda v: "/".join(f"{x:.1f}" for x in v)  # noqa: E731
    lines = [f"# Fleet bench ({res['started']}){' — smoke run' if res['smoke'] else ''}", "",
             f"{m['cpus']} CPUs, llmdr {m['git']}, bytecode cache {'on' if m['bytecode_cache'] else 'off'}; load "
             f"average (1/5/15 min) {load(m['load_avg_start'])} at the start, {load(m['load_avg_end'])} at the end "
             f"(this machine is shared: a high one means other work ran meanwhile); {res['total_s']:.0f} s in all.", ""]
    lines += protect_lines(res["protect"]) + [""] + rto_lines(res["rto"])
    for part, key in (("A", "protect"), ("B", "rto")):
        ph = res[key].get("phases_s") or {}
        lines.append(f"\nWhere part {part}'s time went (s): " + ", ".join(f"{k} {v:.0f}" for k, v in ph.items()) + ".")
    lines += ["", "| check | value | goal | verdict |", "|---|---|---|---|"]
    for c in res["checks"]:
        lines.append(f"| {c['name']} | {c['value']} | {c['goal']} | {c['verdict']} |")
    lines += ["", "Notes:",
              "- Wall time: from just before the first run is created to the last run's end (Prefect's end time; "
              "server and bench on this host). MB/s = bundle bytes ÷ wall. First run started after: creation → the "
              "first flow run Running, i.e. the worker's poll (1 s) and a new Python process per run importing "
              "Prefect, llmdr and the flow, every run at once on the same cores.",
              "- Runs per worker (from each run's log: \"Worker 'NAME' submitting flow run\"): a process worker "
              "without `--limit` takes every scheduled run it sees at one poll, so the runs go to whichever workers "
              "polled while they were being created (often one takes them all) and one worker alone already runs "
              "every bundle side by side; the overlap columns show whether more workers changed that. "
              "Extra workers spread runs only with a per-worker `--limit` (or a pool limit), and add capacity only "
              "on other hosts: here they share the same 2 cores.",
              "- Protecting at once: the most runs between their first task's start and last task's end at one "
              "instant (a run waiting for its bundle's slot has started but runs no task; one waiting inside its "
              "snapshot or copy task for a `llmdr-transfer-<region>` slot counts); runs running at once: the same "
              "from each flow run's start and end. Waited for slots: the seconds each run's log says it waited for "
              "each Prefect concurrency limit, summed over the level's runs.",
              "- RTO: first failed probe of the primary → first golden-correct answer through the router (the failover "
              "record); detection → the monitor's event; dispatch: event → automation → run → picked up and started "
              "(the runner hands it to a pre-imported process; a process worker starts a new Python process); "
              "recovery: confirm, replica, golden set, router switch, golden set through the router.",
              "- MLflow model registration and the metrics exporter are off in part A; 2 cores shared by the "
              "servers, PostgreSQL, every worker and every flow run."]
    return "\n".join(lines) + "\n"
