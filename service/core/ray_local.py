"""The embedded engine's own Ray: a private instance, loopback only, that dies with the gateway.

Why each piece (Ray 2.60, checked on this machine):

- ``ray.init()`` without an address joins "the latest cluster" it finds on the machine (its
  ``ray_current_cluster`` file); ``address="local"`` always starts a new instance.
- With ``_node_ip_address="127.0.0.1"`` Ray still rewrites the address to the host's and its
  gRPC servers, agents and metrics exporters listen on ``*`` / ``0.0.0.0``. Ray keeps a local
  node on loopback only where clusters are "not supported" (macOS, Windows): the environment
  variable ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes it so on Linux, and then the GCS,
  raylet, object manager, workers, dashboard, dashboard agent, runtime-env agent and every
  metrics exporter bind 127.0.0.1. (The engine also sets the constant Ray read from it at
  import, as ``import ray`` may have happened before.)
- Token authentication: ``RAY_AUTH_MODE=token`` with ``RAY_AUTH_TOKEN_PATH`` naming a file in
  the data folder, written here (0600, a fresh 256-bit token per start) instead of the shared
  ``~/.ray/auth_token`` (0644); ``RAY_AUTH_TOKEN`` would win over the file, so it is removed.
- Ray's folder (logs, Unix sockets) is ``<data dir>/ray``. A Unix socket path may not exceed
  107 bytes, and Ray adds ``/session_<date>_<time>_<pid>/sockets/plasma_store`` (up to 63):
  a longer data folder path gets a short private folder from :func:`tempfile.mkdtemp` (0700),
  removed when the engine stops or, after a crash, by the watchdog.
- Every process of this Ray inherits ``VDATA_RAY_OWNER=<data dir>`` (Ray's agents rename
  themselves, e.g. ``ray::DashboardAgent``, but keep their environment). After a SIGKILL of
  the gateway the dashboard and runtime-env agents stayed alive with parent 1 for minutes, so
  a watchdog process (this file run as a script, in its own session) waits for the gateway's
  pipe to close and then stops every process with that mark (SIGTERM, SIGKILL after a grace
  period); the next start on the same data folder does the same before starting Ray, in case
  the watchdog died too. (The mark is read from the raw ``/proc/<pid>/environ``: retitling
  zeroes its start. As a second net, a Python or Ray binary with a file open in Ray's folder is
  ours too — only when that folder is ours alone, not one named by ``ray_temp_dir``.) Old
  session folders (logs) in ``<data dir>/ray`` are pruned at start but for the last two.

No ``ray`` import here: the watchdog runs this file with ``python -I`` and needs only psutil.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from transforms.atomic import write_atomic

__all__ = ["OWNER_ENV", "RAY_DIR_MAX", "PrivateRay", "dashboard_help", "reap", "token_file"]

RAY_DIR_MAX = 44  # + "/session_<date>_<time>_<pid>/sockets/plasma_store" stays within 107 bytes
OWNER_ENV = "VDATA_RAY_OWNER"
TOKEN_NAME = "ray_auth_token"
KEEP_SESSIONS = 2  # old Ray session folders (logs) kept for a post-mortem; older ones are removed
GRACE_SECONDS = 5.0  # SIGTERM, then SIGKILL (Ray's agents ignored SIGTERM for longer than this)


def token_file(data_dir: str | os.PathLike[str]) -> Path:
    """Where the embedded Ray of the data folder ``data_dir`` keeps its token (while it runs)."""
    return Path(data_dir).resolve() / TOKEN_NAME


def dashboard_help(url: str, token: str | os.PathLike[str]) -> list[str]:
    """What an operator needs to open the embedded Ray's dashboard: its address (loopback only)
    and the commands that print the token it asks for first (both checked by a test). The
    token is new at every start, so a browser asks again after a restart."""
    port = url.rstrip("/").rpartition(":")[2]
    beside = Path(sys.executable).with_name("ray")  # the ray command of this environment (make run: .venv/bin/ray)
    ray = str(beside) if beside.is_file() else "ray"
    return [
        f"Ray dashboard: {url} (127.0.0.1 only; from another machine: ssh -L {port}:127.0.0.1:{port} THIS-HOST)",
        f"Ray dashboard token (paste it when the dashboard asks): cat {token}   "
        f"(or: RAY_AUTH_TOKEN_PATH={token} {ray} get-auth-token)",
    ]


def reap(owner: str, ray_dir: str | os.PathLike[str] | None = None, grace: float = GRACE_SECONDS) -> list[int]:
    """Stop every process of ``owner``'s Ray but this one and its ancestors (SIGTERM, then
    SIGKILL after ``grace`` seconds): those marked ``VDATA_RAY_OWNER=owner`` and those with a
    file open under ``ray_dir``. Returns the pids still alive at the end (none, normally)."""
    me = psutil.Process()
    spare = {me.pid, *(p.pid for p in me.parents())}
    folder = str(Path(ray_dir).resolve()) + os.sep if ray_dir is not None else None
    victims = [p for p in psutil.process_iter() if p.pid not in spare and _belongs(p, owner, folder)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in victims:
            try:
                proc.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        _, left = psutil.wait_procs(victims, timeout=grace)
        victims = [p for p in left if _alive(p)]
        if not victims:
            break
    return [p.pid for p in victims]


def _belongs(proc: psutil.Process, owner: str, folder: str | None) -> bool:
    try:
        if _has_mark(proc, f"{OWNER_ENV}={owner}"):
            return True
        if folder is None or not _looks_like_ray(proc.exe()):
            return False  # (an operator's `tail -f` of a Ray log is not ours to stop)
        return any(f.path.startswith(folder) for f in proc.open_files())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return False


def _looks_like_ray(exe: str) -> bool:
    """Ray's processes are Python interpreters or binaries of the ray package."""
    return os.path.basename(exe).startswith("python") or f"{os.sep}ray{os.sep}core{os.sep}" in exe


def _has_mark(proc: psutil.Process, mark: str) -> bool:
    """Whether ``mark`` (``NAME=value``) is in the environment the process started with.
    Read raw where /proc exists: Ray's processes retitle themselves (setproctitle), which
    zeroes the start of that block, and psutil's parser stops at the first empty entry."""
    if os.path.exists("/proc/self/environ"):
        try:
            with open(f"/proc/{proc.pid}/environ", "rb") as f:
                return mark.encode() in f.read().split(b"\0")
        except FileNotFoundError:
            raise psutil.NoSuchProcess(proc.pid) from None
    key, _, value = mark.partition("=")
    return proc.environ().get(key) == value


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _short_temp_dir() -> Path:
    base = tempfile.gettempdir()
    if len(base) + len("/vdata-ray-") + 8 > RAY_DIR_MAX:
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix="vdata-ray-", dir=base))


def _write_token(path: Path) -> None:
    """A fresh random token, created 0600 (never readable by others, not even for a moment)."""
    write_atomic(path, secrets.token_hex(32))  # mkstemp: 0600 from the first byte


def _prune_sessions(ray_dir: Path) -> None:
    sessions = sorted((p for p in ray_dir.glob("session_2*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for old in sessions[:-KEEP_SESSIONS] if KEEP_SESSIONS else sessions:
        shutil.rmtree(old, ignore_errors=True)


@dataclass
class PrivateRay:
    """Ray's folder, token and environment for one embedded instance, and its watchdog.

    ``prepare`` stops the leftovers of an earlier run on the same data folder and writes the
    token; ``activate`` sets the environment and starts the watchdog; ``close`` (after
    ``ray.shutdown``) stops what is left, restores the environment and removes what it made."""

    owner: str  # the mark in every Ray process's environment: the data folder (or the private folder)
    temp_dir: Path  # Ray's _temp_dir
    token_path: Path
    own_temp: bool  # temp_dir was made here: removed on close
    exclusive: bool  # temp_dir is ours alone (not named by the settings, which may share it): reaped by its files
    _saved_env: dict[str, str | None] = field(default_factory=dict)
    _watchdog: subprocess.Popen[bytes] | None = None

    @classmethod
    def prepare(cls, data_dir: str | os.PathLike[str] | None, temp_dir: str | os.PathLike[str] | None) -> PrivateRay:
        """Choose the folders, stop leftovers of the same owner, write a fresh token."""
        data = Path(data_dir).resolve() if data_dir is not None else None
        exclusive = temp_dir is None
        if temp_dir is not None:
            ray_dir, own = Path(temp_dir).resolve(), False
            if len(str(ray_dir)) > RAY_DIR_MAX:
                raise ValueError(f"Ray's folder {str(ray_dir)!r} is {len(str(ray_dir))} characters long; "
                                 f"Ray's Unix socket paths need at most {RAY_DIR_MAX} (ray_temp_dir)")
        elif data is not None and len(str(data / "ray")) <= RAY_DIR_MAX:
            ray_dir, own = data / "ray", False
        else:
            ray_dir, own = _short_temp_dir(), True
        owner = str(data if data is not None else ray_dir)
        reap(owner, ray_dir if exclusive else None)
        ray_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if exclusive and not own:
            _prune_sessions(ray_dir)
        token = token_file(data) if data is not None else ray_dir / TOKEN_NAME
        token.parent.mkdir(parents=True, exist_ok=True)
        _write_token(token)
        return cls(owner=owner, temp_dir=ray_dir, token_path=token, own_temp=own, exclusive=exclusive)

    @property
    def _reap_dir(self) -> str:
        return str(self.temp_dir) if self.exclusive else ""

    def environment(self) -> dict[str, str | None]:
        """The variables Ray's processes inherit (None: removed)."""
        return {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            "RAY_AUTH_TOKEN": None,  # it would win over the file
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # a node on loopback only
            "RAY_ADDRESS": None,  # ignored with address="local"; not passed on to Ray's processes either
            OWNER_ENV: self.owner,
        }

    def init_kwargs(self, num_cpus: int, object_store_bytes: int, include_dashboard: bool,
                    dashboard_port: int) -> dict[str, Any]:
        """``ray.init`` keyword arguments: always a new local instance, on loopback, in our folder."""
        return {
            "address": "local",
            "num_cpus": num_cpus,
            "object_store_memory": object_store_bytes,
            "include_dashboard": include_dashboard,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard_port,
            "_node_ip_address": "127.0.0.1",
            "_temp_dir": str(self.temp_dir),
            "log_to_driver": False,
        }

    def activate(self) -> None:
        """Start the watchdog (before Ray: it stops Ray's processes if this one dies at any
        moment from now on), then set the environment Ray's processes will inherit."""
        remove = ["--remove"] if self.own_temp else []
        env = {k: v for k, v in os.environ.items() if k != OWNER_ENV}
        self._watchdog = subprocess.Popen(
            [sys.executable, "-I", str(Path(__file__).resolve()), self.owner, self._reap_dir, *remove],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=env, start_new_session=True, close_fds=True,
        )
        for key, value in self.environment().items():
            self._saved_env.setdefault(key, os.environ.get(key))
            os.environ.pop(key, None)  # and set again: last in the block (see _has_mark)
            if value is not None:
                os.environ[key] = value

    def close(self, timeout: float = 4 * GRACE_SECONDS) -> None:
        """Stop what is left of this Ray (through the watchdog), restore the environment and
        remove the token and a private folder. Safe to call more than once."""
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            if watchdog.stdin is not None:
                watchdog.stdin.close()  # end of file: the watchdog reaps and exits
            try:
                watchdog.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                watchdog.kill()
                watchdog.wait()
        reap(self.owner, self._reap_dir or None)  # whatever the watchdog could not stop (normally nothing)
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()
        self.token_path.unlink(missing_ok=True)
        if self.own_temp:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def _watch(owner: str, ray_dir: str, remove: bool) -> None:
    """The watchdog: wait for the end of stdin (the gateway closed it or died), then stop
    every process of ``owner``'s Ray (and with files open in ``ray_dir`` unless it is "") and
    remove that folder if it was a private one."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the gateway, which then closes the pipe
    while sys.stdin.buffer.read(4096):
        pass
    reap(owner, ray_dir or None)
    if remove and ray_dir:
        shutil.rmtree(ray_dir, ignore_errors=True)


if __name__ == "__main__":
    _watch(sys.argv[1], sys.argv[2], sys.argv[3:] == ["--remove"])
