"""A gateway joined to an outside Ray head (``ray start --head`` on loopback) survives the
death of that head's GCS: while Ray is away, what needs Ray gets 503 ``ray_unavailable`` with
a Retry-After (not a hang; the gateway notices within about a second, its probe of the GCS
port), cached ranges and job leases are still served, and once a head runs on the same port
again the next request reconnects the gateway, without a restart of its own.

Ray's GCS fault tolerance (an external Redis keeps the GCS state, so the cluster's nodes and
tasks outlive a GCS restart) needs Redis, which is not here: this head restarts empty, as a
new cluster, and the gateway joins it anew (its ranges, jobs and cache live in its own
database, not in Ray).

Every process of the head carries a mark in its environment (``VDATA_RAY_OWNER``), so the
test stops exactly those (``service.core.ray_local.reap``), never ``ray stop``, which would stop
every Ray on the machine.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from service.core.ray_local import OWNER_ENV, _has_mark, reap
from vdata.testing import free_port, wait_until

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[3]
RAY = str(Path(sys.executable).parent / "ray")
SCRIPT = """
import sys
from service.http.server import run
from service.settings import Settings
run(Settings(data_dir=sys.argv[1], port=int(sys.argv[2]), ray_address=sys.argv[3], ray_retry_seconds=1,
             lookahead=0, readahead=0, log_level="info"), announce=lambda line: print(line, flush=True))
"""
RECIPE = {
    "source": {"generator": "zmumu", "events": 20_000, "seed": 3},
    "steps": [{"transform": {"name": "leading_pair_mass_ptetaphim",
                             "inputs": {"pt": "Muon_pt", "eta": "Muon_eta", "phi": "Muon_phi", "m": "Muon_mass"},
                             "outputs": {"mass": "mMuMu"}}}],
    "columns": ["mMuMu"],
    "range_events": 2_000,
}


class Head:
    """A Ray head started with ``ray start --head`` on 127.0.0.1:``port``, its processes marked."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.mark = f"vdata-test-head-{uuid.uuid4().hex[:8]}"
        self.temp = Path(tempfile.mkdtemp(prefix="vh-", dir="/tmp"))  # short: Ray's socket paths
        token = self.temp / "token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        # what the head and its clients share: token authentication with this token file
        self.auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}

    def start(self) -> None:
        # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: `ray start` would move 127.0.0.1 to the host's address
        env = dict(os.environ, **{OWNER_ENV: self.mark, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}, **self.auth)
        env.pop("RAY_ADDRESS", None)
        subprocess.run([RAY, "start", "--head", f"--port={self.port}", "--node-ip-address=127.0.0.1",
                        "--num-cpus=1", f"--object-store-memory={80 * 1024**2}", "--include-dashboard=false",
                        "--disable-usage-stats", f"--temp-dir={self.temp}"],
                       env=env, check=True, timeout=180, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def processes(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["name"]):
            try:
                if _has_mark(proc, f"{OWNER_ENV}={self.mark}"):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
                pass
        return found

    def kill_gcs(self) -> None:
        gcs = [p for p in self.processes() if p.info["name"] == "gcs_server"]
        assert len(gcs) == 1, gcs
        gcs[0].send_signal(signal.SIGKILL)
        gcs[0].wait(timeout=30)

    def stop(self) -> None:
        reap(self.mark, grace=2.0)


# Ray's driver gives up on a lost GCS after gcs_rpc_server_reconnect_timeout_s (60 s by default)
# and ends the whole process; the gateway must leave Ray before that. 10 s here keeps the test short.
RECONNECT_SECONDS = 10
RECONNECT = {"RAY_gcs_rpc_server_reconnect_timeout_s": str(RECONNECT_SECONDS)}


@pytest.fixture
def head() -> Iterator[Head]:
    the_head = Head(free_port())
    try:
        the_head.start()
        yield the_head
    finally:
        the_head.stop()
        import shutil

        shutil.rmtree(the_head.temp, ignore_errors=True)


def test_the_gateway_answers_503_while_the_ray_head_is_away_and_recovers(head: Head, tmp_path: Path) -> None:
    port = free_port()
    child = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path / "data"), str(port),
                              f"127.0.0.1:{head.port}"], cwd=PROJECT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True,
                             env=dict(os.environ, PYTHONUNBUFFERED="1", **head.auth, **RECONNECT))
    lines: list[str] = []

    def token() -> str | None:
        assert child.poll() is None, child.communicate()[0]
        line = child.stdout.readline() if child.stdout else ""
        lines.append(line)
        return line.split()[-1] if line.startswith("admin token") else None

    try:
        admin = wait_until(token, timeout=180, interval=0, message="the gateway's admin token")
        url = f"http://127.0.0.1:{port}"
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin}"}, timeout=60)
        wait_until(lambda: _healthy(http, child, lines), timeout=180, interval=0.3, message="the gateway to answer /healthz")
        recipe = http.post("/v1/recipes", json=RECIPE)
        assert recipe.status_code == 201, recipe.text
        recipe_id = recipe.json()["id"]
        cached = http.get(f"/v1/recipes/{recipe_id}/ranges/0")
        assert cached.status_code == 200, cached.text
        job = http.post("/v1/jobs", json={"recipe_id": recipe_id, "lease_seconds": 60})
        assert job.status_code == 201, job.text
        job_id = job.json()["id"]

        head.kill_gcs()
        killed = time.monotonic()
        refused = wait_until(lambda: _refused(http, f"/v1/recipes/{recipe_id}/ranges/1"), timeout=120, interval=0.2,
                             message="a 503 for a range that needs Ray")
        to_503 = time.monotonic() - killed
        assert refused.status_code == 503 and refused.json()["error"] == "ray_unavailable", refused.text
        assert "Ray" in refused.json()["detail"] and f"127.0.0.1:{head.port}" in refused.json()["detail"], refused.text
        assert int(refused.headers["retry-after"]) >= 1
        assert http.get(f"/v1/recipes/{recipe_id}/ranges/0").content == cached.content  # the cache still serves
        lease = http.post(f"/v1/jobs/{job_id}/lease", json={"worker": "w1", "n": 1})
        assert lease.status_code == 200 and lease.json()[0]["index"] == 0, lease.text
        time.sleep(RECONNECT_SECONDS + 5)  # past the driver's GCS reconnect timeout, which used to end the process
        assert child.poll() is None, child.communicate()[0]
        assert _refused(http, f"/v1/recipes/{recipe_id}/ranges/1") is not None

        head.stop()  # what is left of the old head (its raylet waits out the same timeout)
        head.start()
        restarted = time.monotonic()
        made = wait_until(lambda: _made(http, f"/v1/recipes/{recipe_id}/ranges/1"), timeout=180, interval=0.5,
                          message="the gateway to make a range on the new head")
        to_recover = time.monotonic() - restarted
        assert made.status_code == 200 and int(made.headers["x-vdata-events"]) == 2_000
        print(f"\nGCS killed -> 503 after {to_503:.1f} s; head restarted -> a range made after {to_recover:.1f} s")
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.communicate()


def _healthy(http: httpx.Client, child: subprocess.Popen[str], lines: list[str]) -> bool:
    assert child.poll() is None, "".join(lines) + child.communicate()[0]
    try:
        return http.get("/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _refused(http: httpx.Client, path: str) -> httpx.Response | None:
    response = http.get(path, timeout=60)
    assert response.status_code in (200, 503), response.text
    return response if response.status_code == 503 and response.json().get("error") == "ray_unavailable" else None


def _made(http: httpx.Client, path: str) -> httpx.Response | None:
    response = http.get(path, timeout=60)
    assert response.status_code in (200, 503), response.text
    return response if response.status_code == 200 else None
