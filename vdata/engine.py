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
The task body itself (no Ray) is in :mod:`vdata._engine_task`.

Failures: Ray retries a task whose worker or node died (``max_retries``); an error in user
code (a transform or expression) is returned as a value, so Ray does not retry it blindly, and
surfaces as :class:`~vdata.errors.TransformError` carrying the user's message.

The decisions (what to submit next) are plain functions of the state; a single collector
thread runs the ``ray.wait`` loop and resolves the waiting futures.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from vdata._engine_task import Hooks, Target, Written, run_task
from vdata.cache import CacheEntry, CacheKey, RangeCache
from vdata.catalog import Catalog
from vdata.errors import EngineError, RemoteReadError, TransformError, VdataError
from vdata.materialize import Plan, plan
from vdata.recipes import Recipe

__all__ = ["Engine", "EngineConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """How to run Ray. ``address=None`` starts an embedded local Ray bound to loopback."""

    address: str | None = None
    num_cpus: int = 2
    object_store_bytes: int = 200 * 1024**2
    max_in_flight: int = 8
    lookahead: int = 4
    max_retries: int = 3
    include_dashboard: bool = False
    dashboard_port: int = 8265
    temp_dir: str | None = None  # Ray's session folder (logs, sockets); default /tmp/ray
    worker_writes: bool = True  # tasks on the driver's node write the cache file; False: bytes always

    def __post_init__(self) -> None:
        for name in ("num_cpus", "max_in_flight", "max_retries"):
            if getattr(self, name) < (0 if name == "max_retries" else 1):
                raise ValueError(f"EngineConfig.{name} must be positive, got {getattr(self, name)}")
        if self.lookahead < 0:
            raise ValueError(f"EngineConfig.lookahead must be >= 0, got {self.lookahead}")


# -- the task, run in Ray workers --------------------------------------------------------------


def _materialize_task(
    catalog_version: str,
    catalog_state: bytes,
    recipe_json: str,
    index: int,
    fmt: str,
    target: Target | None,
    hooks: Hooks | None,
) -> tuple[str, bytes | Written | str | RemoteReadError, int, float]:
    """Ray's entry point: :func:`run_task`, writing the file only on the driver's node."""
    here = target is not None and ray.get_runtime_context().get_node_id() == target.node_id
    write_to = target.temp if target is not None and here else None
    return run_task(catalog_version, catalog_state, recipe_json, index, fmt, write_to, hooks)


def _settle(future: Future[CacheEntry], result: CacheEntry | None = None, exception: Exception | None = None) -> None:
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
        self._lock = threading.Lock()
        self._inflight: dict[CacheKey, Future[CacheEntry]] = {}
        self._refs: dict[Any, tuple[CacheKey, Path | None]] = {}  # task -> its key and temporary file
        self._queue: list[tuple[CacheKey, str]] = []
        self._plans: dict[str, Plan] = {}
        self._catalog_ref: tuple[int, str, Any] | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._collector: threading.Thread | None = None
        self._writers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vdata-cache-writer")
        self._started_ray = False
        self._node_id = ""
        self.metrics: _Metrics | None = None
        self.submitted = 0  # tasks submitted, for tests and /metrics

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> Engine:
        if not ray.is_initialized():
            if self.config.address:
                ray.init(address=self.config.address, log_to_driver=False)
            else:
                ray.init(
                    num_cpus=self.config.num_cpus,
                    object_store_memory=self.config.object_store_bytes,
                    include_dashboard=self.config.include_dashboard,
                    dashboard_host="127.0.0.1",
                    dashboard_port=self.config.dashboard_port,
                    _node_ip_address="127.0.0.1",
                    _temp_dir=str(Path(self.config.temp_dir).resolve()) if self.config.temp_dir else None,
                    log_to_driver=False,
                )
            self._started_ray = True
        self._node_id = ray.get_runtime_context().get_node_id()
        self._task = ray.remote(max_retries=self.config.max_retries, retry_exceptions=False)(_materialize_task)
        self.metrics = _Metrics()
        self._collector = threading.Thread(target=self._collect, name="vdata-engine-collector", daemon=True)
        self._collector.start()
        return self

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._collector is not None:
            self._collector.join(timeout=10)
        self._writers.shutdown(wait=True)
        with self._lock:
            for future in self._inflight.values():
                if not future.done():
                    _settle(future, exception=EngineError("the engine stopped before the range was ready"))
            self._inflight.clear()
            unfinished = [temp for _, temp in self._refs.values() if temp is not None]
            self._refs.clear()
        if self._started_ray:
            ray.shutdown()  # stops the workers, so no task writes a temporary file any more
            self._started_ray = False
        for temp in unfinished:  # (a task on an outside cluster may still; the next start cleans up)
            temp.unlink(missing_ok=True)

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    # -- asking for ranges -----------------------------------------------------------------------

    def plan(self, recipe: Recipe) -> Plan:
        """The plan of a recipe, cached by id."""
        with self._lock:
            cached = self._plans.get(recipe.id)
        if cached is None:
            cached = plan(recipe, self.catalog)
            with self._lock:
                self._plans[recipe.id] = cached
        return cached

    def get(self, recipe: Recipe, index: int, fmt: str, timeout: float | None = None) -> CacheEntry:
        """The cache entry of a range: from the cache, or materialized now (waiting for it)."""
        return self.request(recipe, index, fmt).result(timeout=timeout)

    def request(self, recipe: Recipe, index: int, fmt: str) -> Future[CacheEntry]:
        """A future for the range; submits a task unless it is cached or already in flight."""
        the_plan = self.plan(recipe)
        the_plan.range(index)  # RangeOutOfBounds before anything is submitted
        key = CacheKey(recipe.id, index, fmt)
        with self._lock:
            future = self._inflight.get(key)
            if future is not None:
                return future
        entry = self.cache.get(key)
        self._count("cache", result="hit" if entry is not None else "miss")
        if entry is not None:
            done: Future[CacheEntry] = Future()
            done.set_result(entry)
            return done
        with self._lock:
            future = self._inflight.get(key)
            if future is None:
                future = Future()
                self._inflight[key] = future
                self._queue.append((key, recipe.to_json()))
        self._wake.set()
        return future

    def prefetch(self, recipe: Recipe, indices: list[int], fmt: str) -> int:
        """Start materializing ranges nobody has asked for yet (look-ahead); returns how many."""
        started = 0
        for index in indices:
            key = CacheKey(recipe.id, index, fmt)
            with self._lock:
                if key in self._inflight:
                    continue
            if self.cache.contains(key):
                continue
            self.request(recipe, index, fmt)
            started += 1
        return started

    def in_flight(self) -> int:
        with self._lock:
            return len(self._refs)

    # -- the loop --------------------------------------------------------------------------------

    def _catalog_state(self) -> tuple[str, Any]:
        """The digest of the pickled catalog and a Ray reference to it, re-made only when the
        catalog changed: the state goes into the object store once per revision, not with
        every task (a catalog of many datasets is large)."""
        revision = self.catalog.revision
        if self._catalog_ref is None or self._catalog_ref[0] != revision:
            state = pickle.dumps(self.catalog)
            self._catalog_ref = (revision, hashlib.sha256(state).hexdigest(), ray.put(state))
        return self._catalog_ref[1], self._catalog_ref[2]

    def _submit_ready(self) -> None:
        with self._lock:
            room = self.config.max_in_flight - len(self._refs)
            batch, self._queue = self._queue[:max(room, 0)], self._queue[max(room, 0):]
        if not batch:
            return
        version, state = self._catalog_state()
        hooks = Hooks(self.fault_hook, self.written_hook) if self.fault_hook or self.written_hook else None
        for key, recipe_json in batch:
            temp = self.cache.temp_path(key) if self.config.worker_writes else None
            target = Target(self._node_id, str(temp)) if temp is not None else None
            ref = self._task.remote(version, state, recipe_json, key.range_index, key.format, target, hooks)
            with self._lock:
                self._refs[ref] = (key, temp)
                self.submitted += 1

    def _collect(self) -> None:
        """Submit what is queued, hand each finished task to a writer thread, repeat.

        ``ray.wait`` returns as soon as one task is done (then takes every other that is), so
        a range is committed without waiting out a polling interval; the timeout only bounds
        how long a newly queued request waits to be submitted when nothing finishes."""
        while not self._stop.is_set():
            self._submit_ready()
            with self._lock:
                refs = list(self._refs)
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
                    key, temp = self._refs.pop(ref)
                    future = self._inflight.get(key)
                # the next task is submitted while this range is committed
                self._writers.submit(self._finish, ref, key, temp, future)

    def _store(self, key: CacheKey, payload: bytes | Written, events: int) -> CacheEntry:
        """Commit the file a worker wrote, or write the bytes a task on another node sent."""
        if isinstance(payload, Written):
            return self.cache.put_file(key, payload.temp, payload.size, payload.adler32, events)
        return self.cache.put(key, payload, events)

    def _finish(self, ref: Any, key: CacheKey, temp: Path | None, future: Future[CacheEntry] | None) -> None:
        """Fetch a finished task's result, commit it to the cache, resolve the waiters."""
        try:
            status, payload, events, seconds = ray.get(ref)
            if status == "error":
                if isinstance(payload, VdataError):  # a RemoteReadError, as the worker raised it
                    raise payload
                raise TransformError(f"range {key.range_index} of {key.recipe_id}", f"format {key.format}", str(payload))
            entry = self._store(key, payload, events)
            self._count("ranges", format=key.format)
            self._count("bytes", entry.size, format=key.format)
            if self.metrics is not None:
                self.metrics.seconds.observe(seconds)
        except (VdataError, ray.exceptions.RayError, OSError) as exc:
            if temp is not None:  # what a failed task (or all of its attempts) wrote
                temp.unlink(missing_ok=True)
            log.warning("materializing %s failed: %s", key, exc)
            result: Exception = exc if isinstance(exc, VdataError) else EngineError(f"materializing {key} failed: {exc}")
            with self._lock:
                self._inflight.pop(key, None)
            if future is not None:
                _settle(future, exception=result)
            return
        with self._lock:
            self._inflight.pop(key, None)
        if future is not None:
            _settle(future, result=entry)

    def count_lease(self, event: str, n: int = 1) -> None:
        """Count lease events (lease, heartbeat, finish, fail, fatal) for the dashboard."""
        if n:
            self._count("leases", n, event=event)

    def _count(self, name: str, value: float = 1.0, **tags: str) -> None:
        if self.metrics is not None:
            self.metrics.count(name, value, **tags)

