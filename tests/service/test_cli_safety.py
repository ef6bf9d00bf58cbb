"""The command line as a user meets it, in real processes: the demo never deletes what it did
not make, a taken port is one line naming the port and the flag (before anything is
touched), and token commands refuse a data folder without a database."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def vdata(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``vdata ARGS`` of this checkout in a fresh process (never a traceback expected)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "80", **(env or {})}
    for name in ("VDATA_DATA_DIR", "VDATA_CONFIG", "VDATA_PORT", "VDATA_INCLUDE_DASHBOARD", "VDATA_DASHBOARD_PORT"):
        if env is None or name not in env:
            full_env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The process failed with exactly one line of output, no traceback; that line."""
    assert result.returncode != 0, result.stdout + result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under ``folder``: size, mtime (ns) and content."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def taken_port() -> Iterator[int]:
    """A port with a real listening socket on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


@pytest.fixture()
def users_folder(tmp_path: Path) -> Path:
    """A data folder of a user's own service: a database and a cached range."""
    folder = tmp_path / "mine"
    (folder / "cache" / "ab").mkdir(parents=True)
    (folder / "vdata.db").write_bytes(b"SQLite format 3\x00 the user's catalog and jobs")
    (folder / "cache" / "ab" / "range.arrow").write_bytes(b"ARROW1 a cached range")
    return folder


# -- the demo ----------------------------------------------------------------------------------


def test_demo_refuses_a_folder_it_did_not_make_and_keeps_it_intact(users_folder: Path, tmp_path: Path) -> None:
    before = snapshot(users_folder)
    result = vdata("demo", "--data-dir", str(users_folder), "--events", "1000", "--range-events", "1000",
                   "--no-dashboard", cwd=tmp_path)
    line = one_error_line(result)
    assert str(users_folder) in line and "--force" in line and "vdata.db" in line
    assert snapshot(users_folder) == before
    assert sorted(p.name for p in users_folder.iterdir()) == ["cache", "vdata.db"]


def test_demo_port_conflict_is_one_line_before_the_folder_is_made(taken_port: int, tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    result = vdata("demo", "--data-dir", str(folder), "--events", "1000", "--range-events", "1000",
                   "--dashboard-port", str(taken_port), cwd=tmp_path)
    line = one_error_line(result)
    assert str(taken_port) in line and "--dashboard-port" in line
    assert not folder.exists()


def test_demo_port_conflict_leaves_a_users_folder_alone(taken_port: int, users_folder: Path, tmp_path: Path) -> None:
    before = snapshot(users_folder)
    result = vdata("demo", "--data-dir", str(users_folder), "--force", "--dashboard-port", str(taken_port), cwd=tmp_path)
    line = one_error_line(result)
    assert str(taken_port) in line and "--dashboard-port" in line
    assert snapshot(users_folder) == before


# -- serve -------------------------------------------------------------------------------------


def test_serve_on_a_taken_port_is_one_line_and_touches_nothing(taken_port: int, tmp_path: Path) -> None:
    folder = tmp_path / "served"
    result = vdata("serve", "--data-dir", str(folder), "--port", str(taken_port), cwd=tmp_path)
    line = one_error_line(result)
    assert f"127.0.0.1:{taken_port}" in line and "--port" in line
    assert not folder.exists()


def test_serve_with_the_dashboard_on_a_taken_port_is_one_line(taken_port: int, tmp_path: Path) -> None:
    folder = tmp_path / "served"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        gateway_port = s.getsockname()[1]  # free now; the check fails on the dashboard's port first
    result = vdata("serve", "--data-dir", str(folder), "--port", str(gateway_port), cwd=tmp_path,
                   env={"VDATA_INCLUDE_DASHBOARD": "true", "VDATA_DASHBOARD_PORT": str(taken_port)})
    line = one_error_line(result)
    assert str(taken_port) in line and "VDATA_DASHBOARD_PORT" in line
    assert not folder.exists()


# -- tokens ------------------------------------------------------------------------------------


def test_token_create_without_a_database_is_an_error(tmp_path: Path) -> None:
    result = vdata("token", "create", "--role", "reader", cwd=tmp_path)  # default --data-dir: ./data
    line = one_error_line(result)
    assert "vdata.db" in line and "--data-dir" in line and "vdata serve" in line
    assert list(tmp_path.iterdir()) == []
    missing = tmp_path / "nowhere"
    line = one_error_line(vdata("token", "create", "--role", "admin", "--data-dir", str(missing), cwd=tmp_path))
    assert str(missing) in line
    assert not missing.exists()
