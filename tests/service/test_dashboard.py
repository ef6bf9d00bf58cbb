"""Ray's dashboard as an operator meets it with ``vdata serve`` (real processes, real ports):
on by default, on 127.0.0.1 only, its address and token instructions printed at start and
working as printed (Ray 2.60: ``Authorization: Bearer <token>``; 401 without, 403 wrong),
and a taken port refused in one line naming the port and the flags that change it."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from serve_process import Serve, listening, processes_mentioning, short_dir, stop_all

from vdata.testing import free_port

RAY = Path(sys.executable).with_name("ray")  # the venv's ray command, as `make run`'s .venv/bin/ray
PROJECT = Path(__file__).resolve().parents[2]


def vdata(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``vdata ARGS`` of this checkout in a fresh process, without the caller's VDATA_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VDATA_")}
    env.update(PYTHONPATH=str(PROJECT), COLUMNS="80")
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=240, check=False)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The process failed with exactly one line of output, no traceback; that line."""
    assert result.returncode != 0, result.stdout + result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


@pytest.fixture()
def taken_port() -> Iterator[int]:
    """A port with a real listening socket on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def other_addresses() -> list[str]:
    """This host's IPv4 addresses other than loopback."""
    return [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
            if a.family == socket.AF_INET and not a.address.startswith("127.")]


def test_serve_turns_the_dashboard_on_by_default_so_a_taken_port_is_refused(taken_port: int, tmp_path: Path) -> None:
    """No flag, no VDATA_INCLUDE_DASHBOARD: the dashboard is on (its port is checked), and the
    one-line error names the port and both flags."""
    folder = tmp_path / "served"
    result = vdata("serve", "--data-dir", str(folder), "--port", str(free_port()),
                   "--dashboard-port", str(taken_port), cwd=tmp_path)
    line = one_error_line(result)
    assert f"127.0.0.1:{taken_port}" in line and "Ray's dashboard" in line
    assert "--dashboard-port" in line and "--no-dashboard" in line
    assert not folder.exists()


def test_no_dashboard_skips_the_dashboards_port(taken_port: int, tmp_path: Path) -> None:
    """--no-dashboard: the taken dashboard port does not matter (the gateway's port, taken
    too, is the error instead: nothing starts)."""
    result = vdata("serve", "--data-dir", str(tmp_path / "d"), "--port", str(taken_port), "--no-dashboard",
                   "--dashboard-port", str(taken_port), cwd=tmp_path)
    line = one_error_line(result)
    assert "the gateway" in line and "Ray's dashboard" not in line


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Serve, int]]:
    """``vdata serve --dashboard --dashboard-port P`` on a short data folder, for the module;
    stopped after, also when a test failed."""
    root = short_dir("vdd-")
    port = free_port()
    serve = Serve(root / "data", args=["--dashboard", "--dashboard-port", str(port)])
    try:
        serve.wait_healthy()
        yield serve, port
    finally:
        serve.stop()
        stop_all(processes_mentioning(str(root)))
        subprocess.run(["rm", "-rf", str(root)], check=False)


def test_the_printed_dashboard_address_and_token_instructions_work(served: tuple[Serve, int]) -> None:
    serve, port = served
    url = f"http://127.0.0.1:{port}"
    address = next((line for line in serve.lines if line.startswith("Ray dashboard:")), None)
    assert address is not None and url in address, serve.output
    token_line = next((line for line in serve.lines if line.startswith("Ray dashboard token")), None)
    assert token_line is not None, serve.output
    cat = re.search(r"cat (\S+)", token_line)
    ray_cmd = re.search(r"\(or: (RAY_AUTH_TOKEN_PATH=\S+) (\S*ray) get-auth-token\)", token_line)
    assert cat is not None and ray_cmd is not None, token_line
    assert Path(cat.group(1)) == (serve.data_dir / "ray_auth_token").resolve()

    # what an operator types, run as typed (the ray command of this venv, as .venv/bin/ray in make run)
    token = subprocess.run(shlex.split(cat.group(0)), capture_output=True, text=True, check=True).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update([ray_cmd.group(1).split("=", 1)])
    assert ray_cmd.group(2) == str(RAY)  # the environment's own ray command, not one that may not be on PATH
    printed = subprocess.run([ray_cmd.group(2), "get-auth-token"], env=env, capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == token

    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/api/version").status_code == 401  # no token
        assert http.get("/api/version", headers={"Authorization": "Bearer " + "0" * 64}).status_code == 403
        answer = http.get("/api/version", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text
        assert "ray_version" in answer.json()
        # the browser's way: the token pasted into the dashboard's dialog becomes a cookie
        assert http.post("/api/authenticate", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert http.get("/api/version").status_code == 200


def test_the_dashboard_listens_on_loopback_only(served: tuple[Serve, int]) -> None:
    serve, port = served
    on_port = [entry for entry in listening(serve.snapshot()) if entry[3] == port]
    assert on_port, f"nothing of vdata serve listens on {port}"
    assert {entry[2] for entry in on_port} == {"127.0.0.1"}, on_port
    for address in other_addresses():  # the host's other addresses (none on a loopback-only machine)
        with socket.socket() as s, pytest.raises(OSError):
            s.settimeout(5)
            s.connect((address, port))
