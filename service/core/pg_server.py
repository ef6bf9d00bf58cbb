"""A throw-away PostgreSQL server in a temporary folder, for the tests and the benchmarks.

:class:`TemporaryPostgres` runs the server binaries of the machine (Debian's ``postgresql``
package: ``/usr/lib/postgresql/<N>/bin``, or ``initdb`` on the ``PATH``): ``initdb`` into a
fresh folder, ``pg_ctl start`` listening on 127.0.0.1 on a free port (and a Unix socket in that
folder only), trust authentication for the local user ``postgres``. ``initdb`` and the server
refuse to run as root, so under root they run as the ``postgres`` user (``runuser``), which
owns the folder.

A watchdog process owns the server: it stops the server and deletes the folder when
:meth:`TemporaryPostgres.close` closes its stdin, and also when the owning process dies (its
stdin then reaches end of file), so a killed test run leaves no server behind.

Written by hand rather than with ``pytest-postgresql`` because the benchmarks need it too, and it
is one page: the binaries' own commands, run the one way this project needs.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from service.errors import DatabaseError

__all__ = ["TemporaryPostgres", "find_bindir"]

SUPERUSER = "postgres"

# Runs in the watchdog process: wait for stdin's end of file, then stop the server (fast) and
# delete the folder. argv: folder, pg_ctl command (a JSON list).
_WATCHDOG = r"""
import json, shutil, subprocess, sys
folder, stop = sys.argv[1], json.loads(sys.argv[2])
sys.stdin.read()
subprocess.run(stop, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=False)
shutil.rmtree(folder, ignore_errors=True)
"""


def find_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl`` (the newest Debian version first), or None."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name),
                            reverse=True):
        if (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and shutil.which("initdb") else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TemporaryPostgres:
    """A PostgreSQL server in a temporary folder, stopped and deleted by :meth:`close`.

    ``durable=False`` (the tests) turns ``fsync`` off; the default keeps fsync on and turns only
    ``synchronous_commit`` off, the same promise as SQLite's WAL with ``synchronous=NORMAL`` (a
    crash of the machine may lose the last commits, never corrupt), so benchmarks compare like
    with like.
    """

    def __init__(self, bindir: Path | None = None, durable: bool = True) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise DatabaseError("PostgreSQL's server is not installed (no initdb/pg_ctl): "
                                "apt-get install postgresql")
        self.bindir = found
        self.durable = durable
        self.folder = Path(tempfile.mkdtemp(prefix="vdata-pg-"))
        self.port = _free_port()
        self._as_postgres = os.geteuid() == 0
        self.user = SUPERUSER if self._as_postgres else pwd.getpwuid(os.geteuid()).pw_name
        self._watchdog: subprocess.Popen[bytes] | None = None
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str = "postgres") -> str:
        """The URL of ``database`` on this server (TCP on 127.0.0.1)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _command(self, *argv: str) -> list[str]:
        return (["runuser", "-u", SUPERUSER, "--"] if self._as_postgres else []) + list(argv)

    def _run(self, *argv: str) -> None:
        done = subprocess.run(self._command(*argv), capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise DatabaseError(f"{Path(argv[0]).name} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")

    def _start(self) -> None:
        if self._as_postgres:
            record = pwd.getpwnam(SUPERUSER)
            os.chown(self.folder, record.pw_uid, record.pw_gid)
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust",
                  "-E", "UTF8", "--no-sync", "--no-instructions")
        options = [f"-k {self.folder}", "-c listen_addresses=127.0.0.1", f"-p {self.port}",
                   "-c max_connections=200", "-c synchronous_commit=off"]
        if not self.durable:
            options += ["-c fsync=off", "-c full_page_writes=off"]
        stop = self._command(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        self._watchdog = subprocess.Popen(  # started first: it also cleans up after a failed start
            [sys.executable, "-c", _WATCHDOG, str(self.folder), json.dumps(stop)],
            stdin=subprocess.PIPE, start_new_session=True,
        )
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"),
                  "-o", " ".join(options), "-w", "-t", "60", "start")

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create database ``name`` (a copy of ``template`` if given); returns its URL."""
        import psycopg
        from psycopg import sql

        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            query = sql.SQL("{} TEMPLATE {} STRATEGY FILE_COPY").format(query, sql.Identifier(template))
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(query)
        return self.url(name)

    def close(self) -> None:
        """Stop the server and delete its folder (waits for both)."""
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is None:
            shutil.rmtree(self.folder, ignore_errors=True)
            return
        assert watchdog.stdin is not None
        watchdog.stdin.close()
        watchdog.wait(timeout=120)

    def __enter__(self) -> TemporaryPostgres:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
