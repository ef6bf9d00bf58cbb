"""The job thread: every job call of a node runs here, in order, with group commit.

Hundreds of workers lease and finish ranges at once. Each call is a short read-modify-write
of a few rows; what costs is the transaction around it (``BEGIN IMMEDIATE`` and the commit's
write to the WAL). So the thread takes every call queued while it was busy (up to
``max_batch``) and runs them in ONE transaction: each call inside its own savepoint (a call
that raises undoes only its own writes, and the others go on), one commit for all, and only
then the answers. Durability is unchanged: nobody hears "leased" or "finished" before the
commit that stores it; if the commit fails, every call of the batch gets the error.

Written by hand because no library groups SQLite transactions across callers.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from service.core.db import Database

__all__ = ["JobThread"]

T = TypeVar("T")


@dataclass(slots=True)
class _Call:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any] | Future[Any]
    loop: asyncio.AbstractEventLoop | None  # None: a concurrent.futures.Future for threads


class JobThread:
    """Runs calls on one thread; the calls queued together share one transaction of ``db``."""

    def __init__(self, db: Database, max_batch: int = 64, name: str = "vdata-jobs") -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.db = db
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._closed = False
        self._lock = threading.Lock()  # orders submit() against close()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Queue ``fn(*args)``; the future is resolved after the commit that stores its writes."""
        future: Future[T] = Future()
        self._put(_Call(fn, args, future, None))
        return future

    def run_async(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """As :meth:`submit`, awaited from the running event loop (no thread hop to wait on it)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._put(_Call(fn, args, future, loop))
        return future

    def close(self) -> None:
        """Run every call queued so far, then stop the thread. Later submits raise RuntimeError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join()

    def _put(self, call: _Call) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the job thread is closed")
            self._queue.put(call)

    # -- the thread

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            _deliver(batch, self._run_batch(batch))

    def _run_batch(self, batch: list[_Call]) -> list[tuple[bool, Any]]:
        """(ok, result or exception) per call, all committed together."""
        outcomes: list[tuple[bool, Any]] = []
        try:
            with self.db.transaction():
                for call in batch:
                    if call.future.cancelled():  # the caller went away before its turn
                        outcomes.append((False, None))
                        continue
                    try:
                        with self.db.transaction():  # a savepoint: undone alone if the call raises
                            outcomes.append((True, call.fn(*call.args)))
                    except Exception as exc:  # noqa: BLE001 - handed to the caller, who raises it
                        outcomes.append((False, exc))
        except BaseException as exc:  # noqa: BLE001 - the commit failed: nothing of the batch is stored
            return [(False, exc)] * len(batch)
        return outcomes


def _deliver(batch: list[_Call], outcomes: list[tuple[bool, Any]]) -> None:
    """Resolve the futures: thread futures now, each event loop's futures in one wake-up."""
    per_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
    for call, (ok, value) in zip(batch, outcomes):
        if call.loop is None:
            future = call.future
            assert isinstance(future, Future)
            if future.set_running_or_notify_cancel():
                future.set_result(value) if ok else future.set_exception(value)
        else:
            per_loop.setdefault(call.loop, []).append((call.future, ok, value))  # type: ignore[arg-type]
    for loop, items in per_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, items)
        except RuntimeError:  # the loop is closed: nobody waits for these answers any more
            pass


def _resolve(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in items:
        if not future.done():
            future.set_result(value) if ok else future.set_exception(value)
