"""Data residency: which regions a bundle's or a dataset's data may be stored in.

Each region declares the ``jurisdiction`` its store is in (``regions[].jurisdiction``, e.g. ``EU``); a bundle and a
dataset may declare ``residency: [EU, ...]``, the jurisdictions their data may be stored in (left out: no policy).
Jurisdictions are free text compared case-insensitively and as written: there is no hierarchy, so ``[EU]`` does not
allow a region declared ``DE``; list both, or declare the region ``EU``. :data:`KNOWN` lists the short codes the docs
recommend (a code not in it is accepted as written).

The rules, one function each, so every door asks the same question:

- a region **without** a jurisdiction is outside every policy (unknown is not compliant);
- a bundle's data (snapshots, checkpoints, MLflow artifacts of its drills and training runs) may go only to regions
  its policy allows; a dataset's DVC copies only to regions both its own policy and its bundle's allow (a dataset is
  the bundle's data too);
- every region of the project receives the bundle's copies and the datasets' remotes, so the config is refused at
  load when a policy excludes any region (:func:`config_problems`), and each writing door refuses again before it
  writes (:func:`require_resident`): a config changed under a running worker, or a caller that built its ``Config``
  without ``load_config``, still cannot send data out of its jurisdiction.

Pure: no I/O, no imports from llmdr but ``llmdr.errors``.
"""

from __future__ import annotations

import re
from typing import Any

from llmdr.errors import ConfigError

# The config models are duck-typed here, not imported: regions.py and sections.py import this module for their
# validators, and the package has no import cycles (import-linter).
Config = Region = Dataset = Any

# Recognised short codes (free text is accepted too; these are what the docs recommend, so two files agree).
KNOWN: dict[str, str] = {
    "EU": "European Union (GDPR)",
    "EEA": "European Economic Area (EU + Iceland, Liechtenstein, Norway)",
    "UK": "United Kingdom (UK GDPR)",
    "CH": "Switzerland (FADP)",
    "US": "United States",
    "CA": "Canada (PIPEDA)",
    "CN": "mainland China (PIPL)",
    "HK": "Hong Kong",
    "JP": "Japan (APPI)",
    "KR": "South Korea (PIPA)",
    "IN": "India (DPDP)",
    "SG": "Singapore (PDPA)",
    "AU": "Australia",
    "BR": "Brazil (LGPD)",
    "AE": "United Arab Emirates",
    "SA": "Saudi Arabia (PDPL)",
    "RU": "Russia (152-FZ)",
}
# A jurisdiction or geography as written in llmdr.yaml: one short name, no list separators
NAME = re.compile(r"^[^\W_][\w .()/-]{0,63}$")


class ResidencyError(ConfigError):
    """Data would be stored outside the jurisdictions its residency policy allows. Never retried: the config (the
    policy, or the regions) must change first. Exit 2, like every config error."""


def key(jurisdiction: str) -> str:
    """The form two jurisdictions are compared in: case-folded, surrounding and repeated spaces dropped."""
    return " ".join(jurisdiction.split()).casefold()


def check_name(field: str, value: str | None) -> str | None:
    """A jurisdiction or geography as written in the file: ValueError saying what is allowed."""
    if value is None:
        return None
    if not isinstance(value, str) or not NAME.fullmatch(value.strip()):
        raise ValueError(f"{field} {value!r} is not a short name (1-64 letters, digits, spaces, . _ ( ) / -, starting with a letter or digit), e.g. "
                         f"{', '.join(list(KNOWN)[:4])}")
    return value.strip()


def check_policy(field: str, value: list[str] | None) -> list[str] | None:
    """A residency list as written: null (no policy) or one or more jurisdiction names, no duplicates."""
    if value is None:
        return None
    if not value:
        raise ValueError(f"{field}: [] allows no region at all; list the jurisdictions the data may be stored in "
                         "(e.g. [EU]), or leave residency out for no policy")
    out = [check_name(field, v) for v in value]
    keys = [key(v) for v in out if v is not None]
    dup = sorted({v for v in keys if keys.count(v) > 1})
    if dup:
        raise ValueError(f"{field}: {dup} is listed more than once (names are compared ignoring case)")
    return [v for v in out if v is not None]


def allows(policy: list[str] | None, region: Region) -> bool:
    """Whether ``region`` may hold data under ``policy`` (None: no policy, every region may)."""
    if policy is None:
        return True
    if not region.jurisdiction:
        return False
    return key(region.jurisdiction) in {key(p) for p in policy}


def policies(cfg: Config, dataset: Dataset | None = None) -> list[tuple[str, list[str]]]:
    """The policies that cover the data: (what, policy) for the bundle's, and the dataset's when one is given.
    A project with ``bundles:`` seen whole has each bundle's."""
    out: list[tuple[str, list[str]]] = []
    bundles = cfg.bundles if cfg.bundles is not None else [cfg.bundle]
    for b in bundles:
        if b.residency is not None:
            out.append((f"bundle '{b.name}'", b.residency))
    if dataset is not None and dataset.residency is not None:
        out.append((f"dataset '{dataset.name}'", dataset.residency))
    return out


def _region_text(region: Region) -> str:
    where = f", {region.geography}" if region.geography else ""
    return (f"region '{region.name}' (jurisdiction {region.jurisdiction}{where})" if region.jurisdiction
            else f"region '{region.name}' (no jurisdiction declared{where})")


def _refusal(what: str, policy: list[str], region: Region, doing: str) -> str:
    allowed = ", ".join(policy)
    fix = (f"declare its jurisdiction (regions: - name: {region.name} ... jurisdiction: ...) if it is one of "
           f"[{allowed}]" if not region.jurisdiction else
           f"remove the region from this project, or use a project whose regions are all in [{allowed}]")
    return (f"{doing}: {what} may be stored only in [{allowed}] (its residency policy), and {_region_text(region)} "
            f"is outside it{'; a region without a jurisdiction is never compliant' if not region.jurisdiction else ''}"
            f". Nothing was written. To fix: {fix}; or widen the policy only if the law allows it.")


def require_resident(cfg: Config, region: Region, doing: str, *, dataset: Dataset | None = None) -> None:
    """Refuse (``ResidencyError``) before writing the bundle's data, or ``dataset``'s, to ``region`` when a policy
    that covers it does not allow the region. ``doing`` names the operation for the message, e.g. "replicate
    3fa2c1 to secondary". A no-op when no policy applies."""
    for what, policy in policies(cfg, dataset):
        if not allows(policy, region):
            raise ResidencyError(_refusal(what, policy, region, doing))


def require_all(cfg: Config, doing: str) -> None:
    """:func:`require_resident` for every region of ``cfg`` (an operation that writes the bundle's data to each)."""
    for r in cfg.regions:
        require_resident(cfg, r, doing)


def config_problems(cfg: Config) -> list[tuple[list[tuple[Any, ...]], str]]:
    """Every (locations in the file: the policy's and the region's, message) where a policy excludes one of the
    project's regions: each bundle's copies and each dataset's DVC remotes go to every region. Empty when the config
    complies."""
    out: list[tuple[list[tuple[Any, ...]], str]] = []

    def check(loc: tuple[Any, ...], what: str, policy: list[str] | None) -> None:
        for i, r in enumerate(cfg.regions):
            if policy is not None and not allows(policy, r):
                out.append(([loc, ("regions", i)], _refusal(what, policy, r, "every region of the project receives a "
                                                               "copy")))

    if cfg.bundles is not None:
        for i, b in enumerate(cfg.bundles):
            check(("bundles", i, "residency"), f"bundle '{b.name}'", b.residency)
            for j, ds in enumerate(b.datasets or []):
                check(("bundles", i, "datasets", j, "residency"), f"dataset '{ds.name}' of bundle '{b.name}'",
                      ds.residency)
    else:
        check(("bundle", "residency"), f"bundle '{cfg.bundle.name}'", cfg.bundle.residency)
    for j, ds in enumerate(cfg.datasets):
        check(("datasets", j, "residency"), f"dataset '{ds.name}'", ds.residency)
    return out


def evidence(cfg: Config) -> dict[str, Any]:
    """The policies and each region's place, with the verdict: what readiness and the drill report show."""
    datasets = cfg.datasets
    pols = {"bundle": cfg.bundle.residency if cfg.bundles is None else None,
            "datasets": {d.name: d.residency for d in datasets if d.residency is not None}}
    regions = {r.name: {"jurisdiction": r.jurisdiction, "geography": r.geography} for r in cfg.regions}
    problems = []
    for r in cfg.regions:
        for d in [None, *datasets]:
            for what, policy in policies(cfg, d):
                if not allows(policy, r):
                    problems.append(f"{what} excludes {_region_text(r)}")
    problems = list(dict.fromkeys(problems))
    declared = pols["bundle"] is not None or bool(pols["datasets"])
    if not declared:
        summary = "no residency policy (data may be stored in any region)"
    elif problems:
        summary = "VIOLATED: " + "; ".join(problems)
    else:
        parts = ([f"bundle [{', '.join(pols['bundle'])}]"] if pols["bundle"] else []) + \
            [f"dataset {n} [{', '.join(p)}]" for n, p in pols["datasets"].items()]
        where = ", ".join(f"{r.name} {r.jurisdiction}" + (f" ({r.geography})" if r.geography else "")
                          for r in cfg.regions)
        summary = f"{'; '.join(parts)}: every region complies ({where})"
    return {"policy": pols, "regions": regions, "declared": declared, "ok": not problems, "problems": problems,
            "summary": summary}
