"""Jobs in event-service mode: ranges leased to workers, with the ATLAS event-range states.

A job hands the ranges of one recipe to a fleet of workers. Each range moves through::

    ready --lease--> running --finish--> finished
      ^                 |
      +--expire/fail----+   (spends an attempt; when all are spent: failed)
                        +--fail(fatal)--> fatal

Two layers (STYLE 8). The *decisions* are pure functions over :class:`RangeRow` values
(in :mod:`service.core._job_rows`: :func:`expire`, :func:`lease_row`, :func:`heartbeat_row`,
:func:`finish_row`, :func:`fail_row`, :func:`choose_ready`): they return a new row or raise
:class:`LeaseError`. The *effects* are :class:`JobStore`: each call is one database
transaction that reads rows, applies one decision and writes the result, so a restart loses
nothing. The gateway runs these calls on the job thread (:mod:`service.core.job_thread`), which
commits the calls queued together at once; each is still answered only after its commit.

Decisions on the edge cases:

- An attempt is spent when a lease expires or a failure is reported; a range whose attempts
  reach ``max_attempts`` is ``failed``. ``fatal`` ends a range at once (spending one attempt).
  The last failure message (or ``"lease expired (worker W)"``) is kept, also after a retry
  finishes the range.
- A lease past its deadline expires *when it is reclaimed*: by :meth:`JobStore.lease`,
  :meth:`JobStore.status` and :meth:`JobStore.jobs`. Until then its holder may still
  heartbeat (which revives it), finish or fail it, since nobody else holds the range; once
  reclaimed, the old holder gets :class:`LeaseError`.
- Finishing a range twice by the worker that finished it is a no-op (a retried request must
  not fail), never counted twice; anyone else, or a ``fail`` after ``finish``, gets
  :class:`LeaseError`.
- :meth:`JobStore.ranges` and :meth:`JobStore.next_ready` change nothing: they show the rows
  as stored (an overdue lease still shows as running until it is reclaimed).

Progress for people (:meth:`JobStore.status`): the table ``job_workers`` keeps, per worker of a
job, the ranges it leased, the attempts it spent (:func:`attempt_spent`: a failure it reported
or a lease of it that expired) and its first and last lease, written in the same transaction as
the rows they describe; the rate and ETA are :func:`progress` over the job's life from its first
lease.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from service.core._job_rows import (
    FAILED,
    FATAL,
    FINISHED,
    MAX_LEASE_COUNT,
    READY,
    RUNNING,
    STATES,
    JobStatus,
    attempt_spent,
    Lease,
    RangeRow,
    check_ranges,
    check_int,
    check_name,
    choose_ready,
    expire,
    fail_row,
    finish_row,
    heartbeat_row,
    lease_row,
    progress,
)
from service.core._output_rows import NONE, OPEN, REQUIRED, check_mode, job_state
from service.errors import JobError, JobNotFound, OutputConflict, RangeNotFound
from vdata.formats import check_format
from service.core.db import Database
from vdata.ranges import EventRange

if TYPE_CHECKING:
    from typing import Any as Connection  # a connection of service.core.db: sqlite3's or _pg's

__all__ = [
    "FAILED",
    "FATAL",
    "FINISHED",
    "READY",
    "RUNNING",
    "STATES",
    "JobStatus",
    "JobStore",
    "Lease",
    "RangeRow",
    "choose_ready",
    "expire",
    "fail_row",
    "finish_row",
    "heartbeat_row",
    "lease_row",
]

# ---------------------------------------------------------------- effects (the store)

_COLUMNS = "job_id, range_index, first, stop, state, attempts, worker, deadline, message, updated"


def _row(r: Sequence[object]) -> RangeRow:
    return RangeRow(*r)  # type: ignore[arg-type]  # columns in RangeRow's field order


@dataclass(frozen=True, slots=True)
class _Job:
    id: str
    recipe_id: str
    max_attempts: int
    lease_seconds: float
    outputs: str = NONE  # the job option (service/core/outputs.py); NONE for a job without a job_merges row
    output_format: str = "parquet"


class JobStore:
    """Jobs and their ranges in the database; every call is one transaction (a savepoint when
    the caller already holds one: the job thread runs a batch of calls in one commit).

    ``clock`` gives the time in seconds since the epoch (deadlines are stored, so they must
    survive a restart); tests pass a fake one to move time without sleeping.
    """

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        # A job's row (recipe, attempts, lease length) never changes once created, so it is
        # read once per process instead of once per lease/finish call.
        self._jobs: dict[str, _Job] = {}

    def create_job(
        self, recipe_id: str, ranges: Sequence[EventRange], max_attempts: int = 3, lease_seconds: float = 60.0,
        outputs: str = NONE, output_format: str = "parquet",
    ) -> str:
        """A new job over ``ranges`` of the recipe, every range ready. Returns its id.
        ``outputs``: whether finishing a range needs its uploaded output (``required``), may have
        one (``optional``) or takes none (``none``); the outputs are merged into files of
        ``output_format`` when the job is done (:mod:`service.core.outputs`)."""
        check_name(recipe_id, "recipe_id")
        check_mode(outputs)
        check_format(output_format)
        check_ranges(ranges)
        check_int(max_attempts, "max_attempts", 1)
        if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, (int, float)) \
                or not math.isfinite(lease_seconds) or lease_seconds <= 0:
            raise JobError(f"lease_seconds must be a finite number > 0, got {lease_seconds!r}")
        job_id = "job-" + uuid.uuid4().hex[:16]
        now = self.clock()
        with self.db.transaction() as conn:
            conn.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, ?)",
                         (job_id, recipe_id, max_attempts, float(lease_seconds), now))
            conn.executemany(
                f"INSERT INTO job_ranges ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, 0, NULL, NULL, NULL, ?)",
                [(job_id, r.index, r.first, r.stop, READY, now) for r in ranges],
            )
            if outputs != NONE:
                conn.execute("INSERT INTO job_merges (job_id, outputs, format, state) VALUES (?, ?, ?, ?)",
                             (job_id, outputs, output_format, OPEN))
        return job_id

    def lease(self, job_id: str, worker: str, n: int) -> list[Lease]:
        """Up to ``n`` ready ranges (lowest index first) leased to ``worker``; reclaims overdue leases first."""
        check_name(worker, "worker")
        check_int(n, "n", 1, MAX_LEASE_COUNT)
        with self.db.transaction() as conn:
            job = self._job(conn, job_id)
            now = self.clock()
            expired = self._reclaim(conn, job, now, note=False)
            # SKIP LOCKED (PostgreSQL): rows another gateway is leasing now are passed over, not waited for
            ready = [_row(r) for r in conn.execute(
                f"SELECT {_COLUMNS} FROM job_ranges WHERE job_id = ? AND state = ? ORDER BY range_index LIMIT ?"
                + self.db.skip_locked, (job.id, READY, n))]
            leased = [lease_row(r, worker, now, job.lease_seconds) for r in choose_ready(ready, n)]
            self._write(conn, leased)
            self._note_workers(conn, job, expired, (worker, len(leased), now) if leased else None)
        return [Lease(r.index, r.first, r.stop, cast(float, r.deadline)) for r in leased]

    def heartbeat(self, job_id: str, index: int, worker: str) -> float:
        """Extend the worker's lease on the range; returns the new deadline."""
        row = self._apply(job_id, index, worker,
                          lambda row, job, now: heartbeat_row(row, worker, now, job.lease_seconds))
        return cast(float, row.deadline)  # heartbeat_row returns a running row

    def finish(self, job_id: str, index: int, worker: str) -> None:
        """The worker finished its range (again by the same worker: no-op). A job whose
        ``outputs`` are required refuses it (:class:`OutputConflict`) until the range has one."""

        def decide(row: RangeRow, job: _Job, now: float) -> RangeRow:
            new = finish_row(row, worker, now)
            if new is not row and job.outputs == REQUIRED and self.db.read().execute(
                    "SELECT 1 FROM range_outputs WHERE job_id = ? AND range_index = ?", (job.id, index)).fetchone() is None:
                raise OutputConflict(f"worker {worker!r} cannot finish range {index} of job {job.id!r}: the job "
                                     f"requires its output, and none was uploaded (PUT .../ranges/{index}/output)")
            return new

        self._apply(job_id, index, worker, decide)

    def fail(self, job_id: str, index: int, worker: str, message: str, fatal: bool = False) -> None:
        """The worker failed on its range: retry it later, or never again if ``fatal``."""
        if not isinstance(message, str):
            raise JobError(f"message must be a string, got {type(message).__name__}")
        if not isinstance(fatal, bool):
            raise JobError(f"fatal must be true or false, got {fatal!r}")
        self._apply(job_id, index, worker,
                    lambda row, job, now: fail_row(row, worker, now, message, fatal, job.max_attempts))

    def status(self, job_id: str) -> JobStatus:
        """Counts per state, events finished, whether the job is done, its rate and ETA and the
        failures of each worker (reclaims overdue leases first)."""
        with self.db.transaction() as conn:
            job = self._job(conn, job_id)
            now = self.clock()
            self._reclaim(conn, job, now)
            counts = dict.fromkeys(STATES, 0)
            events = dict.fromkeys(STATES, 0)
            last_change = 0.0
            for state, count, num, updated in conn.execute(
                "SELECT state, COUNT(*), SUM(stop - first), MAX(updated) FROM job_ranges WHERE job_id = ? "
                "GROUP BY state", (job.id,),
            ):
                counts[state], events[state], last_change = count, num, max(last_change, updated)
            failures = {r[0]: r[1] for r in conn.execute(
                "SELECT worker, failures FROM job_workers WHERE job_id = ? ORDER BY worker", (job.id,))}
            started = conn.execute("SELECT MIN(first_lease) FROM job_workers WHERE job_id = ?",
                                   (job.id,)).fetchone()[0]
            merge = conn.execute("SELECT state FROM job_merges WHERE job_id = ?", (job.id,)).fetchone()
        done = counts[READY] == 0 and counts[RUNNING] == 0
        rate = progress(events[FINISHED], events[READY] + events[RUNNING], started, last_change if done else None, now)
        return JobStatus(
            job_id=job.id, recipe_id=job.recipe_id, counts=counts, ranges_total=sum(counts.values()),
            events_total=sum(events.values()), events_finished=events[FINISHED], done=done,
            max_attempts=job.max_attempts, lease_seconds=job.lease_seconds,
            events_failed=events[FAILED] + events[FATAL], started=started, elapsed_seconds=rate.elapsed_seconds,
            events_per_second=rate.events_per_second, eta_seconds=rate.eta_seconds, failures_per_worker=failures,
            outputs=job.outputs, output_format=job.output_format,
            state=job_state(done, job.outputs, merge[0] if merge is not None else None),
        )

    def recipe_id(self, job_id: str) -> str:
        """The recipe a job runs (a read; changes nothing)."""
        return self._job(self.db.read(), job_id).recipe_id

    def options(self, job_id: str) -> tuple[str, str]:
        """The job's ``outputs`` option and the format of its merged files (a read)."""
        job = self._job(self.db.read(), job_id)
        return job.outputs, job.output_format

    def range_row(self, job_id: str, index: int, lock: bool = False) -> RangeRow:
        """One range of the job as stored (in the caller's transaction; ``lock``: FOR UPDATE)."""
        check_int(index, "index", 0)
        conn = self.db.read()
        job = self._job(conn, job_id)
        found = conn.execute(f"SELECT {_COLUMNS} FROM job_ranges WHERE job_id = ? AND range_index = ?"
                             + (self.db.row_lock if lock else ""), (job.id, index)).fetchone()
        if found is None:
            count = conn.execute("SELECT COUNT(*) FROM job_ranges WHERE job_id = ?", (job.id,)).fetchone()[0]
            raise RangeNotFound(job.id, index, count)
        return _row(found)

    def ranges(self, job_id: str) -> list[RangeRow]:
        """Every range of the job as stored, by index (changes nothing)."""
        with self.db.transaction() as conn:
            job = self._job(conn, job_id)
            rows = conn.execute(f"SELECT {_COLUMNS} FROM job_ranges WHERE job_id = ? ORDER BY range_index",
                                (job.id,))
            return [_row(r) for r in rows]

    def next_ready(self, job_id: str, n: int) -> list[RangeRow]:
        """The next ``n`` ranges a lease would hand out now, for look-ahead (changes nothing)."""
        check_int(n, "n", 1, MAX_LEASE_COUNT)
        conn = self.db.read()  # a read: no write transaction (look-ahead runs beside the job thread)
        job = self._job(conn, job_id)
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM job_ranges WHERE job_id = ? AND state = ? ORDER BY range_index LIMIT ?",
            (job.id, READY, n)).fetchall()
        return choose_ready([_row(r) for r in rows], n)

    def jobs(self) -> list[str]:
        """Ids of the jobs not done (oldest first); reclaims overdue leases of every job first."""
        with self.db.transaction() as conn:
            now = self.clock()
            for r in conn.execute("SELECT DISTINCT job_id FROM job_ranges WHERE state = ? AND deadline < ?",
                                  (RUNNING, now)).fetchall():
                self._reclaim(conn, self._job(conn, r[0]), now)
            found = conn.execute(
                "SELECT id FROM jobs WHERE EXISTS (SELECT 1 FROM job_ranges WHERE job_id = jobs.id "
                "AND state IN (?, ?)) ORDER BY created, id", (READY, RUNNING))
            return [r[0] for r in found]

    # -- helpers: each runs inside the caller's transaction

    def _apply(self, job_id: str, index: int, worker: str,
               decide: Callable[[RangeRow, _Job, float], RangeRow]) -> RangeRow:
        check_name(worker, "worker")
        check_int(index, "index", 0)
        with self.db.transaction() as conn:
            job = self._job(conn, job_id)
            found = conn.execute(f"SELECT {_COLUMNS} FROM job_ranges WHERE job_id = ? AND range_index = ?"
                                 + self.db.row_lock, (job.id, index)).fetchone()
            if found is None:
                count = conn.execute("SELECT COUNT(*) FROM job_ranges WHERE job_id = ?", (job.id,)).fetchone()[0]
                raise RangeNotFound(job.id, index, count)
            row = _row(found)
            new = decide(row, job, self.clock())
            if new != row:
                self._write(conn, [new])
                if attempt_spent(row, new):
                    self._note_workers(conn, job, Counter([worker]))
            return new

    def _job(self, conn: Connection, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is not None:
            return job
        check_name(job_id, "job_id")
        found = conn.execute(
            "SELECT id, recipe_id, max_attempts, lease_seconds, outputs, format FROM jobs "
            "LEFT JOIN job_merges ON job_merges.job_id = jobs.id WHERE id = ?", (job_id,)).fetchone()
        if found is None:
            raise JobNotFound(job_id)
        job = self._jobs[job_id] = _Job(*found[:4], found[4] or NONE, found[5] or "parquet")
        return job

    def _reclaim(self, conn: Connection, job: _Job, now: float, note: bool = True) -> Counter[str]:
        """Expire the job's overdue leases; the attempts this spent, per worker (noted in
        ``job_workers`` unless ``note`` is false: then the caller notes them with its own)."""
        # a row another transaction holds is left to it (it may be finishing it, or reclaiming it)
        overdue = conn.execute(
            f"SELECT {_COLUMNS} FROM job_ranges WHERE job_id = ? AND state = ? AND deadline < ?"
            + self.db.skip_locked, (job.id, RUNNING, now))
        pairs = [(row, expire(row, now, job.max_attempts)) for row in map(_row, overdue.fetchall())]
        self._write(conn, [new for _, new in pairs])
        expired = Counter(cast(str, old.worker) for old, new in pairs if attempt_spent(old, new))
        if note:
            self._note_workers(conn, job, expired)
        return expired

    @staticmethod
    def _note_workers(conn: Connection, job: _Job, failures: Mapping[str, int],
                      lease: tuple[str, int, float] | None = None) -> None:
        """Add attempts spent (``failures``) and a lease call's ranges (``lease``: worker, count,
        time) to the workers' rows of ``job_workers``, in one statement per worker, by worker name:
        two transactions (two gateways on PostgreSQL) lock these rows in the same order, so they
        never deadlock on them (each takes them after its ``job_ranges`` rows)."""
        rows = {w: (w, 0, n, None) for w, n in failures.items() if n}
        if lease is not None:
            worker, leased, now = lease
            rows[worker] = (worker, leased, failures.get(worker, 0), now)
        if not rows:
            return
        conn.executemany(
            "INSERT INTO job_workers (job_id, worker, leases, failures, first_lease, last_lease) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, worker) DO UPDATE SET "
            "leases = job_workers.leases + excluded.leases, failures = job_workers.failures + excluded.failures, "
            "first_lease = COALESCE(job_workers.first_lease, excluded.first_lease), "
            "last_lease = COALESCE(excluded.last_lease, job_workers.last_lease)",
            [(job.id, w, leased, n, at, at) for w, leased, n, at in (rows[k] for k in sorted(rows))])

    @staticmethod
    def _write(conn: Connection, rows: Sequence[RangeRow]) -> None:
        conn.executemany(
            "UPDATE job_ranges SET state = ?, attempts = ?, worker = ?, deadline = ?, message = ?, updated = ? "
            "WHERE job_id = ? AND range_index = ?",
            [(r.state, r.attempts, r.worker, r.deadline, r.message, r.updated, r.job_id, r.index) for r in rows],
        )

    # -- monitoring (appended: read by the gateway's /metrics collector)

    def events_by_state(self, since: float, limit: int) -> dict[str, dict[str, int]]:
        """Events in each state per job, for a progress gauge: the ``limit`` newest jobs that are
        not done or had a range change after ``since`` (so a scrape stays cheap and the series
        few). One GROUP BY read; changes nothing (an overdue lease still counts as running)."""
        check_int(limit, "limit", 1)
        conn = self.db.read()
        rows = conn.execute(
            "SELECT job_id, state, SUM(stop - first) FROM job_ranges WHERE job_id IN ("
            " SELECT id FROM jobs WHERE EXISTS (SELECT 1 FROM job_ranges AS r WHERE r.job_id = jobs.id"
            "  AND (r.state IN (?, ?) OR r.updated >= ?)) ORDER BY created DESC LIMIT ?)"
            " GROUP BY job_id, state", (READY, RUNNING, since, limit)).fetchall()
        found: dict[str, dict[str, int]] = {}
        for job_id, state, events in rows:
            found.setdefault(job_id, dict.fromkeys(STATES, 0))[state] = int(events)
        return found
