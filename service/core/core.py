"""The service core: catalog, recipes, cache, jobs and the Ray engine behind one object.

Everything the HTTP gateway does is one call here. All durable state (catalog, recipes,
cache index, jobs) lives in one database under the data folder, so a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from transforms.registry import Transform

from service.core.job_thread import JobThread
from service.core.cache import CacheEntry, RangeCache, split_stored, stored_format
from service.core.claims import Claims
from vdata.data.catalog import Catalog
from service.core.db import Database
from service.core.engine import Engine, EngineConfig
from service.core.jobs import JobStatus, JobStore, Lease
from service.core._output_rows import NONE, OutputRow
from service.core.merge import Merger
from service.core.outputs import OutputStore, Upload
from vdata.data.plans import Plan
from vdata.data.recipes import Recipe
from vdata.data.remote import RemoteOptions
from vdata.data.sources import SourceDataset
from service.core.catalog_store import CatalogStore
from service.core import provenance_store

__all__ = ["Core", "CoreConfig"]

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoreConfig:
    """Where the state lives and how big things may get."""

    data_dir: Path
    engine: EngineConfig = field(default_factory=EngineConfig)
    cache_budget_bytes: int = 2 * 1024**3
    database_url: str | None = None  # default: sqlite:///<data_dir>/vdata.db
    lookahead_format: str = "arrow"
    remote: RemoteOptions = field(default_factory=RemoteOptions)  # timeouts of http(s) sources
    cache_dir: Path | None = None  # default: <data_dir>/cache; gateways that share a database share it too
    cache_debris_seconds: float = 3600.0  # leftovers in the cache folder older than this are removed at start
    claim_seconds: float = 30.0  # a dead gateway's claim on a range (or on a job's merge) is taken over after this
    outputs_merge_bytes: int = 256 * 1024**2  # input bytes per merged file of job outputs
    outputs_retention_seconds: float = 86400.0  # range outputs kept this long after their job's merge
    merge_poll_seconds: float = 2.0  # how often the merger looks for done jobs (it is also woken by finish/fail)

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir is not None else Path(self.data_dir) / "cache"

    @property
    def outputs_path(self) -> Path:
        """Job outputs: beside the cached ranges, in the folder every gateway of a database shares."""
        return self.cache_path / "outputs"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{Path(self.data_dir).resolve() / 'vdata.db'}"


class Core:
    """One service node. ``start()`` opens the database, loads the catalog and starts Ray."""

    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        os.makedirs(config.data_dir, exist_ok=True)
        self.db = Database(config.db_url)
        self.catalog = Catalog(config.remote)
        self.store = CatalogStore(self.db)
        self.warnings = self.store.load(self.catalog)
        self.cache = RangeCache(config.cache_path, self.db, config.cache_budget_bytes,
                                debris_seconds=config.cache_debris_seconds)
        self.jobs = JobStore(self.db)
        self.outputs = OutputStore(self.db, self.jobs, config.outputs_path)
        self.engine = Engine(self.catalog, self.cache, config.engine)
        self.engine.claims = Claims(self.db, config.claim_seconds)  # single flight across gateways
        # Job calls are short database transactions: one thread runs them all, in order, so
        # hundreds of concurrent workers queue here instead of convoying on SQLite's lock, and
        # the calls that queued together share one commit (group commit, service/core/job_thread.py).
        self._job_thread = JobThread(self.db)
        # Look-ahead after a lease or a failure runs here, not on the job thread: the job thread
        # holds the database's write lock for a whole batch, and look-ahead reads the cache and
        # queues Ray work (the lock order in service/core/cache.py; no transaction waits on either).
        self._lookahead_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vdata-lookahead")
        self._lookahead_lock = threading.Lock()  # a leaf: guards the set below only
        self._lookahead_pending: set[str] = set()
        self.merger = Merger(self.outputs, self.engine.submit_call, self.jobs.status,
                             target_bytes=config.outputs_merge_bytes, retention_seconds=config.outputs_retention_seconds,
                             claim_seconds=config.claim_seconds, poll_seconds=config.merge_poll_seconds)

    def start(self) -> Core:
        self.engine.start()
        self.merger.start()  # merges need Ray: a core that never starts leaves them to others
        return self

    def close(self) -> None:
        self.merger.stop()
        self._job_thread.close()  # runs what is queued: an acknowledged call is committed
        self._lookahead_pool.shutdown(wait=True, cancel_futures=True)
        self.engine.shutdown()
        self.cache.close()
        self.db.close()

    def __enter__(self) -> Core:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- catalog -----------------------------------------------------------------------------

    def add_dataset(self, name: str, paths: Sequence[str], tree: str) -> SourceDataset:
        ds = self.catalog.add_dataset(name, paths, tree)
        self.store.save_dataset(name, self.catalog)
        return ds

    def add_transform(
        self, name: str, source: str, inputs: Mapping[str, str], outputs: Mapping[str, str], kind: str = "event",
        max_size: str | int | None = None,
    ) -> Transform:
        transform = self.catalog.add_transform(name, source, inputs, outputs, kind, max_size)
        self.store.save_transform(name, self.catalog)
        return transform

    # -- recipes -----------------------------------------------------------------------------

    def submit(self, data: Mapping[str, Any], limits: Callable[[Plan], None] | None = None) -> Plan:
        """Parse, check and store a recipe; the plan says its size, ranges and schema.
        ``limits(plan)`` may refuse it (by raising) before the dry run costs anything."""
        recipe = Recipe.from_dict(data, self.catalog)
        plan = self.engine.plan(recipe)
        if limits is not None:
            limits(plan)
        self.engine.check(plan)  # the dry run, in a Ray worker under limits: never here
        self.store.save_recipe(recipe)
        return plan

    def plan(self, recipe_id: str) -> Plan:
        return self.engine.plan(self.store.recipe(recipe_id))

    def range(self, recipe_id: str, index: int, fmt: str, timeout: float | None = None) -> CacheEntry:
        """A range's cache entry, materialized now if it is not cached."""
        return self.engine.get(self.store.recipe(recipe_id), index, fmt, timeout=timeout)

    def request(self, recipe_id: str, index: int, fmt: str) -> Future[CacheEntry]:
        return self.engine.request(self.store.recipe(recipe_id), index, fmt)

    def provenance(self, recipe_id: str, index: int, fmt: str | None = None) -> dict[str, Any]:
        """How range ``index`` was made (:mod:`service.core.provenance_store`): of its cache entry
        in the stored format ``fmt``, or of the one made last; NotMaterialized if none is cached."""
        self.plan(recipe_id).range(index)  # RecipeNotFound, RangeOutOfBounds
        return provenance_store.range_provenance(self.db, recipe_id, index, fmt)

    def job_provenance(self, job_id: str, index: int) -> dict[str, Any]:
        """A job's range: its recipe range's provenance with the job's record of the range and
        of its uploaded output."""
        recipe_id = self.jobs.recipe_id(job_id)
        view = provenance_store.job_range_provenance(self.db, job_id, recipe_id, index)
        return {**view, "output": provenance_store.output_provenance(self.outputs.range_output(job_id, index))}

    def stage(self, recipe_id: str, first: int, count: int, fmt: str, why: str = "stage") -> list[int]:
        """Pre-stage ranges ``first .. first+count-1`` (clipped at the last): start materializing
        them now, ahead of any request, so a payload that starts later never waits for them.
        ``fmt`` is a stored format (:func:`~service.core.cache.stored_format`: ``arrow+lz4`` ...).

        Returns the indices staged (those already cached or in flight count: they will be there).
        ``why`` names the policy in the tasks' names on Ray's dashboard (``stage``, ``readahead``).
        ``RangeOutOfBounds`` if ``first`` is not a range of the recipe.
        """
        fmt = stored_format(*split_stored(fmt))  # FormatError for a format or compression we do not make
        plan = self.plan(recipe_id)
        plan.range(first)
        indices = list(range(first, min(first + count, len(plan.ranges))))
        self.engine.prefetch(self.store.recipe(recipe_id), indices, fmt, why)
        return indices

    # -- jobs --------------------------------------------------------------------------------

    def create_job(self, recipe_id: str, max_attempts: int = 3, lease_seconds: float = 60.0, outputs: str = NONE,
                   output_format: str = "parquet") -> str:
        plan = self.plan(recipe_id)
        job_id = self.jobs.create_job(recipe_id, plan.ranges, max_attempts=max_attempts, lease_seconds=lease_seconds,
                                      outputs=outputs, output_format=output_format)
        self.lookahead(job_id)
        return job_id

    def lease(self, job_id: str, worker: str, n: int) -> list[Lease]:
        leases = self.jobs.lease(job_id, worker, n)
        self.engine.count_lease("lease", len(leases))
        self.lookahead_later(job_id)
        return leases

    def heartbeat(self, job_id: str, index: int, worker: str) -> float:
        deadline = self.jobs.heartbeat(job_id, index, worker)
        self.engine.count_lease("heartbeat")
        return deadline

    def finish(self, job_id: str, index: int, worker: str) -> None:
        self.jobs.finish(job_id, index, worker)
        self.engine.count_lease("finish")
        self.merger.wake()  # the job may be done: its outputs merge now

    def fail(self, job_id: str, index: int, worker: str, message: str, fatal: bool = False) -> None:
        self.jobs.fail(job_id, index, worker, message, fatal)
        self.engine.count_lease("fatal" if fatal else "fail")
        self.lookahead_later(job_id)
        self.merger.wake()

    def begin_output(self, job_id: str, index: int, worker: str, fmt: str) -> Upload:
        """Check an output upload may start (the job takes outputs, the worker holds the range);
        the temporary file that receives its body."""
        return self.outputs.begin(job_id, index, worker, fmt)

    def commit_output(self, upload: Upload, job_id: str, index: int, worker: str, fmt: str,
                      adler32: int) -> tuple[OutputRow, bool]:
        """Check and store a received output (see :mod:`service.core.outputs`); (the range's
        output, whether it is new: False for a repeat of the same bytes)."""
        out = self.outputs.commit(upload, job_id, index, worker, fmt, adler32)
        input_id = provenance_store.input_id(self.db, self.jobs.recipe_id(job_id), index)
        return self.outputs.record(replace(out, provenance_id=input_id))  # the input it was made from

    def status(self, job_id: str) -> JobStatus:
        return self.jobs.status(job_id)

    def in_job_thread(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run a job call on the job thread; await the result from an event loop. The result
        comes after the commit of the call's writes (grouped with the calls queued with it)."""
        return self._job_thread.run_async(fn, *args)

    def lookahead_later(self, job_id: str) -> None:
        """Run :meth:`lookahead` for the job soon, on the look-ahead thread (once, however many
        leases asked for it meanwhile). Safe inside a transaction: it only queues."""
        with self._lookahead_lock:
            if job_id in self._lookahead_pending:
                return
            self._lookahead_pending.add(job_id)
        try:
            self._lookahead_pool.submit(self._lookahead_now, job_id)
        except RuntimeError:  # closing: look-ahead is an optimisation, nothing is lost
            with self._lookahead_lock:
                self._lookahead_pending.discard(job_id)

    def _lookahead_now(self, job_id: str) -> None:
        with self._lookahead_lock:
            self._lookahead_pending.discard(job_id)
        try:
            self.lookahead(job_id)
        except Exception as exc:  # noqa: BLE001 - an optimisation: the leased range is made on request
            log.warning("look-ahead for job %s failed: %s", job_id, exc)

    def lookahead(self, job_id: str) -> int:
        """Materialize the next ready ranges of a job before anyone leases them."""
        n = self.config.engine.lookahead
        if n == 0:
            return 0
        ready = self.jobs.next_ready(job_id, n)
        if not ready:
            return 0
        recipe = self.store.recipe(self.jobs.recipe_id(job_id))
        return self.engine.prefetch(recipe, [r.index for r in ready], self.config.lookahead_format, "lookahead")
