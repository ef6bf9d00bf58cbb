"""The job thread's group commit: calls queued together share one transaction, each undone
alone if it raises, answered only after the commit; a failed commit fails the whole batch."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

import pytest

from service.core.job_thread import JobThread
from service.core.db import INTEGRITY_ERRORS, Database
from service.core.jobs import FINISHED, READY, RUNNING, JobStore
from service.errors import JobNotFound, LeaseError
from vdata.ranges import EventRange


def ranges(n: int) -> list[EventRange]:
    return [EventRange(i, i, i + 1) for i in range(n)]


def hold(thread: JobThread) -> tuple[threading.Event, Future[None]]:
    """Keep the job thread busy until the event is set, so that later calls queue up together."""
    started, release = threading.Event(), threading.Event()

    def block() -> None:
        started.set()
        release.wait(10)

    blocked = thread.submit(block)
    assert started.wait(10)
    return release, blocked


def test_concurrent_callers_never_share_a_range_and_finishes_survive_close(db: Database, db_url: str) -> None:
    store = JobStore(db)
    job = store.create_job("r", ranges(300))
    thread = JobThread(db, max_batch=16)
    got: dict[str, list[int]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def work(worker: str) -> None:
        try:
            mine = got.setdefault(worker, [])
            start.wait()
            while leases := thread.submit(store.lease, job, worker, 1 + len(mine) % 3).result(10):
                finishes = [thread.submit(store.finish, job, x.index, worker) for x in leases]
                mine.extend(x.index for x in leases)
                for f in finishes:
                    f.result(10)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(6)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    thread.close()
    assert not errors
    assert sorted(i for indexes in got.values() for i in indexes) == list(range(300))
    with Database(db_url) as again:  # a restart: every acknowledged finish is there
        rows = JobStore(again).ranges(job)
    assert all(r.state == FINISHED and r.index in got[r.worker or ""] for r in rows)


def test_a_failing_call_undoes_only_its_own_writes(db: Database) -> None:
    store = JobStore(db)
    job = store.create_job("r", ranges(4))
    thread = JobThread(db)
    release, blocked = hold(thread)

    def lease_then_raise() -> None:
        store.lease(job, "bad", 1)  # written, then undone with the error below
        raise RuntimeError("after writing")

    first = thread.submit(store.lease, job, "a", 1)
    bad = thread.submit(lease_then_raise)
    stranger = thread.submit(store.finish, job, 0, "b")  # LeaseError: range 0 is a's
    second = thread.submit(store.lease, job, "c", 1)
    release.set()
    blocked.result(10)
    assert [x.index for x in first.result(10)] == [0]
    with pytest.raises(RuntimeError, match="after writing"):
        bad.result(10)
    with pytest.raises(LeaseError, match="range 0"):
        stranger.result(10)
    assert [x.index for x in second.result(10)] == [1]
    thread.close()
    assert [(r.state, r.worker) for r in store.ranges(job)] == [
        (RUNNING, "a"), (RUNNING, "c"), (READY, None), (READY, None)]


def test_a_failed_commit_fails_every_call_of_the_batch(db: Database) -> None:
    store = JobStore(db)
    job = store.create_job("r", ranges(4))
    thread = JobThread(db)
    release, blocked = hold(thread)

    def break_the_commit() -> None:  # a foreign-key violation checked only at COMMIT
        conn = db.read()
        if db.dialect == "sqlite":
            conn.execute("PRAGMA defer_foreign_keys = ON")
            conn.execute("INSERT INTO job_ranges (job_id, range_index, first, stop, state, updated) "
                         "VALUES ('job-missing', 0, 0, 1, 'ready', 0)")
        else:  # PostgreSQL defers only constraints declared so (undone with the batch)
            conn.execute("CREATE TABLE breaker (job_id TEXT REFERENCES jobs (id) DEFERRABLE INITIALLY DEFERRED)")
            conn.execute("INSERT INTO breaker VALUES ('job-missing')")

    lease = thread.submit(store.lease, job, "a", 2)
    breaker = thread.submit(break_the_commit)
    release.set()
    blocked.result(10)
    for future in (lease, breaker):
        with pytest.raises(INTEGRITY_ERRORS):
            future.result(10)
    assert all(r.state == READY for r in store.ranges(job))  # nothing of the batch was stored
    assert [x.index for x in thread.submit(store.lease, job, "a", 2).result(10)] == [0, 1]  # and it goes on
    thread.close()


def test_event_loop_callers_and_close(db: Database) -> None:
    store = JobStore(db)
    job = store.create_job("r", ranges(50))
    thread = JobThread(db)

    async def main() -> list[int]:
        leases = await asyncio.gather(*(thread.run_async(store.lease, job, f"w{i}", 1) for i in range(50)))
        await asyncio.gather(*(thread.run_async(store.finish, job, x[0].index, f"w{i}")
                               for i, x in enumerate(leases)))
        with pytest.raises(JobNotFound):
            await thread.run_async(store.lease, "job-none", "w", 1)
        return sorted(x[0].index for x in leases)

    assert asyncio.run(main()) == list(range(50))
    queued = [thread.submit(store.status, job) for _ in range(20)]
    thread.close()  # runs what was queued before stopping
    assert all(f.result(0).done for f in queued)
    with pytest.raises(RuntimeError, match="closed"):
        thread.submit(store.status, job)
