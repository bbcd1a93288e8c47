"""The docs stay true: docs/reference/ matches what scripts/gen_reference.py makes from the code today, the README stays
a newcomer's page, and every relative link in the README and docs/ (file and #anchor) points at something."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README_MAX_LINES = 200
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "scripts" / "gen_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted(DOCS.rglob("*.md"))]


def _prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code spans blanked out."""
    out, fenced = [], False
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out.append((lineno, re.sub(r"`[^`]*`", "``", line)))
    return out


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_reference_is_generated_from_the_code(tmp_path):
    gen = _generator()
    assert gen.main(["--out", str(tmp_path)]) == 0
    fresh = sorted(p.name for p in tmp_path.iterdir())
    assert fresh == ["cli.md", "configuration.md", "exit-codes.md"]
    stale = [name for name in fresh if not (DOCS / "reference" / name).exists()
             or (DOCS / "reference" / name).read_text(encoding="utf-8") != (tmp_path / name).read_text(encoding="utf-8")]
    assert not stale, f"docs/reference is stale: run `make docs` ({', '.join(stale)} differ from the code)"


def test_reference_covers_every_command_section_and_error():
    """What the generator writes holds what it was asked to: every command, every config section, every error."""
    gen = _generator()
    docs = gen.render_all()
    for name in ("llmdr snapshot", "llmdr stack up", "llmdr golden check", "llmdr report verify"):
        assert f"## {name}\n" in docs["cli.md"]
    for section in ("Config", "Region", "Credentials", "ObjectLock", "Monitor", "Drill"):
        assert f"## {section}\n" in docs["configuration.md"]
    for error, code in (("ConfigError", 2), ("IncompleteBundle", 4), ("FailoverError", 7), ("DrillFailed", 8)):
        assert f"| {code} | `{error}` |" in docs["exit-codes.md"]
    assert "| 9 | a readiness check FAILed |" in docs["exit-codes.md"]


def test_readme_is_a_newcomers_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move the detail into docs/ and link it")


def test_every_relative_link_points_at_a_file_and_anchor():
    broken = []
    for path in _markdown_files():
        for lineno, line in _prose_lines(path):
            for target in LINK.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                    continue
                file_part, _, anchor = target.partition("#")
                dest = (path.parent / file_part).resolve() if file_part else path
                where = f"{path.relative_to(ROOT)}:{lineno}: ({target})"
                if not dest.exists():
                    broken.append(f"{where}: no such file")
                elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                    broken.append(f"{where}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_docs_page_is_on_the_map():
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    linked = {(DOCS / t.partition("#")[0]).resolve() for t in LINK.findall(index) if not t.startswith("#")}
    missing = [str(p.relative_to(ROOT)) for p in DOCS.rglob("*.md") if p != DOCS / "index.md" and p not in linked]
    assert not missing, f"docs pages not linked from docs/index.md: {', '.join(sorted(missing))}"
