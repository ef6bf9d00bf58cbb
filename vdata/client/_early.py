"""A stream's first range handed to the payload batch by batch, as its body arrives.

The service sends Arrow ranges as IPC streams of record batches of about 1 MiB
(:func:`vdata.formats.batch_rows`). Every other range of ``Client.stream`` is fetched whole,
checked against its ``X-Vdata-Adler32`` and only then handed out; the payload works on those
while the next ones download, so waiting for the whole body costs it nothing. The first range
is different: the payload has nothing else to do while it arrives. :class:`EarlyRange` reads
its body in a thread, decodes each record batch as soon as its bytes are in, and hands it out
at once: the first batch comes after ~1 MiB instead of after the whole range.

What is handed out is still checked. The adler32 of the whole body is compared with its
header at the end, and the events with ``X-Vdata-Events``. If either does not match, or the
body breaks off, the range is fetched again the usual way (whole, checked, with the client's
retries) and the batches already handed out must equal its first rows: then the rest is handed
out from it; if they differ the stream fails with a :class:`~vdata.errors.ServiceError`, as
data the payload has already seen cannot be taken back. Each event is handed out once.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
from collections.abc import Callable, Iterator

import httpx
import pyarrow as pa

from vdata.checksum import adler32
from vdata.client._http import ADLER_HEADER, EVENTS_HEADER, Cancelled, Transport
from vdata.errors import ServiceError

__all__ = ["EarlyRange"]

log = logging.getLogger("vdata.client")
_END = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Body(io.RawIOBase):
    """A response body as a readable file (what ``pyarrow.ipc.open_stream`` reads), keeping the
    adler32 and the count of the bytes read; stops with :class:`Cancelled` once ``stop`` is set."""

    def __init__(self, response: httpx.Response, stop: threading.Event) -> None:
        self._chunks = response.iter_raw()
        self._stop = stop
        self._pending = memoryview(b"")
        self.adler32 = 1
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            if self._stop.is_set():
                raise Cancelled("the stream was closed")
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
            self.adler32 = adler32(chunk, self.adler32)
            self.size += len(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def read(self, size: int = -1) -> bytes:
        """``size`` bytes, fewer only at the end (Arrow takes a short read for a broken stream)."""
        if size < 0:
            return self.readall()
        parts, wanted = [], size
        while wanted:
            part = super().read(wanted)
            if not part:
                break
            parts.append(part)
            wanted -= len(part)
        return b"".join(parts)

    def drain(self) -> None:
        """Read what is left (bytes after the stream's end marker count in the checksum too)."""
        while self.read(1 << 20):
            pass


class EarlyRange:
    """The record batches of one Arrow range, handed out as they arrive (see the module docstring).

    ``url``: the range's URL (Arrow format); ``what``: how errors name it; ``fetch_whole()``:
    the range fetched whole and checked, for when the streamed body fails; ``on_complete()``:
    called once the body is in (or given up on), so the caller can start fetching the next
    ranges then and not share the link with this one's first batch. Iterate once; ``close()``
    stops the thread.
    """

    def __init__(self, transport: Transport, url: str | httpx.URL, what: str, stop: threading.Event,
                 fetch_whole: Callable[[], pa.Table], on_complete: Callable[[], None]) -> None:
        self._transport = transport
        self._url = url
        self._what = what
        self._stop = stop
        self._fetch_whole = fetch_whole
        self._on_complete = on_complete
        self._queue: queue.Queue[object] = queue.Queue()
        self._handed: list[pa.RecordBatch] = []  # kept until the body is checked
        self._thread = threading.Thread(target=self._run, name="vdata-prefetch-range-0", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        while (item := self._queue.get()) is not _END:
            if isinstance(item, _Failed):
                raise item.exc
            yield item  # type: ignore[misc]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            try:
                self._transport.request("GET", self._url, stop=self._stop, retries=0, check=self._read)
            except Cancelled:
                raise
            except (ServiceError, httpx.HTTPError, pa.ArrowException, OSError, ValueError) as exc:
                log.info("%s: its streamed body failed (%s: %s); fetching it whole", self._what, type(exc).__name__, exc)
                self._on_complete()
                self._from_whole()  # the usual path, with its retries; the batches handed out are compared
            else:
                self._on_complete()
            self._handed.clear()
            self._queue.put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the payload's thread
            self._queue.put(_Failed(exc))

    def _read(self, response: httpx.Response) -> None:
        expected = response.headers.get(ADLER_HEADER, "").strip().lower()
        events = response.headers.get(EVENTS_HEADER, "").strip()
        body = _Body(response, self._stop)
        rows = 0
        with pa.ipc.open_stream(body) as reader:
            for batch in reader:
                self._handed.append(batch)
                self._queue.put(batch)
                rows += batch.num_rows
        body.drain()
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) != body.size:
            raise httpx.RemoteProtocolError(f"{self._what}: body of {body.size} bytes, Content-Length says {length}")
        if f"{body.adler32 & 0xFFFFFFFF:08x}" != expected:
            raise ValueError(f"{self._what}: adler32 {body.adler32 & 0xFFFFFFFF:08x}, header {expected or 'absent'}")
        if events.isdigit() and int(events) != rows:
            raise ValueError(f"{self._what}: {rows} events, {EVENTS_HEADER} says {events}")

    def _from_whole(self) -> None:
        table = self._fetch_whole()
        handed = sum(batch.num_rows for batch in self._handed)
        if handed:
            seen = pa.Table.from_batches(self._handed, self._handed[0].schema)
            if handed > table.num_rows or not table.slice(0, handed).equals(seen):
                raise ServiceError(200, "bad_response", f"{self._what}: its first {handed} events were handed out as "
                                   "they arrived, and they differ from the range fetched again (its body failed its "
                                   "checks); the data already processed cannot be trusted", "GET", str(self._url))
        for batch in table.slice(handed).to_batches():
            self._queue.put(batch)
