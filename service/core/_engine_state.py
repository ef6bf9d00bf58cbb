"""The engine's decisions as plain data: no Ray, no threads, no input or output.

:class:`EngineState` knows what the engine (:mod:`service.core.engine`) is doing: which ranges
are asked for and not ready yet (one shared future per cache key: single flight), which of
them wait in the queue, which tasks run, and which plans are kept in memory. Its methods make
the choices (one materialization per key, what to submit next within ``max_in_flight``, which
waiter a finished task answers, which plan to drop); the engine calls them under its lock and
does the effects itself (Ray tasks, the cache, resolving futures outside the lock). Kept apart
so that the choices are tested without Ray, as ray/data keeps ``streaming_executor_state.py``
apart from its ``ray.wait`` loop.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from pathlib import Path

from service.core.cache import CacheEntry, CacheKey
from service.core.task import Steps
from vdata.data.plans import Plan

__all__ = ["WAIT", "EngineState", "Queued", "RangeTiming", "Running", "settle"]

Queued = tuple[CacheKey, str]  # a range asked for and not submitted yet, with its recipe's JSON
WAIT = "wait"  # why a range is made: a client waits for it (else the policy that made it ahead)


@dataclass(frozen=True, slots=True)
class Running:
    """A submitted task: the range it makes, the temporary file it may write (None: it sends
    the bytes back), its attempt id, which names its time-limit marker, and when it was
    submitted (``time.time``; 0 if not told)."""

    key: CacheKey
    temp: Path | None
    attempt: str
    submitted: float = 0.0


@dataclass(frozen=True, slots=True)
class RangeTiming:
    """Where the seconds of one range went, from the engine's submit to its cache commit:
    ``queued`` (Ray scheduled it: for a ``fresh`` worker, its start and imports, ``imports``
    seconds of which came after the submit), ``plan`` (the worker's catalog and plan), ``make``
    (read the source, run the steps), ``write`` (encode or write the file), ``collect`` (the
    engine's loop saw it done), ``commit`` (the cache row and file committed)."""

    key: CacheKey
    queued: float
    plan: float
    make: float
    write: float
    collect: float
    commit: float
    fresh: bool = False
    imports: float = 0.0
    submitted: float = 0.0  # when (time.time)

    @classmethod
    def of(cls, key: CacheKey, submitted: float, steps: Steps, returned: float, committed: float) -> RangeTiming:
        """From the stamps (``time.time``) of the engine and of the task's :class:`Steps`."""
        imports = max(steps.imported - submitted, 0.0) if steps.fresh else 0.0
        return cls(key, steps.started - submitted, steps.planned - steps.started, steps.made - steps.planned,
                   steps.written - steps.made, returned - steps.written, committed - returned, steps.fresh, imports,
                   submitted)

    @property
    def total(self) -> float:
        return self.queued + self.plan + self.make + self.write + self.collect + self.commit

    def describe(self) -> str:
        worker = f" (a fresh worker: its imports ended {self.imports:.3f} s after the submit)" if self.fresh else ""
        return (f"{self.total:.3f} s from submit to commit: queued {self.queued:.3f} s{worker}, "
                f"plan {self.plan:.3f} s, "
                f"read and steps {self.make:.3f} s, write {self.write:.3f} s, collect {self.collect:.3f} s, "
                f"commit {self.commit:.3f} s")


def settle(future: Future[CacheEntry], result: CacheEntry | None = None, exception: Exception | None = None) -> None:
    """Resolve a shared future unless a waiter cancelled it (the others still see the cache)."""
    if future.cancelled():
        return
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:
        pass


class EngineState:
    """Waiters, queue, running tasks and plans of one engine. Not thread-safe: the engine
    calls every method under its lock. A task is known by any hashable reference (the engine
    uses Ray's object reference; tests use strings)."""

    def __init__(self, max_in_flight: int, max_plans: int) -> None:
        if max_in_flight < 1 or max_plans < 1:
            raise ValueError(f"max_in_flight and max_plans must be >= 1, got {max_in_flight} and {max_plans}")
        self.max_in_flight = max_in_flight
        self.max_plans = max_plans
        self.submitted = 0  # tasks submitted over the engine's life
        self._waiting: dict[CacheKey, Future[CacheEntry]] = {}  # queued or running, one future per key
        self._why: dict[CacheKey, str] = {}  # why each waiting key is made (WAIT, or an ahead policy)
        self._queue: list[Queued] = []  # oldest first
        self._running: dict[Hashable, Running] = {}
        self._plans: OrderedDict[str, Plan] = OrderedDict()  # least recently used first

    # -- single flight ---------------------------------------------------------------------------

    def waiter(self, key: CacheKey) -> Future[CacheEntry] | None:
        """The future of a range already queued or running, if any: a second asker shares it."""
        return self._waiting.get(key)

    def ask(self, key: CacheKey, recipe_json: str, why: str = WAIT) -> Future[CacheEntry]:
        """The future of ``key``: the one already shared, else a new one whose range is queued.

        ``why`` says who wants it: :data:`WAIT` (a client waits for it) or the policy that
        makes it ahead of need ("lookahead", "stage", "readahead", "submit"); it names the task on Ray's
        dashboard. A range queued ahead and then asked for by a client becomes :data:`WAIT`
        (one already submitted keeps its name)."""
        future = self.join(key, why)
        if future is None:
            future = Future()
            self._waiting[key] = future
            self._why[key] = why
            self._queue.append((key, recipe_json))
        return future

    def join(self, key: CacheKey, why: str = WAIT) -> Future[CacheEntry] | None:
        """Like :meth:`waiter`, for an asker that will wait on the future: a range queued ahead
        of need and now waited for by a client (``why`` :data:`WAIT`) is named so."""
        future = self._waiting.get(key)
        if future is not None and why == WAIT:
            self._why[key] = WAIT
        return future

    def why(self, key: CacheKey) -> str:
        """Why ``key`` is made (see :meth:`ask`); :data:`WAIT` for a key not known."""
        return self._why.get(key, WAIT)

    def requeue(self, key: CacheKey, recipe_json: str) -> bool:
        """Queue ``key`` again for its waiters (another gateway's claim on it ended without the
        range); False if nobody waits for it any more."""
        if key not in self._waiting:
            return False
        self._queue.append((key, recipe_json))
        return True

    def answer(self, key: CacheKey) -> Future[CacheEntry] | None:
        """Forget ``key``: its task ended (made or failed). Returns its future for the engine
        to settle, outside the lock (a done-callback may ask the engine for more)."""
        self._why.pop(key, None)
        return self._waiting.pop(key, None)

    # -- submitting ------------------------------------------------------------------------------

    def next_batch(self) -> list[Queued]:
        """Take from the queue what fits beside the running tasks: ranges a client waits for
        first, then those made ahead of need (look-ahead, stage, read-ahead), each oldest first."""
        room = max(self.max_in_flight - len(self._running), 0)
        if not room:
            return []
        queue = sorted(self._queue, key=lambda queued: self._why.get(queued[0], WAIT) != WAIT)  # stable
        batch, self._queue = queue[:room], queue[room:]
        return batch

    def started(self, ref: Hashable, running: Running) -> None:
        """Record a task just submitted."""
        self._running[ref] = running
        self.submitted += 1

    def running(self) -> list[Hashable]:
        """The references of the running tasks, to wait on."""
        return list(self._running)

    def in_flight(self) -> int:
        return len(self._running)

    def tasks(self) -> list[Running]:
        """What the running tasks make (to name them when their node dies)."""
        return list(self._running.values())

    def ended(self, ref: Hashable) -> Running:
        """Forget a task that returned (its result still to be stored): what it was making."""
        return self._running.pop(ref)

    def stop(self, error: Exception) -> list[Running]:
        """Settle every waiter with ``error`` and forget everything; returns the tasks that were
        running, whose files and markers the engine deletes."""
        for future in self._waiting.values():
            if not future.done():
                settle(future, exception=error)
        self._waiting.clear()
        self._why.clear()
        self._queue.clear()
        running, self._running = list(self._running.values()), {}
        return running

    # -- plans -----------------------------------------------------------------------------------

    def plan(self, recipe_id: str) -> Plan | None:
        """The plan kept for a recipe, marked as just used; None if not kept."""
        cached = self._plans.get(recipe_id)
        if cached is not None:
            self._plans.move_to_end(recipe_id)
        return cached

    def keep_plan(self, recipe_id: str, the_plan: Plan) -> None:
        """Keep a plan, dropping the least recently used beyond ``max_plans``."""
        self._plans[recipe_id] = the_plan
        while len(self._plans) > self.max_plans:
            self._plans.popitem(last=False)
