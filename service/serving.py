"""Serving a range's bytes: straight from its cache file, as written, never re-encoded.

The file is pinned (so eviction cannot remove it) and opened before the response starts, then
streamed in 1 MiB chunks read in a worker thread; the pin is released when the last byte is
sent, or the client goes away. A miss waits for the engine's future without blocking the event
loop (``asyncio.wrap_future``, shielded: the engine's single-flight future is shared by every
waiter and must never be cancelled by one of them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass
from typing import BinaryIO

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.auth import Principal
from service.deps import InFlight
from service.errors import RangeUnavailable
from service.limits import check_plan
from service.metrics import Metrics
from service.settings import Settings
from vdata.cache import CacheEntry, CacheKey, RangeCache, adler32_hex
from vdata.core import Core
from vdata.errors import FormatError
from vdata.formats import FORMATS, MEDIA_TYPES

__all__ = ["CHUNK_BYTES", "RangeFileResponse", "serve_range"]

log = logging.getLogger("service")
CHUNK_BYTES = 1 << 20


@dataclass
class _Open:
    entry: CacheEntry
    file: BinaryIO
    stack: ExitStack


def _open_pinned(cache: RangeCache, key: CacheKey) -> _Open | None:
    """The verified entry, pinned, with its file open; None on a miss. Blocking: run in a thread."""
    stack = ExitStack()
    try:
        entry = stack.enter_context(cache.pinned(key))
        if entry is None:
            stack.close()
            return None
        file = stack.enter_context(open(entry.path, "rb"))  # noqa: SIM115 - closed by the stack
    except BaseException:
        stack.close()
        raise
    return _Open(entry, file, stack)


class RangeFileResponse(Response):
    """A pinned cache file, streamed in :data:`CHUNK_BYTES` pieces; unpinned when done."""

    def __init__(self, opened: _Open, on_sent: Callable[[int], None]) -> None:
        entry = opened.entry
        super().__init__(
            status_code=200,
            media_type=MEDIA_TYPES[entry.key.format],
            headers={
                "content-length": str(entry.size),
                "x-vdata-adler32": adler32_hex(entry.adler32),
                "x-vdata-events": str(entry.events),
                "content-disposition": f'attachment; filename="{entry.key.recipe_id}-'
                                       f'{entry.key.range_index:08d}.{entry.key.format}"',
                "cache-control": "private, max-age=86400, immutable",
            },
        )
        self.opened = opened
        self.on_sent = on_sent
        self.sent = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    await self._stream(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                while (await receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()  # the client went away: stop reading the file
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.opened.stack.close)
            self.on_sent(self.sent)

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        remaining = self.opened.entry.size
        while remaining > 0:
            chunk = await anyio.to_thread.run_sync(self.opened.file.read, min(CHUNK_BYTES, remaining))
            if not chunk:
                log.error("cache file %s ended %d bytes early", self.opened.entry.path, remaining)
                break
            remaining -= len(chunk)
            self.sent += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": remaining > 0})
        if remaining:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def _retrieve(future: asyncio.Future[CacheEntry]) -> None:
    if not future.cancelled():
        future.exception()  # no "exception never retrieved" after a timeout


async def _wait(future: Future[CacheEntry], timeout: float, what: str) -> None:
    wrapped = asyncio.wrap_future(future)
    wrapped.add_done_callback(_retrieve)
    try:
        await asyncio.wait_for(asyncio.shield(wrapped), timeout)
    except TimeoutError:
        raise RangeUnavailable(f"{what} was not materialized within {timeout:g} s (setting "
                               f"range_timeout_seconds); it is still being made: retry", retry_after=5) from None


async def serve_range(
    core: Core, recipe_id: str, index: int, fmt: str, *,
    settings: Settings, principal: Principal, inflight: InFlight, metrics: Metrics,
) -> RangeFileResponse:
    """The response for range ``index`` of a recipe in ``fmt``: cached, or materialized now."""
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    plan = await anyio.to_thread.run_sync(core.plan, recipe_id)
    plan.range(index)  # RangeOutOfBounds (416) before any work
    check_plan(plan, settings)
    key = CacheKey(plan.id, index, fmt)
    opened = await anyio.to_thread.run_sync(_open_pinned, core.cache, key)
    metrics.gateway_cache.labels("hit" if opened is not None else "miss").inc()
    if opened is None:
        with inflight.slot(principal.key):
            for _ in range(2):  # a second try if the entry was evicted between the write and now
                future = await anyio.to_thread.run_sync(core.request, recipe_id, index, fmt)
                await _wait(future, settings.range_timeout_seconds, str(key))
                opened = await anyio.to_thread.run_sync(_open_pinned, core.cache, key)
                if opened is not None:
                    break
        if opened is None:
            raise RangeUnavailable(
                f"{key} was evicted as soon as it was written: it does not fit in the cache budget of "
                f"{core.cache.budget_bytes} bytes next to the entries being read (setting cache_budget_bytes)",
                retry_after=30)

    size = opened.entry.size

    def sent(nbytes: int) -> None:
        metrics.bytes_served.labels(fmt).inc(nbytes)
        if nbytes == size:
            metrics.ranges_served.labels(fmt).inc()

    return RangeFileResponse(opened, sent)
