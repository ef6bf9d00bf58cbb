"""The Ray engine: the one module that imports ``ray``.

It materializes (recipe, range, format) as Ray tasks. A task that runs on the driver's node
writes the encoded range itself to a temporary file in the cache folder and returns only its
size and adler32; the driver then commits it (:meth:`RangeCache.put_file`: fsync, rename,
index row). Passing the bytes through the object store and writing them in the driver made
the driver the bottleneck with two workers on two cores. A task on another node (a real
cluster, whose disks the driver cannot see) returns the bytes through the object store, and
the driver writes them (``RangeCache.put``), so the cache need not sit on a shared file
system. At most one task is in flight per cache key (concurrent askers wait on it), at most
``max_in_flight`` tasks overall, and for each active job the next ``lookahead`` ready ranges
are materialized before anyone leases them.

The temporary name is chosen by the driver, so a retried attempt (its worker died) rewrites
the same file, and the driver deletes it when the task fails for good. Only a driver crash
leaves one behind; :class:`RangeCache` removes such debris when it next opens the folder.
The task body itself (no Ray) is in :mod:`service.core.task`.

Failures: Ray retries a task whose worker or node died (``max_retries``); an error in user
code (a transform or expression) is returned as a value (its class name and message, never a
traceback), so Ray does not retry it blindly, and surfaces as that error here. Every task (the
recipe check's dry run included: a scientist's code never runs in the gateway process) runs
under a wall-time and a memory limit (:mod:`service.core.task_limits`); one past either surfaces as
:class:`~vdata.errors.TaskLimitExceeded`. Whatever goes wrong, each waiting future is resolved.

Across gateways (several engines on one database and cache folder), an engine claims a key
before it submits its task (:mod:`service.core.claims`); a key another gateway holds is
watched until its cache row appears, or taken over if that gateway dies. ``claims=None``
(tests of one engine) skips this.

The decisions (single flight, what to submit next, which plans to keep) are methods of
:class:`~service.core._engine_state.EngineState`, which knows nothing of Ray; this module
keeps the effects: a single collector thread runs the ``ray.wait`` loop, writer threads
commit the results and resolve the waiting futures.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ray

from service.core._engine_state import EngineState, Running, settle
from service.core.task import Hooks, Target, Written, no_space, over_time, run_dry, run_task
from service.core.task_limits import Limits, marker_path, timed_out
from service.core.engine_config import EngineConfig
from service.core.ray_local import PrivateRay
from service.core.cache import CacheEntry, CacheKey, RangeCache
from service.core.claims import Claims, Verdict
from vdata.data.catalog import Catalog
from service.errors import EngineError, StorageFull, rebuild
from vdata.errors import VdataError
from vdata.data.plans import Plan, plan
from vdata.data.recipes import Recipe

__all__ = ["Engine", "EngineConfig"]

log = logging.getLogger(__name__)


# -- the task, run in Ray workers --------------------------------------------------------------


def _materialize_task(
    catalog_version: str,
    catalog_state: bytes,
    recipe_json: str,
    index: int,
    fmt: str,
    target: Target | None,
    hooks: Hooks | None,
    limits: Limits | None = None,
    attempt: str | None = None,
) -> tuple[str, bytes | Written | tuple[str, str], int, float]:
    """Ray's entry point: :func:`run_task`, writing the file only on the driver's node."""
    here = target is not None and ray.get_runtime_context().get_node_id() == target.node_id
    write_to = target.temp if target is not None and here else None
    return run_task(catalog_version, catalog_state, recipe_json, index, fmt, write_to, hooks, limits, attempt)


def _dry_run_task(catalog_version: str, catalog_state: bytes, recipe_json: str, limits: Limits,
                  attempt: str) -> tuple[str, str] | None:
    """Ray's entry point of a recipe check's dry run: :func:`run_dry`."""
    return run_dry(catalog_version, catalog_state, recipe_json, limits, attempt)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _short(exc: BaseException) -> str:
    """One line about a Ray failure for a client: no traceback, colour codes, PIDs or addresses."""
    cause = getattr(exc, "cause", None)  # a RayTaskError carries the task's own exception
    if isinstance(cause, BaseException) and not isinstance(cause, ray.exceptions.RayError):
        exc = cause
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    first = next((line for line in lines if not line.startswith(("Traceback", "File ", "ray::"))), "")
    first = re.sub(r"\b(pid|PID|ip|IP|node_id|worker_id|Worker ID|Node ID)[=: ]+\S+", r"\1=...", first)
    first = re.sub(r"\b\d{1,3}(\.\d{1,3}){3}(:\d+)?\b", "<address>", first)
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def _reload_ray_environment(loopback: bool) -> None:
    """Make this process's Ray see the environment :class:`PrivateRay` set or restored: the
    loopback switch Ray read from ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` at import, its config
    (the authentication mode) and its cached authentication token."""
    from ray._private import ray_constants
    from ray._raylet import AuthenticationTokenLoader, Config

    default = ray_constants.env_bool(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, not ray_constants.IS_WINDOWS_OR_OSX)
    ray_constants.ENABLE_RAY_CLUSTER = False if loopback else default
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


class _Metrics:
    """Custom Ray metrics (shown on the dashboard's metrics page), plus plain counters."""

    def __init__(self) -> None:
        from ray.util import metrics

        self.ranges = metrics.Counter("vdata_ranges_materialized", "Ranges materialized", tag_keys=("format",))
        self.bytes = metrics.Counter("vdata_bytes_materialized", "Encoded bytes materialized", tag_keys=("format",))
        self.seconds = metrics.Histogram(
            "vdata_range_seconds", "Seconds per range materialization", boundaries=[0.01, 0.05, 0.1, 0.5, 1, 5, 30]
        )
        self.cache = metrics.Counter("vdata_cache_requests", "Cache lookups", tag_keys=("result",))
        self.leases = metrics.Counter("vdata_lease_events", "Lease events", tag_keys=("event",))
        self.counts: dict[str, int] = {}

    def count(self, name: str, value: float = 1.0, **tags: str) -> None:
        getattr(self, name).inc(value, tags=tags or None)
        key = name + "".join(f":{v}" for v in tags.values())
        self.counts[key] = self.counts.get(key, 0) + int(value)


class Engine:
    """Materializes ranges on Ray, single-flight per cache key, writing results to the cache."""

    def __init__(self, catalog: Catalog, cache: RangeCache, config: EngineConfig | None = None) -> None:
        self.catalog = catalog
        self.cache = cache
        self.config = config or EngineConfig()
        self.fault_hook: Callable[[str, int], None] | None = None  # for tests: runs as a task starts
        self.written_hook: Callable[[str, int], None] | None = None  # ... and once its result exists
        self._lock = threading.Lock()  # guards _state; held around no other lock, Ray call or I/O
        self._state = EngineState(self.config.max_in_flight, self.config.max_plans)
        self._catalog_ref: tuple[int, str, Any] | None = None
        self._catalog_lock = threading.Lock()  # a leaf: guards _catalog_ref
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._collector: threading.Thread | None = None
        self._writers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vdata-cache-writer")
        self._started_ray = False
        self._private_ray: PrivateRay | None = None
        self._dry_task: Any = None  # the dry run's Ray task, once started
        self._node_id = ""
        self.metrics: _Metrics | None = None
        self.claims: Claims | None = None  # single flight across gateways (set before start)
        self._recipes: dict[CacheKey, str] = {}  # the recipe JSON of keys another gateway makes

    @property
    def submitted(self) -> int:
        """Tasks submitted so far, for tests and /metrics."""
        with self._lock:
            return self._state.submitted

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> Engine:
        if not ray.is_initialized():
            if self.config.address:
                ray.init(address=self.config.address, log_to_driver=False)
            else:  # always our own instance, on loopback, with its own token (see service.core.ray_local)
                private = PrivateRay.prepare(self.config.data_dir, self.config.temp_dir)
                try:
                    private.activate()
                    _reload_ray_environment(loopback=True)
                    ray.init(**private.init_kwargs(self.config.num_cpus, self.config.object_store_bytes,
                                                   self.config.include_dashboard, self.config.dashboard_port))
                except BaseException:
                    ray.shutdown()
                    private.close()
                    _reload_ray_environment(loopback=False)
                    raise
                self._private_ray = private
            self._started_ray = True
        self._node_id = ray.get_runtime_context().get_node_id()
        self._task = ray.remote(max_retries=self.config.max_retries, retry_exceptions=False)(_materialize_task)
        self._dry_task = ray.remote(max_retries=self.config.max_retries, retry_exceptions=False)(_dry_run_task)
        self.metrics = _Metrics()
        self._collector = threading.Thread(target=self._collect, name="vdata-engine-collector", daemon=True)
        self._collector.start()
        if self.claims is not None:
            self.claims.start(self._made_elsewhere, self._claim_freed)
        return self

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._collector is not None:
            self._collector.join(timeout=10)
        self._writers.shutdown(wait=True)
        if self.claims is not None:
            self.claims.stop()  # releases what this gateway still holds: another takes it at once
        with self._lock:
            running = self._state.stop(EngineError("the engine stopped before the range was ready"))
        unfinished = [task.temp for task in running if task.temp is not None]
        unfinished += [marker_path(task.attempt) for task in running]
        if self._started_ray:
            ray.shutdown()  # stops the workers, so no task writes a temporary file any more
            self._started_ray = False
        if self._private_ray is not None:
            self._private_ray.close()  # what ray.shutdown left (its agents), the environment, the token
            self._private_ray = None
            _reload_ray_environment(loopback=False)
        for temp in unfinished:  # (a task on an outside cluster may still; the next start cleans up)
            temp.unlink(missing_ok=True)

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    # -- asking for ranges -----------------------------------------------------------------------

    def plan(self, recipe: Recipe) -> Plan:
        """The plan of a recipe (no dry run here: see :meth:`check`), cached by id; at most
        ``max_plans`` are kept."""
        with self._lock:
            cached = self._state.plan(recipe.id)
        if cached is None:
            cached = plan(recipe, self.catalog, dry_run=False)
            with self._lock:
                self._state.keep_plan(recipe.id, cached)
        return cached

    def check(self, the_plan: Plan) -> None:
        """The recipe check's dry run (:func:`vdata.data.plans.dry_run`), in a Ray worker under
        the dry-run limits; raises what it found (a RecipeError, a TaskLimitExceeded, ...)."""
        if not the_plan.ops:
            return  # no steps: nothing a dry run could find that reading a range would not
        if self._dry_task is None:
            raise EngineError(f"cannot check {the_plan.id}: the engine is not running (its dry run needs Ray)")
        version, state = self._catalog_state()
        attempt = uuid.uuid4().hex
        ref = self._dry_task.remote(version, state, the_plan.recipe.to_json(), self.config.dry_run_limits, attempt)
        seconds = self.config.dry_run_seconds
        # The worker stops itself at the limit; a retry answers at once. Beyond that, Ray is stuck.
        wait = None if seconds is None else seconds * (self.config.max_retries + 2) + 60
        try:
            found = ray.get(ref, timeout=wait)
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
            raise EngineError(f"the dry run of {the_plan.id} did not end within {wait:g} s; try again later") from None
        except ray.exceptions.RayError as exc:
            what = timed_out(attempt)
            if what is not None:
                raise rebuild(*over_time(what, f"the dry run of {the_plan.id}", seconds or 0.0,
                                         "dry_run_seconds_limit")) from None
            raise EngineError(f"the dry run of {the_plan.id} failed: {_short(exc)}") from None
        finally:
            marker_path(attempt).unlink(missing_ok=True)
        if found is not None:
            raise rebuild(*found)

    def get(self, recipe: Recipe, index: int, fmt: str, timeout: float | None = None) -> CacheEntry:
        """The cache entry of a range: from the cache, or materialized now (waiting for it)."""
        return self.request(recipe, index, fmt).result(timeout=timeout)

    def request(self, recipe: Recipe, index: int, fmt: str) -> Future[CacheEntry]:
        """A future for the range; submits a task unless it is cached or already in flight."""
        the_plan = self.plan(recipe)
        the_plan.range(index)  # RangeOutOfBounds before anything is submitted
        key = CacheKey(recipe.id, index, fmt)
        with self._lock:
            future = self._state.waiter(key)
        if future is not None:
            return future
        entry = self.cache.get(key)
        self._count("cache", result="hit" if entry is not None else "miss")
        if entry is not None:
            done: Future[CacheEntry] = Future()
            done.set_result(entry)
            return done
        with self._lock:
            future = self._state.ask(key, recipe.to_json())
        self._wake.set()
        return future

    def prefetch(self, recipe: Recipe, indices: list[int], fmt: str) -> int:
        """Start materializing ranges nobody has asked for yet (look-ahead); returns how many."""
        started = 0
        for index in indices:
            key = CacheKey(recipe.id, index, fmt)
            with self._lock:
                asked = self._state.waiter(key) is not None
            if asked or self.cache.contains(key):
                continue
            self.request(recipe, index, fmt)
            started += 1
        return started

    def in_flight(self) -> int:
        with self._lock:
            return self._state.in_flight()

    # -- the loop --------------------------------------------------------------------------------

    def _catalog_state(self) -> tuple[str, Any]:
        """The digest of the pickled catalog and a Ray reference to it, re-made only when the
        catalog changed: the state goes into the object store once per revision, not with
        every task (a catalog of many datasets is large)."""
        with self._catalog_lock:
            revision = self.catalog.revision
            if self._catalog_ref is None or self._catalog_ref[0] != revision:
                state = pickle.dumps(self.catalog)
                self._catalog_ref = (revision, hashlib.sha256(state).hexdigest(), ray.put(state))
            return self._catalog_ref[1], self._catalog_ref[2]

    def _submit_ready(self) -> None:
        with self._lock:
            batch = self._state.next_batch()
        if not batch:
            return
        version, state = self._catalog_state()
        hooks = Hooks(self.fault_hook, self.written_hook) if self.fault_hook or self.written_hook else None
        limits = self.config.task_limits
        for key, recipe_json in batch:
            attempt = uuid.uuid4().hex
            if self.claims is not None and not self._claim(key, recipe_json, attempt):
                continue
            try:
                temp = self.cache.temp_path(key) if self.config.worker_writes else None
            except OSError as exc:  # the cache folder cannot even hold a new name (disk full)
                self._fail(key, None, attempt, exc)
                continue
            target = Target(self._node_id, str(temp)) if temp is not None else None
            ref = self._task.remote(version, state, recipe_json, key.range_index, key.format, target, hooks,
                                    limits, attempt)
            with self._lock:
                self._state.started(ref, Running(key, temp, attempt))

    def _claim(self, key: CacheKey, recipe_json: str, attempt: str) -> bool:
        """Whether this gateway makes ``key`` now (it claimed it); else the key is answered from
        the cache or watched until another gateway's claim on it ends."""
        try:
            verdict = self.claims.claim(key) if self.claims is not None else Verdict.OURS
        except Exception as exc:  # noqa: BLE001 - the database failed: the waiters hear it
            self._fail(key, None, attempt, exc)
            return False
        if verdict is Verdict.OURS:
            return True
        with self._lock:
            self._recipes[key] = recipe_json
        if verdict is Verdict.CACHED:
            self._made_elsewhere(key)
        elif self.claims is not None:
            self.claims.watch(key)
        return False

    def _made_elsewhere(self, key: CacheKey) -> None:
        """Another gateway committed ``key``: answer the waiters from the cache (or, if it is
        gone again already, queue it once more)."""
        entry = self.cache.get(key)
        if entry is None:
            self._claim_freed(key)
            return
        with self._lock:
            self._recipes.pop(key, None)
            future = self._state.answer(key)
        if future is not None:
            settle(future, result=entry)

    def _claim_freed(self, key: CacheKey) -> None:
        """Another gateway's claim on ``key`` ended without the range: queue it (we claim it)."""
        with self._lock:
            recipe_json = self._recipes.pop(key, None)
            if recipe_json is not None:
                self._state.requeue(key, recipe_json)
        self._wake.set()

    def _collect(self) -> None:
        """Submit what is queued, hand each finished task to a writer thread, repeat.

        ``ray.wait`` returns as soon as one task is done (then takes every other that is), so
        a range is committed without waiting out a polling interval; the timeout only bounds
        how long a newly queued request waits to be submitted when nothing finishes."""
        while not self._stop.is_set():
            self._submit_ready()
            with self._lock:
                refs = self._state.running()
            if not refs:
                self._wake.wait(timeout=0.5)
                self._wake.clear()
                continue
            ready, pending = ray.wait(refs, num_returns=1, timeout=0.05)
            if ready and pending:
                more, _ = ray.wait(pending, num_returns=len(pending), timeout=0)
                ready += more
            for ref in ready:
                with self._lock:
                    task = self._state.ended(ref)
                # the next task is submitted while this range is committed
                self._writers.submit(self._finish, ref, task.key, task.temp, task.attempt)

    def _store(self, key: CacheKey, payload: bytes | Written, events: int) -> CacheEntry:
        """Commit the file a worker wrote, or write the bytes a task on another node sent."""
        if isinstance(payload, Written):
            return self.cache.put_file(key, payload.temp, payload.size, payload.adler32, events)
        return self.cache.put(key, payload, events)

    def _finish(self, ref: Any, key: CacheKey, temp: Path | None, attempt: str) -> None:
        """Fetch a finished task's result, commit it to the cache, resolve the waiters. Every
        outcome resolves them: an unexpected error too (else they would wait out their timeout)."""
        try:
            status, payload, events, seconds = ray.get(ref)
            if status == "error":
                raise rebuild(*payload)
            entry = self._store(key, payload, events)
            self._count("ranges", format=key.format)
            self._count("bytes", entry.size, format=key.format)
            if self.metrics is not None:
                self.metrics.seconds.observe(seconds)
        except Exception as exc:  # noqa: BLE001 - translated and handed to every waiter
            self._fail(key, temp, attempt, exc)
            return
        finally:
            marker_path(attempt).unlink(missing_ok=True)
        self._release(key)
        with self._lock:
            future = self._state.answer(key)
        if future is not None:
            settle(future, result=entry)

    def _fail(self, key: CacheKey, temp: Path | None, attempt: str, exc: Exception) -> None:
        """Resolve the waiters of ``key`` with what ``exc`` means for a client."""
        if temp is not None:  # what a failed task (or all of its attempts) wrote
            temp.unlink(missing_ok=True)
        result = self._translate(key, attempt, exc)
        log.warning("%s", result)
        self._release(key)
        with self._lock:
            future = self._state.answer(key)
        if future is not None:
            settle(future, exception=result)

    def _release(self, key: CacheKey) -> None:
        """Release this gateway's claim of ``key`` (after the cache row is committed)."""
        if self.claims is None:
            return
        try:
            self.claims.release(key)
        except Exception as exc:  # noqa: BLE001 - the claim expires by itself
            log.warning("could not release the claim of %s (it expires in %g s): %s", key, self.claims.seconds, exc)

    def _translate(self, key: CacheKey, attempt: str, exc: Exception) -> VdataError:
        if isinstance(exc, VdataError):
            return exc
        if isinstance(exc, OSError) and no_space(exc):
            return StorageFull(f"no space left to store {key} in the cache folder (its disk or quota is full): "
                               "free space there or lower cache_budget_bytes")
        if isinstance(exc, ray.exceptions.RayError):
            what = timed_out(attempt)  # no retry was left to report it: the marker says
            if what is not None:
                return rebuild(*over_time(what, f"range {key.range_index} of {key.recipe_id}",
                                          self.config.task_seconds or 0.0, "task_seconds_limit"))
            return EngineError(f"materializing {key} failed: {_short(exc)}")
        log.error("materializing %s failed with an unexpected error", key, exc_info=exc)
        return EngineError(f"materializing {key} failed: {type(exc).__name__} (a bug of the service: see its log)")

    def count_lease(self, event: str, n: int = 1) -> None:
        """Count lease events (lease, heartbeat, finish, fail, fatal) for the dashboard."""
        if n:
            self._count("leases", n, event=event)

    def _count(self, name: str, value: float = 1.0, **tags: str) -> None:
        if self.metrics is not None:
            self.metrics.count(name, value, **tags)

