"""The embedded Ray of a real ``vdata serve`` is private and dies with the gateway.

Each test starts ``vdata serve`` as a child process on a fresh data folder, as an operator
would, and looks at the whole process tree from outside with psutil:

- every listening socket of the gateway and of every Ray process it started is on loopback,
  and Ray's processes run with token authentication and a token file inside the data folder
  (mode 0600), not the shared ``~/.ray/auth_token``;
- a Ray instance already running on the machine (found the way Ray finds one: its
  ``ray_current_cluster`` file under ``RAY_TMPDIR``) is not joined;
- after a SIGKILL of the gateway no Ray process of that data folder stays alive (the dashboard
  and runtime-env agents did, for minutes), and the next start on the folder works; with the
  watchdog killed too, the next start removes what is left.

The processes a test starts are stopped in teardown, found by the process tree and by the
paths in their command line or environment — never with ``ray stop``, which would stop every
Ray of the machine.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_process import (
    Serve,
    alive,
    cmdline,
    describe,
    is_loopback,
    listening,
    processes_mentioning,
    short_dir,
    stop_all,
)

from vdata.testing import free_port, wait_until

RAY_BIN = Path(sys.executable).parent / "ray"

# Not the embedded_ray fixture: the Ray that `vdata serve` starts in its own process is what these test.
pytestmark = pytest.mark.slow




# -- Ray private: loopback only, its own token ---------------------------------------------------


def test_every_socket_of_the_service_is_on_loopback_and_ray_uses_a_private_token(tmp_path: Path) -> None:
    data = tmp_path / "a-data-folder-whose-path-is-too-long-for-ray-sockets"  # Ray's folder falls back
    with Serve(data) as serve:
        serve.wait_healthy()
        serve.materialize(serve.admin_token)
        procs = serve.snapshot()
        ray_procs = [p for p in procs if "ray" in cmdline(p).lower()]
        assert ray_procs, f"no Ray process under the gateway:\n{describe(procs)}"
        sockets = listening(procs)
        exposed = [s for s in sockets if not is_loopback(s[2])]
        assert not exposed, "listening beyond loopback:\n" + "\n".join(map(str, exposed))
        assert any(s[3] == serve.port for s in sockets), sockets  # the gateway itself was seen

        raylet = next((p for p in procs if p.name() == "raylet"), None)
        assert raylet is not None, describe(procs)
        env = raylet.environ()
        assert env.get("RAY_AUTH_MODE") == "token", env.get("RAY_AUTH_MODE")
        assert "RAY_AUTH_TOKEN" not in env
        token_file = Path(env.get("RAY_AUTH_TOKEN_PATH", str(Path.home() / ".ray" / "auth_token")))
        assert token_file.resolve().is_relative_to(data.resolve()), token_file
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600, oct(token_file.stat().st_mode)
        assert len(token_file.read_text().strip()) >= 32
        ray_dir = Path(next(a for a in raylet.cmdline() if a.startswith("--temp_dir=")).split("=", 1)[1])
        assert len(str(ray_dir)) <= 44 and ray_dir.is_dir(), ray_dir  # a short private folder instead
    leftovers = [p for p in serve.seen.values() if alive(p)]
    assert not leftovers, f"alive after a graceful stop:\n{describe(leftovers)}"
    assert not ray_dir.exists(), f"Ray's private folder {ray_dir} was left behind"
    assert not token_file.exists(), "the Ray token outlived the service"


# -- a foreign Ray on the machine is not joined ------------------------------------------------


@pytest.fixture
def foreign_ray() -> Iterator[Path]:
    """A Ray instance started with ``ray start --head`` (loopback, 1 CPU) under its own
    ``RAY_TMPDIR``; its processes carry a marker in their environment for teardown."""
    tmpdir = short_dir("vf-")
    marker = f"VDATA_TEST_FOREIGN_RAY={tmpdir}"
    env = dict(os.environ, RAY_TMPDIR=str(tmpdir), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               VDATA_TEST_FOREIGN_RAY=str(tmpdir))
    env.pop("RAY_ADDRESS", None)
    command = [str(RAY_BIN), "start", "--head", f"--port={free_port()}", "--num-cpus=1",
               f"--object-store-memory={80 * 1024**2}", "--node-ip-address=127.0.0.1",
               "--include-dashboard=false", "--disable-usage-stats"]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        assert (tmpdir / "ray" / "ray_current_cluster").exists(), done.stdout
        yield tmpdir
    finally:
        stop_all(processes_mentioning(marker.split("=", 1)[1]))
        subprocess.run(["rm", "-rf", str(tmpdir)], check=False)


def test_serve_starts_its_own_ray_beside_a_foreign_one(foreign_ray: Path, data_dir: Path) -> None:
    foreign = processes_mentioning(str(foreign_ray))
    assert any(p.name() == "gcs_server" for p in foreign), describe(foreign)
    with Serve(data_dir, {"RAY_TMPDIR": str(foreign_ray)}) as serve:
        serve.wait_healthy()
        serve.materialize(serve.admin_token)
        ours = serve.snapshot()
        assert any(p.name() == "gcs_server" for p in ours), f"no Ray of its own:\n{describe(ours)}"
        assert "Connecting to" not in serve.output, serve.output
    assert all(alive(p) for p in foreign if p.name() in ("gcs_server", "raylet")), "the foreign Ray was stopped"


# -- no Ray process outlives the gateway ----------------------------------------------------------


def test_no_ray_process_outlives_a_killed_gateway_and_the_folder_restarts(data_dir: Path) -> None:
    with Serve(data_dir) as serve:
        serve.wait_healthy()
        token = serve.admin_token
        serve.materialize(token)
        procs = serve.snapshot()
        raylet = " ".join(next(p for p in procs if p.name() == "raylet").cmdline())
        agents = [p for p in procs if p.name().startswith("ray::") or "agent" in cmdline(p).lower()]
        assert agents, describe(procs)
        serve.child.kill()
        serve.child.wait()
        survivors = [p for p in procs if p.pid != serve.child.pid]

        def all_gone() -> bool:
            return not [p for p in survivors if alive(p)] and not processes_mentioning(str(data_dir / "ray"))

        try:
            wait_until(all_gone, timeout=30, interval=0.3, message="the Ray processes of the killed gateway to end")
        except AssertionError as exc:
            left = [p for p in survivors if alive(p)] + processes_mentioning(str(data_dir / "ray"))
            raise AssertionError(f"{exc}; still alive:\n{describe(left)}") from None
        assert str(data_dir / "ray") in raylet, f"Ray's folder is not under the data folder: {raylet[:300]}"

    with Serve(data_dir) as again:  # the same folder serves again
        again.wait_healthy()
        again.materialize(token, index=1)


def test_the_next_start_removes_what_a_killed_gateway_and_watchdog_left(data_dir: Path) -> None:
    first = Serve(data_dir)
    try:
        first.wait_healthy()
        token = first.admin_token
        first.materialize(token)
        procs = first.snapshot()
        for p in procs:  # SIGKILL the gateway and its watchdog, not Ray's own processes
            if p.pid == first.child.pid or "_ray_local" in cmdline(p):
                p.kill()
        first.child.wait()
        # A sleep that is the behaviour: what is still alive a while after the kill, once Ray's own
        # fate sharing stopped what it stops (no event says when that is done), is what the next
        # start must remove; the assertion below fails loudly should nothing be left.
        time.sleep(3)
        left = [p for p in procs if alive(p)]
        assert left, "nothing of Ray outlived its gateway and watchdog: this test no longer tests the next start"
        with Serve(data_dir) as again:
            again.wait_healthy()
            still = [p for p in left if alive(p)]
            assert not still, f"leftovers of the killed gateway survived the next start:\n{describe(still)}"
            again.materialize(token, index=2)
    finally:
        first.stop()
