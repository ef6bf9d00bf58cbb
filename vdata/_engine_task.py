"""The engine's task body as it runs in a Ray worker: materialize one range and hand it over,
either as the encoded bytes or as a file the worker wrote into the cache folder.

No Ray here: :mod:`vdata.engine` wraps :func:`run_task` as the Ray task and decides, from the
node the task landed on, whether it may write the file (only on the driver's node, whose
disk the cache is on).
"""

from __future__ import annotations

import mmap
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from vdata.catalog import Catalog
from vdata.checksum import adler32
from vdata.errors import RemoteReadError, VdataError
from vdata.formats import encode_table, write_table
from vdata.materialize import Plan, materialize, plan
from vdata.recipes import Recipe

__all__ = ["Hooks", "Target", "Written", "run_task", "write_temp"]

_WORKER_CATALOGS: dict[str, Catalog] = {}
_WORKER_PLANS: dict[str, Plan] = {}  # by recipe id, for the catalog version in _WORKER_CATALOGS


@dataclass(frozen=True, slots=True)
class Target:
    """Where a task writes its range if it runs on node ``node_id``: ``temp`` in the cache folder."""

    node_id: str
    temp: str


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


def write_temp(temp: str, table: pa.Table, fmt: str) -> Written:
    """Write ``table`` to ``temp`` (truncating what a killed earlier attempt left there); its
    size and adler32.

    ``write_table`` streams Arrow's buffers straight into the file, and the checksum is taken
    over the file's pages mapped in place: no copy of the range is made in memory. Not
    fsynced here: the driver's commit does it while this worker goes on to the next range."""
    try:
        write_table(table, temp, fmt)
        with open(temp, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return Written(temp, 0, adler32(b""))
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as pages:
                return Written(temp, size, adler32(pages))
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _plan(catalog_version: str, catalog_state: bytes, recipe_json: str) -> tuple[Plan, Catalog]:
    """The recipe's plan, unpickling the catalog once per version and planning once per recipe."""
    catalog = _WORKER_CATALOGS.get(catalog_version)
    if catalog is None:
        catalog = pickle.loads(catalog_state)
        for old in _WORKER_CATALOGS.values():  # datasets that did not change keep their open files
            catalog.adopt_datasets(old)
        _WORKER_CATALOGS.clear()  # one catalog version per worker is enough
        _WORKER_PLANS.clear()
        _WORKER_CATALOGS[catalog_version] = catalog
    recipe = Recipe.from_json(recipe_json)
    the_plan = _WORKER_PLANS.get(recipe.id)
    if the_plan is None:  # checked (and dry-run) by the service already
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
) -> tuple[str, bytes | Written | str | RemoteReadError, int, float]:
    """Materialize one range; write it to ``write_to`` if given, else encode it to bytes.

    Returns (status, the bytes or the written file or an error message, events, seconds); a
    failed remote read returns the RemoteReadError itself."""
    start = time.perf_counter()
    if hooks is not None and hooks.start is not None:
        hooks.start(recipe_json, index)
    try:
        the_plan, catalog = _plan(catalog_version, catalog_state, recipe_json)
        table = materialize(the_plan, index, catalog)
        result = encode_table(table, fmt) if write_to is None else write_temp(write_to, table, fmt)
    except RemoteReadError as exc:  # travels as itself: the gateway answers 502 naming the URL
        return ("error", RemoteReadError(exc.message), 0, time.perf_counter() - start)
    except VdataError as exc:  # user-facing errors travel as values: no blind retries
        return ("error", f"{type(exc).__name__}: {exc}", 0, time.perf_counter() - start)
    if hooks is not None and hooks.written is not None:
        hooks.written(recipe_json, index)
    return ("ok", result, table.num_rows, time.perf_counter() - start)
