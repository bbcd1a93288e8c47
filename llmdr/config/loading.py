"""Reading ``llmdr.yaml``: YAML errors and validation errors name the file, the key, its line and what to do;
a literal secret in the file is refused before anything else looks at it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from llmdr.config.bundles import port_clashes, view_data
from llmdr.config.model import Config
from llmdr.config.values import DEFAULT_CONFIG, SECRET_KEYS, SECRET_SUFFIXES
from llmdr.errors import ConfigError


def load_config(path: str | os.PathLike[str] | None = None, bundle: str | None = None, *,
                whole: bool = False) -> Config:
    """Read and validate ``llmdr.yaml`` (or ``$LLMDR_CONFIG``), seen as one bundle's config when a bundle is named:
    BUNDLE, else the ``#<bundle>`` suffix of PATH (``bundle_ref``), else ``$LLMDR_BUNDLE``. A project with
    ``bundles:`` and none named, or WHOLE, is returned whole (``views()``; its ``bundle`` says to choose one)."""
    path, in_ref = split_ref(path)
    if not path:  # "" or "#<bundle>" (a flow's default): the file of $LLMDR_CONFIG, which may name a bundle too
        path, env_ref = split_ref(os.environ.get("LLMDR_CONFIG") or None)
        in_ref = in_ref or env_ref
    p = Path(path or DEFAULT_CONFIG)
    if not p.exists():
        raise ConfigError(f"{p}: no such file. Create one with `llmdr init BUNDLE_DIR`, or pass --config PATH.")
    text = p.read_text(encoding="utf-8")
    cfg = parse_config(text, source=p)
    name = bundle or in_ref or os.environ.get("LLMDR_BUNDLE") or None
    return cfg if whole or name is None or name == "all" else cfg.for_bundle(name)


def bundle_ref(path: str | os.PathLike[str] | None, bundle: str | None) -> str:
    """One string naming a config file and a bundle in it, ``<path>#<bundle>``, that ``load_config`` reads as that
    bundle's view: what a flow hands its tasks (they take a config path), so each task sees the flow's bundle.
    Without a bundle, PATH itself (``""``: the default file)."""
    text = os.fspath(path) if path else ""
    return f"{text}#{bundle}" if bundle else text


def split_ref(path: str | os.PathLike[str] | None) -> tuple[str | None, str | None]:
    """(file, bundle) of a ``bundle_ref``; a PATH that is an existing file is a file, even with a '#' in its name."""
    if not path:
        return None, None
    text = os.fspath(path)
    if "#" not in text or Path(text).exists():
        return text, None
    file, _, name = text.rpartition("#")
    return file or None, name or None


def parse_config(text: str, *, source: Path) -> Config:
    try:
        node, raw = _compose_and_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        context, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and cmark is not None and (mark is None or cmark.line != mark.line):
            problem += f", {context} started at line {cmark.line + 1}"  # where the unclosed bracket or quote is
        raise ConfigError(f"{source}{where}: not valid YAML ({problem}). Fix it there or on the line it names (often "
                          "an unclosed bracket or quote, or a wrong indent), then run the command again.") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with bundle:, regions: and objectives:, got {type(raw).__name__}")
    _refuse_literal_secrets(raw, node, source)
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = err["loc"]
            dotted = _dotted(loc)
            line = _line_of(node, loc)
            at = f" (line {line})" if line else ""
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key; check its spelling against `llmdr init`'s commented example"
            lines.append(f"  {dotted or '(top level)'}{at}: {msg}")
        raise ConfigError(f"{source}: invalid configuration\n" + "\n".join(lines)) from None
    cfg._base_dir = source.resolve().parent
    cfg._source_file = source
    if cfg.bundles is not None:
        _build_views(cfg, raw, node, source)
    _refuse_outside_residency(cfg, node, source)
    return cfg


def _refuse_outside_residency(cfg: Config, node: yaml.Node | None, source: Path) -> None:
    """A bundle's or dataset's residency policy that excludes one of the regions (they all get a copy)."""
    from llmdr.config.residency import ResidencyError, config_problems

    problems = config_problems(cfg)
    if problems:
        raise ResidencyError(f"{source}: refused by residency policy\n" + "\n".join(
            "  " + ", ".join(f"{_dotted(loc)} (line {_line_of(node, loc)})" for loc in locs) + f": {msg}"
            for locs, msg in problems))


def _build_views(cfg: Config, raw: dict[str, Any], node: yaml.Node | None, source: Path) -> None:
    """Each bundle's one-bundle view, validated as a file with that one bundle would be; then what two bundles
    both want (ports of replicas and routers)."""
    for i, entry in enumerate(raw["bundles"]):
        name = entry["name"]
        try:
            view = Config.model_validate(view_data(raw, entry))
        except ValidationError as exc:
            line = _line_of(node, ("bundles", i))
            lines = [f"  {_dotted(e['loc']) or '(top level)'}: {e['msg'].removeprefix('Value error, ')}"
                     for e in exc.errors()]
            raise ConfigError(f"{source} (line {line}): bundles[{i}] ({name}): the project as seen by this bundle "
                              "(its overrides applied) is invalid\n" + "\n".join(lines)) from None
        view._base_dir, view._source_file, view._view_of = cfg._base_dir, cfg._source_file, name
        cfg._views[name] = view
    clashes = port_clashes(list(cfg._views.values()))
    if clashes:
        raise ConfigError(f"{source}: bundles: clash\n" + "\n".join(f"  {c}" for c in clashes))


def _compose_and_load(text: str) -> tuple[yaml.Node | None, Any]:
    """The YAML node tree (its marks give the line of a bad key) and the plain data built from it, in one parse
    with libyaml's safe loader when PyYAML has it (~20x faster than the pure-Python one). A file libyaml refuses is
    parsed again by the pure-Python loader, whose messages name more (the character, the alias)."""
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        try:
            return _load_with(fast, text)
        except yaml.YAMLError:
            pass
    return _load_with(yaml.SafeLoader, text)


def _load_with(loader_cls: Any, text: str) -> tuple[yaml.Node | None, Any]:
    loader = loader_cls(text)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    best = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = None
            for k, v in node.value:
                if k.value == part:
                    nxt = v
                    best = k.start_mark.line + 1
                    break
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            best = node.start_mark.line + 1
        else:
            break
        if node is None:
            break
    return best


_KEY_FILE_SETTINGS = {("drill", "signing", "private_key"), ("manifest_signing", "private_key")}


def _refuse_literal_secrets(raw: Any, node: yaml.Node, source: Path, path: tuple = ()) -> None:
    if isinstance(raw, dict):
        for k, v in raw.items():
            key = str(k).lower()
            key_path = tuple(str(x) for x in path) + (key,)
            if key_path in _KEY_FILE_SETTINGS and isinstance(v, str) and "-----BEGIN" not in v and "\n" not in v:
                continue  # the PATH of a key file (e.g. drill.signing.private_key), not a key
            if not key.endswith(("_env", "_block")) and (key in SECRET_KEYS or key.endswith(SECRET_SUFFIXES)):
                dotted = _dotted(path + (k,))
                line = _line_of(node, path + (k,))
                raise ConfigError(
                    f"{source} (line {line}): {dotted}: literal secrets are not allowed in the config file. Put the "
                    "value in an environment variable and name it, e.g. credentials: {access_key_env: "
                    "LLMDR_PRIMARY_ACCESS_KEY_ID, secret_key_env: LLMDR_PRIMARY_SECRET_ACCESS_KEY}."
                )
            _refuse_literal_secrets(v, node, source, path + (k,))
    elif isinstance(raw, list):
        for i, v in enumerate(raw):
            _refuse_literal_secrets(v, node, source, path + (i,))
