"""``service.http.server.run`` as the CLI uses it, in a child process: the admin token is announced
on the first start, the core starts in the lifespan, and a signal shuts everything down
gracefully (the core closed, Ray stopped)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service.http.server import first_admin_token
from service.settings import Settings
from service.core.tokens import TOKEN_PREFIX
from vdata.testing import free_port, wait_until

PROJECT = Path(__file__).resolve().parents[3]
SCRIPT = """
import sys
from service.http.server import run
from service.settings import Settings
token = run(Settings(data_dir=sys.argv[1], port=int(sys.argv[2]), num_cpus=1,
                     object_store_bytes=80 * 1024**2, log_level="info"),
            announce=lambda line: print(line, flush=True))
print("run returned", token is not None, flush=True)
"""


# Not the embedded_ray fixture: the child's run() starts and stops its own Ray, which is what it tests.
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_run_announces_the_admin_token_and_shuts_down_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    child = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path / "data"), str(port)], cwd=PROJECT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)

    def healthy() -> bool:
        assert child.poll() is None, child.communicate()[0]
        try:
            return bool(httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json() == {"status": "ok"})
        except httpx.TransportError:
            return False

    try:
        wait_until(healthy, timeout=120, interval=0.3, message="the server to answer /healthz")
        child.send_signal(sig)
        output, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    lines = [line for line in output.splitlines() if line.startswith("admin token")]
    assert len(lines) == 1 and TOKEN_PREFIX in lines[0], output
    assert "core started" in output and "core closed" in output, output
    if sig == signal.SIGINT:  # uvicorn re-raises the signal it handled: SIGTERM ends the process
        assert child.returncode == 0 and "run returned True" in output, output
    else:
        assert child.returncode == -signal.SIGTERM, output
    assert first_admin_token(Settings(data_dir=tmp_path / "data")) is None  # shown once only
