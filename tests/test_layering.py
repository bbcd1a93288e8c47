"""The house layering: llmdr's core imports neither Prefect nor boto3/botocore; only adapters may, and lazily."""

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent / "llmdr"
# Adapters allowed to talk to those libraries (inside functions, so importing llmdr stays light).
ADAPTERS = {"storage/s3.py": {"boto3", "botocore"}, "storage/credentials.py": {"botocore", "boto3"},
            "failover/router/route53.py": {"boto3", "botocore"}, "integrations/prefect.py": {"prefect"}}
ADAPTERS["lineage/tracking.py"] = {"botocore"}  # classifies MLflow's S3 upload errors, lazily
FORBIDDEN = {"prefect", "boto3", "botocore"}


def _imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node, a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node, node.module.split(".")[0]


def test_core_modules_do_not_import_prefect_or_boto3():
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text())
        top_level = {id(n) for n in tree.body}
        for node, mod in _imports(tree):
            if mod not in FORBIDDEN:
                continue
            if mod in ADAPTERS.get(rel, set()) and id(node) not in top_level:
                continue  # a lazy import inside an adapter function
            offenders.append(f"{rel}:{node.lineno} imports {mod}")
    assert offenders == []
