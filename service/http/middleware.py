"""Pure ASGI middleware (no ``BaseHTTPMiddleware``: it would buffer streamed ranges).

- :class:`RequestContext`: a request id (the client's ``X-Request-ID`` if it is sane, else a
  new one: 16 hex digits, the app's random prefix and a counter) in ``request.state``, a context variable for log records and the response header;
  request counts and latency by route template and status; one access-log line.
- :class:`BodyLimit`: reads the body before the app does and answers 413 once it is over the
  limit. Written by hand because FastAPI turns errors raised while reading a body into 400.
  Output uploads (``PUT /v1/jobs/{id}/ranges/{index}/output``) pass through unread: their
  route streams them to disk under its own limit (``max_output_bytes``).
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import os
import re
import time
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.error_map import status_of
from service.errors import BodyTooLarge

if TYPE_CHECKING:
    from service.http.metrics import Metrics

__all__ = ["BodyLimit", "RequestContext", "RequestIdFilter", "request_id"]

log = logging.getLogger("service.access")
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("vdata_request_id", default="-")
_SANE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_OUTPUT_UPLOAD = re.compile(r"/v1/jobs/[^/]+/ranges/[^/]+/output")


def _header(scope: Scope, name: bytes) -> bytes | None:
    """One request header's value (names in ``scope`` are lower case), without building a dict."""
    for key, value in scope.get("headers") or ():
        if key == name:
            return bytes(value)
    return None


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every log record (``%(request_id)s``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # New ids: a random prefix per app and a counter, unique without a uuid4 per request
        # (os.urandom cost ~30 us a call on this VM, a twentieth of a lease request).
        self._prefix = os.urandom(4).hex()
        self._counter = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = (_header(scope, b"x-request-id") or b"").decode("latin-1")
        rid = given if _SANE_ID.fullmatch(given) else f"{self._prefix}{next(self._counter) & 0xFFFFFFFF:08x}"
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id.set(rid)
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.in_progress.dec()
            seconds = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], template, str(status)).inc()
            self.metrics.latency.labels(scope["method"], template).observe(seconds)
            log.info("%s %s -> %d in %.1f ms", scope["method"], scope["path"], status, seconds * 1e3)
            request_id.reset(token)


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"] == "PUT" and _OUTPUT_UPLOAD.fullmatch(scope["path"])):
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, int(declared))
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send, size)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], receive), send)

    async def _refuse(self, send: Send, size: int) -> None:
        exc = BodyTooLarge(f"the request body is larger than {self.max_bytes} bytes (setting max_body_bytes): "
                           f"{size} bytes or more")
        status, code = status_of(exc)
        payload = json.dumps({"error": code, "detail": str(exc)}).encode()
        log.info("refused: %s", exc)
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload, "more_body": False})


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
