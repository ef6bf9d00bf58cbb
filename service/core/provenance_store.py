"""Where the provenance of each cached range is kept, and how the service answers for it.

Each cache entry (recipe id, range, stored format) has at most one row in ``range_provenance``:
the JSON the task that made it returned (:mod:`vdata.provenance`) plus the Ray node id. The
cache writes the row in the transaction that commits the entry and deletes it with the entry
(:mod:`service.core.cache`), so it survives a restart, goes when the range is evicted or
removed, and a range made again replaces it. A range not in the cache has no provenance to
tell: :func:`range_provenance` raises :class:`~service.errors.NotMaterialized` rather than
guess at the node and times.

A job's range (:func:`job_range_provenance`) adds the job's record of it and its output side
(:func:`output_provenance`): the worker that uploaded the output, the output's size, format and
checksums, and the provenance id of the input range as cached when the output was uploaded
(``range_outputs.provenance_id``, filled by :meth:`service.core.core.Core.commit_output`).
"""

from __future__ import annotations

import json
from typing import Any

from service.core._cache_keys import CacheKey
from service.core._output_rows import OutputRow
from service.core._job_rows import check_int
from service.core.db import Database
from service.errors import NotMaterialized, RangeNotFound
from vdata.checksum import adler32_hex

__all__ = ["delete", "find", "input_id", "job_range_provenance", "output_provenance", "range_provenance", "record"]


def record(conn: Any, key: CacheKey, body: str | None, now: float) -> None:
    """Store ``body`` (JSON with an ``id``) as ``key``'s provenance, or drop it (None: the entry was
    made without one); inside the transaction that commits the entry."""
    if body is None:
        delete(conn, key)
        return
    conn.execute(
        "INSERT INTO range_provenance VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (recipe_id, range_index, format) DO UPDATE SET id = excluded.id, body = excluded.body, "
        "made = excluded.made",
        (key.recipe_id, key.range_index, key.format, json.loads(body)["id"], body, now),
    )


def delete(conn: Any, key: CacheKey) -> None:
    """Drop ``key``'s provenance; inside the transaction that drops the entry."""
    conn.execute("DELETE FROM range_provenance WHERE recipe_id = ? AND range_index = ? AND format = ?",
                 (key.recipe_id, key.range_index, key.format))


def find(db: Database, recipe_id: str, index: int, fmt: str | None = None) -> dict[str, Any] | None:
    """The provenance of the range's cache entry in ``fmt`` (any format if None: the one made
    last), with ``format`` added; None if no such entry is cached."""
    sql = ("SELECT p.format, p.body FROM range_provenance p JOIN cache_entries c ON c.recipe_id = p.recipe_id "
           "AND c.range_index = p.range_index AND c.format = p.format WHERE p.recipe_id = ? AND p.range_index = ?")
    args: tuple[Any, ...] = (recipe_id, index)
    if fmt is not None:
        sql += " AND p.format = ?"
        args += (fmt,)
    row = db.read().execute(sql + " ORDER BY p.made DESC, p.format LIMIT 1", args).fetchone()
    if row is None:
        return None
    return {**json.loads(row[1]), "format": row[0]}


def range_provenance(db: Database, recipe_id: str, index: int, fmt: str | None = None) -> dict[str, Any]:
    """:func:`find`, or :class:`NotMaterialized` naming the range and how to make it."""
    found = find(db, recipe_id, index, fmt)
    if found is None:
        what = f"range {index} of {recipe_id}" + (f" as {fmt}" if fmt is not None else "")
        raise NotMaterialized(f"{what} is not in the cache (never made, or evicted since), so it has no "
                              f"provenance: make it first (GET /v1/recipes/{recipe_id}/ranges/{index}) and ask again")
    return found


def input_id(db: Database, recipe_id: str, index: int) -> str | None:
    """The provenance id of the range as cached now (any format: they share the id), or None;
    what an output uploaded for the range records as its input."""
    found = find(db, recipe_id, index)
    return None if found is None else str(found["id"])


def output_provenance(out: OutputRow | None) -> dict[str, Any] | None:
    """The output side of a job's range: who uploaded what, and the id of the input range's
    provenance when it was uploaded (None if the range was not cached then)."""
    if out is None:
        return None
    return {"worker": out.worker, "format": out.format, "size": out.size, "adler32": adler32_hex(out.adler32),
            "sha256": out.sha256, "events": out.events, "uploaded": out.created,
            "input_provenance_id": out.provenance_id}


def job_range_provenance(db: Database, job_id: str, recipe_id: str, index: int) -> dict[str, Any]:
    """A job's range: the job's record of the range (state, worker, attempts) and ``input``, the
    recipe range's provenance (None if it is not cached now); the caller adds ``output``."""
    check_int(index, "index", 0, 2**62)  # JobError (400), not the database's overflow
    conn = db.read()
    row = conn.execute("SELECT state, worker, attempts, updated FROM job_ranges WHERE job_id = ? AND range_index = ?",
                       (job_id, index)).fetchone()
    if row is None:
        count = conn.execute("SELECT COUNT(*) FROM job_ranges WHERE job_id = ?", (job_id,)).fetchone()[0]
        raise RangeNotFound(job_id, index, count)
    return {
        "job_id": job_id,
        "range_index": index,
        "state": row[0],
        "worker": row[1],
        "attempts": row[2],
        "updated": row[3],
        "input": find(db, recipe_id, index),
        "output": None,
    }
