"""Job progress for people (JobStore.status): events done, rate and ETA over the job's life from
its first lease, and the attempts each worker spent (failures it reported, fatal ones, its leases
that expired); on SQLite and PostgreSQL, and on a database made before ``job_workers`` existed."""

from __future__ import annotations

import pytest

from service.core import db as db_module
from service.core.db import Database
from service.core.jobs import JobStore
from service.core._job_rows import progress
from job_helpers import LEASE, FakeClock, make_ranges


def test_progress_rate_and_eta() -> None:
    p = progress(0, 100, None, None, 50.0)  # not started
    assert (p.elapsed_seconds, p.events_per_second, p.eta_seconds) == (0.0, 0.0, None)
    p = progress(200, 600, started=10.0, ended=None, now=20.0)
    assert (p.elapsed_seconds, p.events_per_second, p.eta_seconds) == (10.0, 20.0, 30.0)
    p = progress(800, 0, started=10.0, ended=30.0, now=99.0)  # done: to its last change, no ETA
    assert (p.elapsed_seconds, p.events_per_second, p.eta_seconds) == (20.0, 40.0, None)
    assert progress(0, 100, started=10.0, ended=None, now=20.0).eta_seconds is None  # nothing finished yet


def test_status_counts_events_rate_eta_and_failures_per_worker(db: Database) -> None:
    clock = FakeClock()
    store = JobStore(db, clock=clock)
    job = store.create_job("recipe-a", make_ranges([100, 100, 100, 100]), max_attempts=3, lease_seconds=LEASE)
    clock.now += 500  # created long before anyone leases: the rate starts at the first lease
    s = store.status(job)
    assert (s.started, s.events_per_second, s.eta_seconds, s.failures_per_worker) == (None, 0.0, None, {})
    assert s.events_total == 400 and s.events_finished == 0
    store.lease(job, "w1", 2)  # 0, 1
    store.lease(job, "w2", 1)  # 2
    started = clock.now
    clock.now += 10
    store.finish(job, 0, "w1")
    store.fail(job, 1, "w1", "payload crashed")  # w1: 1
    store.fail(job, 2, "w2", "bad input", fatal=True)  # w2: 1 (fatal)
    s = store.status(job)
    assert s.started == started and s.events_finished == 100 and s.events_failed == 100
    assert s.events_per_second == pytest.approx(10.0) and s.eta_seconds == pytest.approx(20.0)  # 200 left at 10/s
    assert s.failures_per_worker == {"w1": 1, "w2": 1} and not s.done
    store.lease(job, "w3", 2)  # 1, 3
    clock.now += LEASE + 1  # w3 dies: both its leases expire when reclaimed
    store.lease(job, "w1", 2)  # reclaims (w3: 2), then leases 1 and 3 to w1
    clock.now += 9
    store.finish(job, 1, "w1")
    store.finish(job, 3, "w1")
    end = clock.now
    clock.now += 1000  # a done job's rate stops at its last change
    s = store.status(job)
    assert s.done and s.events_finished == 300 and s.events_failed == 100
    assert s.failures_per_worker == {"w1": 1, "w2": 1, "w3": 2}
    assert s.elapsed_seconds == pytest.approx(end - started)
    assert s.events_per_second == pytest.approx(300 / (end - started)) and s.eta_seconds is None


def test_a_database_made_before_job_workers_gets_it(db_url: str) -> None:
    """An existing database (schema version 1 without the table) gains it at start: jobs created
    before report no failures and no rate until their next lease."""
    with Database(db_url) as old:
        store = JobStore(old)
        job = store.create_job("r", make_ranges([5, 5]))
        with old.transaction() as conn:
            conn.execute("DROP TABLE job_workers")
    with Database(db_url) as db:
        assert db.read().execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == \
            str(db_module.SCHEMA_VERSION)
        store = JobStore(db)
        assert store.status(job).failures_per_worker == {}
        store.lease(job, "w1", 1)
        store.fail(job, 0, "w1", "oops")
        s = store.status(job)
        assert s.failures_per_worker == {"w1": 1} and s.started is not None
