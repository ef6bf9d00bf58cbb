"""Serving a range's bytes: straight from its cache file, as written, never re-encoded.

The file is pinned (so eviction cannot remove it) and opened before the response starts, then
streamed in 1 MiB chunks read in a worker thread; the pin is released when the last byte is
sent, or the client goes away. Only the file's size is checked before the first byte (reading
the whole file to check its adler32 first cost more than sending it); the checksum is computed
as the chunks are read, and the last chunk is held back until it matches. On a mismatch the
entry is dropped and the connection closed short of ``Content-Length``, so a damaged file never
arrives as a complete response, and the next request materializes the range again.

Behind nginx (setting ``accel_redirect_prefix``) the gateway sends no bytes: it checks the
entry's size and answers with ``X-Accel-Redirect``, and nginx sends the file with sendfile; see
:class:`AccelRedirectResponse` for how the pin and the checksum are kept then. A miss waits for the engine's future without blocking the event
loop (``asyncio.wrap_future``, shielded: the engine's single-flight future is shared by every
waiter and must never be cancelled by one of them).

What a cache hit is, the one definition every counter follows (:func:`count_lookup`, the one
place ``vdata_cache_lookups_total`` is counted): a range request is a *hit* when it is answered
from a cache file without waiting for a materialization, and a *miss* when it needs a Ray task
or joins one in flight (it waits). A cached file found damaged (wrong size before the first
byte, wrong adler32 while the body goes out, or behind nginx after it) is counted in
``vdata_cache_corrupt_total`` by the cache, and its request as a miss: it was not answered from
the cache (the request that finds a wrong size goes on to have the range made again; one cut
short by a wrong checksum is asked again by the client, a second miss). A miss is counted at the
door; a hit, with the range and bytes served, just before its last chunk goes out (so a client
that has all the bytes finds them counted; behind nginx, once the file is checked, after the answer). Look-ahead (``stage``, the gateway's read-ahead, a job's
look-ahead) is no lookup: nobody waits for it; the engine counts the ranges it queues ahead in
``vdata_lookahead_ranges_total``. ``vdata_ranges_served_total`` counts complete bodies (a cut
one is not served), ``vdata_bytes_served_total`` the bytes that went out.
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

from service.http.auth import Principal
from service.http.deps import InFlight
from service.errors import RangeUnavailable
from service.http.limits import check_plan
from service.http.metrics import Metrics
from service.settings import Settings
from service.core.cache import CacheEntry, CacheKey, RangeCache, adler32, adler32_hex, stored_format
from service.core.core import Core
from service.core.db import DATABASE_ERRORS
from vdata.errors import VdataError
from vdata.formats import MEDIA_TYPES
from vdata.data.plans import Plan

__all__ = ["ACCEL_GRACE_SECONDS", "CHUNK_BYTES", "AccelRedirectResponse", "BodyAborted", "RangeFileResponse",
           "count_lookup", "serve_range"]

log = logging.getLogger("service")
CHUNK_BYTES = 1 << 20
ACCEL_GRACE_SECONDS = 2.0


class BodyAborted(RuntimeError):
    """A started response whose body cannot be completed: its cache file turned out damaged.

    Not a :class:`VdataError` on purpose: the status line has gone out, so no error response can
    follow. It escapes the app, uvicorn closes the connection, and the client sees a body shorter
    than its ``Content-Length`` (and would see a wrong ``X-Vdata-Adler32`` anyway).
    """


@dataclass
class _Open:
    cache: RangeCache
    entry: CacheEntry
    file: BinaryIO
    stack: ExitStack


def _open_pinned(cache: RangeCache, key: CacheKey) -> _Open | None:
    """The entry, pinned and size-checked, with its file open; None on a miss. Blocking: run in a thread."""
    stack = ExitStack()
    try:
        found = stack.enter_context(cache.opened(key))
    except BaseException:
        stack.close()
        raise
    if found is None:
        stack.close()
        return None
    return _Open(cache, found[0], found[1], stack)


class _Checksummed:
    """Reads a file front to back, keeping the adler32 of what it has read (in the worker thread)."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.adler32 = 1  # the adler32 of no bytes

    def read(self, size: int) -> bytes:
        chunk = self.file.read(size)
        self.adler32 = adler32(chunk, self.adler32)
        return chunk


def _range_headers(entry: CacheEntry) -> dict[str, str]:
    """What a client learns about the range besides its bytes (the length is the caller's)."""
    return {
        "x-vdata-adler32": adler32_hex(entry.adler32),
        "x-vdata-events": str(entry.events),
        "content-disposition": f'attachment; filename="{entry.key.recipe_id}-'
                               f'{entry.key.range_index:08d}.{entry.key.base_format}"',
        "cache-control": "private, max-age=86400, immutable",
    }


class RangeFileResponse(Response):
    """A pinned cache file, streamed in :data:`CHUNK_BYTES` pieces and checked on the way; unpinned when done."""

    def __init__(self, opened: _Open, on_done: Callable[[int, bool], None]) -> None:
        entry = opened.entry
        super().__init__(status_code=200, media_type=MEDIA_TYPES[entry.key.base_format],
                         headers={"content-length": str(entry.size), **_range_headers(entry)})
        self.opened = opened
        self.on_done = on_done  # (bytes sent, whether the file was found damaged), once at the end
        self.sent = 0
        self.damaged = False
        self._reported = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        aborted: list[BodyAborted] = []
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    try:
                        await self._stream(send)
                    except BodyAborted as exc:  # raised below, outside the task group (no ExceptionGroup)
                        aborted.append(exc)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                while (await receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()  # the client went away: stop reading the file
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.opened.stack.close)
            self._report(self.sent)
        if aborted:
            raise aborted[0]

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        reader = _Checksummed(self.opened.file)
        remaining = self.opened.entry.size
        while remaining > 0:
            chunk = await anyio.to_thread.run_sync(reader.read, min(CHUNK_BYTES, remaining))
            if not chunk:
                await self._abort(f"it ended {remaining} bytes early")
            remaining -= len(chunk)
            if remaining == 0 and reader.adler32 != self.opened.entry.adler32:
                await self._abort(f"its adler32 is {adler32_hex(reader.adler32)}, "
                                  f"{adler32_hex(self.opened.entry.adler32)} recorded")
            if remaining == 0:
                self._report(self.sent + len(chunk))  # before the last byte: a client that has it sees it counted
            self.sent += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": remaining > 0})

    def _report(self, nbytes: int) -> None:
        if not self._reported:
            self._reported = True
            self.on_done(nbytes, self.damaged)

    async def _abort(self, problem: str) -> None:
        """Drop the damaged entry and raise :class:`BodyAborted` (the last chunk is never sent)."""
        entry = self.opened.entry
        self.damaged = True
        with anyio.CancelScope(shield=True):
            dropped = await anyio.to_thread.run_sync(self.opened.cache.drop_if_damaged, entry.key)
        message = (f"cache file {entry.path} ({entry.key}) is damaged: {problem}; the response was cut "
                   f"after {self.sent} of {entry.size} bytes and the entry "
                   + ("dropped" if dropped else "kept (it was replaced meanwhile)"))
        log.error("%s", message)
        raise BodyAborted(message)


class AccelRedirectResponse(Response):
    """An empty answer naming the cache file nginx is to send (``X-Accel-Redirect``).

    nginx opens the file after this answer, out of the gateway's sight, so the pin is kept
    :data:`ACCEL_GRACE_SECONDS` longer: nginx opens it within milliseconds, and once it is open an
    eviction's unlink no longer matters. Should nginx still come late, it answers 404 and the
    client asks again. Meanwhile the adler32 is checked here, in a worker thread: a damaged file
    reaches the client (which rejects it by ``X-Vdata-Adler32``) and is dropped once the grace is
    over (dropped at once, nginx could find it gone: a 404 instead of the bytes the client
    rejects and asks again for), so a request after that materializes the range again.
    """

    def __init__(self, opened: _Open, prefix: str, on_done: Callable[[int, bool], None]) -> None:
        entry = opened.entry
        super().__init__(status_code=200, media_type=MEDIA_TYPES[entry.key.base_format],
                         headers={"x-accel-redirect": f"{prefix}/{entry.key.relpath}", **_range_headers(entry)})
        self.opened = opened
        self.on_done = on_done  # as RangeFileResponse's, once the file is checked

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sent, damaged = False, False
        try:
            await super().__call__(scope, receive, send)
            sent = True
        finally:
            with anyio.CancelScope(shield=True):
                started = anyio.current_time()
                try:
                    try:
                        damaged = await anyio.to_thread.run_sync(self._check)
                    finally:
                        self.on_done(self.opened.entry.size if sent else 0, damaged)
                    await anyio.sleep(ACCEL_GRACE_SECONDS - (anyio.current_time() - started))
                    if damaged:  # dropped only now: nginx may not have opened the file yet (it would 404)
                        await anyio.to_thread.run_sync(self._drop)
                finally:
                    await anyio.to_thread.run_sync(self.opened.stack.close)

    def _check(self) -> bool:
        """Read the open file through; True if its adler32 does not match the recorded one."""
        entry, checksum = self.opened.entry, 1
        buffer = memoryview(bytearray(CHUNK_BYTES))  # one buffer, reused: nothing else holds it
        while n := self.opened.file.readinto(buffer):
            checksum = adler32(buffer[:n], checksum)
        if checksum == entry.adler32:
            return False
        log.error("cache file %s (%s) is damaged (adler32 %s, %s recorded); handed to nginx, dropped after %g s",
                  entry.path, entry.key, adler32_hex(checksum), adler32_hex(entry.adler32), ACCEL_GRACE_SECONDS)
        return True

    def _drop(self) -> None:
        self.opened.cache.drop_if_damaged(self.opened.entry.key)


def _read_ahead(core: Core, plan: Plan, index: int, fmt: str, n: int) -> None:
    """Server-side read-ahead, as a file system or a CDN does it: when range ``index`` is asked
    for right after ``index - 1`` (it is cached), start materializing the next ``n`` ranges
    (no-ops for those cached or in flight). Random access (the previous range not cached)
    reads nothing ahead."""
    if n == 0 or index + 1 >= len(plan.ranges):
        return
    if index > 0 and not core.cache.contains(CacheKey(plan.id, index - 1, fmt)):
        return
    core.stage(plan.id, index + 1, n, fmt, why="readahead")


def _request(core: Core, plan: Plan, index: int, fmt: str, readahead: int) -> Future[CacheEntry]:
    """Ask the engine for a range, and read ahead of it once it is made: started at once, the
    ranges ahead would share the site's link and the CPUs with the one a client waits for."""

    def then_read_ahead(done: Future[CacheEntry]) -> None:
        if not done.cancelled() and done.exception() is None:
            try:
                _read_ahead(core, plan, index, fmt, readahead)
            except (VdataError, *DATABASE_ERRORS, OSError):  # a hint: never worth failing anything for
                log.exception("read-ahead after %s range %d failed", plan.id, index)

    future = core.request(plan.id, index, fmt)
    if readahead:
        future.add_done_callback(then_read_ahead)
    return future


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


def count_lookup(metrics: Metrics, *, from_cache: bool, damaged: bool = False) -> None:
    """Count one range request in ``vdata_cache_lookups_total`` by the definition in the
    module docstring: a hit if it was answered from a cache file (``from_cache``) that was not
    found damaged; else a miss."""
    metrics.cache_lookups.labels("hit" if from_cache and not damaged else "miss").inc()


async def serve_range(
    core: Core, recipe_id: str, index: int, fmt: str, compression: str = "none", *,
    settings: Settings, principal: Principal, inflight: InFlight, metrics: Metrics,
) -> RangeFileResponse | AccelRedirectResponse:
    """The response for range ``index`` of a recipe in ``fmt`` with ``compression`` (Arrow's
    IPC compression, its own cache entry): cached, or materialized now. Metrics label it with
    the stored format (``arrow+lz4``)."""
    fmt = stored_format(fmt, compression)  # FormatError (400) naming a bad format or compression
    plan = await anyio.to_thread.run_sync(core.plan, recipe_id)
    plan.range(index)  # RangeOutOfBounds (416) before any work
    check_plan(plan, settings)
    key = CacheKey(plan.id, index, fmt)
    opened = await anyio.to_thread.run_sync(_open_pinned, core.cache, key)
    from_cache = opened is not None
    if not from_cache:
        count_lookup(metrics, from_cache=False)  # at the door: it counts even if the wait then fails
    if opened is not None and settings.readahead:
        await anyio.to_thread.run_sync(_read_ahead, core, plan, index, fmt, settings.readahead)
    if opened is None:
        with inflight.slot(principal.key):
            for _ in range(2):  # a second try if the entry was evicted between the write and now
                future = await anyio.to_thread.run_sync(_request, core, plan, index, fmt, settings.readahead)
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

    def sent(nbytes: int, damaged: bool) -> None:
        if from_cache:
            count_lookup(metrics, from_cache=True, damaged=damaged)
        metrics.bytes_served.labels(fmt).inc(nbytes)
        if nbytes == size and not damaged:
            metrics.ranges_served.labels(fmt).inc()

    if settings.accel_redirect_prefix is not None:
        return AccelRedirectResponse(opened, settings.accel_redirect_prefix, sent)
    return RangeFileResponse(opened, sent)
