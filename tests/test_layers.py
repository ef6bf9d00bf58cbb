"""Imports go down only: service -> vdata -> transforms (DESIGN.md, "Layers")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"transforms": {"vdata", "service"}, "vdata": {"service"}}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_imports(package: str) -> None:
    files = sorted((PROJECT / package).rglob("*.py"))
    assert files, f"package {package} has no modules"
    for path in files:
        bad = imported_packages(path) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(PROJECT)} imports {sorted(bad)}"


def test_only_the_engine_imports_ray() -> None:
    users = [p.relative_to(PROJECT).as_posix() for p in sorted((PROJECT / "vdata").rglob("*.py")) if "ray" in imported_packages(p)]
    assert set(users) <= {"service/core/engine.py"}, users
