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

A first range should not wait for a worker: at start the engine readies a warm pool (one worker
per CPU, its imports done), a submitted recipe over a remote source has its first range started
at once (:meth:`Engine.stage_first`) and its file opened there (:meth:`Engine.ready_workers`),
and each range's steps are timed (:attr:`Engine.timings`).

The decisions (single flight, what to submit next, which plans to keep) are methods of
:class:`~service.core._engine_state.EngineState`, which knows nothing of Ray; this module
keeps the effects: a single collector thread runs the ``ray.wait`` loop, writer threads
commit the results and resolve the waiting futures.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ray
from ray._private import auto_init_hook

from service.core._engine_state import WAIT, EngineState, RangeTiming, Running, settle
from service.core.task import (Hooks, Steps, Target, Written, no_space, open_sources, over_time, run_dry, run_task,
                               warm_up)
from service.core.task_limits import Limits, marker_path, timed_out
from service.core.engine_config import EngineConfig
from service.core.ray_local import PrivateRay, dashboard_help
from service.core.task_names import check_task_name, range_task_name
from service.core.cache import CacheEntry, CacheKey, RangeCache
from service.core.claims import Claims, Verdict
from vdata.data.catalog import Catalog
from service.errors import EngineError, RayUnavailable, StorageFull, rebuild
from vdata.errors import VdataError
from vdata.data.plans import Plan, plan
from vdata.data.recipes import Recipe

__all__ = ["Engine", "EngineConfig"]


# Ray's auto-init: a ray.get after ray.shutdown() (a background thread of an engine that just
# stopped) would start a fresh local Ray in this process, none of vdata's settings (loopback,
# token), and the process exits when that stray Ray is stopped under it (seen: a test process
# gone with "not properly terminated"). vdata starts Ray only in Engine.start.
auto_init_hook.enable_auto_connect = False

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
) -> tuple[str, bytes | Written | tuple[str, str], int, Steps, dict[str, Any] | None, str]:
    """Ray's entry point: :func:`run_task`, writing the file where the node sees the cache
    folder (the driver's node, or any node on a shared file system: :meth:`Target.reachable`),
    else returning the bytes. The node's id comes back with the result and the range's
    provenance (where each range was made; stored with its cache entry), and a task on another
    node first notes it in Ray's key-value store under its attempt, so that the engine can name
    the ranges a node took with it when that node dies."""
    node = ray.get_runtime_context().get_node_id()
    if target is not None and node != target.node_id and attempt is not None:
        _note_node(attempt, node)
    write_to = target.temp if target is not None and target.reachable(node) else None
    return (*run_task(catalog_version, catalog_state, recipe_json, index, fmt, write_to, hooks, limits, attempt), node)


PROBE_SECONDS = 1.0  # how often the collector checks Ray's head and nodes (while it has work)
# "<prefix><attempt>/<node id>" for each node a task ran on, in Ray's internal key-value store (the
# GCS): one key per node, as Ray may start the retry (noting its new node) before the engine looks
_KV_PREFIX = "vdata/running/"


def _note_node(attempt: str, node: str) -> None:
    from ray.experimental import internal_kv

    try:
        internal_kv._internal_kv_put(f"{_KV_PREFIX}{attempt}/{node}", "1", overwrite=True)
    except Exception:  # noqa: BLE001 - a missing note only makes a node loss less precisely logged
        pass


def _dry_run_task(catalog_version: str, catalog_state: bytes, recipe_json: str, limits: Limits,
                  attempt: str) -> tuple[str, str] | None:
    """Ray's entry point of a recipe check's dry run: :func:`run_dry`."""
    return run_dry(catalog_version, catalog_state, recipe_json, limits, attempt)


def _open_task(catalog_version: str, catalog_state: bytes, recipe_json: str) -> int:
    """Ray's entry point of :meth:`Engine.ready_workers`: :func:`open_sources` in a worker."""
    return open_sources(catalog_version, catalog_state, recipe_json)


def _warm_up_task() -> tuple[int, float]:
    """Ray's entry point of the warm-up (:meth:`Engine._warm_up`): :func:`warm_up` in a worker,
    which thereby imports this module too; the worker's process id and when it had imported."""
    return os.getpid(), warm_up()


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
        # Cache hits and misses are the gateway's (one definition: service.http.range_responses);
        # look-ahead (stage, read-ahead, a job's look-ahead) is counted apart: nobody waits for it.
        self.lookahead = metrics.Counter("vdata_lookahead_ranges", "Ranges queued ahead of any request")
        self.leases = metrics.Counter("vdata_lease_events", "Lease events", tag_keys=("event",))
        self.counts: dict[str, int] = {}

    def count(self, name: str, value: float = 1.0, **tags: str) -> None:
        if not value:
            return
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
        self._calls: dict[Callable[..., Any], Any] = {}  # plain functions run by submit_call, as Ray tasks
        self._open_task: Any = None  # the task that opens a recipe's sources in a worker, once started
        self._waiters: list[threading.Thread] = []  # threads waiting for warm-up/open results (joined at shutdown)
        self.dashboard_url: str | None = None  # Ray's dashboard of the embedded Ray, when it runs one
        self._node_id = ""
        self.metrics: _Metrics | None = None
        self.claims: Claims | None = None  # single flight across gateways (set before start)
        self._recipes: dict[CacheKey, str] = {}  # the recipe JSON of keys another gateway makes
        self.made_on: dict[str, int] = {}  # node id -> ranges made there (this engine's life)
        self.timings: deque[RangeTiming] = deque(maxlen=256)  # the steps of the last ranges made
        self.warmed: Future[int] = Future()  # how many Ray workers the warm-up readied (see start)
        self.shipped = 0  # ranges whose bytes came through Ray's object store (no shared folder)
        self._folder_probe: tuple[str, str] | None = None  # see RangeCache.write_probe
        # Ray's head: where its GCS listens, whether it went away (why), when to try it again
        self._gcs: tuple[str, int] | None = None
        self._away: str | None = None
        self._retry_at = 0.0
        self._ray_lock = threading.Lock()  # held around connecting to / leaving Ray; outside _lock
        self._next_probe = 0.0
        self._dead_nodes: set[str] = set()
        self._node_retries: dict[str, int] = {}  # attempt -> node losses it survived

    @property
    def submitted(self) -> int:
        """Tasks submitted so far, for tests and /metrics."""
        with self._lock:
            return self._state.submitted

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> Engine:
        if not ray.is_initialized():
            if self.config.address:
                self._connect()
            else:  # always our own instance, on loopback, with its own token (see service.core.ray_local)
                private = PrivateRay.prepare(self.config.data_dir, self.config.temp_dir)
                try:
                    private.activate()
                    _reload_ray_environment(loopback=True)
                    context = ray.init(**private.init_kwargs(self.config.num_cpus, self.config.object_store_bytes,
                                                             self.config.include_dashboard, self.config.dashboard_port),
                                       _system_config=self.config.ray_system_config)
                except BaseException:
                    ray.shutdown()
                    private.close()
                    _reload_ray_environment(loopback=False)
                    raise
                self._private_ray = private
                self._announce_dashboard(getattr(context, "dashboard_url", None), private)
            self._started_ray = True
        self._joined()
        if self.config.worker_writes:
            self._folder_probe = self.cache.write_probe()
        self._task = ray.remote(max_retries=self.config.max_retries, retry_exceptions=False)(_materialize_task)
        self._dry_task = ray.remote(max_retries=self.config.max_retries, retry_exceptions=False)(_dry_run_task)
        self._open_task = ray.remote(num_cpus=1, max_retries=0)(_open_task)
        self.metrics = _Metrics()
        self._warm_up()
        self._collector = threading.Thread(target=self._collect, name="vdata-engine-collector", daemon=True)
        self._collector.start()
        if self.claims is not None:
            self.claims.start(self._made_elsewhere, self._claim_freed)
        return self

    def _warm_up(self) -> None:
        """Ready a warm pool of Ray workers: one no-op task per CPU of the cluster (at most
        ``max_in_flight``), submitted together so that Ray starts that many workers at once, each
        importing Numba, uproot, awkward, pyarrow and the task's modules before any range is asked
        for (a fresh worker's start and imports otherwise delay the first range by seconds). Not
        waited for: :attr:`warmed` resolves with the number of distinct workers readied; a range
        asked for meanwhile waits for a worker, as it would for a fresh one."""
        if not self.config.warm_workers:
            self.warmed.set_result(0)
            return
        task = ray.remote(num_cpus=1, max_retries=0)(_warm_up_task)
        refs = [task.options(name="vdata-warm-up").remote() for _ in range(self._pool_size())]
        self._background(self._warmed, refs, name="vdata-engine-warm-up")

    def _pool_size(self) -> int:
        """How many workers the warm pool has: one per CPU of the cluster, at most ``max_in_flight``."""
        return max(1, min(int(ray.cluster_resources().get("CPU", 1)), self.config.max_in_flight))

    def ready_workers(self, the_plan: Plan) -> int:
        """Have each worker of the warm pool open the source file of the plan's first range
        (:func:`~service.core.task.open_sources`), so that the first range, whichever worker
        makes it, does not wait for the open's round trips; called when a recipe is submitted
        (after its dry run), before anyone asks for a range. Not waited for; nothing is read
        but the file's metadata. Returns how many tasks were submitted (0: nothing to open)."""
        recipe = the_plan.recipe
        if not self.config.warm_workers or not the_plan.ranges or self._open_task is None or self._away is not None \
                or not self._remote_source(the_plan):
            return 0  # a generator opens nothing, a local file opens in a millisecond
        version, state = self._catalog_state()
        recipe_json = recipe.to_json()
        refs = [self._open_task.options(name="vdata-open-sources").remote(version, state, recipe_json)
                for _ in range(self._pool_size())]
        self._background(self._opened, the_plan.id, refs, name="vdata-engine-open")
        return len(refs)

    def _opened(self, recipe_id: str, refs: list[Any]) -> None:
        for error in self._results(refs):
            if isinstance(error, Exception):  # the range's own task opens the file, and says what failed
                log.info("a Ray worker could not open the source of %s ahead of its first range: %s", recipe_id,
                         _short(error))

    def _warmed(self, refs: list[Any]) -> None:
        pids: set[int] = set()
        for result in self._results(refs):
            if isinstance(result, Exception):  # a worker not warmed only costs the first range time
                log.info("a Ray worker's warm-up failed (the first ranges may wait for a worker start): %s",
                         _short(result))
            else:
                pids.add(result[0])
        self.warmed.set_result(len(pids))

    def _results(self, refs: list[Any]) -> Iterator[Any]:
        """Each ref's value (or its exception) as it comes, until the engine stops: in short
        ray.wait rounds, never blocked in ray.get when :meth:`shutdown` stops Ray (Ray's driver
        ended the process when shut down under a thread blocked in a get)."""
        pending = list(refs)
        while pending and not self._stop.is_set():
            done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            for ref in done:
                try:
                    yield ray.get(ref)  # ready: returns at once
                except Exception as exc:  # noqa: BLE001 - handed to the caller
                    yield exc

    def _background(self, target: Callable[..., None], *args: Any, name: str) -> None:
        """A thread that waits for Ray results; :meth:`shutdown` joins it before stopping Ray."""
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._waiters = [t for t in self._waiters if t.is_alive()] + [thread]
        thread.start()

    def _announce_dashboard(self, address: str | None, private: PrivateRay) -> None:
        """Log where the embedded Ray's dashboard answers and how to get its token (the
        dashboard asks for it first); a dashboard asked for but not started is a warning."""
        if not self.config.include_dashboard:
            return
        if not address:
            log.warning("Ray's dashboard did not start (asked for on 127.0.0.1:%d); see Ray's logs in %s",
                        self.config.dashboard_port, private.temp_dir)
            return
        self.dashboard_url = address if "://" in address else f"http://{address}"
        for line in dashboard_help(self.dashboard_url, private.token_path):
            log.info("%s", line)

    def _connect(self) -> None:
        """Join the cluster at ``address``. On a loopback address Ray would rewrite 127.0.0.1 to
        the host's address, where a head started with ``--node-ip-address 127.0.0.1`` does not
        listen (the driver then retries for minutes): this process's Ray is told to stay on
        loopback, as for the embedded Ray."""
        assert self.config.address is not None
        host = self.config.address.removeprefix("ray://").rpartition(":")[0].strip("[]")
        loopback = host in ("127.0.0.1", "localhost", "::1")
        if loopback:
            _reload_ray_environment(loopback=True)
        ray.init(address=self.config.address, log_to_driver=False,
                 **({"_node_ip_address": "127.0.0.1"} if loopback else {}))

    def _joined(self) -> None:
        """What the engine learns from a Ray it (re)joined: its node, where its GCS listens."""
        self._node_id = ray.get_runtime_context().get_node_id()
        host, _, port = ray.get_runtime_context().gcs_address.rpartition(":")
        self._gcs = (host, int(port))
        self._catalog_ref = None  # an object of a Ray left behind is gone with it
        self._dead_nodes = {n["NodeID"] for n in ray.nodes() if not n["Alive"]}

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._collector is not None:
            self._collector.join(timeout=10)
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for thread in waiters:
            thread.join(timeout=5)
        self._writers.shutdown(wait=True)
        if self.claims is not None:
            self.claims.stop()  # releases what this gateway still holds: another takes it at once
        with self._lock:
            running = self._state.stop(EngineError("the engine stopped before the range was ready"))
        unfinished = [task.temp for task in running if task.temp is not None]
        unfinished += [marker_path(task.attempt) for task in running]
        if self._started_ray or (self.config.address and self._away is not None and ray.is_initialized()):
            ray.shutdown()  # stops the workers, so no task writes a temporary file any more
            self._started_ray = False
        if self._private_ray is not None:
            self._private_ray.close()  # what ray.shutdown left (its agents), the environment, the token
            self._private_ray = None
            _reload_ray_environment(loopback=False)
        for temp in unfinished:  # (a task on an outside cluster may still; the next start cleans up)
            temp.unlink(missing_ok=True)
        if self._folder_probe is not None:
            self.cache.remove_probe()
            self._folder_probe = None

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
        the dry-run limits; raises what it found (a RecipeError, a TaskLimitExceeded, ...). A
        recipe that passed over a remote source has its first range started (:meth:`stage_first`)
        and its file opened in the warm pool (:meth:`ready_workers`)."""
        if the_plan.ops:  # no steps: nothing a dry run could find that reading a range would not
            self._dry_run(the_plan)
        self.stage_first(the_plan)
        self.ready_workers(the_plan)

    def stage_first(self, the_plan: Plan) -> int:
        """Start making the first ``stage_on_submit`` ranges of a recipe that reads a remote
        file, as Arrow (what ``Client.stream`` asks for), when it is submitted: its first range
        is then on its way while the payload connects and lists the ranges, instead of starting
        with the payload's request and paying the round trips to the site after it. Local files
        and generators make a range in milliseconds: nothing is started for them. Returns how
        many ranges were started (0: none, or all cached or in flight)."""
        count = min(self.config.stage_on_submit, len(the_plan.ranges))
        if count == 0 or self._dry_task is None or self._away is not None or not self._remote_source(the_plan):
            return 0
        return self.prefetch(the_plan.recipe, list(range(count)), "arrow", why="submit")

    def _remote_source(self, the_plan: Plan) -> bool:
        recipe = the_plan.recipe
        return not recipe.is_generated and any(f.remote for f in self.catalog.dataset(recipe.source["dataset"]).files)

    def _dry_run(self, the_plan: Plan) -> None:
        if self._dry_task is None:
            raise EngineError(f"cannot check {the_plan.id}: the engine is not running (its dry run needs Ray)")
        self.require_ray(f"the dry run of {the_plan.id}")
        version, state = self._catalog_state()
        attempt = uuid.uuid4().hex
        recipe_json = the_plan.recipe.to_json()
        name = check_task_name(the_plan.id, recipe_json)
        ref = self._dry_task.options(name=name).remote(version, state, recipe_json, self.config.dry_run_limits, attempt)
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

    def request(self, recipe: Recipe, index: int, fmt: str, why: str = WAIT) -> Future[CacheEntry]:
        """A future for the range; submits a task unless it is cached or already in flight.
        ``why``: :data:`WAIT` (a client waits for it) or the policy making it ahead; it names
        the task on Ray's dashboard (:mod:`service.core.task_names`)."""
        the_plan = self.plan(recipe)
        the_plan.range(index)  # RangeOutOfBounds before anything is submitted
        key = CacheKey(recipe.id, index, fmt)
        with self._lock:
            future = self._state.join(key, why)
        if future is not None:
            return future
        entry = self.cache.get(key)
        if entry is not None:
            done: Future[CacheEntry] = Future()
            done.set_result(entry)
            return done
        self.require_ray(f"materializing {key}")
        with self._lock:
            future = self._state.ask(key, recipe.to_json(), why)
        self._wake.set()
        return future

    def prefetch(self, recipe: Recipe, indices: list[int], fmt: str, why: str = "lookahead") -> int:
        """Start materializing ranges nobody has asked for yet; returns how many. ``why`` names
        the policy (``lookahead``, ``stage``, ``readahead``) in the tasks' names."""
        started = 0
        for index in indices:
            key = CacheKey(recipe.id, index, fmt)
            with self._lock:
                asked = self._state.waiter(key) is not None
            if asked or self.cache.contains(key):
                continue
            self.request(recipe, index, fmt, why)
            started += 1
        self._count("lookahead", started)
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
            with self._lock:
                why = self._state.why(key)
            if self.claims is not None and not self._claim(key, recipe_json, attempt):
                continue
            try:
                temp = self.cache.temp_path(key) if self.config.worker_writes else None
            except OSError as exc:  # the cache folder cannot even hold a new name (disk full)
                self._fail(key, None, attempt, exc)
                continue
            target = Target(self._node_id, str(temp), self._folder_probe) if temp is not None else None
            name = range_task_name(key, recipe_json, why)
            submitted = time.time()
            ref = self._task.options(name=name).remote(version, state, recipe_json, key.range_index, key.format,
                                                       target, hooks, limits, attempt)
            with self._lock:
                self._state.started(ref, Running(key, temp, attempt, submitted))

    def _claim(self, key: CacheKey, recipe_json: str, attempt: str) -> bool:
        """Whether this gateway makes ``key`` now (it claimed it); else the key is answered from
        the cache or watched until another gateway's claim on it ends."""
        assert self.claims is not None
        try:
            verdict = self.claims.claim(key)
        except Exception as exc:  # noqa: BLE001 - the database failed: the waiters hear it
            self._fail(key, None, attempt, exc)
            return False
        if verdict is Verdict.OURS:
            return True
        with self._lock:
            self._recipes[key] = recipe_json
        if verdict is Verdict.CACHED:
            self._made_elsewhere(key)
        else:
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
            if self._away is not None or not self._watch():
                self._wake.wait(timeout=0.5)  # Ray is away: nothing runs; a request reconnects
                self._wake.clear()
                continue
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
            returned = time.time()
            for ref in ready:
                with self._lock:
                    task = self._state.ended(ref)
                # the next task is submitted while this range is committed
                self._writers.submit(self._finish, ref, task, returned)

    # -- Ray's head and nodes --------------------------------------------------------------------

    def _watch(self) -> bool:
        """Once a second: is Ray's head (GCS) reachable, and did a node that ran our tasks die?
        Returns False once the head is gone (the engine then refuses work: :meth:`require_ray`).

        Why a probe of our own: the driver's Ray client waits out its GCS reconnect timeout
        (60 s) and then ends the whole process; leaving Ray as soon as its port refuses keeps
        the gateway up, answering 503 for what needs Ray."""
        now = time.monotonic()
        if now < self._next_probe:
            return True
        self._next_probe = now + PROBE_SECONDS
        if not self._gcs_reachable():
            self._lose_ray("its port refuses connections")
            return False
        with self._lock:
            tasks = self._state.tasks()
        if tasks:
            self._log_dead_nodes(tasks)
        return True

    def _gcs_reachable(self) -> bool:
        if self._gcs is None:
            return False
        try:
            socket.create_connection(self._gcs, timeout=PROBE_SECONDS).close()
        except OSError:
            return False
        return True

    def _log_dead_nodes(self, tasks: list[Running]) -> None:
        """One WARNING per range in flight on a node Ray has just declared dead (Ray retries
        it elsewhere by itself, up to ``max_retries``): the range, the node, the retry."""
        try:
            nodes = ray.nodes()
        except Exception:  # noqa: BLE001 - the head probe above decides whether Ray is away
            return
        dead = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in nodes if not n["Alive"]}
        new = {node: address for node, address in dead.items() if node not in self._dead_nodes}
        if not new:
            return
        self._dead_nodes |= new.keys()
        from ray.experimental import internal_kv

        for task, node in [(task, node) for task in tasks for node in new]:
            try:
                if not internal_kv._internal_kv_exists(f"{_KV_PREFIX}{task.attempt}/{node}"):
                    continue
            except Exception:  # noqa: BLE001
                continue
            retry = self._node_retries[task.attempt] = self._node_retries.get(task.attempt, 0) + 1
            log.warning("range %d of %s (%s) was being made on Ray node %s at %s, which Ray declared dead; "
                        "Ray retries it on another node (retry %d of %d, max_retries)", task.key.range_index,
                        task.key.recipe_id, task.key.format, node, new[node], retry, self.config.max_retries)

    def _lose_ray(self, why: str) -> None:
        """Ray's head is gone: settle every waiter with :class:`RayUnavailable` and leave Ray
        (before its client gives up and ends this process); cached ranges and jobs still serve."""
        with self._ray_lock:
            if self._away is not None:
                return
            self._away = why
            self._away_since = time.monotonic()
            self._retry_at = self._away_since + self.config.ray_retry_seconds
            with self._lock:
                running = self._state.stop(self._unavailable("the range"))
            for task in running:
                if task.temp is not None:
                    task.temp.unlink(missing_ok=True)
                marker_path(task.attempt).unlink(missing_ok=True)
            self._node_retries.clear()
            log.warning("Ray's head (GCS at %s) cannot be reached (%s): %d ranges in flight failed; answering 503 "
                        "for what needs Ray, reconnecting at most every %g s (ray_retry_seconds)", self._where(), why,
                        len(running), self.config.ray_retry_seconds)
            ray.shutdown()
        for task in running:  # outside the lock (a database call): another gateway may make them now
            self._release(task.key)

    def _where(self) -> str:
        return f"{self._gcs[0]}:{self._gcs[1]}" if self._gcs is not None else "?"

    def _unavailable(self, what: str) -> RayUnavailable:
        since = time.monotonic() - getattr(self, "_away_since", time.monotonic())
        how = "reconnecting on a later request" if self.config.address else "the embedded Ray died: restart the gateway"
        return RayUnavailable(f"{what} needs Ray, whose head (GCS at {self._where()}) has not been reachable for "
                              f"{since:.0f} s ({self._away}); cached ranges and jobs are still served; {how}",
                              retry_after=max(1, math.ceil(self.config.ray_retry_seconds)))

    def require_ray(self, what: str) -> None:
        """Raise :class:`RayUnavailable` if Ray's head is away and cannot be rejoined now (a
        try at most every ``ray_retry_seconds``, only for an outside cluster: ``address``)."""
        if self._away is None:
            return
        if self.config.address and time.monotonic() >= self._retry_at:
            self._reconnect()
        if self._away is not None:
            raise self._unavailable(what)

    def _reconnect(self) -> None:
        with self._ray_lock:
            if self._away is None or time.monotonic() < self._retry_at:
                return
            self._retry_at = time.monotonic() + self.config.ray_retry_seconds
            if not self._gcs_reachable():
                return
            try:
                self._connect()
                self._joined()
            except Exception as exc:  # noqa: BLE001 - still away; the next request tries again
                log.warning("reconnecting to Ray at %s failed: %s", self.config.address, _short(exc))
                ray.shutdown()
                return
            away = time.monotonic() - self._away_since
            self._away = None
            self._next_probe = 0.0
            log.warning("reconnected to Ray at %s after %.1f s away", self.config.address, away)
        self._wake.set()

    # -- results -------------------------------------------------------------------------------

    def _store(self, key: CacheKey, payload: bytes | Written, events: int, provenance: str | None) -> CacheEntry:
        """Commit the file a worker wrote, or write the bytes a task on another node sent."""
        if isinstance(payload, Written):
            return self.cache.put_file(key, payload.temp, payload.size, payload.adler32, events, provenance)
        with self._lock:
            self.shipped += 1
        return self.cache.put(key, payload, events, provenance)

    def _finish(self, ref: Any, task: Running, returned: float) -> None:
        """Fetch a finished task's result, commit it to the cache, resolve the waiters. Every
        outcome resolves them: an unexpected error too (else they would wait out their timeout)."""
        key, temp, attempt = task.key, task.temp, task.attempt
        try:
            status, payload, events, steps, made, node = ray.get(ref)
            self._made_on(key, attempt, node, status)
            if status == "error":
                raise rebuild(*payload)
            entry = self._store(key, payload, events, json.dumps({**made, "ray_node_id": node}) if made else None)
            self._count("ranges", format=key.format)
            self._count("bytes", entry.size, format=key.format)
            if self.metrics is not None:
                self.metrics.seconds.observe(steps.seconds)
            self._timed(key, task.submitted, steps, returned)
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

    def _timed(self, key: CacheKey, submitted: float, steps: Steps, returned: float) -> None:
        """Keep how long each step of a range took (:attr:`timings`, the last 256; a DEBUG record)."""
        timing = RangeTiming.of(key, submitted, steps, returned, time.time())
        with self._lock:
            self.timings.append(timing)
        log.debug("range %d of %s (%s): %s", key.range_index, key.recipe_id, key.format, timing.describe())

    def _made_on(self, key: CacheKey, attempt: str, node: str, status: str) -> None:
        """Record where a range was made (``made_on``, a DEBUG record with ``node_id``), note a
        range that survived a node loss, and drop the task's note in Ray's key-value store."""
        with self._lock:
            self.made_on[node] = self.made_on.get(node, 0) + 1
        log.debug("range %d of %s (%s) made on Ray node %s: %s", key.range_index, key.recipe_id, key.format, node,
                  status, extra={"node_id": node, "range_key": str(key)})
        retries = self._node_retries.pop(attempt, 0)
        if retries:
            log.info("range %d of %s (%s) was made on Ray node %s after %d node loss(es)", key.range_index,
                     key.recipe_id, key.format, node, retries)
        if node == self._node_id:
            return
        from ray.experimental import internal_kv

        try:
            prefix = f"{_KV_PREFIX}{attempt}/"
            ran_on = [k.decode().rpartition("/")[2] if isinstance(k, bytes) else k.rpartition("/")[2]
                      for k in internal_kv._internal_kv_list(prefix)]
            internal_kv._internal_kv_del(prefix, del_by_prefix=True)
        except Exception:  # noqa: BLE001 - a note left behind costs a few bytes in the GCS
            return
        lost = [n for n in ran_on if n != node]
        if lost and not retries:  # Ray retried it before it declared the node dead: said now
            log.warning("range %d of %s (%s) was being made on Ray node %s, which was lost; Ray retried it "
                        "(retry %d of %d, max_retries) and it was made on node %s", key.range_index,
                        key.recipe_id, key.format, ", ".join(lost), len(lost), self.config.max_retries, node)

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

    # -- other work as Ray tasks (the merge of job outputs: service/core/merge.py) -------------------

    def submit_call(self, fn: Callable[..., Any], *args: Any, name: str) -> Future[Any]:
        """Run ``fn(*args)`` as a Ray task named ``name`` on this gateway's node (it reads and
        writes files in the folders this node sees); a future of its result. Ray retries it if
        its worker dies (``max_retries``); an error it raises comes back from the future."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if self._dry_task is None:
            raise EngineError(f"cannot run {name}: the engine is not running")
        self.require_ray(name)
        remote = self._calls.get(fn)
        if remote is None:
            remote = self._calls[fn] = ray.remote(max_retries=self.config.max_retries, retry_exceptions=False)(fn)
        where = NodeAffinitySchedulingStrategy(self._node_id, soft=False)
        return remote.options(name=name, scheduling_strategy=where).remote(*args).future()
