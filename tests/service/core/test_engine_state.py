"""The engine's decisions without Ray: queue order, single flight, the ``max_in_flight`` bound,
settling every waiter on stop, and the plans kept in memory. Task references are strings here
(the engine uses Ray's object references)."""

from __future__ import annotations

from concurrent.futures import CancelledError, Future
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.core._engine_state import EngineState, RangeTiming, Running, settle
from service.core.task import Steps
from service.core.cache import CacheEntry, CacheKey
from service.errors import EngineError
from vdata import Catalog, Recipe
from vdata.data.plans import Plan, plan

RECIPE_ID = "vds-" + "0" * 24


def key(index: int, fmt: str = "arrow") -> CacheKey:
    return CacheKey(RECIPE_ID, index, fmt)


def entry(k: CacheKey) -> CacheEntry:
    return CacheEntry(k, Path(f"/cache/{k.relpath}"), 100, 1, 10)


def submit_all(state: EngineState) -> list[CacheKey]:
    """What the collector does: take the next batch and start a task for each (ref = 'task-<index>')."""
    batch = state.next_batch()
    for k, _ in batch:
        state.started(f"task-{k.range_index}", Running(k, None, f"attempt-{k.range_index}"))
    return [k for k, _ in batch]


def finish(state: EngineState, ref: str) -> CacheKey:
    """What a writer does once a task returned: forget it and settle its waiter with the entry."""
    task = state.ended(ref)
    future = state.answer(task.key)
    assert future is not None
    settle(future, result=entry(task.key))
    return task.key


def test_ranges_are_submitted_in_the_order_asked_within_max_in_flight() -> None:
    state = EngineState(max_in_flight=2, max_plans=4)
    futures = [state.ask(key(i), "{}") for i in (3, 0, 4, 1)]
    assert submit_all(state) == [key(3), key(0)]
    assert submit_all(state) == []  # both slots taken
    assert state.in_flight() == 2 and sorted(map(str, state.running())) == ["task-0", "task-3"]
    finish(state, "task-0")
    assert submit_all(state) == [key(4)]  # one slot freed: the oldest queued range
    finish(state, "task-3")
    finish(state, "task-4")
    assert submit_all(state) == [key(1)]
    finish(state, "task-1")
    assert [f.result(timeout=0).key for f in futures] == [key(3), key(0), key(4), key(1)]
    assert state.submitted == 4 and state.in_flight() == 0


def test_two_requests_for_one_range_make_one_task_and_both_get_the_entry() -> None:
    state = EngineState(max_in_flight=4, max_plans=4)
    first = state.ask(key(7), "{}")
    second = state.ask(key(7), "{}")
    assert state.waiter(key(7)) is first
    assert submit_all(state) == [key(7)]
    third = state.ask(key(7), "{}")  # asked while its task runs: joins it, nothing queued
    assert submit_all(state) == []
    finish(state, "task-7")
    assert state.submitted == 1
    for future in (first, second, third):
        assert future.result(timeout=0) == entry(key(7))
    assert state.waiter(key(7)) is None  # done: the next asker finds it in the cache


def test_other_formats_of_one_range_are_separate_materializations() -> None:
    state = EngineState(max_in_flight=4, max_plans=4)
    arrow, parquet = state.ask(key(2, "arrow"), "{}"), state.ask(key(2, "parquet"), "{}")
    assert arrow is not parquet
    assert len(state.next_batch()) == 2


def test_a_failed_task_hands_its_error_to_every_waiter() -> None:
    state = EngineState(max_in_flight=1, max_plans=4)
    future = state.ask(key(1), "{}")
    submit_all(state)
    task = state.ended("task-1")
    failed = state.answer(task.key)
    assert failed is future
    settle(failed, exception=EngineError("materializing it failed"))
    with pytest.raises(EngineError, match="materializing it failed"):
        future.result(timeout=0)
    assert state.ask(key(1), "{}") is not future  # a new request tries again
    assert submit_all(state) == [key(1)]


def test_a_cancelled_future_is_left_alone_when_its_task_ends() -> None:
    state = EngineState(max_in_flight=1, max_plans=4)
    future = state.ask(key(5), "{}")
    submit_all(state)
    assert future.cancel()
    finish(state, "task-5")  # settle() does not raise on a cancelled future
    with pytest.raises(CancelledError):
        future.result(timeout=0)


def test_stop_settles_every_waiter_and_returns_the_running_tasks() -> None:
    state = EngineState(max_in_flight=2, max_plans=4)
    futures = [state.ask(key(i), "{}") for i in range(4)]
    assert submit_all(state) == [key(0), key(1)]  # 2 and 3 wait in the queue
    cancelled = futures[3]
    assert cancelled.cancel()
    running = state.stop(EngineError("the engine stopped before the range was ready"))
    assert sorted(task.attempt for task in running) == ["attempt-0", "attempt-1"]
    for future in futures[:3]:
        with pytest.raises(EngineError, match="the engine stopped"):
            future.result(timeout=0)
    assert cancelled.cancelled()
    assert state.in_flight() == 0 and state.running() == [] and state.next_batch() == []
    assert state.waiter(key(0)) is None


def test_plans_are_kept_least_recently_used_first() -> None:
    state = EngineState(max_in_flight=1, max_plans=2)
    plans = {name: make_plan(seed) for seed, name in enumerate("abc")}
    state.keep_plan("a", plans["a"])
    state.keep_plan("b", plans["b"])
    assert state.plan("a") is plans["a"]  # "a" used: "b" is now the oldest
    state.keep_plan("c", plans["c"])
    assert state.plan("b") is None
    assert state.plan("a") is plans["a"] and state.plan("c") is plans["c"]


def test_limits_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        EngineState(max_in_flight=0, max_plans=1)
    with pytest.raises(ValueError, match="max_plans"):
        EngineState(max_in_flight=1, max_plans=0)


@settings(max_examples=60, deadline=None)
@given(max_in_flight=st.integers(1, 4),
       steps=st.lists(st.one_of(st.tuples(st.just("ask"), st.integers(0, 6)),
                                st.tuples(st.just("submit"), st.just(0)),
                                st.tuples(st.just("finish"), st.integers(0, 10))), max_size=40))
def test_any_sequence_keeps_the_bound_and_one_task_per_range(max_in_flight: int, steps: list[tuple[str, int]]) -> None:
    """Whatever the order of requests, submissions and finished tasks: never more than
    ``max_in_flight`` running, never two tasks for one range at once, and once everything
    ran each asker holds the entry of the range it asked for."""
    state = EngineState(max_in_flight=max_in_flight, max_plans=1)
    asked: list[tuple[CacheKey, Future[CacheEntry]]] = []
    running: dict[str, CacheKey] = {}  # the test's own record of the tasks started

    def submit() -> None:
        for k, _ in state.next_batch():
            ref = f"t{state.submitted}"
            state.started(ref, Running(k, None, ref))
            running[ref] = k

    def finish_one(n: int) -> None:
        ref = sorted(running)[n % len(running)]
        assert finish(state, ref) == running.pop(ref)

    for action, n in steps:
        if action == "ask":
            asked.append((key(n), state.ask(key(n), "{}")))
        elif action == "submit":
            submit()
        elif running:
            finish_one(n)
        assert state.in_flight() == len(running) <= max_in_flight
        assert len(set(running.values())) == len(running)
    for _ in range(len(asked) + 1):  # drain: every asked range runs once more at most
        submit()
        while running:
            finish_one(0)
    for k, future in asked:
        assert future.result(timeout=0).key == k


def make_plan(seed: int) -> Plan:
    recipe = Recipe.from_dict({"source": {"generator": "zmumu", "events": 100, "seed": seed},
                               "columns": ["Muon_pt"], "range_events": 50})
    return plan(recipe, Catalog(), dry_run=False)


def test_why_a_range_is_made_follows_its_first_asker_until_a_client_waits() -> None:
    state = EngineState(max_in_flight=1, max_plans=1)
    state.ask(key(0), "{}", "lookahead")
    state.ask(key(1), "{}", "stage")
    assert state.join(key(1), "readahead") is not None and state.why(key(1)) == "stage"  # another policy: kept
    assert state.join(key(1)) is not None and state.why(key(1)) == "wait"  # a client waits: named so
    assert state.why(key(0)) == "lookahead" and state.join(key(5)) is None
    assert submit_all(state) == [key(1)]  # the range a client waits for goes first
    finish(state, "task-1")
    assert submit_all(state) == [key(0)]
    assert state.why(key(0)) == "lookahead"
    finish(state, "task-0")
    assert state.why(key(0)) == "wait"  # forgotten with its task (the default)


def test_a_range_a_client_waits_for_is_submitted_before_ranges_made_ahead() -> None:
    """Read-ahead and look-ahead queue ranges nobody waits for yet; a client's range goes first
    (oldest first within each kind), also a look-ahead range a client then asks for."""
    state = EngineState(max_in_flight=2, max_plans=4)
    for i in range(4):
        state.ask(key(i), "{}", why="readahead")
    state.ask(key(9), "{}")  # a client waits for it
    state.ask(key(2), "{}")  # queued ahead, now waited for
    assert submit_all(state) == [key(2), key(9)]
    finish(state, "task-2")
    finish(state, "task-9")
    assert submit_all(state) == [key(0), key(1)]


def test_a_range_timing_splits_submit_to_commit_into_its_steps() -> None:
    steps = Steps(imported=101.5, started=102.0, planned=102.25, made=103.0, written=103.5, fresh=True)
    timing = RangeTiming.of(key(0), submitted=100.0, steps=steps, returned=103.75, committed=104.0)
    assert (timing.queued, timing.plan, timing.make, timing.write, timing.collect, timing.commit) == \
        (2.0, 0.25, 0.75, 0.5, 0.25, 0.25)
    assert timing.total == 4.0 and timing.imports == 1.5 and timing.submitted == 100.0
    assert "fresh worker" in timing.describe() and "queued 2.000 s" in timing.describe()
    warm = RangeTiming.of(key(0), 100.0, Steps(50.0, 100.5, 100.5, 101.0, 101.0), 101.0, 101.0)
    assert warm.imports == 0.0 and not warm.fresh and "fresh" not in warm.describe()
