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

import ipaddress
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from vdata.testing import free_port

PROJECT = Path(__file__).resolve().parents[2]
RAY_BIN = Path(sys.executable).parent / "ray"
RECIPE = {
    "source": {"generator": "zmumu", "events": 4000, "seed": 7},
    "columns": ["Muon_pt", "Muon_eta"],
    "range_events": 1000,
}
START_TIMEOUT = 180.0

pytestmark = pytest.mark.slow


# -- helpers -----------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (a dead child its parent has not reaped yet)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def mentions(proc: psutil.Process, text: str) -> bool:
    """Whether ``text`` is in the process's command line or environment (Ray's agents rename
    themselves, e.g. ``ray::DashboardAgent``, but keep the environment they started with)."""
    try:
        if text in cmdline(proc):
            return True
        return any(text in value for value in proc.environ().values())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def processes_mentioning(text: str) -> list[psutil.Process]:
    me = os.getpid()
    return [p for p in psutil.process_iter() if p.pid != me and alive(p) and mentions(p, text)]


def stop_all(procs: list[psutil.Process]) -> None:
    procs = [p for p in procs if alive(p) and p.pid != os.getpid()]
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def describe(procs: list[psutil.Process]) -> str:
    lines = []
    for p in procs:
        try:
            lines.append(f"{p.pid} (parent {p.ppid()}): {' '.join(p.cmdline())[:160]}")
        except psutil.Error:
            lines.append(f"{p.pid}: gone")
    return "\n".join(lines)


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def listening(procs: list[psutil.Process]) -> list[tuple[int, str, str, int]]:
    """(pid, name, address, port) of every listening inet socket of these processes."""
    found = []
    for p in procs:
        try:
            name = cmdline(p)[:80] or p.name()
            for conn in p.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((p.pid, name, conn.laddr.ip, conn.laddr.port))
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass
    return found


def short_dir(prefix: str) -> Path:
    """A fresh folder with a short path (Ray's Unix sockets must fit in 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class Serve:
    """``vdata serve`` in a child process on loopback, with its output collected."""

    def __init__(self, data_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONPATH=str(PROJECT), PYTHONUNBUFFERED="1", COLUMNS="400",
                   VDATA_NUM_CPUS="1", VDATA_OBJECT_STORE_BYTES=str(80 * 1024**2), VDATA_LOG_LEVEL="info")
        env.update(extra_env or {})
        command = [sys.executable, "-c", "from service.cli import main; main()", "serve",
                   "--data-dir", str(data_dir), "--port", str(self.port)]
        self.child = subprocess.Popen(command, cwd=PROJECT, env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True)
        self.lines: list[str] = []
        self.seen: dict[int, psutil.Process] = {}  # every process of its tree we saw, for teardown
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.child.stdout is not None
        for line in self.child.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def snapshot(self) -> list[psutil.Process]:
        procs = tree(self.child.pid)
        for p in procs:
            self.seen.setdefault(p.pid, p)
        return procs

    def wait_healthy(self) -> None:
        def healthy() -> bool:
            assert self.child.poll() is None, f"vdata serve exited:\n{self.output}"
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2).json() == {"status": "ok"}
            except httpx.TransportError:
                return False

        wait_until(healthy, START_TIMEOUT, "vdata serve to answer /healthz")
        self.snapshot()

    @property
    def admin_token(self) -> str:
        for line in self.lines:
            if line.startswith("admin token"):
                return line.rsplit(" ", 1)[-1]
        raise AssertionError(f"no admin token announced:\n{self.output}")

    def materialize(self, token: str, index: int = 0) -> None:
        """One small zmumu range through Ray."""
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=120) as http:
            r = http.post("/v1/recipes", json=RECIPE)
            assert r.status_code == 201, r.text
            r = http.get(f"/v1/recipes/{r.json()['id']}/ranges/{index}")
            assert r.status_code == 200, r.text
            assert r.headers["X-Vdata-Events"] == "1000"
        self.snapshot()

    def stop(self) -> None:
        """SIGTERM (graceful), SIGKILL after 60 s; then whatever it left behind."""
        if self.child.poll() is None:
            self.snapshot()
            self.child.send_signal(signal.SIGTERM)
            try:
                self.child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait()
        self._reader.join(timeout=30)
        if self.child.stdout is not None and not self._reader.is_alive():
            self.child.stdout.close()
        stop_all(list(self.seen.values()) + processes_mentioning(str(self.data_dir)))

    def __enter__(self) -> Serve:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A fresh data folder with a short path, so Ray's folder can lie inside it."""
    path = short_dir("vd-")
    try:
        yield path / "data"
    finally:
        stop_all(processes_mentioning(str(path)))
        subprocess.run(["rm", "-rf", str(path)], check=False)


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
            wait_until(all_gone, 30, "the Ray processes of the killed gateway to end")
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
        time.sleep(3)  # let Ray's own fate sharing do what it does
        left = [p for p in procs if alive(p)]
        assert left, "nothing of Ray outlived its gateway and watchdog: this test no longer tests the next start"
        with Serve(data_dir) as again:
            again.wait_healthy()
            still = [p for p in left if alive(p)]
            assert not still, f"leftovers of the killed gateway survived the next start:\n{describe(still)}"
            again.materialize(token, index=2)
    finally:
        first.stop()
