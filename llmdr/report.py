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


def artifact_key(flow: str, bundle: str) -> str:
    """Stable artifact key (lowercase letters, digits, dashes) so the Artifacts page shows one history per bundle."""
    safe = "".join(c if c.isalnum() else "-" for c in bundle.lower()).strip("-")
    return f"{flow}-{safe}"


def verify_summary_markdown(bundle: str, checks: list[dict], tests: list[dict]) -> str:
    lines = [f"# verify-replicas: {bundle}", "",
             "| region | snapshot | scope | chunks read | MB read | corrupt | missing | repaired | unrepaired | result |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for c in checks:
        repaired = ", ".join(f"{k[:12]} from {v}" for k, v in c["repaired"].items()) or "0"
        lines.append(f"| {c['region']} | {c['snapshot_id'][:12]} | {c['subset'] or 'all'} | {c['chunks_read']}/"
                     f"{c['chunks_total']} | {_mb(c['bytes_read'])} | {len(c['corrupt'])} | {len(c['missing'])} | "
                     f"{repaired} | {len(c['unrepaired'])} | {'ok' if c['ok'] else '**FAILED**'} |")
    if tests:
        lines += ["", "| region | restore test | golden | problems |", "|---|---|---|---|"]
        for t in tests:
            g = t["golden"]
            golden = f"{g['passed']}/{g['total']}" if g else "-"
            lines.append(f"| {t['region']} | {'PASS' if t['ok'] else '**FAIL**'} | {golden} | "
                         f"{'; '.join(t['problems']) or '-'} |")
    return "\n".join(lines) + "\n"
