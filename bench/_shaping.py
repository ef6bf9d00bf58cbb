"""A shaped TCP link on loopback, for the latency benchmark (``bench/latency.py``).

:class:`ShapedProxy` listens on ``127.0.0.1:<free port>`` and forwards every connection to a
target. Each direction behaves like one side of a full-duplex link:

* **rate** -- a pacer shared by all connections of the proxy in that direction (a virtual clock,
  i.e. a token bucket without burst): a chunk of ``n`` bytes occupies the link for
  ``n / rate`` seconds; the reader does not read the next chunk before its turn, so back-pressure
  reaches the sender through TCP;
* **delay** -- once "transmitted", a chunk is delivered ``rtt / 2`` later (per-connection FIFO with
  time stamps, so order is kept and delays do not add up).

Bytes forwarded are counted per direction (``up``: client -> target, ``down``: target -> client).
The proxy runs its own asyncio loop in a daemon thread; ``stop()`` closes the listener and every
connection and joins the thread (use it as a context manager).
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import TracebackType

__all__ = ["ShapedProxy"]

CHUNK = 64 * 1024


class _Pacer:
    """A link of ``rate`` bytes/s shared by everyone who sends through it (FIFO by arrival)."""

    def __init__(self, rate_bytes: float | None) -> None:
        self.rate = rate_bytes
        self.next_free = 0.0

    async def send(self, n: int) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        start = max(now, self.next_free)
        self.next_free = start + n / self.rate
        wait = self.next_free - now
        if wait > 0.0005:
            await asyncio.sleep(wait)


class ShapedProxy:
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port`` with a round-trip delay and a rate cap."""

    def __init__(self, target_host: str, target_port: int, rtt_s: float = 0.0, rate_bit_s: float | None = None,
                 name: str = "proxy") -> None:
        self.target = (target_host, target_port)
        self.one_way = rtt_s / 2.0
        self.rate_bytes = rate_bit_s / 8.0 if rate_bit_s else None
        self.name = name
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._run, name=f"shaped-{name}", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle ---------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._up = _Pacer(self.rate_bytes)
            self._down = _Pacer(self.rate_bytes)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0, limit=CHUNK))
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._shutdown())
            self._loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def start(self) -> ShapedProxy:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None or not self.port:
            self.stop()
            raise RuntimeError(f"shaped proxy {self.name} did not start") from self._error
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> ShapedProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- forwarding --------------------------------------------------------------------------

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(c_writer)
        self.connections += 1
        t_writer: asyncio.StreamWriter | None = None
        try:
            t_reader, t_writer = await asyncio.open_connection(*self.target, limit=CHUNK)
            self._writers.add(t_writer)
            # the connection set-up itself crosses the link: SYN / SYN-ACK take one round trip
            if self.one_way:
                await asyncio.sleep(2 * self.one_way)
            await asyncio.gather(self._pump(c_reader, t_writer, self._up, True),
                                 self._pump(t_reader, c_writer, self._down, False))
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:  # the proxy stops: the connection ends here (asyncio's server
            pass  # callback would otherwise print a CancelledError for each connection still open)
        finally:
            for w in (c_writer, t_writer):
                if w is not None:
                    self._writers.discard(w)
                    w.close()
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pacer: _Pacer,
                    up: bool) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:  # EOF travels with the same delay
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        deliverer = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(CHUNK)
                if data:
                    await pacer.send(len(data))
                    if up:
                        self.bytes_up += len(data)
                    else:
                        self.bytes_down += len(data)
                queue.put_nowait((time.monotonic() + self.one_way, data))
                if not data:
                    break
                if deliverer.done():
                    break
            await deliverer
        except (OSError, asyncio.CancelledError):
            deliverer.cancel()
            raise
