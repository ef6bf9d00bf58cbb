"""``vdata serve`` with ``VDATA_DATABASE_URL=postgresql://...``: a real gateway process whose
whole state lives in PostgreSQL. It announces the admin token (stored there), serves a recipe's
range and runs a job's lease-finish round trip; a second start on the same database (another
data folder, as a second gateway would have) knows the token, the dataset, the recipe and the
finished job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_helpers import HZZ, RECIPE, SCALE

from vdata.testing import free_port, wait_until

PROJECT = Path(__file__).resolve().parents[3]


class Gateway:
    """``vdata serve`` in a child process on a free loopback port; stopped by SIGINT at the end."""

    def __init__(self, data_dir: Path, database_url: str, shared_data: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="300", VDATA_DATABASE_URL=database_url,
                   VDATA_NUM_CPUS="1", VDATA_OBJECT_STORE_BYTES=str(80 * 1024**2), VDATA_INCLUDE_DASHBOARD="false",
                   VDATA_ALLOWED_ROOTS=f'["{shared_data}"]', VDATA_LOOKAHEAD="0", VDATA_READAHEAD="0",
                   PYTHONPATH=str(PROJECT))
        self.child = subprocess.Popen(
            [sys.executable, "-c", "from service.cli import main; main()", "serve", "--data-dir", str(data_dir),
             "--port", str(self.port)],
            cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.child.stdout is not None
        for line in self.child.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_healthy(self) -> None:
        def healthy() -> bool:
            assert self.child.poll() is None, self.output
            try:
                return bool(httpx.get(f"{self.url}/healthz", timeout=2).json() == {"status": "ok"})
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout=180, interval=0.3, message="vdata serve to answer /healthz")

    def stop(self) -> str:
        if self.child.poll() is None:
            self.child.send_signal(signal.SIGINT)
            try:
                self.child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait()
        self._reader.join(timeout=10)
        if self.child.stdout is not None and not self._reader.is_alive():
            self.child.stdout.close()
        return self.output


def admin_token(output: str) -> str | None:
    words = [w for line in output.splitlines() if line.startswith("admin token") for w in line.split()]
    return next((w for w in words if w.startswith("vdt_")), None)


@pytest.mark.slow
def test_vdata_serve_on_postgresql(postgres: Any, shared_data: Path, tmp_path: Path) -> None:
    url = postgres.new()
    gateway = Gateway(tmp_path / "a", url, shared_data)
    try:
        gateway.wait_healthy()
        token = admin_token(gateway.output)  # printed before the gateway answers
        assert token is not None, gateway.output
        http = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {token}"}, timeout=120)
        r = http.post("/v1/datasets", json={"name": "opendata:hzz", "paths": [str(shared_data / HZZ)], "tree": "events"})
        assert r.status_code == 201, r.text
        assert http.post("/v1/transforms", json=SCALE).status_code == 201
        recipe_id = http.post("/v1/recipes", json=RECIPE).json()["id"]
        job = http.post("/v1/jobs", json={"recipe_id": recipe_id, "lease_seconds": 60}).json()["id"]
        events = 0
        while leases := http.post(f"/v1/jobs/{job}/lease", json={"worker": "w1", "n": 4}).json():
            for lease in leases:
                got = http.get(lease["url"])
                assert got.status_code == 200 and int(got.headers["x-vdata-events"]) == lease["stop"] - lease["first"]
                assert http.post(f"/v1/jobs/{job}/ranges/{lease['index']}/finish", json={"worker": "w1"}).status_code == 200
                events += lease["stop"] - lease["first"]
        assert events == 2421
        http.close()
        gateway.stop()

        other = Gateway(tmp_path / "b", url, shared_data)  # another data folder, the same database
        gateway = other
        other.wait_healthy()
        with httpx.Client(base_url=other.url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
            assert [d["name"] for d in http.get("/v1/datasets").json()] == ["opendata:hzz"]
            status = http.get(f"/v1/jobs/{job}").json()
            assert status["done"] and status["events_finished"] == 2421
            assert http.get(f"/v1/recipes/{recipe_id}/ranges").status_code == 200
        output = other.stop()
        assert admin_token(output) is None, output  # the first admin token is shown once per database
    finally:
        gateway.stop()
