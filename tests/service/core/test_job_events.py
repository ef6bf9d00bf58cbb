"""``JobStore.events_by_state``: the job-progress gauge's one read (events per job and state),
bounded to jobs not done or changed lately, newest first."""

from __future__ import annotations

from service.core.db import Database
from service.core.jobs import FAILED, FATAL, FINISHED, READY, RUNNING, JobStore
from job_helpers import FakeClock, make_ranges


def test_events_per_state_of_a_job(db: Database) -> None:
    store = JobStore(db, FakeClock())
    job = store.create_job("r", make_ranges([10, 20, 30, 40, 50]), max_attempts=1)
    leased = [lease.index for lease in store.lease(job, "w1", 4)]
    assert leased == [0, 1, 2, 3]
    store.finish(job, 0, "w1")
    store.finish(job, 1, "w1")
    store.fail(job, 2, "w1", "boom")  # the only attempt: failed
    assert store.events_by_state(since=0.0, limit=5) == {
        job: {READY: 50, RUNNING: 40, FINISHED: 30, FAILED: 30, FATAL: 0}}


def test_only_jobs_not_done_or_recent_and_at_most_limit(db: Database) -> None:
    clock = FakeClock()
    store = JobStore(db, clock)
    done = store.create_job("r", make_ranges([5]))
    store.lease(done, "w1", 1)
    store.finish(done, 0, "w1")  # updated at t=1000
    clock.now = 2000.0
    open_old = store.create_job("r", make_ranges([7]))  # not done: shown however old
    clock.now = 3000.0
    newest = store.create_job("r", make_ranges([9]))
    assert set(store.events_by_state(since=1500.0, limit=5)) == {open_old, newest}  # `done` went quiet
    assert set(store.events_by_state(since=500.0, limit=5)) == {done, open_old, newest}
    assert set(store.events_by_state(since=500.0, limit=2)) == {open_old, newest}  # the newest two
    assert store.events_by_state(since=500.0, limit=5)[done][FINISHED] == 5
