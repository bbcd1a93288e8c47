"""Report content built from plain results (no Prefect here): markdown for flow artifacts."""

from __future__ import annotations


def _mb(n: int | float) -> str:
    return f"{n / 1e6:,.1f} MB"


def protect_summary_markdown(bundle: str, snap: dict, copies: list[dict]) -> str:
    rate = snap["bytes_read"] / snap["duration_s"] / 1e6 if snap["duration_s"] else 0.0
    lines = [
        f"# protect-bundle: {bundle}",
        "",
        f"Snapshot `{snap['snapshot_id'][:12]}` created {snap['created']} in **{snap['region']}**.",
        "",
        "| step | region | snapshot | bytes total | bytes new | deduplicated | duration s | MB/s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
        f"| snapshot | {snap['region']} | {snap['snapshot_id'][:12]} | {_mb(snap['bytes_total'])} | "
        f"{_mb(snap['bytes_new'])} | {_mb(snap['bytes_deduplicated'])} | {snap['duration_s']:.2f} | {rate:.1f} |",
    ]
    for c in copies:
        crate = c["bytes_copied"] / c["duration_s"] / 1e6 if c["duration_s"] else 0.0
        state = "already there" if c["already_present"] else f"{c['chunks_copied']}/{c['chunks_total']} chunks"
        lines.append(f"| copy ({state}) | {c['region']} | {c['snapshot_id'][:12]} | {_mb(c['bytes_total'])} | "
                     f"{_mb(c['bytes_copied'])} | {_mb(c['bytes_total'] - c['bytes_copied'])} | "
                     f"{c['duration_s']:.2f} | {crate:.1f} |")
    return "\n".join(lines) + "\n"
