"""``vdata serve`` as a child process, as an operator runs it, and the process-tree helpers the
reliability tests use to look at it from outside (psutil)."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import httpx
import psutil

from vdata.testing import free_port, wait_until

PROJECT = Path(__file__).resolve().parents[1]
RECIPE = {
    "source": {"generator": "zmumu", "events": 4000, "seed": 7},
    "columns": ["Muon_pt", "Muon_eta"],
    "range_events": 1000,
}
START_TIMEOUT = 180.0


# -- helpers -----------------------------------------------------------------------------------


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

    def __init__(self, data_dir: Path, extra_env: dict[str, str] | None = None, args: Sequence[str] = ()) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONPATH=str(PROJECT), PYTHONUNBUFFERED="1", COLUMNS="400",
                   VDATA_NUM_CPUS="1", VDATA_OBJECT_STORE_BYTES=str(80 * 1024**2), VDATA_LOG_LEVEL="info",
                   VDATA_INCLUDE_DASHBOARD="false")  # vdata serve's default is on: tests would share port 8265
        env.update(extra_env or {})
        command = [sys.executable, "-c", "from service.cli import main; main()", "serve",
                   "--data-dir", str(data_dir), "--port", str(self.port), *args]
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

        wait_until(healthy, timeout=START_TIMEOUT, interval=0.3, message="vdata serve to answer /healthz")
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


