"""Processes the throughput benchmark starts: the gateway (``python -m service`` in a subprocess),
nginx (its own config and prefix under a temporary folder), and /proc readers for RSS.

Every process started here is stopped on ``stop()`` / leaving the ``with`` block, also after an
error; leftover descendants (Ray's gcs, raylet and workers) are killed by pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from vdata.testing import Nginx, free_port

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


# -- /proc ------------------------------------------------------------------------------------

def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (kB) of a process; {} if it is gone."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return out


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def descendants(pid: int) -> list[int]:
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_pids(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGINT, timeout: float = 30.0) -> None:
    """Signal ``proc``, wait, then SIGKILL it and every descendant still alive (by pid)."""
    if proc.poll() is None:
        tree = descendants(proc.pid)
        try:
            proc.send_signal(sig)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            tree = list(set(tree) | set(descendants(proc.pid)))
            proc.kill()
            proc.wait(timeout=10)
        time.sleep(0.2)
        kill_pids(tree)
    else:
        proc.wait()


# -- the gateway --------------------------------------------------------------------------------

class Gateway:
    """``python -m service`` in a subprocess on a free loopback port, configured by VDATA_* env."""

    def __init__(self, work: Path, name: str, *, num_cpus: int, lookahead: int, allowed_roots: list[Path],
                 max_in_flight: int = 8, cache_budget_bytes: int = 4 * 1024**3, readahead: int = 0,
                 object_store_bytes: int = 300 * 1024**2, startup_timeout: float = 120.0,
                 database_url: str | None = None) -> None:
        self.data_dir = work / f"{name}-data"
        self.ray_dir = work / f"r{name[:3]}"
        self.log_path = work / f"{name}-gateway.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = os.environ | {
            "PYTHONUNBUFFERED": "1",
            "VDATA_DATA_DIR": str(self.data_dir),
            "VDATA_HOST": "127.0.0.1",
            "VDATA_PORT": str(self.port),
            "VDATA_NUM_CPUS": str(num_cpus),
            "VDATA_LOOKAHEAD": str(lookahead),
            "VDATA_READAHEAD": str(readahead),  # each part says what it wants materialized
            "VDATA_MAX_IN_FLIGHT": str(max_in_flight),
            "VDATA_CACHE_BUDGET_BYTES": str(cache_budget_bytes),
            "VDATA_OBJECT_STORE_BYTES": str(object_store_bytes),
            "VDATA_ALLOWED_ROOTS": json.dumps([str(self.data_dir)] + [str(p) for p in allowed_roots]),
            "VDATA_RAY_TEMP_DIR": str(self.ray_dir),
            "VDATA_LOG_LEVEL": "warning",
            "VDATA_MAX_INFLIGHT_PER_TOKEN": "64",
        }
        self.env.pop("VDATA_CONFIG", None)
        if database_url:  # else the data folder's SQLite file
            self.env["VDATA_DATABASE_URL"] = database_url
        self.timeout = startup_timeout
        self.proc: subprocess.Popen[str] | None = None
        self.token: str | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Gateway:
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([PYTHON, "-m", "service"], cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True, start_new_session=True)
        token: list[str] = [self.token] if self.token else []  # set beforehand: a restart is not told it again

        def read_stdout() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                if "admin token" in line:
                    token.append(line.rsplit(":", 1)[1].strip())

        threading.Thread(target=read_stdout, daemon=True).start()
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the gateway exited ({self.proc.returncode}); see {self.log_path}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the gateway did not start in {self.timeout:.0f} s; see {self.log_path}")
                try:
                    if token and httpx.get(self.url + "/healthz", timeout=2).json().get("status") == "ok":
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise
        self.token = token[0]
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGINT, timeout=30)
            self.proc = None
            self._log.close()

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


# -- nginx (vdata.testing.Nginx) -----------------------------------------------------------------

def nginx_pids(nx: Nginx) -> list[int]:
    """The master's and its workers' process ids (for their CPU time)."""
    assert nx.proc is not None
    return [nx.proc.pid, *descendants(nx.proc.pid)]


# -- the HTTP client used for both sides of the warm comparison ---------------------------------

def curl_get(url: str, token: str | None = None, times: int = 1) -> tuple[int, float, int]:
    """(bytes, seconds, status) of ``times`` GETs of ``url`` by one curl into /dev/null, one after
    the other on one keep-alive connection: bytes and seconds summed, the worst status."""
    cmd = ["curl", "-s", "-w", "%{size_download} %{time_total} %{http_code}\\n"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    for _ in range(times):
        cmd += ["-o", "/dev/null", url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120 * times, check=True).stdout.split()
    sizes, secs, codes = out[0::3], out[1::3], out[2::3]
    if len(codes) != times:
        raise RuntimeError(f"curl {url}: {len(codes)} answers for {times} GETs")
    worst = next((int(c) for c in codes if c != "200"), 200)
    return sum(map(int, sizes)), sum(map(float, secs)), worst
