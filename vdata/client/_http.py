"""The client's HTTP layer: one keep-alive ``httpx.Client``, retries with backoff, the
gateway's error bodies turned into :class:`ServiceError`, and range bodies checked against
their ``X-Vdata-Adler32`` header. It moves bytes; what they mean is decided elsewhere.

Retried: connection errors and timeouts, ``429`` and ``5xx`` (honouring ``Retry-After``),
and a body whose adler32 does not match its header. Every other ``4xx`` raises at once.
A request that is not safe to repeat (``idempotent=False``) is retried only when it surely
never reached the server (connect errors, pool timeouts, ``429``).

Range bodies are read straight into one buffer of their ``Content-Length`` (allocated by
Arrow, which then reads the table from it without a copy), with the adler32 taken chunk by
chunk: httpx's ``response.content`` holds every network chunk and then joins them, twice the
body at its peak, in each prefetch thread.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import pyarrow as pa

from vdata.checksum import adler32
from vdata.errors import ChecksumMismatch, ServiceError, ServiceUnreachable

__all__ = ["ChecksumMismatch", "ServiceError", "ServiceUnreachable", "Transport"]

log = logging.getLogger("vdata.client")

T = TypeVar("T")
ADLER_HEADER = "X-Vdata-Adler32"
EVENTS_HEADER = "X-Vdata-Events"
MAX_DELAY = 30.0  # seconds, for one backoff sleep (Retry-After included)
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_TRANSIENT = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)


class Cancelled(Exception):
    """Internal: a retry loop was told to stop (its iterator was closed)."""


def service_error(response: httpx.Response) -> ServiceError:
    """The :class:`ServiceError` of a gateway's error answer."""
    error, detail = _error_body(response)
    return ServiceError(response.status_code, error, detail, response.request.method, _path(response))


def _error_body(response: httpx.Response) -> tuple[str, Any]:
    """``(error, detail)`` of a gateway error; FastAPI's ``{"detail": ...}`` and plain text too."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or "error", response.text[:500]
    if isinstance(body, dict):
        return str(body.get("error") or response.reason_phrase or "error"), body.get("detail", body)
    return response.reason_phrase or "error", body


def _path(response: httpx.Response) -> str:
    return response.request.url.raw_path.decode("ascii", "replace")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date, or absent: use our own backoff


def read_body(response: httpx.Response) -> tuple[pa.Buffer, int]:
    """The body of a streamed response and its adler32, read into one buffer.

    Pre-sized from ``Content-Length`` when the body is sent as is; otherwise (no length, or a
    ``Content-Encoding`` to undo) the chunks are gathered and joined.
    """
    length = response.headers.get("Content-Length", "")
    if not length.isdigit() or response.headers.get("Content-Encoding", "identity") != "identity":
        data = response.read()
        return pa.py_buffer(data), adler32(data)
    size = int(length)
    buffer = pa.allocate_buffer(size)
    view = memoryview(buffer).cast("B")  # Arrow's buffers export signed bytes ("b")
    position, adler = 0, 1
    for chunk in response.iter_raw():
        end = position + len(chunk)
        if end > size:
            raise httpx.RemoteProtocolError(f"{_path(response)}: body longer than its Content-Length {size}")
        view[position:end] = chunk
        adler = adler32(chunk, adler)
        position = end
    if position != size:
        raise httpx.RemoteProtocolError(f"{_path(response)}: body of {position} bytes, Content-Length says {size}")
    return buffer, adler


def checked_body(response: httpx.Response, what: str) -> pa.Buffer:
    """The body of a streamed response, or :class:`ChecksumMismatch` (attempts=1) when it
    does not match its header."""
    expected = response.headers.get(ADLER_HEADER)
    if expected is None:
        raise ServiceError(response.status_code, "bad_response", f"{what}: no {ADLER_HEADER} header",
                           response.request.method, _path(response))
    body, adler = read_body(response)
    got = f"{adler & 0xFFFFFFFF:08x}"
    if got != expected.strip().lower():
        raise ChecksumMismatch(what, expected, got, 1)
    return body


class Transport:
    """Retrying requests over one ``httpx.Client`` (thread-safe: the prefetch threads share it)."""

    def __init__(self, url: str, token: str | None, timeout: float | httpx.Timeout,
                 retries: int, backoff: float, transport: httpx.BaseTransport | None = None) -> None:
        if retries < 0 or backoff < 0:
            raise ValueError(f"retries and backoff must be >= 0, got {retries} and {backoff}")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.retries = retries
        self.backoff = backoff
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout,
                                 transport=transport, follow_redirects=False)

    def close(self) -> None:
        self.http.close()

    def json(self, method: str, url: str, body: Any = None, **kwargs: Any) -> Any:
        response = self.request(method, url, body=body, **kwargs)
        return response.json() if response.content else None

    def request(self, method: str, url: str | httpx.URL, *, body: Any = None, params: dict[str, str] | None = None,
                idempotent: bool = True, stop: threading.Event | None = None, retries: int | None = None,
                check: Callable[[httpx.Response], T] | None = None, content: Callable[[], Any] | None = None,
                headers: dict[str, str] | None = None) -> Any:
        """Send with retries; return ``check(response)`` (default: the response, read).

        ``content()`` gives a raw body (bytes or an iterator of bytes) instead of the JSON ``body``,
        anew for each attempt (so a file can be streamed again); ``headers`` are added.

        ``check`` gets the response before its body is read (so it can stream it where it
        wants, e.g. :func:`checked_body`); it may raise :class:`ChecksumMismatch` to have the
        request repeated. ``stop`` cuts the backoff sleeps short (raising :class:`Cancelled`).
        """
        budget = self.retries if retries is None else retries
        attempt = 0
        while True:
            if stop is not None and stop.is_set():
                raise Cancelled(f"{method} {url}")
            wait: float | None = None
            try:
                raw = {"content": content()} if content is not None else {"json": body}
                with self.http.stream(method, url, params=params, headers=headers, **raw) as response:
                    status = response.status_code
                    if status < 400 and check is not None:
                        return check(response)
                    response.read()
            except ChecksumMismatch as exc:
                if attempt >= budget:
                    raise ChecksumMismatch(exc.what, exc.expected, exc.got, attempt + 1) from None
                log.warning("%s: adler32 %s, header %s; fetching it again", exc.what, exc.got, exc.expected)
            except _TRANSIENT as exc:
                if attempt >= budget or not (idempotent or isinstance(exc, _NEVER_SENT)):
                    raise ServiceUnreachable(
                        f"{method} {exc.request.url}: {type(exc).__name__}: {str(exc) or 'no detail'} "
                        f"(after {attempt + 1} attempt{'s' if attempt else ''})") from exc
                log.info("%s %s: %s, retrying", method, url, type(exc).__name__)
            else:
                if status < 400:
                    return response
                if (status == 429 or (status >= 500 and idempotent)) and attempt < budget:
                    wait = _retry_after(response)
                    log.info("%s %s: %d, retrying", method, url, status)
                else:
                    raise service_error(response)
            delay = min(MAX_DELAY, wait if wait is not None else self.backoff * 2**attempt * random.uniform(0.5, 1.0))
            if stop is not None:
                if stop.wait(delay):
                    raise Cancelled(f"{method} {url}")
            else:
                time.sleep(delay)
            attempt += 1
