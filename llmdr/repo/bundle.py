"""The bundle spec and its completeness check: a model is more than its weights.

A bundle is made of typed components (weights, tokenizer, configs, prompt templates, serving config, security
rules, ...). The config names, for each, the files that make it (glob patterns relative to the bundle folder) and
whether it is required. ``check_bundle`` finds each component's files and checks that they are there, not empty and
parse as what they claim to be: a safetensors header that parses and fits its file, a weights index whose shards
exist, a tokenizer that loads, JSON that parses, a Jinja template that compiles. A snapshot of an incomplete bundle
is refused, and a restore is checked the same way.
"""

from __future__ import annotations

import fnmatch
import hmac
import json
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from llmdr.config.values import ComponentKind
from llmdr.errors import LlmdrError
from llmdr.repo.statcache import KEY_BYTES, read_key, read_private

# What `llmdr init` looks for in a Hugging Face-style folder.
DEFAULT_PATTERNS: dict[ComponentKind, list[str]] = {
    ComponentKind.weights: ["*.safetensors", "model.safetensors.index.json"],
    ComponentKind.tokenizer: ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                              "merges.txt", "tokenizer.model", "tokenization_*.py"],
    ComponentKind.model_config: ["config.json"],
    ComponentKind.generation_config: ["generation_config.json"],
    ComponentKind.prompt_templates: ["*.jinja", "prompts/*.jinja", "prompts/**/*.jinja", "chat_template.json"],
    ComponentKind.serving_config: ["serving.json", "serving.yaml", "serving.yml"],
    ComponentKind.security_rules: ["security/*", "security/**/*"],
}


@dataclass(frozen=True)
class ComponentSpec:
    kind: ComponentKind
    paths: tuple[str, ...]
    required: bool = True


@dataclass
class Problem:
    component: str
    file: str | None
    message: str

    def __str__(self) -> str:
        where = f" {self.file}" if self.file else ""
        return f"{self.component}{where}: {self.message}"


@dataclass
class ComponentReport:
    kind: ComponentKind
    required: bool
    files: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class BundleReport:
    root: str
    components: list[ComponentReport]

    @property
    def problems(self) -> list[Problem]:
        return [p for c in self.components if c.required for p in c.problems]

    @property
    def warnings(self) -> list[Problem]:
        return [p for c in self.components if not c.required for p in c.problems]

    @property
    def complete(self) -> bool:
        return not self.problems

    def files_of(self) -> dict[str, list[str]]:
        return {c.kind.value: c.files for c in self.components}

    def to_json(self) -> dict:
        return {
            "root": self.root,
            "complete": self.complete,
            "components": [
                {"kind": c.kind.value, "required": c.required, "files": c.files, "ok": c.ok,
                 "problems": [str(p) for p in c.problems]}
                for c in self.components
            ],
        }


class IncompleteBundle(LlmdrError):
    """A required component is missing, empty or does not parse."""

    exit_code = 4

    def __init__(self, report: BundleReport, when: str) -> None:
        self.report = report
        lines = "\n".join(f"  - {p}" for p in report.problems)
        super().__init__(
            f"bundle at {report.root} is incomplete; {when}:\n{lines}\n"
            "Fix or restore the named files (`llmdr check` re-runs this check)."
        )


def list_files(root: Path) -> list[str]:
    """Every regular file under ``root``, as sorted relative '/'-paths."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def match_files(root: Path, patterns: Iterable[str], files: Iterable[str]) -> list[str]:
    """The files (relative '/'-paths) matching any pattern; ``**`` matches across folders. Plain paths are looked up,
    not matched: a restored bundle is checked against its manifest's file lists (thousands of paths), and matching
    each of them against every file took minutes at 10,000 files."""
    pats = list(patterns)
    plain = {p for p in pats if not _is_glob(p)}
    globs = [p for p in pats if _is_glob(p)]
    return sorted(f for f in files if f in plain or any(fnmatch.fnmatchcase(f, p) for p in globs))


def detect_components(root: Path, files: Iterable[str]) -> dict[ComponentKind, list[str]]:
    """Which components a Hugging Face-style folder holds (for ``llmdr init``)."""
    files = list(files)
    found = {}
    for kind, pats in DEFAULT_PATTERNS.items():
        hits = match_files(root, pats, files)
        if hits:
            found[kind] = hits
    return found


# Kinds whose check reads only the file itself: a pass stays true while the file is unchanged (CheckMemo).
MEMO_FORMAT = 3
_SELF_CONTAINED = {ComponentKind.tokenizer, ComponentKind.model_config, ComponentKind.generation_config,
                   ComponentKind.prompt_templates}


class CheckMemo:
    """The files that passed their kind's check, each with the stat it had (size, mtime, ctime, inode, as the stat
    cache keys files): a snapshot every few minutes need not parse 2,000 unchanged templates again. Only kinds
    whose check reads the file alone are remembered; a file whose stat differs is checked again. A JSON file beside
    the stat cache, replaced atomically; unreadable means empty (it is only an optimisation).

    The memo is checked, not trusted, as the stat cache is: each entry carries an HMAC-SHA256 (cut to 128 bits)
    under a random 0600 key beside it (``checks-<tag>.key``), over the bundle folder (``source``), the kind, the
    path and the stat. An entry edited to match a file changed since (a broken template), one copied from another
    bundle folder's memo, or a malformed one is ignored and its file checked again. The memo and its key are read
    without following a symlink (never a FIFO or device)."""

    def __init__(self, path: Path | None, *, source: str = "") -> None:
        self.path = path
        self._prefix = b"llmdr-checkmemo/3\0" + source.encode("utf-8", "surrogateescape") + b"\0"
        self.source = source
        self._key: bytes | None = None
        self._old: dict[str, list] = {}  # entries whose checksum held: key -> [size, mtime, ctime, inode, mac]
        self._new: dict[str, list] = {}
        if path is not None:
            self._key = read_key(self.key_path, "check memo key")
            if self._key is not None:
                self._load(path)

    @property
    def key_path(self) -> Path:
        assert self.path is not None
        return self.path.with_name(self.path.stem + ".key")

    def _load(self, path: Path) -> None:
        data = read_private(path, "check memo")
        try:
            raw = json.loads(data) if data is not None else {}
            files = raw.get("files", {}) if raw.get("format") == MEMO_FORMAT and raw.get("source") == self.source \
                else {}
            entries = files.items()
        except (ValueError, AttributeError):
            return
        for k, v in entries:
            if (isinstance(v, list) and len(v) == 5 and all(type(x) is int for x in v[:4]) and isinstance(v[4], str)
                    and hmac.compare_digest(v[4], self._mac(k, v[:4]))):
                self._old[k] = v

    def _mac(self, key: str, sig: list[int]) -> str:
        assert self._key is not None
        msg = "%s\0%d\0%d\0%d\0%d" % (key, *sig)
        return hmac.digest(self._key, self._prefix + msg.encode("utf-8", "surrogateescape"), "sha256")[:16].hex()

    @staticmethod
    def _key_of(kind: ComponentKind, rel: str) -> str:
        return f"3:{kind.value}:{rel}"  # "3:": checks since templates are also scanned for unsafe patterns

    def passed(self, kind: ComponentKind, rel: str, st) -> bool:  # noqa: ANN001 - an os.stat_result
        sig = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        hit = self._old.get(self._key_of(kind, rel))
        if kind in _SELF_CONTAINED and hit is not None and hit[:4] == sig:
            self._new[self._key_of(kind, rel)] = hit
            return True
        return False

    def record(self, kind: ComponentKind, rel: str, st) -> None:  # noqa: ANN001 - an os.stat_result
        if kind in _SELF_CONTAINED:
            self._new[self._key_of(kind, rel)] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, ""]

    def save(self) -> None:
        from llmdr.common.files import atomic_write

        if self.path is None or self._new == self._old:
            return
        if self._key is None:
            self._key = os.urandom(KEY_BYTES)
            atomic_write(self.key_path, self._key, mode=0o600)
        files = {k: [*v[:4], v[4] or self._mac(k, v[:4])] for k, v in self._new.items()}
        atomic_write(self.path, json.dumps({"format": MEMO_FORMAT, "source": self.source, "files": files},
                                           separators=(",", ":")), mode=0o600)


def check_bundle(root: Path, specs: Iterable[ComponentSpec], files: Iterable[str] | None = None, *,
                 memo: CheckMemo | None = None, contents: bool = True) -> BundleReport:
    """Check every component of the bundle at ``root``; never raises for a bad bundle, reports instead. With
    ``memo``, unchanged files that passed before are not checked again (``CheckMemo``). ``contents=False`` checks
    only that every component's files are there and not empty (for a restore, whose bytes are proven identical to
    a snapshot that passed the full check when it was taken)."""
    if files is None:
        files = list_files(root)
    files = list(files)
    reports = []
    for spec in specs:
        rep = ComponentReport(spec.kind, spec.required, match_files(root, spec.paths, files))
        # Every pattern must match: a tokenizer with its config but without tokenizer.json is not a tokenizer.
        present = set(rep.files)
        for pattern in spec.paths:
            glob = _is_glob(pattern)
            if (pattern not in present) if not glob else not match_files(root, [pattern], rep.files):
                msg = f"missing: no file matches {pattern}" if glob else f"missing: {pattern} is not there"
                rep.problems.append(Problem(spec.kind.value, None, msg))
        if rep.files:
            for rel in rep.files:
                path = root / rel
                try:
                    st = path.stat()
                    if st.st_size == 0:
                        rep.problems.append(Problem(spec.kind.value, rel, "is empty"))
                        continue
                    if not contents or (memo is not None and memo.passed(spec.kind, rel, st)):
                        continue
                    found = [Problem(spec.kind.value, rel, msg)
                             for msg in _CHECKS.get(spec.kind, _no_check)(root, rel, files)]
                    rep.problems += found
                    if memo is not None and not found:
                        memo.record(spec.kind, rel, st)
                except OSError as exc:  # unreadable (permissions), a symlink loop, gone: a problem, not a crash
                    rep.problems.append(Problem(spec.kind.value, rel, f"cannot be read ({exc.strerror or exc})"))
        reports.append(rep)
    return BundleReport(str(root), reports)


# per-kind checks: each yields problem messages for one file -----------------------------------------------------------
def _no_check(root: Path, rel: str, files: list[str]) -> Iterable[str]:
    return ()


def _json_problem(path: Path) -> tuple[object | None, str | None]:
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except UnicodeDecodeError as exc:
        return None, f"is not UTF-8 text ({exc.reason})"
    except json.JSONDecodeError as exc:
        return None, f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a well-formed safetensors file (header parses, offsets fit the file), or None."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return "is too short to be safetensors (no 8-byte header length)"
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > min(size - 8, 100 * 1024 * 1024):
            return f"has a safetensors header length of {n} bytes, which does not fit the {size}-byte file"
        try:
            header = json.loads(fh.read(n))
        except (ValueError, UnicodeDecodeError) as exc:
            return f"has a safetensors header that is not valid JSON ({exc})"
    if not isinstance(header, dict):
        return "has a safetensors header that is not a JSON object"
    data_len = size - 8 - n
    end = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = meta["data_offsets"]
            meta["dtype"], meta["shape"]
        except (KeyError, TypeError, ValueError):
            return f"tensor {name!r} in the safetensors header lacks dtype, shape or data_offsets"
        if not (0 <= start <= stop <= data_len):
            return f"tensor {name!r} spans bytes {start}-{stop}, past the {data_len} data bytes in the file"
        end = max(end, stop)
    if end != data_len:
        return f"the safetensors header covers {end} data bytes but the file holds {data_len} (truncated or padded)"
    return None


def _check_weights(root: Path, rel: str, files: list[str]) -> Iterable[str]:
    path = root / rel
    if rel.endswith(".safetensors"):
        problem = safetensors_problem(path)
        if problem:
            yield problem
    elif rel.endswith(".index.json"):
        data, problem = _json_problem(path)
        if problem:
            yield problem
            return
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            yield "has no weight_map"
            return
        folder = Path(rel).parent.as_posix()
        for shard in sorted(set(weight_map.values())):
            shard_rel = shard if folder in ("", ".") else f"{folder}/{shard}"
            if shard_rel not in files:
                yield f"points at shard {shard}, which is missing"


def _check_json(root: Path, rel: str, files: list[str]) -> Iterable[str]:
    if rel.endswith(".json"):
        _, problem = _json_problem(root / rel)
        if problem:
            yield problem


def _check_tokenizer(root: Path, rel: str, files: list[str]) -> Iterable[str]:
    yield from _check_json(root, rel, files)
    if Path(rel).name == "tokenizer.json":
        try:
            from tokenizers import Tokenizer

            Tokenizer.from_file(str(root / rel))
        except Exception as exc:  # the library raises plain Exception subclasses with its parser's message
            yield f"does not load as a tokenizer ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"


def _check_templates(root: Path, rel: str, files: list[str]) -> Iterable[str]:
    path = root / rel
    if rel.endswith(".json"):
        data, problem = _json_problem(path)
        if problem:
            yield problem
            return
        text = data.get("chat_template") if isinstance(data, dict) else None
        if not isinstance(text, str):
            yield "has no chat_template string"
            return
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            yield f"is not UTF-8 text ({exc.reason})"
            return
    import jinja2

    from llmdr.common.templates import unsafe_constructs

    try:  # parsed by the sandboxed environment llmdr serve renders with; nothing is rendered here
        bad = unsafe_constructs(text, includes=False)
    except jinja2.TemplateSyntaxError as exc:
        yield f"is not a valid Jinja template (line {exc.lineno}: {exc.message})"
        return
    if bad:
        yield (f"is refused as unsafe: {'; '.join(bad)} (a template-injection pattern; llmdr renders bundle "
               "templates in Jinja's sandbox): fix or replace the template")


def _check_serving(root: Path, rel: str, files: list[str]) -> Iterable[str]:
    if rel.endswith((".yaml", ".yml")):
        import yaml

        try:
            yaml.safe_load((root / rel).read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            yield f"is not valid YAML ({exc})"
    else:
        yield from _check_json(root, rel, files)


_CHECKS = {
    ComponentKind.weights: _check_weights,
    ComponentKind.tokenizer: _check_tokenizer,
    ComponentKind.model_config: _check_json,
    ComponentKind.generation_config: _check_json,
    ComponentKind.prompt_templates: _check_templates,
    ComponentKind.serving_config: _check_serving,
}


def specs_from_config(components: Mapping[ComponentKind, object]) -> list[ComponentSpec]:
    """Build specs from the config's ``bundle.components`` mapping (already validated)."""
    return [ComponentSpec(ComponentKind(kind), tuple(c.paths), c.required)  # type: ignore[attr-defined]
            for kind, c in components.items()]


def specs_from_manifest(components: Mapping[str, Mapping]) -> list[ComponentSpec]:
    """Specs that check a restored bundle against exactly the files its snapshot recorded per component."""
    return [ComponentSpec(ComponentKind(kind), tuple(c["files"]) or ("(none recorded)",), bool(c["required"]))
            for kind, c in components.items()]


def content_digests(root: Path, specs: Iterable[ComponentSpec]) -> dict[str, str]:
    """Per component, SHA-256 over its files' paths and bytes: compares two copies of a bundle component-wise."""
    import hashlib

    files = list_files(root)
    out = {}
    for spec in specs:
        h = hashlib.sha256()
        for rel in match_files(root, spec.paths, files):
            h.update(rel.encode() + b"\0" + hashlib.sha256((root / rel).read_bytes()).digest())
        out[spec.kind.value] = h.hexdigest()
    return out


def detected_specs(root: Path) -> list[ComponentSpec]:
    """Component specs for a folder as `llmdr init` would declare them."""
    files = list_files(root)
    return [ComponentSpec(kind, tuple(hits)) for kind, hits in detect_components(root, files).items()]
