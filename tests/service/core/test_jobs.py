"""Jobs in event-service mode: leases, attempts, holders, restarts, concurrency, fault schedules."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from service.core.db import Database
from vdata.errors import VdataError
from service.core.jobs import (
    FAILED,
    FATAL,
    FINISHED,
    READY,
    RUNNING,
    STATES,
    JobStore,
    RangeRow,
    choose_ready,
    expire,
    fail_row,
    finish_row,
    heartbeat_row,
    lease_row,
)
from service.errors import JobError, JobNotFound, LeaseError, RangeNotFound
from vdata.ranges import EventRange
from job_helpers import LEASE, FakeClock, make_ranges


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(db: Database, clock: FakeClock) -> JobStore:
    return JobStore(db, clock=clock)


# ---------------------------------------------------------------- pure decisions


def row(state: str = READY, **kw: object) -> RangeRow:
    if state == RUNNING:
        kw = {"worker": "w1", "deadline": 100.0, **kw}
    return RangeRow("job-1", 3, 10, 20, state, **kw)  # type: ignore[arg-type]


def test_lease_row_and_heartbeat_row() -> None:
    leased = lease_row(row(), "w1", now=50.0, lease_seconds=10.0)
    assert (leased.state, leased.worker, leased.deadline, leased.attempts) == (RUNNING, "w1", 60.0, 0)
    assert heartbeat_row(leased, "w1", now=55.0, lease_seconds=10.0).deadline == 65.0
    # past the deadline but not reclaimed: the holder may still heartbeat
    assert heartbeat_row(leased, "w1", now=70.0, lease_seconds=10.0).deadline == 80.0
    with pytest.raises(LeaseError, match="'w2' cannot heartbeat range 3 of job 'job-1': it is leased to worker 'w1'"):
        heartbeat_row(leased, "w2", now=55.0, lease_seconds=10.0)
    with pytest.raises(LeaseError, match="it is leased to worker 'w1'"):
        lease_row(leased, "w2", now=55.0, lease_seconds=10.0)
    with pytest.raises(LeaseError, match="cannot heartbeat range 3 of job 'job-1': it is ready, not leased"):
        heartbeat_row(row(), "w1", now=55.0, lease_seconds=10.0)


def test_expire_spends_an_attempt_and_fails_when_none_left() -> None:
    running = row(RUNNING, deadline=100.0)
    assert expire(running, now=100.0, max_attempts=3) is running  # not yet past the deadline
    assert expire(row(), now=500.0, max_attempts=3) == row()  # only running rows expire
    back = expire(running, now=100.5, max_attempts=3)
    assert (back.state, back.attempts, back.worker, back.deadline) == (READY, 1, None, None)
    assert back.message == "lease expired (worker w1)"
    last = expire(row(RUNNING, attempts=2), now=101.0, max_attempts=3)
    assert (last.state, last.attempts, last.worker) == (FAILED, 3, "w1")


def test_fail_row_retry_failed_fatal_and_message() -> None:
    running = row(RUNNING)
    retry = fail_row(running, "w1", 50.0, "disk full", fatal=False, max_attempts=2)
    assert (retry.state, retry.attempts, retry.message, retry.worker) == (READY, 1, "disk full", None)
    spent = fail_row(row(RUNNING, attempts=1), "w1", 50.0, "disk full again", fatal=False, max_attempts=2)
    assert (spent.state, spent.attempts, spent.message) == (FAILED, 2, "disk full again")
    fatal = fail_row(running, "w1", 50.0, "corrupt input", fatal=True, max_attempts=5)
    assert (fatal.state, fatal.attempts, fatal.message, fatal.worker) == (FATAL, 1, "corrupt input", "w1")
    with pytest.raises(LeaseError, match="'w2' cannot fail range 3 of job 'job-1'"):
        fail_row(running, "w2", 50.0, "x", fatal=False, max_attempts=2)
    long = fail_row(running, "w1", 50.0, "x" * 10_000, fatal=False, max_attempts=2)
    assert long.message is not None and len(long.message) == 4000


def test_finish_row_only_holder_and_idempotent() -> None:
    done = finish_row(row(RUNNING), "w1", 50.0)
    assert (done.state, done.worker, done.deadline) == (FINISHED, "w1", None)
    assert finish_row(done, "w1", 60.0) is done  # a retried finish changes nothing
    with pytest.raises(LeaseError, match="it was finished by worker 'w1'"):
        finish_row(done, "w2", 60.0)
    with pytest.raises(LeaseError, match="it is finished, not leased"):
        fail_row(done, "w1", 60.0, "late", fatal=False, max_attempts=3)
    with pytest.raises(LeaseError, match="it is leased to worker 'w1'"):
        finish_row(row(RUNNING), "w2", 50.0)
    with pytest.raises(LeaseError, match="it is ready, not leased"):
        finish_row(row(), "w1", 50.0)


def test_choose_ready_lowest_index_first() -> None:
    rows = [RangeRow("j", i, i, i + 1) for i in (5, 2, 9, 0)]
    rows.append(RangeRow("j", 1, 1, 2, RUNNING, worker="w", deadline=1.0))
    assert [r.index for r in choose_ready(rows, 3)] == [0, 2, 5]
    assert [r.index for r in choose_ready(rows, 10)] == [0, 2, 5, 9]


def test_range_row_rejects_inconsistent_rows() -> None:
    with pytest.raises(ValueError, match="unknown state"):
        RangeRow("j", 0, 0, 1, "lost")
    with pytest.raises(ValueError, match="a running range cannot have"):
        RangeRow("j", 0, 0, 1, RUNNING)
    with pytest.raises(ValueError, match="a ready range has no worker"):
        RangeRow("j", 0, 0, 1, READY, worker="w")


# ---------------------------------------------------------------- the store


def test_lease_finish_and_done(store: JobStore) -> None:
    job = store.create_job("recipe-a", make_ranges([10, 20, 30]))
    status = store.status(job)
    assert status.counts == {READY: 3, RUNNING: 0, FINISHED: 0, FAILED: 0, FATAL: 0}
    assert (status.recipe_id, status.ranges_total, status.events_total, status.done) == ("recipe-a", 3, 60, False)
    assert [r.index for r in store.next_ready(job, 2)] == [0, 1]
    leases = store.lease(job, "w1", 2)
    assert [(l.index, l.first, l.stop, l.deadline) for l in leases] == [(0, 0, 10, 1060.0), (1, 10, 30, 1060.0)]
    assert [l.index for l in store.lease(job, "w2", 5)] == [2]
    assert store.lease(job, "w3", 5) == []
    assert job in store.jobs()
    for index, worker in [(0, "w1"), (1, "w1"), (2, "w2")]:
        store.finish(job, index, worker)
    store.finish(job, 2, "w2")  # retried: no-op, not counted twice
    status = store.status(job)
    assert status.done and status.counts[FINISHED] == 3 and status.events_finished == 60
    assert job not in store.jobs()


def test_expired_lease_goes_to_another_worker(store: JobStore, clock: FakeClock) -> None:
    job = store.create_job("r", make_ranges([5, 5]), lease_seconds=LEASE)
    [lease] = store.lease(job, "w1", 1)
    clock.now += LEASE / 2
    assert store.heartbeat(job, lease.index, "w1") == clock.now + LEASE
    clock.now += LEASE + 1  # w1 crashed: no more heartbeats
    assert [l.index for l in store.lease(job, "w2", 2)] == [0, 1]  # reclaimed, then leased again
    [r0, _] = store.ranges(job)
    assert (r0.state, r0.worker, r0.attempts, r0.message) == (RUNNING, "w2", 1, "lease expired (worker w1)")
    with pytest.raises(LeaseError, match="'w1' cannot finish range 0 of job '.*': it is leased to worker 'w2'"):
        store.finish(job, 0, "w1")
    with pytest.raises(LeaseError, match="'w1' cannot heartbeat range 0"):
        store.heartbeat(job, 0, "w1")
    store.finish(job, 0, "w2")
    assert store.ranges(job)[0].state == FINISHED


def test_holder_may_finish_past_deadline_until_reclaimed(store: JobStore, clock: FakeClock) -> None:
    job = store.create_job("r", make_ranges([5, 5]), lease_seconds=LEASE)
    store.lease(job, "w1", 2)
    clock.now += LEASE * 3
    store.finish(job, 0, "w1")  # nobody else holds it yet
    assert store.status(job).counts == {READY: 1, RUNNING: 0, FINISHED: 1, FAILED: 0, FATAL: 0}  # reclaims 1
    with pytest.raises(LeaseError, match="'w1' cannot finish range 1 of job '.*': it is ready, not leased"):
        store.finish(job, 1, "w1")


def test_spent_attempts_fail_while_the_rest_finishes(store: JobStore, clock: FakeClock) -> None:
    job = store.create_job("r", make_ranges([4, 6, 8]), max_attempts=2)
    store.lease(job, "w1", 3)
    store.fail(job, 1, "w1", "segfault in payload")
    store.fail(job, 2, "w1", "input is garbage", fatal=True)
    store.finish(job, 0, "w1")
    [again] = store.lease(job, "w2", 3)
    assert again.index == 1
    clock.now += LEASE + 1  # w2 crashes: the second and last attempt is spent
    status = store.status(job)
    assert status.done and status.counts == {READY: 0, RUNNING: 0, FINISHED: 1, FAILED: 1, FATAL: 1}
    assert status.events_finished == 4 and status.events_total == 18
    rows = store.ranges(job)
    assert [(r.state, r.attempts, r.message) for r in rows] == [
        (FINISHED, 0, None), (FAILED, 2, "lease expired (worker w2)"), (FATAL, 1, "input is garbage")]
    assert store.lease(job, "w3", 1) == [] and store.jobs() == []


def test_failure_message_kept_and_retry(store: JobStore) -> None:
    job = store.create_job("r", make_ranges([3]), max_attempts=3)
    store.lease(job, "w1", 1)
    store.fail(job, 0, "w1", "timeout reading input")
    [r] = store.ranges(job)
    assert (r.state, r.attempts, r.message, r.worker) == (READY, 1, "timeout reading input", None)
    store.lease(job, "w2", 1)
    store.finish(job, 0, "w2")
    [r] = store.ranges(job)
    assert (r.state, r.attempts, r.message, r.worker) == (FINISHED, 1, "timeout reading input", "w2")


def test_only_the_holder_may_act_and_errors_name_things(store: JobStore) -> None:
    job = store.create_job("r", make_ranges([3, 3]))
    store.lease(job, "alice", 1)
    for call in (lambda: store.heartbeat(job, 0, "bob"), lambda: store.finish(job, 0, "bob"),
                 lambda: store.fail(job, 0, "bob", "nope")):
        with pytest.raises(LeaseError) as info:
            call()
        assert isinstance(info.value, PermissionError) and isinstance(info.value, VdataError)
        assert (info.value.job_id, info.value.index, info.value.worker) == (job, 0, "bob")
        assert job in str(info.value) and "range 0" in str(info.value) and "'bob'" in str(info.value)
    with pytest.raises(LeaseError, match="'alice' cannot finish range 1 .* it is ready, not leased"):
        store.finish(job, 1, "alice")
    with pytest.raises(JobNotFound, match="no job 'job-nope'") as missing:
        store.status("job-nope")
    assert isinstance(missing.value, KeyError) and str(missing.value) == "no job 'job-nope'"
    unknown: list[Callable[[], object]] = [
        lambda: store.lease("job-nope", "w", 1), lambda: store.finish("job-nope", 0, "w"),
        lambda: store.ranges("job-nope"), lambda: store.next_ready("job-nope", 1)]
    for call_unknown in unknown:
        with pytest.raises(JobNotFound):
            call_unknown()
    with pytest.raises(RangeNotFound, match=f"job '{job}' has no range 7 \\(it has ranges 0 to 1\\)"):
        store.finish(job, 7, "alice")


@pytest.mark.parametrize(("call", "field"), [
    (lambda s, j: s.lease(j, "w", 0), "n"),
    (lambda s, j: s.lease(j, "w", 10_001), "n"),
    (lambda s, j: s.lease(j, "w", True), "n"),
    (lambda s, j: s.lease(j, "", 1), "worker"),
    (lambda s, j: s.lease(j, "x" * 201, 1), "worker"),
    (lambda s, j: s.lease(j, None, 1), "worker"),
    (lambda s, j: s.finish(j, -1, "w"), "index"),
    (lambda s, j: s.fail(j, 0, "w", None), "message"),
    (lambda s, j: s.fail(j, 0, "w", "m", fatal="yes"), "fatal"),
    (lambda s, j: s.next_ready(j, 0), "n"),
    (lambda s, j: s.status(""), "job_id"),
    (lambda s, j: s.create_job("r", make_ranges([1]), max_attempts=0), "max_attempts"),
    (lambda s, j: s.create_job("r", make_ranges([1]), lease_seconds=0), "lease_seconds"),
    (lambda s, j: s.create_job("r", make_ranges([1]), lease_seconds=float("inf")), "lease_seconds"),
    (lambda s, j: s.create_job("", make_ranges([1])), "recipe_id"),
    (lambda s, j: s.create_job("r", []), "ranges"),
    (lambda s, j: s.create_job("r", [EventRange(0, 0, 5), EventRange(1, 4, 8)]), "ranges"),
    (lambda s, j: s.create_job("r", [EventRange(0, 0, 5), EventRange(0, 5, 8)]), "ranges"),
])
def test_bad_arguments_name_the_field(store: JobStore, call, field: str) -> None:  # type: ignore[no-untyped-def]
    job = store.create_job("r", make_ranges([3]))
    with pytest.raises(JobError, match=field) as info:
        call(store, job)
    assert isinstance(info.value, ValueError)


def test_restart_mid_job_loses_nothing(db_url: str, clock: FakeClock) -> None:
    with Database(db_url) as db:
        store = JobStore(db, clock=clock)
        job = store.create_job("r", make_ranges([2] * 6), max_attempts=2)
        store.lease(job, "w1", 2)
        store.finish(job, 0, "w1")
        store.lease(job, "w2", 2)
        store.fail(job, 2, "w2", "oops")
        before = store.ranges(job)
    with Database(db_url) as db:
        store = JobStore(db, clock=clock)
        assert store.ranges(job) == before and store.jobs() == [job]
        store.finish(job, 1, "w1")  # leases survive the restart
        store.finish(job, 3, "w2")
        while leases := store.lease(job, "w3", 2):
            for lease in leases:
                store.finish(job, lease.index, "w3")
        status = store.status(job)
        assert status.done and status.counts[FINISHED] == 6 and status.events_finished == 12
        assert [r.worker for r in store.ranges(job)] == ["w1", "w1", "w3", "w2", "w3", "w3"]


def test_concurrent_leases_never_hand_out_a_range_twice(db_url: str) -> None:
    with Database(db_url) as db:
        job = JobStore(db).create_job("r", make_ranges([1] * 120))
    got: dict[str, list[int]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def work(worker: str) -> None:
        try:
            with Database(db_url) as own:  # its own connection, as another process would have
                store = JobStore(own)
                mine = got.setdefault(worker, [])
                start.wait()
                while leases := store.lease(job, worker, 1 + len(mine) % 3):
                    for lease in leases:
                        mine.append(lease.index)
                        store.finish(job, lease.index, worker)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    everything = [i for indexes in got.values() for i in indexes]
    assert sorted(everything) == list(range(120))  # each range exactly once
    with Database(db_url) as db:
        store = JobStore(db)
        assert store.status(job).done
        assert all(r.worker is not None and r.index in got[r.worker] for r in store.ranges(job))


# ---------------------------------------------------------------- random fault schedules

WORKERS = ("w1", "w2", "w3")


@dataclass
class Model:
    """What the job should look like; ``finished_by`` remembers who held each lease at finish."""

    state: str = READY
    attempts: int = 0
    holder: str | None = None
    deadline: float | None = None
    finished_by: str | None = None


class JobMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.url = f"sqlite:///{self.tmp.name}/v.db"
        self.clock = FakeClock()
        self.db = Database(self.url)
        self.store = JobStore(self.db, clock=self.clock)
        self.abandoned: set[int] = set()  # leases whose holder crashed and forgot them

    @initialize(sizes=st.lists(st.integers(1, 20), min_size=1, max_size=6), max_attempts=st.integers(1, 3))
    def create(self, sizes: list[int], max_attempts: int) -> None:
        self.ranges = make_ranges(sizes)
        self.max_attempts = max_attempts
        self.job = self.store.create_job("recipe", self.ranges, max_attempts=max_attempts, lease_seconds=LEASE)
        self.model = [Model() for _ in sizes]

    def reclaim(self) -> None:
        for i, m in enumerate(self.model):
            if m.state == RUNNING and m.deadline is not None and m.deadline < self.clock.now:
                self.spend(i, fatal=False)

    def spend(self, i: int, fatal: bool) -> None:
        m = self.model[i]
        m.attempts += 1
        m.state = FATAL if fatal else FAILED if m.attempts >= self.max_attempts else READY
        m.deadline = None
        if m.state == READY:
            m.holder = None
        self.abandoned.discard(i)

    def holds(self, i: int, worker: str) -> bool:
        return self.model[i].state == RUNNING and self.model[i].holder == worker

    @rule(worker=st.sampled_from(WORKERS), n=st.integers(1, 3))
    def lease(self, worker: str, n: int) -> None:
        self.reclaim()
        expected = [i for i, m in enumerate(self.model) if m.state == READY][:n]
        leases = self.store.lease(self.job, worker, n)
        assert [l.index for l in leases] == expected
        for lease in leases:
            assert lease.deadline == self.clock.now + LEASE
            self.model[lease.index] = Model(RUNNING, self.model[lease.index].attempts, worker, lease.deadline)

    @rule(worker=st.sampled_from(WORKERS), data=st.data(), fatal=st.booleans(), how=st.sampled_from(
        ["finish", "fail", "heartbeat"]))
    def act(self, worker: str, data: st.DataObject, fatal: bool, how: str) -> None:
        """Any worker acts on any range: succeeds only for the holder (or a repeated finish)."""
        live = [i for i, m in enumerate(self.model) if m.state == RUNNING and i not in self.abandoned]
        if len(live) > 0 and data.draw(st.booleans()):
            i = data.draw(st.sampled_from(live))
            if data.draw(st.booleans()):
                worker = self.model[i].holder or worker  # the holder acts, else a random worker
        else:
            i = data.draw(st.integers(0, len(self.model) - 1))
        m = self.model[i]
        allowed = self.holds(i, worker) or (how == "finish" and m.state == FINISHED and m.finished_by == worker)
        try:
            if how == "finish":
                self.store.finish(self.job, i, worker)
            elif how == "fail":
                self.store.fail(self.job, i, worker, f"{worker} failed on {i}", fatal=fatal)
            else:
                deadline = self.store.heartbeat(self.job, i, worker)
        except LeaseError as exc:
            assert not allowed, exc
            assert (exc.job_id, exc.index, exc.worker) == (self.job, i, worker)
            return
        assert allowed, f"{how} of range {i} by {worker} should have failed: {m}"
        if how == "finish" and m.state == RUNNING:
            m.state, m.deadline, m.finished_by = FINISHED, None, worker
        elif how == "fail":
            self.spend(i, fatal)
        elif how == "heartbeat":
            assert deadline == self.clock.now + LEASE
            m.deadline = deadline

    @rule(seconds=st.sampled_from([1.0, LEASE / 2, LEASE + 1, 3 * LEASE]))
    def advance(self, seconds: float) -> None:
        self.clock.now += seconds

    @precondition(lambda self: any(m.state == RUNNING for m in self.model))
    @rule(worker=st.sampled_from(WORKERS))
    def crash(self, worker: str) -> None:
        """The worker dies and comes back under its name: it forgets its leases (no more heartbeats)."""
        self.abandoned |= {i for i in range(len(self.model)) if self.holds(i, worker)}

    @rule()
    def restart(self) -> None:
        self.db.close()
        self.db = Database(self.url)
        self.store = JobStore(self.db, clock=self.clock)

    @rule()
    def status(self) -> None:
        self.reclaim()
        status = self.store.status(self.job)
        assert status.counts == {s: sum(m.state == s for m in self.model) for s in STATES}
        assert status.events_finished == sum(
            r.num_events for r, m in zip(self.ranges, self.model) if m.state == FINISHED)
        assert status.done == all(m.state not in (READY, RUNNING) for m in self.model)
        assert (self.job in self.store.jobs()) == (not status.done)

    @invariant()
    def matches_model(self) -> None:
        if not hasattr(self, "job"):
            return
        rows = self.store.ranges(self.job)
        assert [(r.index, r.first, r.stop) for r in rows] == [(r.index, r.first, r.stop) for r in self.ranges]
        for r, m in zip(rows, self.model):
            assert (r.state, r.attempts) == (m.state, m.attempts), (r, m)
            assert r.attempts <= self.max_attempts
            if r.state == RUNNING:
                assert (r.worker, r.deadline) == (m.holder, m.deadline)
            if r.state == FINISHED:
                assert r.worker == m.finished_by
        assert [r.index for r in self.store.next_ready(self.job, 10)] == [
            i for i, m in enumerate(self.model) if m.state == READY]

    def teardown(self) -> None:
        try:
            if hasattr(self, "job"):
                self.drive_to_completion()
        finally:
            self.db.close()
            self.tmp.cleanup()

    def drive_to_completion(self) -> None:
        """Everyone else is gone; a well-behaved worker finishes what is left."""
        before = self.store.ranges(self.job)
        self.clock.now += LEASE + 1
        for _ in range(len(self.model) * self.max_attempts + 1):
            leases = self.store.lease(self.job, "good", 2)
            if not leases:
                break
            for lease in leases:
                self.store.heartbeat(self.job, lease.index, "good")
                self.store.finish(self.job, lease.index, "good")
        status = self.store.status(self.job)
        assert status.done and status.counts[READY] == status.counts[RUNNING] == 0
        after = self.store.ranges(self.job)
        for old, new in zip(before, after):
            assert new.state in (FINISHED, FAILED, FATAL) and new.attempts <= self.max_attempts
            if old.state in (FINISHED, FAILED, FATAL):
                assert new == old  # an ended range is never reported again
            elif new.state == FINISHED:
                assert new.worker == "good"
        assert status.events_finished == sum(r.num_events for r in after if r.state == FINISHED)


JobMachine.TestCase.settings = settings(
    max_examples=50, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_random_fault_schedules = JobMachine.TestCase
