"""Imports go one way: ``service.http -> service.core -> vdata -> transforms`` (DESIGN.md, "Layers").

``vdata`` is what a worker or an analysis installs, so nothing in it may need the server's
packages; ``service.core`` knows no HTTP; only the engine imports Ray. Every ``import`` counts,
also those inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
SERVER_ONLY = {"ray", "fastapi", "uvicorn", "starlette", "sqlite3", "pydantic_settings", "prometheus_client",
               "psycopg", "psycopg_pool"}

# module prefix -> prefixes (ours) and top-level packages (third party) it must not import
RULES: dict[str, set[str]] = {
    "transforms": {"vdata", "service"} | SERVER_ONLY,
    "vdata": {"service"} | SERVER_ONLY,
    "vdata.data": {"vdata.client"},
    "service.errors": {"service.core", "service.http", "service.settings", "service.cli", "service.demo"},
    "service.core": {"service.http", "service.settings", "service.cli", "service.demo", "service.ports",
                     "fastapi", "uvicorn", "starlette", "pydantic_settings", "prometheus_client"},
    "service.http": {"service.cli", "service.demo"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path) if path.is_relative_to(PROJECT) else path.stem
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def modules() -> list[Path]:
    return sorted(p for pkg in ("transforms", "vdata", "service") for p in (PROJECT / pkg).rglob("*.py"))


@pytest.mark.parametrize("layer", sorted(RULES))
def test_no_upward_imports(layer: str) -> None:
    files = [p for p in modules() if within(module_name(p), layer)]
    assert files, f"no modules in {layer}"
    bad = {f"{p.relative_to(PROJECT)} imports {name}"
           for p in files for name in imports(p) for banned in RULES[layer] if within(name, banned)}
    assert not bad, sorted(bad)


def test_only_the_engine_imports_ray() -> None:
    users = {module_name(p) for p in modules() if any(within(n, "ray") for n in imports(p))}
    assert users == {"service.core.engine"}, users


def test_the_rules_see_a_violation(tmp_path: Path) -> None:
    """The check itself: an upward import inside a function is found."""
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from service.core import engine\n    import ray.util\n")
    assert {"service.core", "service.core.engine", "ray.util"} <= imports(bad)


def test_importing_the_worker_side_loads_no_server_package() -> None:
    """``import vdata`` (library, client, local materialization) in a fresh interpreter pulls in
    none of the server's packages, not even through a third-party one."""
    code = ("import sys, json, vdata, vdata.client, vdata.data.plans, vdata.data.synthetic;"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                           text=True, cwd=PROJECT, timeout=120).stdout))
    assert "vdata" in loaded and not loaded & SERVER_ONLY, sorted(loaded & SERVER_ONLY)
