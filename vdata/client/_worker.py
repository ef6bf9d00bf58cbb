"""The event-service worker loop behind :meth:`vdata.Client.run_worker`.

One loop (the caller's thread) runs the payload; one background thread leases the *next*
ranges and fetches their data while the payload works on the current ones; one heartbeat
thread extends every lease the worker holds (prefetched ones too) until it is finished or
failed. A range whose payload raises is reported ``fail`` (not fatal: it may succeed on
another attempt) with the exception's message, and the loop goes on. If the job takes outputs,
what the payload returns (a table or a file path) is uploaded before the range is finished; a
failed upload fails the range.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from vdata.client._http import ServiceError
from vdata.errors import VdataError

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["LeasedRange", "WorkerClient", "WorkerSummary", "run_worker"]

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


class WorkerClient(Protocol):
    """What the loop needs of a client (:class:`vdata.Client` is one): declared here so that
    this module imports nothing from the client's."""

    def job(self, job_id: str) -> dict[str, Any]: ...

    def finish(self, job_id: str, index: int, *, worker: str) -> None: ...

    def fail(self, job_id: str, index: int, message: str, *, worker: str, fatal: bool = False) -> None: ...

    def _lease(self, job_id: str, n: int, worker: str, stop: threading.Event | None) -> list[LeasedRange]: ...

    def _lease_table(self, lease: LeasedRange, format: str, stop: threading.Event) -> pa.Table: ...

    def upload_output(self, job_id: str, index: int, output: Any, *, worker: str,
                      format: str | None = None) -> dict[str, Any]: ...

    def _report(self, job_id: str, index: int, action: str, body: dict[str, Any],
                stop: threading.Event | None = None, retries: int | None = None) -> None: ...


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

    def __init__(self, client: WorkerClient, job_id: str, worker: str) -> None:
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


def _check_arguments(n: int, max_ranges: int | None) -> None:
    """Refuse nonsense before anything is asked of the service."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if max_ranges is not None and max_ranges < 0:
        raise ValueError(f"max_ranges must be >= 0 or None, got {max_ranges}")


def _heartbeat_every(status: dict[str, Any], asked: float | None) -> float | None:
    """The heartbeat interval: the caller's, else a third of the job's lease time, else None
    (then the first lease's deadline decides, see :meth:`_Heartbeat.add`)."""
    if asked is not None:
        return max(MIN_HEARTBEAT, asked)
    if isinstance(status.get("lease_seconds"), (int, float)):
        return max(MIN_HEARTBEAT, status["lease_seconds"] / 3)
    return None


def run_worker(client: WorkerClient, job_id: str, process: Callable[..., Any], *, worker: str, n: int,
               heartbeat_every: float | None, max_ranges: int | None, format: str) -> WorkerSummary:
    """See :meth:`vdata.Client.run_worker`."""
    _check_arguments(n, max_ranges)
    started = time.monotonic()
    status = client.job(job_id)  # a missing job fails here, before any thread starts
    beat = _Heartbeat(client, job_id, worker)
    beat.every = _heartbeat_every(status, heartbeat_every)
    loop = _WorkerLoop(client, job_id, process, beat, worker=worker, n=n, max_ranges=max_ranges, format=format)
    loop.outputs = (str(status.get("outputs", "none")), str(status.get("output_format", "parquet")))
    loop.run()
    return WorkerSummary(worker, loop.finished, loop.failed, loop.events, time.monotonic() - started, loop.waiting)


class _WorkerLoop:
    """One run of the loop: the payload runs in the caller's thread while one background
    thread leases and loads the next batch; the tally becomes the :class:`WorkerSummary`."""

    def __init__(self, client: WorkerClient, job_id: str, process: Callable[..., Any], beat: _Heartbeat, *,
                 worker: str, n: int, max_ranges: int | None, format: str) -> None:
        self.client, self.job_id, self.process, self.beat = client, job_id, process, beat
        self.worker, self.n, self.max_ranges, self.format = worker, n, max_ranges, format
        self.with_lease = _wants_lease(process)
        self.leased = self.finished = self.failed = self.events = 0
        self.waiting = 0.0
        self.idle = IDLE_FIRST
        self.stop = threading.Event()  # set on exit: cuts short a lease or fetch under way
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vdata-worker-prefetch")
        self.outputs = ("none", "parquet")  # the job's outputs option and merged format

    def run(self) -> None:
        """Lease, process, report until the job is done or ``max_ranges`` were leased; whatever
        ends the loop (an interrupt too), the threads stop and unprocessed leases go back."""
        pending = self._lease_next()
        try:
            while pending is not None:
                batch = self._wait_for(pending)
                if batch:
                    self.idle = IDLE_FIRST
                    pending = self._lease_next()  # the next lease loads while this one runs
                    for lease, table in batch:
                        self._process_one(lease, table)
                elif self.client.job(self.job_id).get("done"):
                    pending = None
                else:
                    self._back_off()
                    pending = self._lease_next()
        finally:
            self._close()

    def _quota(self) -> int:
        """How many ranges the next lease may ask for: ``n``, less near ``max_ranges``."""
        return self.n if self.max_ranges is None else min(self.n, self.max_ranges - self.leased)

    def _lease_next(self) -> Future[Loaded] | None:
        """Start leasing and loading the next batch in the background; None once the quota is spent."""
        count = self._quota()
        return self.executor.submit(self._take, count) if count > 0 else None

    def _take(self, count: int) -> Loaded:
        """Lease up to ``count`` ranges, keep them alive, fetch their data (runs in the background).
        A range whose data cannot be fetched comes with the error, to be reported failed."""
        leases = self.client._lease(self.job_id, count, self.worker, self.stop)
        self.beat.add(leases)
        loaded: Loaded = []
        for lease in leases:
            try:
                loaded.append((lease, self.client._lease_table(lease, self.format, self.stop)))
            except VdataError as exc:
                loaded.append((lease, exc))
        return loaded

    def _wait_for(self, pending: Future[Loaded]) -> Loaded:
        """The batch being loaded; the time spent waiting for it is what the summary calls ``waiting``."""
        t0 = time.monotonic()
        batch = pending.result()
        self.waiting += time.monotonic() - t0
        self.leased += len(batch)
        return batch

    def _back_off(self) -> None:
        """Nothing to lease, yet the job is not done: others hold the remaining ranges, and
        theirs may expire. Wait, longer each time in a row, before asking again."""
        self.stop.wait(self.idle)
        self.idle = min(IDLE_MAX, self.idle * 2)

    def _process_one(self, lease: LeasedRange, table: pa.Table | VdataError) -> None:
        """Run the payload on one range (its heartbeat goes on meanwhile), then report it."""
        message = self._run_payload(lease, table)
        self.beat.drop(lease.index)
        self._report(lease, message)

    def _run_payload(self, lease: LeasedRange, table: pa.Table | VdataError) -> str | None:
        """None if the payload succeeded, else why the range failed (the payload's exception,
        or the fetch error): a failure of the range, never of the loop."""
        if isinstance(table, VdataError):
            return f"fetching the input failed: {table}"
        try:
            result = self.process(table, lease) if self.with_lease else self.process(table)
        except Exception as exc:  # noqa: BLE001 - the payload's failure is reported, not ours
            return f"{type(exc).__name__}: {exc}"
        return self._upload(lease, result)

    def _upload(self, lease: LeasedRange, result: Any) -> str | None:
        """Upload the payload's result as the range's output if the job takes outputs; None if
        done (or nothing to do), else why the range fails."""
        mode, fmt = self.outputs
        if mode == "none":
            return None
        if result is None:
            return "the payload returned no output, and the job requires one" if mode == "required" else None
        try:
            table_format = fmt if fmt != "root" else "parquet"  # a table goes as parquet; the merge writes root
            import pyarrow as pa  # loaded already: the payload got a table

            is_table = isinstance(result, pa.Table)
            self.client.upload_output(self.job_id, lease.index, result, worker=self.worker,
                                      format=table_format if is_table else None)
        except (VdataError, OSError, ValueError) as exc:
            return f"uploading the output failed: {exc}"
        return None

    def _report(self, lease: LeasedRange, failure: str | None) -> None:
        """Report the range finished or failed and count it. A 409 means the lease was lost
        (expired and reclaimed by another worker): logged, not fatal to the loop."""
        try:
            if failure is None:
                self.client.finish(self.job_id, lease.index, worker=self.worker)
                self.finished += 1
                self.events += lease.num_events
            else:
                log.warning("range %d of job %s failed: %s", lease.index, self.job_id, failure)
                self.client.fail(self.job_id, lease.index, failure, worker=self.worker)
                self.failed += 1
        except ServiceError as exc:
            if exc.status != 409:
                raise
            log.warning("range %d of job %s: %s", lease.index, self.job_id, exc)

    def _close(self) -> None:
        """Stop the background threads, then give back the leases never processed."""
        self.stop.set()
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.beat.close()
        _give_back(self.client, self.job_id, self.worker, self.beat)


def _give_back(client: WorkerClient, job_id: str, worker: str, beat: _Heartbeat) -> None:
    """Leases still held when the loop stops early (an error, an interrupt): report them
    failed now, which returns them to ``ready`` sooner than letting them expire."""
    for index in sorted(beat.held):
        try:
            client._report(job_id, index, "fail", {"worker": worker, "fatal": False,
                           "message": f"worker {worker} stopped before processing it"}, retries=0)
        except VdataError as exc:
            log.warning("could not give back range %d of job %s: %s", index, job_id, exc)
