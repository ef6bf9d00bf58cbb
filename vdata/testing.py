"""Helpers for tests and benchmarks: a loopback HTTP file server that honours ``Range`` (and one
that misbehaves on demand: stalls, 500s, truncated bodies, redirects, no ``Range``), nginx
on loopback (for the gateway's X-Accel-Redirect mode and the warm-delivery comparison), a real
XRootD server on loopback (:class:`XRootDServer`, for root:// sources), and
NaN-aware comparison of Arrow tables, and :func:`wait_until`, the one way tests wait for something
to happen in another thread or process.

Python's ``http.server`` ignores ``Range`` headers, and uproot reads remote files with
(multi-)range requests, so tests need a server that answers 206 with the requested bytes.
Written by hand because no maintained PyPI package offers a small embeddable one.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self, TypeVar

import awkward as ak
import pyarrow as pa

from vdata._xrootd_server import XROOTD_BINARY, XRootDServer

__all__ = ["XROOTD_BINARY", "HostileFileServer", "KillOnce", "Nginx", "RangeFileServer", "XRootDServer",
           "assert_tables_equal", "free_port", "wait_until"]

_RANGE = re.compile(r"(\d*)-(\d*)")
T = TypeVar("T")


def _parse_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """Byte ranges ``[start, stop)`` of a ``Range: bytes=...`` header, or None if unsatisfiable."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes":
        return None
    out = []
    for part in spec.split(","):
        m = _RANGE.fullmatch(part.strip())
        if not m or m.group(0) == "-":
            return None
        a, b = m.groups()
        if a == "":  # suffix range: the last b bytes
            start, stop = max(0, size - int(b)), size
        else:
            start, stop = int(a), size if b == "" else min(int(b) + 1, size)
        if start >= size or start >= stop:
            return None
        out.append((start, stop))
    return out


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _file(self) -> Path | None:
        relative = self.path.split("?", 1)[0].lstrip("/")
        path = (self.server.root / relative).resolve()
        if self.server.root not in path.parents or not path.is_file():
            return None
        return path

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        self.server.requests += 1
        path = self._file()
        if path is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        size = path.stat().st_size
        header = self.headers.get("Range")
        if header is None:
            self._send(HTTPStatus.OK, [(0, size)], size, path, body)
            return
        ranges = _parse_ranges(header, size)
        if ranges is None:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send(HTTPStatus.PARTIAL_CONTENT, ranges, size, path, body)

    def _send(self, status: HTTPStatus, ranges: list[tuple[int, int]], size: int, path: Path, body: bool) -> None:
        with open(path, "rb") as f:
            pieces = []
            for start, stop in ranges:
                f.seek(start)
                pieces.append(f.read(stop - start))
        self.server.bytes_sent += sum(len(p) for p in pieces) if body else 0
        self.send_response(status)
        self.send_header("Accept-Ranges", "bytes")
        if len(ranges) == 1:
            payload = pieces[0]
            self.send_header("Content-Type", "application/octet-stream")
            if status == HTTPStatus.PARTIAL_CONTENT:
                start, stop = ranges[0]
                self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        else:
            boundary = "vdata-byteranges"
            parts = []
            for (start, stop), piece in zip(ranges, pieces):
                head = (
                    f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                    f"Content-Range: bytes {start}-{stop - 1}/{size}\r\n\r\n"
                ).encode()
                parts.append(head + piece + b"\r\n")
            payload = b"".join(parts) + f"--{boundary}--\r\n".encode()
            self.send_header("Content-Type", f"multipart/byteranges; boundary={boundary}")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, host: str, handler: type[_Handler] = _Handler) -> None:
        self.root = root.resolve()
        self.requests = 0
        self.bytes_sent = 0
        super().__init__((host, 0), handler)


class RangeFileServer:
    """Serve the files under ``root`` on ``http://127.0.0.1:<free port>/``, in a thread.

    Use as a context manager; it stops (and closes its socket) on exit, also after an error.
    """

    def __init__(self, root: str | os.PathLike[str], host: str = "127.0.0.1") -> None:
        self._server = _Server(Path(root), host)
        self._thread = threading.Thread(target=self._server.serve_forever, name="range-file-server", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> int:
        return self._server.requests

    @property
    def bytes_sent(self) -> int:
        return self._server.bytes_sent

    def start(self) -> RangeFileServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> RangeFileServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# -- a file server that misbehaves on demand --------------------------------------------------

HOSTILE_MODES = ("ok", "stall", "error", "truncate", "redirect", "no_range")


class _Truncating:
    """Passes the header block through, then writes half of each body and drops the rest."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._writes = 0

    def write(self, data: bytes) -> int:
        self._writes += 1
        out = data if self._writes == 1 else data[: len(data) // 2]
        return self._raw.write(out)

    def flush(self) -> None:
        self._raw.flush()


class _HostileHandler(_Handler):
    server: _HostileServer

    def _serve(self, body: bool) -> None:
        mode = self.server.mode
        if mode == "ok" or (mode == "truncate" and not body):
            super()._serve(body)
            return
        self.server.requests += 1
        if mode == "stall":  # the request was read; answer nothing until the server stops
            self.server.release.wait()
            self.close_connection = True
        elif mode == "error":
            self.send_response(self.server.status)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif mode == "redirect":
            self.send_response(HTTPStatus.FOUND)
            self.send_header("Location", f"{self.server.redirect_to}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif mode == "no_range":
            path = self._file()
            if path is None:
                self.send_error(HTTPStatus.NOT_FOUND)
                return
            size = path.stat().st_size
            self._send(HTTPStatus.OK, [(0, size)], size, path, body)
        elif mode == "truncate":
            raw, self.wfile = self.wfile, _Truncating(self.wfile)  # type: ignore[assignment]
            self.server.requests -= 1  # counted again by the plain serving
            try:
                super()._serve(body)
            finally:
                self.wfile = raw
            self.close_connection = True  # the client sees the body end early


class _HostileServer(_Server):
    def __init__(self, root: Path, host: str) -> None:
        self.mode = "ok"
        self.status = 500
        self.redirect_to = ""
        self.release = threading.Event()
        super().__init__(root, host, _HostileHandler)

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that gave up on a stalled or cut answer is expected here: no traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class HostileFileServer(RangeFileServer):
    """A :class:`RangeFileServer` whose behaviour a test switches at any time with :attr:`mode`:

    ``"ok"`` serves normally; ``"stall"`` reads each request and never answers (until the
    server stops); ``"error"`` answers :attr:`status` (500) with an empty body; ``"truncate"``
    announces the full ``Content-Length`` and closes the connection after half the body;
    ``"redirect"`` answers 302 to :attr:`redirect_to` + the request's path; ``"no_range"``
    ignores ``Range`` and answers 200 with the whole file.
    """

    def __init__(self, root: str | os.PathLike[str], host: str = "127.0.0.1") -> None:
        self._server = self._hostile = _HostileServer(Path(root), host)
        self._thread = threading.Thread(target=self._server.serve_forever, name="hostile-file-server", daemon=True)

    @property
    def mode(self) -> str:
        return self._hostile.mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in HOSTILE_MODES:
            raise ValueError(f"HostileFileServer.mode must be one of {HOSTILE_MODES}, got {mode!r}")
        self._hostile.mode = mode

    @property
    def status(self) -> int:
        return self._hostile.status

    @status.setter
    def status(self, status: int) -> None:
        self._hostile.status = status

    @property
    def redirect_to(self) -> str:
        return self._hostile.redirect_to

    @redirect_to.setter
    def redirect_to(self, url: str) -> None:
        self._hostile.redirect_to = url.rstrip("/")

    def stop(self) -> None:
        self._hostile.release.set()  # stalled handlers end, so the server can close
        super().stop()


def assert_tables_equal(actual: pa.Table, expected: pa.Table, what: str = "table") -> None:
    """Raise AssertionError naming the first column that differs."""
    if actual.equals(expected):
        return
    if not actual.schema.equals(expected.schema):
        diff = [
            f"{f.name}: {f.type} != {expected.schema.field(f.name).type if f.name in expected.schema.names else 'missing'}"
            for f in actual.schema
            if f.name not in expected.schema.names or not f.equals(expected.schema.field(f.name))
        ]
        raise AssertionError(
            f"{what}: schemas differ ({actual.schema.names[:3]}... vs {expected.schema.names[:3]}...): {diff[:5]}"
        )
    if actual.num_rows != expected.num_rows:
        raise AssertionError(f"{what}: {actual.num_rows} rows, expected {expected.num_rows}")
    for name in actual.column_names:
        a, b = ak.from_arrow(actual[name]), ak.from_arrow(expected[name])
        if not ak.array_equal(a, b, equal_nan=True, dtype_exact=True):
            raise AssertionError(f"{what}: column {name!r} differs: {a.tolist()[:3]} vs {b.tolist()[:3]}")


class KillOnce:
    """A fault hook for :class:`service.core.engine.Engine`: the first task that runs it kills its own
    worker process (SIGKILL), as a crashed node would; later attempts run normally.

    The marker file makes "first" hold across processes: whoever removes it dies.
    """

    def __init__(self, marker: str | os.PathLike[str]) -> None:
        self.marker = Path(marker)
        self.marker.touch()

    def __call__(self, recipe_json: str, index: int) -> None:
        try:
            self.marker.unlink()
        except FileNotFoundError:
            return
        os.kill(os.getpid(), signal.SIGKILL)


# -- nginx on loopback ---------------------------------------------------------------------------

NGINX_BINARY = shutil.which("nginx") or "/usr/sbin/nginx"

_NGINX_CONF = """\
worker_processes 1;
{user}
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 30;
    default_type application/octet-stream;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
{locations}    }}
}}
"""
_STATIC = "        location / {{ root {root}; }}\n"
# In front of a gateway in X-Accel-Redirect mode: the API goes to the gateway; the file it names
# is sent from an internal location aliasing the cache folder, with the vdata headers kept.
_ACCEL = """\
        location /v1/ {{ proxy_pass http://127.0.0.1:{upstream}; }}
        location {accel}/ {{
            internal;
            alias {cache}/;
            add_header X-Vdata-Adler32 $upstream_http_x_vdata_adler32;
            add_header X-Vdata-Events $upstream_http_x_vdata_events;
        }}
"""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nginx:
    """nginx on a free loopback port, its config, logs and pid under ``prefix``: serving ``root``
    as static files, and/or, with ``upstream_port``, in front of that gateway in X-Accel-Redirect
    mode (``/v1/`` proxied; ``accel_prefix`` internal, aliasing ``cache_root``). A context
    manager; stopped gracefully (SIGQUIT), killed if it does not go."""

    def __init__(self, prefix: Path, *, root: Path | None = None, upstream_port: int | None = None,
                 cache_root: Path | None = None, accel_prefix: str = "/_vdata_cache") -> None:
        if not Path(NGINX_BINARY).exists():
            raise FileNotFoundError(f"nginx not found ({NGINX_BINARY}): apt-get install -y nginx")
        if (upstream_port is None) != (cache_root is None):
            raise ValueError("Nginx: upstream_port and cache_root go together (X-Accel-Redirect mode)")
        locations = "" if root is None else _STATIC.format(root=root)
        if upstream_port is not None:
            locations += _ACCEL.format(upstream=upstream_port, accel=accel_prefix, cache=cache_root)
        self.prefix = prefix
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._conf = _NGINX_CONF.format(user="user root;" if os.geteuid() == 0 else "", prefix=prefix,
                                        port=self.port, locations=locations)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        self.prefix.mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(self._conf)
        self.proc = subprocess.Popen([NGINX_BINARY, "-p", str(self.prefix), "-c", str(conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 15
        try:
            while True:
                if self.proc.poll() is not None:
                    log = self.prefix / "error.log"
                    raise RuntimeError(f"nginx exited ({self.proc.returncode}): "
                                       f"{log.read_text()[-500:] if log.exists() else ''}")
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                        return self
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not start in 15 s")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)  # graceful: the master stops its worker
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the workers too
                proc.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# -- waiting ---------------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], T], timeout: float = 60.0, interval: float = 0.05,
               message: str = "the condition") -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something true, and return
    that; after ``timeout`` seconds raise AssertionError naming ``message`` and the last value
    seen. An exception from ``predicate`` (an assertion that the awaited process is still alive,
    say) propagates at once.

    The one polling loop of the tests: a test that waits for another thread or process polls for
    the event it needs, never sleeps a fixed time (too short on a loaded machine, wasted on an
    idle one). The timeout is generous on purpose: it bounds a failure, it does not measure speed.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {message}; last value seen: {value!r}")
        time.sleep(interval)
