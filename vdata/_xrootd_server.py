"""A real XRootD server (Debian's ``xrootd-server``) on a free loopback port, serving a folder
read-only: the root:// source of the tests and of the latency benchmark. Re-exported by
:mod:`vdata.testing`.

Facts it builds on (xrootd 5.5, checked here):

- **Not as root.** xrootd refuses to run as root, so under root it is started as ``nobody``
  (``subprocess.Popen(user=...)``: no ``runuser``/``su`` in between, so the process we stop is
  xrootd itself); its run folder is made for that user, and the folder it serves must be
  readable by it (``../shared/data`` is). The files are served as that user sees them: a file
  of mode 000 is a permission error, even when the tests run as root.
- **Loopback only, as far as xrootd allows.** It has no listen-address option: it binds
  ``0.0.0.0:PORT`` (``-I v4``: IPv4 only). ``xrd.allow host localhost`` makes it refuse every
  connection that does not come from the loopback ("Unable to accept TCP connection from
  <host>; permission denied" in its log), so nothing outside this machine is served.
- ``oss.localroot`` maps ``root://127.0.0.1:PORT//name`` to ``<root>/name``; ``all.export / r/o``
  exports all of it read-only.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

__all__ = ["XROOTD_BINARY", "XRootDServer"]

SETPRIV = "/usr/bin/setpriv"  # util-linux: xrootd as another user, started by vfork (see start)
XROOTD_BINARY = shutil.which("xrootd") or "/usr/bin/xrootd"

_CONFIG = """\
all.export / r/o
oss.localroot {root}
xrd.port {port}
xrd.allow host localhost
all.adminpath {run}
all.pidpath {run}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class XRootDServer:
    """xrootd serving ``root`` (read-only) on a free loopback port, or on ``port`` (say, to
    restart a server where it was); ``url`` is ``root://127.0.0.1:PORT/``, so
    ``f"{server.url}/{name}"`` is the root:// URL of ``root/name``. A context manager; stopped
    (SIGTERM, then SIGKILL) on exit, also after a failed start, and its run folder removed."""

    def __init__(self, root: str | os.PathLike[str], port: int | None = None) -> None:
        if not Path(XROOTD_BINARY).exists():
            raise FileNotFoundError(f"xrootd not found ({XROOTD_BINARY}): apt-get install -y xrootd-server")
        self.root = Path(root).resolve()
        self.port = port or _free_port()
        self.url = f"root://127.0.0.1:{self.port}/"
        self.proc: subprocess.Popen[bytes] | None = None
        self._run: Path | None = None

    @property
    def log(self) -> str:
        """The end of xrootd's log (for error messages)."""
        logs = sorted(self._run.rglob("xrootd.log")) if self._run else []
        return logs[0].read_text(errors="replace")[-2000:] if logs else ""

    def start(self) -> Self:
        user = "nobody" if os.geteuid() == 0 else None  # xrootd refuses root
        self._run = Path(tempfile.mkdtemp(prefix="vdata-xrootd-"))
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(self._run, entry.pw_uid, entry.pw_gid)
        config = self._run / "xrootd.cfg"
        config.write_text(_CONFIG.format(root=self.root, port=self.port, run=self._run))
        argv = [XROOTD_BINARY, "-c", str(config), "-I", "v4", "-n", f"vdata{self.port}",
                "-l", str(self._run / "xrootd.log"), "-s", str(self._run / "xrootd.pid")]
        if user is not None:
            # setpriv, not Popen(user=...): that makes Python fork() instead of vfork(), which runs
            # the XRootD client's fork handlers in this (reading) process: a deadlock seen here
            argv = [SETPRIV, f"--reuid={user}", f"--regid={pwd.getpwnam(user).pw_gid}", "--clear-groups", *argv]
        self.proc = subprocess.Popen(argv, cwd=self._run, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_listening(deadline=time.monotonic() + 30)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_listening(self, deadline: float) -> None:
        assert self.proc is not None
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"xrootd exited ({self.proc.returncode}): {self.log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"xrootd did not listen on port {self.port} in 30 s: {self.log}")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._run is not None:
            shutil.rmtree(self._run, ignore_errors=True)
            self._run = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
