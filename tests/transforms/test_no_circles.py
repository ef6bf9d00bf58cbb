"""The modules of ``transforms`` import one another without a circle (issue 11).

Every ``import`` counts, also inside functions and ``if TYPE_CHECKING:`` blocks: a circle hidden
in a function still means neither module can be read, tested or moved without the other.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

import transforms

PACKAGE = Path(transforms.__file__).resolve().parent


def module_name(root: Path, path: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (anywhere in its syntax tree)."""
    paths = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's package, one level up per extra dot
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets.add(module)
                targets.update(f"{module}.{alias.name}" for alias in node.names)  # submodules
        graph[name] = {t for t in targets if t in paths and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        cycle: list[str] = exc.args[1]
        return cycle
    return None


def test_transforms_modules_import_without_a_circle() -> None:
    graph = import_graph(PACKAGE)
    cycle = find_cycle(graph)
    assert cycle is None, f"import circle in transforms: {' -> '.join(cycle)}"
    assert "transforms.physics" in graph["transforms.registry"]  # the table is built from physics


def test_a_circle_hidden_in_a_function_is_found(tmp_path: Path) -> None:
    # The check itself: relative imports, imports inside functions and under TYPE_CHECKING count.
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import thing\n")
    (pkg / "b.py").write_text("def thing():\n    from pkg import c\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n")
    (pkg / "d.py").write_text("from . import a, c\n")
    graph = import_graph(pkg)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg", "pkg.c"}, "pkg.c": {"pkg.a"}, "pkg.d": {"pkg", "pkg.a", "pkg.c"}}
    cycle = find_cycle(graph)
    assert cycle is not None and set(cycle) == {"pkg.a", "pkg.b", "pkg.c"}
    (pkg / "c.py").write_text("import numpy\n")
    assert find_cycle(import_graph(pkg)) is None


@pytest.mark.parametrize("module", ["transforms.physics", "transforms.usercode", "transforms._drivers"])
def test_kernels_do_not_import_the_registry(module: str) -> None:
    graph = import_graph(PACKAGE)
    assert "transforms.registry" not in graph[module]
