"""The layers hold by tool, not by habit: the import-linter contracts in ``.importlinter`` pass, they fail when
someone adds a forbidden import (shown here on a copy of the tree), no private name crosses modules, and the
adapters that may import Prefect or boto3/botocore do so lazily, so ``import llmdr`` stays light."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORE = REPO / "llmdr"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    # The tree under test must be the one imported: its root first on sys.path, and no cache from another tree.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root), "HOME": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", str(root / ".importlinter")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_hold():
    r = _lint_imports(REPO)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "BROKEN" not in r.stdout


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    for pkg in ("llmdr", "tasks", "flows"):
        shutil.copytree(REPO / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", root / ".importlinter")
    return root


@pytest.mark.parametrize("module, line, expected", [
    # a lazy import inside a function is seen as well as a top-level one
    ("llmdr/repo/manifest.py", "\n\ndef _leak():\n    import prefect  # noqa\n",
     "llmdr.repo is not allowed to import prefect"),
    ("llmdr/storage/memory.py", "\nfrom llmdr.repo import repository  # noqa\n",
     "llmdr.storage is not allowed to import llmdr.repo"),
    ("llmdr/serving/golden.py", "\n\ndef _leak():\n    from flows import failover  # noqa\n",
     "llmdr.serving is not allowed to import flows"),
    ("llmdr/repo/snapshot.py", "\n\ndef _leak():\n    from llmdr.testing import faulty  # noqa\n",
     "llmdr.repo is not allowed to import llmdr.testing"),
])
def test_contracts_refuse_a_forbidden_import(tree_copy, module, line, expected):
    path = tree_copy / module
    original = path.read_text()
    path.write_text(original + line)
    try:
        r = _lint_imports(tree_copy)
    finally:
        path.write_text(original)
    assert r.returncode != 0
    assert expected in r.stdout, r.stdout[-4000:]


def _py_files():
    for top in ("llmdr", "tasks", "flows"):
        yield from sorted((REPO / top).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_private_name_is_imported_from_another_module():
    offenders = []
    for path in _py_files():
        here = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                    and node.module.split(".")[0] in ("llmdr", "tasks", "flows") and node.module != here:
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        offenders.append(f"{path.relative_to(REPO)}:{node.lineno} imports {node.module}.{alias.name}")
    assert offenders == []


# Adapters that may use these libraries, and must import them inside functions.
LAZY = {"storage/s3.py": {"botocore"}, "storage/credentials.py": {"botocore"},
        "failover/router/route53.py": {"boto3", "botocore"}, "integrations/prefect.py": {"prefect"},
        "lineage/tracking.py": {"botocore"}}
HEAVY = {"prefect", "boto3", "botocore", "mlflow", "great_expectations", "pandas", "matplotlib", "dvc"}


def test_heavy_libraries_are_imported_lazily_in_the_core():
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        rel = path.relative_to(CORE).as_posix()
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: a function-level import is the lazy kind
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module.split(".")[0]]
            offenders += [f"{rel}:{node.lineno} imports {n} at module level" for n in names if n in HEAVY]
    assert offenders == []
    assert set(LAZY) <= {p.relative_to(CORE).as_posix() for p in CORE.rglob("*.py")}, "an adapter moved: update LAZY"


def test_import_llmdr_cli_stays_light():
    code = ("import sys, llmdr.cli, llmdr.config, llmdr.repo.ops; "
            f"heavy = sorted(m for m in {sorted(HEAVY)!r} if m in sys.modules); print(heavy); "
            "sys.exit(1 if heavy else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
