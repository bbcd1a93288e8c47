"""The lineage chain (:func:`llmdr.lineage.query.lineage`) as text: an indented tree for ``llmdr lineage``."""

from __future__ import annotations

from typing import Any


def _tree(node: tuple[str, list], prefix: str = "", last: bool = True, top: bool = True) -> list[str]:
    label, children = node
    lines = [label] if top else [f"{prefix}{'└─ ' if last else '├─ '}{label}"]
    inner = "" if top else prefix + ("   " if last else "│  ")
    for i, child in enumerate(children):
        lines += _tree(child, inner, i == len(children) - 1, False)
    return lines


def _secs(v: Any) -> str:
    return "—" if v is None else f"{float(v):.1f} s"


def render_lineage(data: dict) -> str:
    """The chain as an indented tree: model version → snapshot → regions → datasets → training run → drills."""
    snap = data.get("snapshot") or {}
    model = data.get("model")
    if model:
        aliases = ", ".join(model.get("aliases") or []) or "no alias"
        head = f"model {model['name']} version {model['version']} ({aliases}; registered {model.get('created')})"
    else:
        head = (f"{snap.get('kind') or 'bundle'} snapshot {snap.get('id')} (created {snap.get('created')}; not "
                "registered as a model version)")

    regions = []
    for name, st in (data.get("regions") or {}).items():
        if st.get("present") is None:
            text = f"{name}: NOT CHECKED - {st.get('error')}"
        elif st.get("present"):
            whole = "complete" if st.get("complete") else \
                f"INCOMPLETE (missing {', '.join(st.get('missing_components') or [])})"
            text = f"{name}: present, {whole}, snapshot {str(st.get('snapshot_id'))[:12]}"
        else:
            text = f"{name}: ABSENT"
        if st.get("recorded") and st.get("recorded") != st.get("snapshot_id"):
            text += f" (registered with {st['recorded'][:12]})"
        regions.append((text, []))

    datasets = []
    for ds in data.get("datasets") or []:
        remotes = [(f"{r}: {u}", []) for r, u in sorted((ds.get("remotes") or {}).items())]
        datasets.append((f"{ds.get('name')}: md5 {ds.get('md5')}", remotes))

    tr = data.get("training_run")
    if tr is None:
        training = ("training run: none recorded", [])
    elif tr.get("error"):
        training = (f"training run {tr['run_id']}: {tr['error']}", [])
    else:
        kids = []
        step = f", step {tr['step']}" if tr.get("step") else ""
        params = tr.get("params") or {}
        shown = [k for k in params if "." not in k and k != "step"] + \
            [k for k in params if k.startswith("trainer_state.")]
        for k in shown[:12]:
            kids.append((f"{k} = {params[k]}", []))
        if len(params) > len(shown[:12]):
            kids.append((f"... {len(params) - len(shown[:12])} more params (--json)", []))
        metrics = tr.get("metrics") or {}
        if "loss" in metrics:
            kids.append((f"final loss {metrics['loss']:.4g}", []))
        if tr.get("hardware_summary"):
            kids.append((f"hardware: {tr['hardware_summary']}", []))
        training = (f"training run {tr['run_id']} ({tr.get('checkpoint')}{step})", kids)

    drills = []
    for d in data.get("drills") or []:
        verdict = {True: "PASS", False: "FAIL", None: "?"}[d.get("passed")]
        drills.append((f"{d.get('started')} drill {d.get('drill_id')}: {verdict}, RTO {_secs(d.get('rto_s'))}, "
                       f"RPO {_secs(d.get('rpo_s'))} (MLflow run {d.get('mlflow_run_id')})", []))

    comps = [(f"{k}: {v}", []) for k, v in (snap.get("components") or {}).items()]
    snap_node = (f"snapshot {snap.get('id')} (created {snap.get('created')})", [
        ("components", comps or [("none recorded", [])]),
        ("regions (now)", regions),
        ("datasets", datasets or [("none recorded", [])]),
        training,
        ("drills", drills or [("none recorded", [])]),
    ])
    if model:
        return "\n".join(_tree((head, [snap_node]))) + "\n"
    return "\n".join(_tree((head, snap_node[1]))) + "\n"
