"""The pure half of :mod:`service.core.jobs`: range states, the row and lease values, the errors, and
the decisions over rows (STYLE 8). Nothing here touches the database or the clock: each
decision takes ``now`` and returns a new :class:`RangeRow` or raises :class:`LeaseError`.
:mod:`service.core.jobs` documents the state machine and re-exports every public name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from service.errors import JobError, LeaseError
from vdata.ranges import EventRange

READY, RUNNING, FINISHED, FAILED, FATAL = "ready", "running", "finished", "failed", "fatal"
STATES = (READY, RUNNING, FINISHED, FAILED, FATAL)
MAX_LEASE_COUNT = 10_000  # ranges per lease call
MAX_NAME = 200  # characters in a worker name, job id or recipe id
MAX_MESSAGE = 4000  # characters of a failure message kept (longer ones are cut, not refused)


@dataclass(frozen=True, slots=True)
class RangeRow:
    """One range of a job and where it stands. ``worker`` is the holder while running and the
    last holder once finished, failed or fatal; ``deadline`` is set only while running."""

    job_id: str
    index: int
    first: int
    stop: int
    state: str = READY
    attempts: int = 0
    worker: str | None = None
    deadline: float | None = None
    message: str | None = None
    updated: float = 0.0

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"range {self.index} of job {self.job_id!r}: unknown state {self.state!r}")
        if self.index < 0 or not 0 <= self.first < self.stop or self.attempts < 0:
            raise ValueError(f"range {self.index} of job {self.job_id!r}: bad index, events or attempts")
        running = self.state == RUNNING
        if running != (self.deadline is not None) or (running and self.worker is None):
            raise ValueError(f"range {self.index} of job {self.job_id!r}: a {self.state} range "
                             f"cannot have worker={self.worker!r}, deadline={self.deadline!r}")
        if self.state == READY and self.worker is not None:
            raise ValueError(f"range {self.index} of job {self.job_id!r}: a ready range has no worker")

    @property
    def num_events(self) -> int:
        return self.stop - self.first


@dataclass(frozen=True, slots=True)
class Lease:
    """A range leased to a worker until ``deadline`` (seconds since the epoch)."""

    index: int
    first: int
    stop: int
    deadline: float


@dataclass(frozen=True, slots=True)
class JobStatus:
    """Where a job stands. ``counts`` has every state of :data:`STATES`; ``done`` when no
    range is ready or running. The progress (:func:`progress`): ``started`` is the first lease
    (None before it), ``elapsed_seconds`` since then (to the last change once done),
    ``events_per_second`` the finished events over that time, ``eta_seconds`` the events still
    ready or running at that rate (None when done or while nothing has finished).
    ``failures_per_worker``: each worker that leased a range -> the attempts it spent (failures
    it reported, fatal ones included, and its leases that expired). ``outputs`` is the job's
    option and ``output_format`` its merged files' format; ``state`` is ``running``, then
    ``done`` (a job without outputs) or ``merging``, ``merged`` or ``merge_failed``."""

    job_id: str
    recipe_id: str
    counts: dict[str, int]
    ranges_total: int
    events_total: int
    events_finished: int
    done: bool
    max_attempts: int
    lease_seconds: float
    events_failed: int = 0
    started: float | None = None
    elapsed_seconds: float = 0.0
    events_per_second: float = 0.0
    eta_seconds: float | None = None
    failures_per_worker: dict[str, int] = field(default_factory=dict)
    outputs: str = "none"
    output_format: str = "parquet"
    state: str = "running"


@dataclass(frozen=True, slots=True)
class Progress:
    elapsed_seconds: float
    events_per_second: float
    eta_seconds: float | None


def progress(events_finished: int, events_left: int, started: float | None, ended: float | None,
             now: float) -> Progress:
    """Rate and ETA over the job's life: from its first lease (``started``) to ``ended`` (its last
    change, once done) or ``now``. The life, not a recent window: it needs no history beyond
    the first lease, and a live view (``vdata jobs watch``) smooths its own rate from what it polls."""
    if started is None:
        return Progress(0.0, 0.0, None)
    elapsed = max((ended if ended is not None else now) - started, 0.0)
    rate = events_finished / elapsed if elapsed > 0 else 0.0
    eta = events_left / rate if ended is None and rate > 0 else None
    return Progress(elapsed, rate, eta)


def attempt_spent(old: RangeRow, new: RangeRow) -> bool:
    """Whether a decision took ``old`` to ``new`` by spending an attempt of its holder (a failure,
    fatal or not, or an expired lease): the holder is ``old.worker``."""
    return old.state == RUNNING and new.state in (READY, FAILED, FATAL)


# ---------------------------------------------------------------- decisions (pure functions)


def _spend(row: RangeRow, now: float, message: str, max_attempts: int, fatal: bool = False) -> RangeRow:
    attempts = min(row.attempts + 1, max_attempts)
    if fatal:
        state = FATAL
    else:
        state = FAILED if attempts >= max_attempts else READY
    worker = None if state == READY else row.worker
    return replace(row, state=state, attempts=attempts, worker=worker, deadline=None, message=message, updated=now)


def _check_holder(row: RangeRow, worker: str, action: str) -> None:
    if row.state != RUNNING:
        raise LeaseError(row, worker, action, f"it is {row.state}, not leased")
    if row.worker != worker:
        raise LeaseError(row, worker, action, f"it is leased to worker {row.worker!r}")


def expire(row: RangeRow, now: float, max_attempts: int) -> RangeRow:
    """The row with its lease reclaimed if it ran out before ``now``; else the row itself."""
    if row.state != RUNNING or row.deadline is None or row.deadline >= now:
        return row
    return _spend(row, now, f"lease expired (worker {row.worker})", max_attempts)


def lease_row(row: RangeRow, worker: str, now: float, lease_seconds: float) -> RangeRow:
    """The ready row leased to ``worker`` until ``now + lease_seconds``."""
    if row.state != READY:
        reason = f"it is leased to worker {row.worker!r}" if row.state == RUNNING else f"it is {row.state}"
        raise LeaseError(row, worker, "lease", reason)
    return replace(row, state=RUNNING, worker=worker, deadline=now + lease_seconds, updated=now)


def heartbeat_row(row: RangeRow, worker: str, now: float, lease_seconds: float) -> RangeRow:
    """The holder's lease extended to ``now + lease_seconds`` (also past an unreclaimed deadline)."""
    _check_holder(row, worker, "heartbeat")
    return replace(row, deadline=now + lease_seconds, updated=now)


def finish_row(row: RangeRow, worker: str, now: float) -> RangeRow:
    """The holder's range finished. Finishing again by the same worker returns the row unchanged."""
    if row.state == FINISHED and row.worker == worker:
        return row
    if row.state == FINISHED:
        raise LeaseError(row, worker, "finish", f"it was finished by worker {row.worker!r}")
    _check_holder(row, worker, "finish")
    return replace(row, state=FINISHED, deadline=None, updated=now)


def fail_row(row: RangeRow, worker: str, now: float, message: str, fatal: bool, max_attempts: int) -> RangeRow:
    """The holder's failure: back to ready with an attempt spent, ``failed`` once none is left,
    ``fatal`` at once if ``fatal``. The message is kept (cut to :data:`MAX_MESSAGE` characters)."""
    _check_holder(row, worker, "fail")
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 1] + "…"
    return _spend(row, now, message, max_attempts, fatal=fatal)


def choose_ready(rows: Iterable[RangeRow], n: int) -> list[RangeRow]:
    """The (at most) ``n`` ready rows to hand out next: lowest index first."""
    return sorted((r for r in rows if r.state == READY), key=lambda r: r.index)[: max(n, 0)]


# ---------------------------------------------------------------- argument checks


def check_name(value: object, field: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
        raise JobError(f"{field} must be a non-blank string of at most {MAX_NAME} characters, got {value!r:.80}")
    return value


def check_int(value: object, field: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise JobError(f"{field} must be an integer {bounds}, got {value!r}")
    return value


def check_ranges(ranges: Sequence[EventRange]) -> None:
    if not ranges:
        raise JobError("ranges: a job needs at least one event range")
    if not all(isinstance(r, EventRange) for r in ranges):
        raise JobError("ranges must be EventRange values")
    if len({r.index for r in ranges}) != len(ranges):
        raise JobError("ranges: two ranges have the same index")
    ordered = sorted(ranges, key=lambda r: r.first)
    for a, b in zip(ordered, ordered[1:]):
        if b.first < a.stop:
            raise JobError(f"ranges: {a} and {b} overlap; each event must lie in one range")
