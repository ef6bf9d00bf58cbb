"""The event-service worker loop behind :meth:`vdata.Client.run_worker`.

One loop (the caller's thread) runs the payload; one background thread leases the *next*
ranges and fetches their data while the payload works on the current ones; one heartbeat
thread extends every lease the worker holds (prefetched ones too) until it is finished or
failed. A range whose payload raises is reported ``fail`` (not fatal: it may succeed on
another attempt) with the exception's message, and the loop goes on.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from vdata.client._http import ServiceError
from vdata.errors import VdataError

if TYPE_CHECKING:
    import pyarrow as pa

    from vdata.client import Client

__all__ = ["LeasedRange", "WorkerSummary", "run_worker"]

log = logging.getLogger("vdata.client")

IDLE_FIRST, IDLE_MAX = 0.25, 5.0  # seconds between lease attempts while others hold the rest
MIN_HEARTBEAT = 0.05


@dataclass(frozen=True, slots=True)
class LeasedRange:
    """A range leased to this worker until ``deadline`` (seconds since the epoch, server clock);
    ``url`` is the path its data is served at."""

    index: int
    first: int
    stop: int
    deadline: float
    url: str

    @property
    def num_events(self) -> int:
        return self.stop - self.first


@dataclass(frozen=True, slots=True)
class WorkerSummary:
    """What :meth:`~vdata.Client.run_worker` did: ranges finished and failed (failures
    reported, a range may count more than once), input events (``stop - first``) of the
    finished ranges, wall seconds, and seconds the loop waited for a lease and its data."""

    worker: str
    finished: int
    failed: int
    events: int
    seconds: float
    waiting: float


def _wants_lease(process: Callable[..., Any]) -> bool:
    """Whether ``process`` can take ``(table, lease)``; otherwise it gets ``(table)``."""
    try:
        inspect.signature(process).bind(None, None)
    except TypeError:
        return False
    except ValueError:  # no signature (some builtins): call it the simple way
        return False
    return True


class _Heartbeat:
    """Extends every lease in ``held`` each ``every`` seconds, in a daemon thread."""

    def __init__(self, client: Client, job_id: str, worker: str) -> None:
        self.client, self.job_id, self.worker = client, job_id, worker
        self.held: dict[int, LeasedRange] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.every: float | None = None
        self.thread: threading.Thread | None = None

    def add(self, leases: list[LeasedRange]) -> None:
        with self.lock:
            self.held.update((lease.index, lease) for lease in leases)
            if self.thread is None and leases:
                if self.every is None:  # a third of the lease time, as the first lease tells it
                    self.every = max(MIN_HEARTBEAT, (leases[0].deadline - time.time()) / 3)
                self.thread = threading.Thread(target=self._run, name=f"vdata-heartbeat-{self.job_id}", daemon=True)
                self.thread.start()

    def drop(self, index: int) -> None:
        with self.lock:
            self.held.pop(index, None)

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()

    def _run(self) -> None:
        assert self.every is not None
        while not self.stop.wait(self.every):
            with self.lock:
                indices = sorted(self.held)
            for index in indices:
                try:
                    self.client._report(self.job_id, index, "heartbeat", {"worker": self.worker}, stop=self.stop)
                except VdataError as exc:
                    with self.lock:
                        still_held = index in self.held
                    if still_held:  # else it was finished meanwhile: nothing lost
                        log.warning("heartbeat for range %d of job %s failed: %s", index, self.job_id, exc)
                except (httpx.HTTPError, OSError, RuntimeError):  # RuntimeError: the client was closed
                    # a stop during the request; else log, never kill the thread silently
                    if not self.stop.is_set():
                        log.exception("heartbeat thread of job %s", self.job_id)


if TYPE_CHECKING:
    Loaded = list[tuple[LeasedRange, pa.Table | VdataError]]  # leased ranges with their data, or why not


def run_worker(client: Client, job_id: str, process: Callable[..., Any], *, worker: str, n: int,
               heartbeat_every: float | None, max_ranges: int | None, format: str) -> WorkerSummary:
    """See :meth:`vdata.Client.run_worker`."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if max_ranges is not None and max_ranges < 0:
        raise ValueError(f"max_ranges must be >= 0 or None, got {max_ranges}")
    started = time.monotonic()
    status = client.job(job_id)  # a missing job fails here, before any thread starts
    beat = _Heartbeat(client, job_id, worker)
    if heartbeat_every is not None:
        beat.every = max(MIN_HEARTBEAT, heartbeat_every)
    elif isinstance(status.get("lease_seconds"), (int, float)):
        beat.every = max(MIN_HEARTBEAT, status["lease_seconds"] / 3)
    with_lease = _wants_lease(process)
    leased = finished = failed = events = 0
    waiting = 0.0
    stop = threading.Event()

    def take(count: int) -> Loaded:
        """Lease up to ``count`` ranges and fetch their data (runs in the background)."""
        leases = client._lease(job_id, count, worker, stop)
        beat.add(leases)
        loaded: Loaded = []
        for lease in leases:
            try:
                loaded.append((lease, client._lease_table(lease, format, stop)))
            except VdataError as exc:
                loaded.append((lease, exc))
        return loaded

    def quota() -> int:
        return n if max_ranges is None else min(n, max_ranges - leased)

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vdata-worker-prefetch")
    pending: Future[Loaded] | None = executor.submit(take, quota()) if quota() > 0 else None
    idle = IDLE_FIRST
    try:
        while pending is not None:
            t0 = time.monotonic()
            batch = pending.result()
            waiting += time.monotonic() - t0
            leased += len(batch)
            pending = None
            if not batch:
                if client.job(job_id).get("done"):
                    break
                stop.wait(idle)  # others hold the remaining ranges; theirs may expire
                idle = min(IDLE_MAX, idle * 2)
                pending = executor.submit(take, quota())
                continue
            idle = IDLE_FIRST
            if quota() > 0:
                pending = executor.submit(take, quota())  # the next lease loads while this one runs
            for lease, table in batch:
                if isinstance(table, VdataError):
                    message, ok = f"fetching the input failed: {table}", False
                else:
                    try:
                        if with_lease:
                            process(table, lease)
                        else:
                            process(table)
                        message, ok = "", True
                    except Exception as exc:  # noqa: BLE001 - the payload's failure is reported, not ours
                        message, ok = f"{type(exc).__name__}: {exc}", False
                beat.drop(lease.index)
                try:
                    if ok:
                        client.finish(job_id, lease.index, worker=worker)
                        finished += 1
                        events += lease.num_events
                    else:
                        log.warning("range %d of job %s failed: %s", lease.index, job_id, message)
                        client.fail(job_id, lease.index, message, worker=worker)
                        failed += 1
                except ServiceError as exc:
                    if exc.status != 409:  # 409: the lease was lost (expired and reclaimed)
                        raise
                    log.warning("range %d of job %s: %s", lease.index, job_id, exc)
    finally:
        stop.set()
        executor.shutdown(wait=True, cancel_futures=True)
        beat.close()
        _give_back(client, job_id, worker, beat)
    return WorkerSummary(worker, finished, failed, events, time.monotonic() - started, waiting)


def _give_back(client: Client, job_id: str, worker: str, beat: _Heartbeat) -> None:
    """Leases still held when the loop stops early (an error, an interrupt): report them
    failed now, which returns them to ``ready`` sooner than letting them expire."""
    for index in sorted(beat.held):
        try:
            client._report(job_id, index, "fail", {"worker": worker, "fatal": False,
                           "message": f"worker {worker} stopped before processing it"}, retries=0)
        except VdataError as exc:
            log.warning("could not give back range %d of job %s: %s", index, job_id, exc)
