"""The install extras: ``pip install vdata`` is what a worker needs, ``vdata[server]`` adds what
the server runs. A Python without the server's packages is made here by a meta-path finder that
refuses them (installing a second environment per test run would take minutes); it runs in a
subprocess, so this test process keeps its own imports."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((PROJECT / "pyproject.toml").read_text())

# What `pip install vdata` (no extras) does not bring: the [server] extra's packages and what
# only they bring (starlette comes with fastapi). Not pydantic: typer (the CLI) depends on it.
SERVER_ONLY = ("ray", "fastapi", "starlette", "uvicorn", "pydantic_settings", "prometheus_client",
               "matplotlib", "psutil", "filelock", "diskcache", "psycopg", "psycopg_pool", "XRootD", "fsspec_xrootd")

WITHOUT_SERVER = f"""
import importlib.abc, sys
BLOCKED = {SERVER_ONLY!r}

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Refuse())
"""


def python_without_server(code: str, *argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter on this worktree in which the server packages cannot be imported."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    env.pop("VDATA_TOKEN", None)
    return subprocess.run([sys.executable, "-c", WITHOUT_SERVER + code, *argv], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=240)


def test_the_worker_library_imports_without_the_server_packages() -> None:
    done = python_without_server(
        "import json, vdata, vdata.client, vdata.data.plans\n"
        "from vdata import Client, Recipe, materialize\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in BLOCKED + ('sqlite3',))))\n"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_a_root_url_without_the_xrootd_client_says_how_to_install_it() -> None:
    """The light install reads http(s) and local files; root:// needs the xrootd extra, and says so."""
    done = python_without_server(
        "import vdata\n"
        "try:\n    vdata.open_dataset('root://127.0.0.1:1//data/x.root', 'events')\n"
        "except ModuleNotFoundError as exc:\n    print(exc)\n"
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'vdata[xrootd]'" in done.stdout and "XRootD" in done.stdout, done.stdout


def test_a_local_materialization_runs_without_the_server_packages(shared_data: Path) -> None:
    recipe = {"source": {"dataset": "opendata:hzz"},
              "steps": [{"filter": "NMuon >= 2"},
                        {"transform": {"name": "leading_pair_mass", "outputs": {"mass": "mMuMu"},
                                       "inputs": {"px": "Muon_Px", "py": "Muon_Py", "pz": "Muon_Pz", "e": "Muon_E"}}}],
              "columns": ["mMuMu"], "range_events": 1000}
    done = python_without_server(
        "from vdata import Catalog, Recipe, materialize\n"
        f"catalog = Catalog()\ncatalog.add_dataset('opendata:hzz', {str(shared_data / 'uproot-HZZ.root')!r}, 'events')\n"
        f"table = materialize(Recipe.from_dict({recipe!r}, catalog), 0, catalog)\n"
        "print(table.num_rows, round(float(table['mMuMu'].to_numpy().mean())))\n"
    )
    assert done.returncode == 0, done.stderr
    rows, mean_mass = map(int, done.stdout.strip().splitlines()[-1].split())
    assert rows > 0 and 60 < mean_mass < 130  # dimuon masses around the Z peak


@pytest.mark.parametrize("argv", [
    ["serve", "--port", "0"],
    ["demo", "--events", "10"],
    ["token", "create", "--role", "reader"],
])
def test_a_server_command_names_the_extra_in_one_line(argv: list[str], tmp_path: Path) -> None:
    done = python_without_server("from service.cli import main\nsys.argv[0] = 'vdata'\nmain()\n",
                                 *argv, "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "pip install 'vdata[server]'" in lines[0] and "ray" in lines[0], lines[0]
    assert not (tmp_path / "data").exists()  # refused before anything was made


def test_python_m_service_names_the_extra(tmp_path: Path) -> None:
    done = python_without_server("import runpy\nrunpy.run_module('service', run_name='__main__')\n", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "pip install 'vdata[server]'" in done.stderr, done.stderr


@pytest.mark.parametrize("module", ["service.http.server", "service.core.engine", "service.core.db"])
def test_importing_server_code_names_the_extra(module: str) -> None:
    done = python_without_server(
        f"try:\n    import {module}\nexcept ModuleNotFoundError as exc:\n    print(exc)\nelse:\n    print('imported')\n"
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'vdata[server]'" in done.stdout, done.stdout


def test_client_commands_work_without_the_server_packages() -> None:
    done = python_without_server("from service.cli import main\nsys.argv[0] = 'vdata'\nmain()\n", "datasets", "list",
                                 "--url", "http://127.0.0.1:9", "--token", "t")
    assert done.returncode == 2, done.stderr  # nobody listens on port 9: one line, no traceback
    assert done.stderr.startswith("error:") and "Connection refused" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


# -- pyproject: the extras declare what the code imports -----------------------------------------------

IMPORT_TO_DIST = {"yaml": "pyyaml", "zlib_ng": "zlib-ng", "XRootD": "xrootd"}


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def third_party_imports(package: str) -> set[str]:
    """Distribution names of the packages ``package`` imports (standard library and our own left out)."""
    found = set()
    for path in (PROJECT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    ours = {"vdata", "transforms", "service", "__future__"}
    names = found - ours - set(sys.stdlib_module_names)
    return {IMPORT_TO_DIST.get(n, n).replace("_", "-") for n in names}


BASE = requirement_names(PYPROJECT["project"]["dependencies"])
SERVER = requirement_names(PYPROJECT["project"]["optional-dependencies"].get("server", []))
XROOTD = requirement_names(PYPROJECT["project"]["optional-dependencies"].get("xrootd", []))
REMOTE_CACHE = requirement_names(PYPROJECT["project"]["optional-dependencies"].get("remote-cache", []))
# Packages the service imports that come with one it declares.
BROUGHT = {"starlette": "fastapi", "anyio": "fastapi"}


def test_the_base_install_declares_what_vdata_and_transforms_import() -> None:
    """Only the XRootD client (the xrootd extra, imported for root:// reads alone) and the remote
    byte cache (the remote-cache extra, imported when a cache folder is set) are optional."""
    assert third_party_imports("vdata") | third_party_imports("transforms") <= BASE | XROOTD | REMOTE_CACHE
    assert XROOTD and not XROOTD & BASE and XROOTD <= SERVER  # Ray workers read root:// sources
    assert REMOTE_CACHE and not REMOTE_CACHE & BASE and REMOTE_CACHE <= SERVER  # ... through the cache
    assert not SERVER & BASE


def test_the_server_extra_declares_what_the_service_imports() -> None:
    missing = third_party_imports("service") - BASE - SERVER - set(BROUGHT)
    assert not missing
    assert {BROUGHT[n] for n in BROUGHT} <= SERVER


def test_the_missing_extra_check_knows_the_server_extra() -> None:
    from service._extras import SERVER_PACKAGES

    assert {dist for dist in SERVER_PACKAGES.values()} == SERVER


def test_a_folder_of_the_same_name_is_not_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray leaves /tmp/ray behind: started in /tmp, ``import ray`` would find that folder as a
    namespace package, and the check must not take it for Ray."""
    from service._extras import missing

    (tmp_path / "vdata_no_such_package").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    assert missing(["vdata_no_such_package", "json"]) == ["vdata_no_such_package"]
