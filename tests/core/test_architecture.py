"""The package rules of docs/architecture.md, checked on the code: who may import whom (module level and lazy
imports alike, since a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "pkg" / "zhllama"
STAGES = {"tokenizer", "data", "prepare", "train", "merge", "quantize", "eval", "generate", "report"}
ONLY: dict[str, set[str]] = {
    # package -> the only other zhllama packages it may import
    "errors": set(),
    "spec": {"errors"},
    "store": {"errors"},
    "records": {"errors"},
}
NOT: dict[str, set[str]] = {
    # package -> the zhllama packages it must not import
    "run": {"backends", "cli", "pipeline", "models", *STAGES},
    "backends": {"cli", "pipeline", "models", *STAGES},
    "models": {"backends", "cli", "pipeline", *STAGES},
    "embedded": {"run", "backends", "cli", "pipeline"},
    **{stage: {"backends", "cli", "pipeline"} for stage in STAGES},
}


def imported_packages(path: Path) -> set[str]:
    """The top-level zhllama packages `path` imports (`zhllama` itself for its version)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "zhllama" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("package", sorted(ONLY | NOT))
def test_each_package_imports_only_what_its_rule_allows(package: str) -> None:
    files = sorted((PKG / package).rglob("*.py")) if (PKG / package).is_dir() else [PKG / f"{package}.py"]
    assert files and files[0].exists(), f"no package {package}"
    broken = set()
    for path in files:
        used = imported_packages(path) - {package}
        bad = used - ONLY[package] if package in ONLY else used & NOT[package]
        broken |= {f"{path.relative_to(PKG)} imports zhllama.{name}" for name in bad}
    assert not broken, sorted(broken)
