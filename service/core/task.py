"""The engine's task body as it runs in a Ray worker: materialize one range and hand it over,
either as the encoded bytes or as a file the worker wrote into the cache folder.

No Ray here: :mod:`service.core.engine` wraps :func:`run_task` as the Ray task and decides, from the
node the task landed on, whether it may write the file (only on the driver's node, whose
disk the cache is on).
"""

from __future__ import annotations

import errno
import mmap
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from vdata.data.catalog import Catalog
from vdata.checksum import adler32
from vdata.errors import TaskLimitExceeded, VdataError
from vdata.formats import encode_table, write_encoded
from service.core._cache_keys import split_stored
from service.core.task_limits import Limits, TaskLimits, marker_path, timed_out
from vdata.data.plans import Plan, dry_run, materialize, plan
from vdata.data.recipes import Recipe
from vdata.provenance import describe, made

__all__ = ["Hooks", "Steps", "Target", "Written", "no_space", "open_sources", "over_time", "run_dry", "run_task",
           "warm_up", "write_temp"]

_WORKER_CATALOGS: dict[str, Catalog] = {}
_WORKER_PLANS: dict[str, Plan] = {}  # by recipe id, for the catalog version in _WORKER_CATALOGS
_IMPORTED_AT = time.time()  # when this worker had imported this module (and with it Numba, uproot, awkward)
_TASKS_RUN = 0  # tasks of any kind (warm-up included) this worker process ran: 0 at the first (a fresh worker)


@dataclass(frozen=True, slots=True)
class Steps:
    """When a task passed each step, in seconds since the epoch (``time.time``: comparable with the
    driver's clock on one node): it started, had its plan (the catalog unpickled, the recipe
    planned), had its table (the source read, the steps run) and had written or encoded it.
    ``imported`` is when the worker had imported this module; ``fresh``: the worker's first task."""

    imported: float
    started: float
    planned: float = 0.0
    made: float = 0.0
    written: float = 0.0
    fresh: bool = False

    @property
    def seconds(self) -> float:
        """The task's own time (0 for a task that failed before writing)."""
        return max(self.written - self.started, 0.0)


def warm_up() -> float:
    """A no-op task that makes a Ray worker import what materializing needs (this module's
    imports: Numba, uproot, awkward, pyarrow; Numba's and uproot's own lazy parts), so that the
    first range does not pay for it. Returns when this worker had imported this module."""
    import awkward  # noqa: F401 - imported for its side effect: the worker has it loaded
    import numba  # noqa: F401
    import uproot  # noqa: F401

    _ran()
    return _IMPORTED_AT


def _ran() -> bool:
    """Count a task of this worker; whether it was the worker's first (a fresh worker)."""
    global _TASKS_RUN
    _TASKS_RUN += 1
    return _TASKS_RUN == 1


@dataclass(frozen=True, slots=True)
class Target:
    """Where a task writes its range: ``temp`` in the cache folder, if it runs on node ``node_id``
    or on a node that sees the same folder (``probe``: a file there and the token it holds)."""

    node_id: str
    temp: str
    probe: tuple[str, str] | None = None

    def reachable(self, node_id: str) -> bool:
        """Whether a task on ``node_id`` can write ``temp`` itself: the driver's node, or a node
        where the probe file reads back the token (the cache folder on a shared file system).
        Read at every task (a few microseconds): a folder unmounted later is noticed."""
        if node_id == self.node_id:
            return True
        if self.probe is None:
            return False
        path, token = self.probe
        try:
            with open(path, "rb") as f:
                return f.read(64) == token.encode()
        except OSError:
            return False


@dataclass(frozen=True, slots=True)
class Written:
    """What a task that wrote its range returns instead of the bytes."""

    temp: str
    size: int
    adler32: int


@dataclass(frozen=True, slots=True)
class Hooks:
    """Fault injection for tests: ``start`` runs before the work, ``written`` once the result
    exists (the temporary file written, or the bytes encoded); both get (recipe json, index)."""

    start: Callable[[str, int], None] | None = None
    written: Callable[[str, int], None] | None = None


def write_temp(temp: str, table: pa.Table, fmt: str, provenance: str | None = None) -> Written:
    """Write ``table`` to ``temp`` as the stored format ``fmt`` (e.g. ``arrow+lz4``: an IPC
    stream, buffers compressed), truncating what a killed earlier attempt left there; its size
    and adler32 (``provenance``: the id a Parquet or ROOT file carries, :mod:`vdata.provenance`).

    ``write_encoded`` streams Arrow's buffers straight into the file, and the checksum is taken
    over the file's pages mapped in place: no copy of the range is made in memory. Not
    fsynced here: the driver's commit does it while this worker goes on to the next range."""
    try:
        write_encoded(table, temp, *split_stored(fmt), provenance=provenance)
        with open(temp, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return Written(temp, 0, adler32(b""))
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as pages:
                return Written(temp, size, adler32(pages))
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def open_sources(catalog_version: str, catalog_state: bytes, recipe_json: str) -> int:
    """Make this worker ready for a recipe's first range: its catalog brought up to date, the
    recipe planned, and the source file of the first range opened (for a remote file, the
    round trips that read its header, streamers and tree metadata), so that the range's task
    only reads baskets. No data are read. Returns the number of files it had to open (0: none,
    or already open here)."""
    _ran()
    the_plan, catalog = _plan(catalog_version, catalog_state, recipe_json)
    recipe = the_plan.recipe
    if recipe.is_generated or not the_plan.ranges or not the_plan.source_columns:
        return 0
    dataset = catalog.dataset(recipe.source["dataset"])
    position, _, _ = dataset.locate(the_plan.ranges[0])
    if position in dataset._handles:  # the dataset's open files (see Catalog.adopt_datasets)
        return 0
    dataset._tree(position)  # opens it, under the dataset's lock, as its first read would
    return 1


def _plan(catalog_version: str, catalog_state: bytes, recipe_json: str, check: bool = False) -> tuple[Plan, Catalog]:
    """The recipe's plan, unpickling the catalog once per version and planning once per recipe
    (``check``: plan it anew, for a recipe being checked rather than one checked already)."""
    catalog = _WORKER_CATALOGS.get(catalog_version)
    if catalog is None:
        catalog = pickle.loads(catalog_state)
        for old in _WORKER_CATALOGS.values():  # datasets that did not change keep their open files
            catalog.adopt_datasets(old)
        _WORKER_CATALOGS.clear()  # one catalog version per worker is enough
        _WORKER_PLANS.clear()
        _WORKER_CATALOGS[catalog_version] = catalog
    recipe = Recipe.from_json(recipe_json)
    the_plan = None if check else _WORKER_PLANS.get(recipe.id)
    if the_plan is None:  # checked (and dry-run) by the service already, or being checked now
        the_plan = _WORKER_PLANS[recipe.id] = plan(recipe, catalog, dry_run=False)
    return the_plan, catalog


def run_task(
    catalog_version: str,
    catalog_state: bytes,
    recipe_json: str,
    index: int,
    fmt: str,
    write_to: str | None,
    hooks: Hooks | None,
    limits: Limits | None = None,
    attempt: str | None = None,
) -> tuple[str, bytes | Written | tuple[str, str], int, Steps, dict[str, Any] | None]:
    """Materialize one range as the stored format ``fmt`` (:func:`~service.core.cache.stored_format`);
    write it to ``write_to`` if given, else encode it to bytes, within
    ``limits`` (see :mod:`service.core.task_limits`; ``attempt`` names the submission's marker file).

    Returns (status, the bytes or the written file or (error class, message), events, the
    :class:`Steps` it passed, the range's provenance (:mod:`vdata.provenance`; None on an error)).
    Errors meant for the user travel as values (no blind retries by Ray, no traceback)."""
    started, fresh = time.time(), _ran()
    failed = Steps(_IMPORTED_AT, started, fresh=fresh)
    if attempt is not None and (what := timed_out(attempt)) is not None:
        marker_path(attempt).unlink(missing_ok=True)
        return ("error", over_time(what, _range(index, recipe_json), _seconds(limits), "task_seconds_limit"), 0,
                failed, None)
    if hooks is not None and hooks.start is not None:
        hooks.start(recipe_json, index)
    try:
        with TaskLimits(limits or Limits(), attempt) as guard:
            the_plan, catalog = _plan(catalog_version, catalog_state, recipe_json)
            planned = time.time()
            table = materialize(the_plan, index, catalog, note=guard.note)
            record = describe(the_plan, index, catalog)
            materialized = time.time()
            guard.note(f"writing range {index} of {the_plan.id} as {fmt}")
            if write_to is None:
                result: bytes | Written = encode_table(table, *split_stored(fmt), provenance=record["id"])
            else:
                result = write_temp(write_to, table, fmt, record["id"])
    except VdataError as exc:
        return ("error", _error(exc, limits), 0, failed, None)
    except MemoryError:
        return ("error", _over_memory(_range(index, recipe_json), limits), 0, failed, None)
    except OSError as exc:
        if no_space(exc):
            return ("error", ("StorageFull", f"no space left to write {_range(index, recipe_json)} (the disk or quota of the cache "
                              "folder is full): free space there or lower cache_budget_bytes"), 0, failed, None)
        raise
    if hooks is not None and hooks.written is not None:
        hooks.written(recipe_json, index)
    done = time.time()
    steps = Steps(_IMPORTED_AT, started, planned, materialized, done, fresh)
    return ("ok", result, table.num_rows, steps, made(record, started, done - started))


def no_space(exc: OSError) -> bool:
    """Whether ``exc`` says the disk (or quota) is full; Arrow's writers give no errno, only text."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT) or "[errno 28]" in str(exc).lower() \
        or os.strerror(errno.ENOSPC) in str(exc)


def run_dry(
    catalog_version: str, catalog_state: bytes, recipe_json: str, limits: Limits | None = None,
    attempt: str | None = None,
) -> tuple[str, str] | None:
    """The recipe check's dry run (:func:`vdata.data.plans.dry_run`) in this worker, within
    ``limits``: None if it passed, else (error class, message)."""
    _ran()
    where = f"the dry run of {Recipe.from_json(recipe_json).id}"
    if attempt is not None and (what := timed_out(attempt)) is not None:
        marker_path(attempt).unlink(missing_ok=True)
        return over_time(what, where, _seconds(limits), "dry_run_seconds_limit")
    try:
        with TaskLimits(limits or Limits(), attempt) as guard:
            the_plan, catalog = _plan(catalog_version, catalog_state, recipe_json, check=True)
            dry_run(the_plan, catalog, note=guard.note)
    except VdataError as exc:
        return _error(exc, limits)
    except MemoryError:
        return _over_memory(where, limits)
    return None


def _error(exc: VdataError, limits: Limits | None) -> tuple[str, str]:
    """(class name, message) of an error for the user; a memory limit is named with its setting."""
    message = str(exc)
    if isinstance(exc, TaskLimitExceeded) and limits is not None and limits.memory_bytes is not None:
        message += (f" (the memory limit is {limits.memory_bytes / 2**20:g} MiB per task: "
                    "setting task_memory_bytes_limit)")
    return (type(exc).__name__, message)


def over_time(what: str, where: str, seconds: float, setting: str) -> tuple[str, str]:
    """(class name, message) of a task that ``what`` kept running past its time limit; for
    :func:`vdata.errors.rebuild`, here and in the engine (when no retry was left to answer)."""
    return ("TaskLimitExceeded", f"{what} failed on {where}: stopped after the time limit of {seconds:g} s "
            f"(setting {setting})")


def _seconds(limits: Limits | None) -> float:
    return limits.seconds if limits is not None and limits.seconds is not None else 0.0


def _range(index: int, recipe_json: str) -> str:
    """How an error names the range (parsing the recipe again: only on the way out of a failure)."""
    return f"range {index} of {Recipe.from_json(recipe_json).id}"


def _over_memory(where: str, limits: Limits | None) -> tuple[str, str]:
    size = limits.memory_bytes if limits is not None and limits.memory_bytes is not None else 0
    return ("TaskLimitExceeded", f"materializing failed on {where}: it needed more than the memory limit of "
            f"{size / 2**20:g} MiB per task (setting task_memory_bytes_limit)")
