"""The golden set a snapshot must answer, and how protect-bundle gives each new snapshot its own.

Sets are stored per answer-relevant content in every region (``llmdr.repo.goldens``). This module decides, for a
snapshot or for the replica of a region, which set judges it (``for_snapshot``, ``for_region``):

- the set stored for the snapshot's content;
- none stored, the snapshot tagged by a protect that versions golden sets: ``NoGoldenSet`` (a standby on a new
  model without its own set is refused; ``llmdr golden record --snapshot`` fills it in);
- none stored, an older snapshot (or one a bare ``llmdr snapshot`` took): the project's golden file, and the
  result says so (``source="project file"``);
- a replica llmdr did not start (which snapshot it serves is unknown): the project's golden file, said so.

At protect time (``attach_at_protect``) the new snapshot's set is carried over for free when its answer-relevant
content has one already; else it is recorded from that exact snapshot, restored from the primary into scratch and
served by ``llmdr serve`` in-process, asked the previous set's prompts; else (a bundle ``llmdr serve`` cannot run,
e.g. a vLLM model) the project's golden file is adopted when an earlier snapshot from before per-snapshot sets has
the same answer-relevant content (the file judged exactly that content until now); else the snapshot is flagged "no
golden set": a warning, not a failed protect.
"""

from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmdr.config import Config, Region
from llmdr.errors import LlmdrError, UsageError
from llmdr.repo import goldens
from llmdr.repo.repository import Repository
from llmdr.serving.golden import GoldenCase, GoldenSet, default_cases, record

log = logging.getLogger(__name__)

PROJECT_FILE = "project file"
SNAPSHOT = "snapshot"


class NoGoldenSet(UsageError):
    """A snapshot of a new model version has no golden set of its own, so its answers cannot be judged."""


class CannotServe(LlmdrError):
    """llmdr cannot serve this bundle itself (``llmdr serve`` runs the llmdr-tiny model only)."""


def record_hint(sid: str) -> str:
    return (f"record one from a server of that snapshot: `llmdr golden record --snapshot {sid[:12]}` (it restores "
            "and serves the snapshot, records the answers and writes the set to every region)")


@dataclass
class Resolved:
    """The set that judges a snapshot: ``source`` is "snapshot" (its own) or "project file" (the fallback, with
    ``note`` saying why)."""

    golden: GoldenSet
    source: str
    snapshot: str | None = None
    answer_digest: str | None = None
    stored: goldens.StoredGolden | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        out = {"source": self.source, "snapshot": self.snapshot, "answer_digest": self.answer_digest,
               "note": self.note}
        if self.stored is not None:
            out["stored"] = self.stored.to_json()
        return out


def project_set(cfg: Config, note: str, *, snapshot: str | None = None, path: Path | None = None) -> Resolved:
    """The fallback: the project's golden file (or ``path``), with ``note`` saying why it judges."""
    path = path or cfg.golden_path
    if not path.exists():
        raise UsageError(f"{path}: no golden set ({note}), so the answers cannot be checked. Record one from a "
                         "known-good server: llmdr golden record --url URL")
    log.info("golden set: the project's %s (%s)", path, note)
    return Resolved(GoldenSet.load(path), PROJECT_FILE, snapshot, note=note)


def for_snapshot(cfg: Config, repo: Repository, sid: str, *, fallback: Path | None = None) -> Resolved:
    """The set snapshot ``sid`` of ``repo`` must answer (module docstring); ``NoGoldenSet`` for a new model version
    without one, ``GoldenRefused`` for a stored set that does not verify. ``fallback``: the file for snapshots from
    before per-snapshot sets (default: the project's golden file)."""
    manifest = repo.load_manifest(sid)
    digest = goldens.answer_digest(manifest)
    stored = goldens.read_golden(cfg, repo, digest)
    if stored is not None:
        where = f"{stored.location} golden/{cfg.bundle.name}/{digest[:12]}"
        return Resolved(GoldenSet.parse(stored.text, where), SNAPSHOT, sid, digest, stored,
                        f"the set of snapshot {sid[:12]}'s content ({stored.how} from {stored.snapshot[:12]})")
    if goldens.versioned(manifest):
        raise NoGoldenSet(f"snapshot {sid[:12]} in {repo.location} has no golden set of its own (a new model "
                          f"version: content {digest[:12]}), so its answers cannot be judged; {record_hint(sid)}")
    return project_set(cfg, f"snapshot {sid[:12]} predates per-snapshot golden sets", snapshot=sid, path=fallback)


def for_region(cfg: Config, region: str | Region) -> Resolved:
    """The set that judges the replica of ``region``: its snapshot's (from the region's own store) when llmdr
    started it, else the project's golden file."""
    from llmdr.errors import StorageError
    from llmdr.repo.ops import open_repo
    from llmdr.serving.replica import replica_status

    reg = region if isinstance(region, Region) else cfg.region(region)
    st = replica_status(cfg, reg)
    if not st.snapshot:
        return project_set(cfg, f"the replica in '{reg.name}' was not started by llmdr: which snapshot it serves is "
                                "unknown")
    try:
        repo = open_repo(cfg, reg, read_only=True)
        return for_snapshot(cfg, repo, st.snapshot)
    except StorageError as exc:  # the region's store is down: judge by the project file, and say so
        return project_set(cfg, f"the store of '{reg.name}' cannot be read for snapshot {st.snapshot[:12]}'s set "
                                f"({str(exc).splitlines()[0]})", snapshot=st.snapshot)


def for_url(cfg: Config, url: str, *, timeout: float = 5.0) -> Resolved:
    """The set that judges whatever answers at ``url``: a region's replica (its ``serving.url``), or the region the
    router says answers behind it (``X-Llmdr-Region``); else the project's golden file."""
    import urllib.error
    import urllib.request

    want = url.rstrip("/")
    for r in cfg.regions:
        if r.serving is not None and r.serving.url.rstrip("/") == want:
            return for_region(cfg, r)
    try:
        with urllib.request.urlopen(want + "/health", timeout=timeout) as resp:  # noqa: S310 - the config's URL
            region = resp.headers.get("X-Llmdr-Region")
    except (urllib.error.URLError, OSError):
        region = None
    names = {r.name for r in cfg.regions}
    if region in names:
        return for_region(cfg, region)
    return project_set(cfg, f"which region answers at {url} is unknown")


# --- recording a snapshot's set -----------------------------------------------------------------------------------


def prompts_for(cfg: Config, repo: Repository, sid: str, *, look_back: int = 20) -> tuple[list[GoldenCase], str]:
    """The prompts to record for ``sid``: those of the newest earlier snapshot's set (a few back at most), else of
    the project's golden file, else the default prompts; with where they came from."""
    for n, info in enumerate(repo.newest_first(bundle=cfg.bundle.name)):
        if n >= look_back:
            break
        if info.id == sid:
            continue
        try:
            stored = goldens.read_golden(cfg, repo, goldens.answer_digest(info.manifest))
        except goldens.GoldenRefused as exc:
            log.warning("%s", exc)
            continue
        if stored is not None:
            return GoldenSet.parse(stored.text, repo.location).cases, f"the prompts of snapshot {info.id[:12]}'s set"
    if cfg.golden_path.exists():
        return GoldenSet.load(cfg.golden_path).cases, f"the prompts of {cfg.golden_path.name}"
    return default_cases(), "the default prompts"


def unservable(repo: Repository, sid: str) -> str | None:
    """Why ``llmdr serve`` cannot run snapshot ``sid`` (its ``config.json`` read from the store, nothing restored);
    None when it can. The rule is ``ModelService``'s: an llmdr-tiny model (``model_type``)."""
    import json

    manifest = repo.load_manifest(sid)
    entry = next((f for f in manifest.files if f.path == "config.json"), None)
    if entry is None:
        return f"snapshot {sid[:12]} has no config.json: not a model llmdr serve can run"
    try:
        model_type = json.loads(b"".join(repo.load_chunk(d, size=n, of=" of config.json") for d, n in entry.chunks)
                                ).get("model_type")
    except (ValueError, AttributeError):
        return f"snapshot {sid[:12]}'s config.json does not parse"
    if model_type != "llmdr-tiny":
        return (f"snapshot {sid[:12]} holds a {model_type!r} model; `llmdr serve` runs the llmdr-tiny demo model only")
    return None


def record_from_snapshot(cfg: Config, repo: Repository, sid: str, cases: list[GoldenCase], scratch: Path) -> GoldenSet:
    """Restore ``sid`` into scratch, serve it with ``llmdr serve`` in this process, ask every case; the folder is
    removed afterwards. ``CannotServe`` when ``llmdr serve`` cannot run the bundle."""
    from llmdr.repo.bundle import content_digests, detected_specs, specs_from_config
    from llmdr.repo.restore import restore_snapshot
    from llmdr.serving.endpoint import OpenAIEndpoint
    from llmdr.serving.server import ModelService, make_server

    why = unservable(repo, sid)
    if why is not None:  # said before a restore that would be wasted (a real model may be hundreds of GB)
        raise CannotServe(why)
    target = scratch / f"golden-{sid[:12]}"
    shutil.rmtree(target, ignore_errors=True)
    try:
        restore_snapshot(repo, sid, target, force=True, workers=cfg.transfer.download_workers)
        try:
            service = ModelService(target)
        except UsageError as exc:
            raise CannotServe(str(exc)) from None
        specs = specs_from_config(cfg.bundle.components) or detected_specs(target)
        httpd = make_server(service, "127.0.0.1", 0)
        thread = threading.Thread(target=httpd.serve_forever, name="llmdr-golden-record", daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{httpd.server_address[1]}"
            header = {"model": service.name, "bundle_digest": service.digest, "snapshot": sid,
                      "components": content_digests(target, specs)}
            return record(cases, OpenAIEndpoint(url).answer, header)
        finally:
            httpd.shutdown()
            httpd.server_close()
            thread.join(timeout=10)
    finally:
        shutil.rmtree(target, ignore_errors=True)


def attach(cfg: Config, sid: str, gs: GoldenSet, digest: str, *, how: str, source: str,
           regions: list[str] | None = None) -> dict[str, str]:
    """Seal ``gs`` as the set of content ``digest`` and write it to every region; region -> "ok" or why not."""
    gs.header = {**gs.header, "answer_digest": digest, "snapshot": gs.header.get("snapshot", sid)}
    data = goldens.golden_record(cfg, digest, gs.to_text(), snapshot=sid, how=how, source=source)
    return write_everywhere(cfg, digest, data, regions)


def write_everywhere(cfg: Config, digest: str, data: bytes, regions: list[str] | None = None) -> dict[str, str]:
    """Store the sealed record in every region (or ``regions``); region -> "ok" or why it failed. A failure in one
    region does not stop the others (the caller decides whether that fails its run)."""
    from llmdr.repo.ops import open_repo

    out: dict[str, str] = {}
    for name in regions or [r.name for r in cfg.regions]:
        try:
            open_repo(cfg, name).save_golden(cfg.bundle.name, digest, data)
            out[name] = "ok"
        except (LlmdrError, OSError) as exc:
            out[name] = f"not written: {exc}"
    return out


@dataclass
class ProtectGolden:
    """What protect-bundle did about the new snapshot's golden set: ``state`` is carried_over | recorded | missing;
    ``warning`` is set when the snapshot is left without one (or a region could not be written)."""

    snapshot: str
    answer_digest: str
    state: str
    detail: str
    regions: dict[str, str] = field(default_factory=dict)
    warning: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"snapshot": self.snapshot, "answer_digest": self.answer_digest, "state": self.state,
                "detail": self.detail, "regions": self.regions, "warning": self.warning}


def attach_at_protect(cfg: Config, sid: str) -> ProtectGolden:
    """Give the just-protected snapshot ``sid`` its golden set in every region (module docstring): carried over,
    recorded from that exact snapshot, or flagged missing with a warning that names the command that fills it."""
    from llmdr.repo.ops import open_repo

    repo = open_repo(cfg, cfg.primary)
    digest = goldens.answer_digest(repo.load_manifest(sid))
    refused = ""
    try:
        stored = goldens.read_golden(cfg, repo, digest)
    except goldens.GoldenRefused as exc:  # never carried over: recorded again from the snapshot, replacing it
        log.warning("%s; recording the set again from snapshot %s", exc, sid[:12])
        stored, refused = None, f" (the stored set was refused: {str(exc).splitlines()[0]})"
    if stored is not None:
        regions = _spread(cfg, repo, digest)
        out = ProtectGolden(sid, digest, "carried_over",
                            f"answer-relevant content unchanged since snapshot {stored.snapshot[:12]}: its set "
                            f"({stored.how}) carries over", regions)
        return _warn_regions(out)
    cases, whence = prompts_for(cfg, repo, sid)
    try:
        gs = record_from_snapshot(cfg, repo, sid, cases, cfg.bundle_state_path / "scratch")
    except CannotServe as exc:
        legacy = same_content_before(cfg, repo, sid, digest)
        if legacy is not None and cfg.golden_path.exists():
            gs = GoldenSet.load(cfg.golden_path)
            regions = attach(cfg, sid, gs, digest, how="adopted",
                             source=f"protect-bundle: {cfg.golden_path.name}, which judged snapshot {legacy[:12]}")
            return _warn_regions(ProtectGolden(
                sid, digest, "carried_over", f"answer-relevant content unchanged since snapshot {legacy[:12]} (from "
                f"before per-snapshot sets): the project's {cfg.golden_path.name}, which judged it, carries over",
                regions))
        warning = (f"snapshot {sid[:12]} is a new model version with NO golden set{refused}: llmdr cannot serve it "
                   f"to record one ({exc}). A standby on it will be refused and readiness fails until you "
                   f"{record_hint(sid)}")
        log.warning("%s", warning)
        return ProtectGolden(sid, digest, "missing", str(exc), warning=warning)
    regions = attach(cfg, sid, gs, digest, how="recorded", source=f"protect-bundle, {whence}")
    out = ProtectGolden(sid, digest, "recorded", f"{len(gs.cases)} answers recorded from snapshot {sid[:12]} served "
                                                 f"by llmdr serve ({whence}){refused}", regions)
    return _warn_regions(out)


def same_content_before(cfg: Config, repo: Repository, sid: str, digest: str, *, look_back: int = 20) -> str | None:
    """An earlier snapshot from before per-snapshot sets (untagged) with the same answer-relevant content: the one
    the project's golden file judged; None if there is none among the newest ``look_back``."""
    for n, info in enumerate(repo.newest_first(bundle=cfg.bundle.name)):
        if n >= look_back:
            break
        if info.id != sid and not goldens.versioned(info.manifest) and goldens.answer_digest(info.manifest) == digest:
            return info.id
    return None


def _spread(cfg: Config, repo: Repository, digest: str) -> dict[str, str]:
    """Make sure every region holds the set of ``digest`` that ``repo`` (the primary) has."""
    from llmdr.repo.ops import open_repo

    out = {cfg.primary.name: "ok"}
    data = repo.load_golden(cfg.bundle.name, digest)
    for r in cfg.secondaries:
        try:
            dst = open_repo(cfg, r)
            try:
                present = goldens.read_golden(cfg, dst, digest) is not None
            except goldens.GoldenRefused as exc:  # a forged or damaged copy there: replaced by the primary's
                log.warning("%s; replacing it with the primary's", exc)
                present = False
            if not present:
                dst.save_golden(cfg.bundle.name, digest, data)
            out[r.name] = "ok"
        except (LlmdrError, OSError) as exc:
            out[r.name] = f"not written: {exc}"
    return out


def _warn_regions(out: ProtectGolden) -> ProtectGolden:
    bad = {r: why for r, why in out.regions.items() if why != "ok"}
    if bad:
        out.warning = "golden set not written to " + "; ".join(f"{r} ({why})" for r, why in bad.items())
        log.warning("%s", out.warning)
    return out


def golden_markdown(out: dict) -> str:
    """The protect-bundle artifact's golden-set section (``out``: ``ProtectGolden.to_json()``)."""
    state = {"carried_over": "carried over", "recorded": "recorded", "missing": "**MISSING**"}.get(out["state"],
                                                                                              out["state"])
    lines = ["", "## Golden set", "", f"- snapshot {out['snapshot'][:12]}: {state} — {out['detail']}",
             f"- answer-relevant content: {out['answer_digest'][:12]}"]
    if out.get("regions"):
        lines.append("- stored in: " + ", ".join(f"{r} ({why})" for r, why in out["regions"].items()))
    if out.get("warning"):
        lines += ["", f"> **Warning:** {out['warning']}"]
    return "\n".join(lines) + "\n"
