"""Golden sets versioned with the model: each answer-relevant content of a bundle carries the golden set it must
answer, stored in every region's repository beside the snapshots (``golden/<bundle>/<answer digest>.json``).

**The answer digest** (``answer_digest``) is what a golden set is keyed by: SHA-256 over the path and content
digest of every file of the snapshot that can change an answer. That is every file except those that belong only
to components of a kind that never reaches the server (``NON_ANSWER_KINDS``: datasets, checkpoints). Weights,
tokenizer, model config, generation config, prompt templates, serving config and security rules (the denylist
refuses prompts) all count, and so does any file no component claims (a custom module, a README: when in doubt a
file counts, because a wrong "unchanged" would carry an old set onto a new model while a wrong "changed" only
re-records a set). File modes and mtimes do not count. A snapshot with no components recorded hashes every file.

Keyed by content, not by snapshot id: a new snapshot whose answer-relevant files are unchanged (new datasets, a
new checkpoint, the same model protected again) finds its set without anything being written, and a set filled in
later (``llmdr golden record --snapshot``) serves every snapshot of that content. Manifests stay immutable.

**The record** is JSON: ``{bundle, answer_digest, snapshot, recorded_utc, how, source, golden}`` — ``golden`` is the
set's JSONL text, ``snapshot`` the snapshot it was recorded from (or first attached to), ``how`` one of
``recorded`` (asked of that snapshot served by llmdr), ``adopted`` (the project's golden file, taken over for
content protected before golden sets were versioned), ``manual`` (``golden record --snapshot``). It is sealed with
the manifest key like llmdr's control records (``llmdr.control.sealing``: the signature covers bundle, object key
and record), so a set edited in the store, written without the key, or moved to another content's key is refused
on read (``GoldenRefused``), never used. Without ``manifest_signing`` records are unsigned, as every record is.

**Which snapshots must have one**: protect-bundle tags its snapshots ``llmdr.golden: per-snapshot``
(``VERSIONED_TAG``). A tagged snapshot whose content has no set is "no golden set": readiness fails, a standby on
it is refused. An untagged one (taken before this, or by a bare ``llmdr snapshot``) with no set stored falls back
to the project's golden file, and the report says so.

**Prune**: a set is small and may serve several snapshots; ``unused_digests`` lists the sets no live snapshot of
the bundle needs, which ``llmdr prune`` may delete (under Object Lock the delete fails and the set stays: harmless).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from llmdr.config import Config
from llmdr.errors import IntegrityError, ObjectNotFound
from llmdr.repo.layout import golden_key
from llmdr.repo.manifest import Manifest, canonical_json, utc_now
from llmdr.repo.repository import Repository

NON_ANSWER_KINDS = frozenset({"datasets", "checkpoints"})
VERSIONED_TAG = "llmdr.golden"
VERSIONED = "per-snapshot"
HOWS = ("recorded", "adopted", "manual")


class GoldenRefused(IntegrityError):
    """A stored golden set that must not be used: unsigned while the project signs, edited, or moved."""


def answer_digest(manifest: Manifest) -> str:
    """The digest of the snapshot's answer-relevant files (the module docstring gives the rule)."""
    answer_files: set[str] = set()
    other_files: set[str] = set()
    for kind, comp in manifest.components.items():
        files = set(comp.get("files") or [])
        (other_files if kind in NON_ANSWER_KINDS else answer_files).update(files)
    skip = other_files - answer_files
    h = hashlib.sha256(b"llmdr-answer-digest-1\n")
    for f in sorted(manifest.files, key=lambda f: f.path):
        if f.path not in skip:
            h.update(f"{f.path}\0{f.digest}\n".encode())
    return h.hexdigest()


def versioned(manifest: Manifest) -> bool:
    """Was the snapshot taken by a protect that gives every snapshot its golden set (``VERSIONED_TAG``)?"""
    return manifest.tags.get(VERSIONED_TAG) == VERSIONED


def versioned_tags(tags: dict[str, str] | None = None) -> dict[str, str]:
    """``tags`` plus the tag that says the snapshot must have a golden set of its own."""
    return dict(tags or {}) | {VERSIONED_TAG: VERSIONED}


@dataclass
class StoredGolden:
    """A golden set as read back from a region (verified): its JSONL text and where it came from."""

    bundle: str
    digest: str
    text: str
    snapshot: str
    recorded_utc: str
    how: str
    source: str
    location: str

    def to_json(self) -> dict[str, Any]:
        return {"answer_digest": self.digest, "snapshot": self.snapshot, "recorded_utc": self.recorded_utc,
                "how": self.how, "source": self.source, "location": self.location}


def golden_record(cfg: Config, digest: str, text: str, *, snapshot: str, how: str, source: str) -> bytes:
    """The bytes to store for a golden set: the record, sealed with the manifest key when the project signs."""
    from llmdr.control.sealing import seal

    if how not in HOWS:
        raise ValueError(f"how={how!r}")
    record = {"bundle": cfg.bundle.name, "answer_digest": digest, "snapshot": snapshot, "recorded_utc": utc_now(),
              "how": how, "source": source, "golden": text}
    return canonical_json(seal(cfg, golden_key(cfg.bundle.name, digest), record))


def parse_record(cfg: Config, digest: str, data: bytes, location: str) -> StoredGolden:
    """A stored record, verified: its signature (when the project signs), its bundle and digest; ``GoldenRefused``
    naming the object and what to do otherwise."""
    from llmdr.control.sealing import problem, unsealed

    key = golden_key(cfg.bundle.name, digest)
    where = f"{location}: golden set {key}"
    fix = ("Record it again from a server of that snapshot: `llmdr golden record --snapshot ID` "
           "(it writes every region)")
    try:
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise GoldenRefused(f"{where} is not a readable record ({exc}); refusing it. {fix}") from None
    why = problem(cfg, key, raw)
    if why is not None:
        raise GoldenRefused(f"{where} refused: {why}. {fix}")
    rec = unsealed(raw)
    if rec.get("bundle") != cfg.bundle.name or rec.get("answer_digest") != digest or not isinstance(
            rec.get("golden"), str):
        raise GoldenRefused(f"{where} names bundle {rec.get('bundle')!r} and content "
                            f"{str(rec.get('answer_digest'))[:12]!r}, not this one: moved or forged; refusing it. "
                            f"{fix}")
    return StoredGolden(cfg.bundle.name, digest, rec["golden"], str(rec.get("snapshot", "")),
                        str(rec.get("recorded_utc", "")), str(rec.get("how", "")), str(rec.get("source", "")),
                        location)


def read_golden(cfg: Config, repo: Repository, digest: str) -> StoredGolden | None:
    """The verified golden set of ``digest`` in ``repo``; None when none is stored; ``GoldenRefused`` when one is
    stored but must not be used."""
    try:
        data = repo.load_golden(cfg.bundle.name, digest)
    except ObjectNotFound:
        return None
    return parse_record(cfg, digest, data, repo.location)


def copy_golden(cfg: Config, src: Repository, dst: Repository, manifest: Manifest) -> bool:
    """Copy the golden set of ``manifest``'s content from ``src`` to ``dst`` when ``src`` has one (verified first)
    and ``dst`` has none; True when copied. The sealed bytes go as they are: the seal names no region."""
    digest = answer_digest(manifest)
    try:
        data = src.load_golden(cfg.bundle.name, digest)
    except ObjectNotFound:
        return False
    parse_record(cfg, digest, data, src.location)  # a forged or edited set is never propagated
    try:
        dst.load_golden(cfg.bundle.name, digest)
        return False
    except ObjectNotFound:
        pass
    dst.save_golden(cfg.bundle.name, digest, data)
    return True


def unused_digests(repo: Repository, bundle: str) -> list[str]:
    """Golden sets of ``bundle`` in ``repo`` that no live snapshot of the bundle needs (prune may delete them)."""
    needed = {answer_digest(s.manifest) for s in repo.snapshots(bundle=bundle)}
    return [d for d in repo.golden_digests(bundle) if d not in needed]
