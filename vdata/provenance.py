"""Provenance: how one range was made, and the id that names it.

A range's provenance is a JSON object with two parts:

- what made the bytes (the deterministic part, :func:`describe`): the recipe's id and canonical
  form, the range (index, first, stop), the content hash of each transform's code, the generator
  (name, version, seed, params) or the input file (path, size, adler32, tree, the window of
  entries the range covers), and the versions of vdata, uproot, awkward, numba, numpy, pyarrow
  and Ray;
- where and when it ran (:func:`made`): the node (host name; the service adds the Ray node id),
  start time (seconds since the epoch) and duration.

``id`` is ``"prov-"`` and the first 24 hex digits of the sha256 of the deterministic part's
canonical JSON (:func:`provenance_id`). It is written into Parquet (key-value metadata) and ROOT
(a ``TObjString``) files as :data:`vdata.formats.PROVENANCE_KEY`, so making a range again gives
the same id and, for Arrow and Parquet, the same bytes. The library versions are part of the id:
after an upgrade the id changes, which is right, as the bytes may too (Parquet's ``created_by``
names pyarrow's version already) and the range was made by other code.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import socket
from datetime import datetime, timezone
from typing import Any

from transforms.generators import get_generator

from vdata.checksum import adler32_hex
from vdata.data.catalog import Catalog
from vdata.data.plans import Plan

__all__ = ["DETERMINISTIC", "LIBRARIES", "RUN_FIELDS", "describe", "made", "provenance_id", "text", "versions"]

LIBRARIES = ("vdata", "uproot", "awkward", "numba", "numpy", "pyarrow", "ray")
# the fields of the deterministic part, which the id is the hash of
DETERMINISTIC = ("recipe_id", "recipe", "range", "transforms", "generator", "inputs", "versions")
# the fields that differ each time a range is made (never in the id)
RUN_FIELDS = ("node", "ray_node_id", "started", "seconds")


@functools.cache
def versions() -> dict[str, str | None]:
    """The installed versions of :data:`LIBRARIES` (None for one not installed: Ray on a worker)."""
    found: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def provenance_id(record: dict[str, Any]) -> str:
    """``"prov-"`` + 24 hex digits of the sha256 of the deterministic fields' canonical JSON."""
    part = {name: record[name] for name in DETERMINISTIC}
    text = json.dumps(part, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "prov-" + hashlib.sha256(text.encode()).hexdigest()[:24]


def describe(the_plan: Plan, index: int, catalog: Catalog) -> dict[str, Any]:
    """The deterministic part of range ``index``'s provenance, with its ``id``."""
    recipe = the_plan.recipe
    event_range = the_plan.range(index)
    record: dict[str, Any] = {
        "recipe_id": recipe.id,
        "recipe": recipe.to_dict(),
        "range": {"index": index, "first": event_range.first, "stop": event_range.stop},
        "transforms": _transforms(the_plan, catalog),
        "generator": None,
        "inputs": [],
        "versions": dict(versions()),
    }
    if recipe.is_generated:
        src = recipe.source
        generator = get_generator(src["generator"])
        record["generator"] = {"name": generator.name, "version": generator.version, "seed": src["seed"],
                               "params": src["params"]}
    else:
        record["inputs"] = _inputs(the_plan, index, catalog)
    return {"id": provenance_id(record), **record}


def made(record: dict[str, Any], started: float, seconds: float) -> dict[str, Any]:
    """``record`` with where and when it ran: this host, ``started`` (epoch seconds), ``seconds``."""
    return {**record, "node": socket.gethostname(), "started": started, "seconds": seconds}


def _transforms(the_plan: Plan, catalog: Catalog) -> list[dict[str, str]]:
    """Name and code hash of each transform step, in order (what ran, from the catalog)."""
    out = []
    for step in the_plan.recipe.steps:
        if step.kind == "transform":
            found = catalog.find_transform(step.name)
            out.append({"name": step.name, "code": found.code_hash if found is not None else str(step.code)})
    return out


def _inputs(the_plan: Plan, index: int, catalog: Catalog) -> list[dict[str, Any]]:
    """The file range ``index`` reads and its window of entries (a range lies in one file)."""
    dataset = catalog.dataset(the_plan.recipe.source["dataset"])
    position, start, stop = dataset.locate(the_plan.range(index))
    file = dataset.files[position]
    return [{
        "path": file.path,
        "tree": dataset.tree,
        "size": file.size,
        "adler32": None if file.adler32 is None else adler32_hex(file.adler32),
        "entry_start": start,
        "entry_stop": stop,
    }]


def text(record: dict[str, Any]) -> str:
    """``record`` for people: one fact per line (``vdata recipes show ID --range N``)."""
    r = record["range"]
    lines = [f"provenance {record['id']}",
             f"  range {r['index']} of {record['recipe_id']}: events [{r['first']}, {r['stop']})"
             + (f" as {record['format']}" if record.get("format") else "")]
    if record.get("generator"):
        g = record["generator"]
        lines.append(f"  generator {g['name']} {g['version']}, seed {g['seed']}, params {json.dumps(g['params'])}")
    for f in record.get("inputs") or []:
        size = "size unknown" if f["size"] is None else f"{f['size']:,} bytes"
        lines.append(f"  input {f['path']} (tree {f['tree']}, {size}, adler32 {f['adler32'] or 'unknown'}), "
                     f"entries [{f['entry_start']}, {f['entry_stop']})")
    lines += [f"  transform {t['name']} code {t['code']}" for t in record.get("transforms") or []]
    lines.append("  versions " + ", ".join(f"{k} {v or '-'}" for k, v in record["versions"].items()))
    if record.get("started") is not None:
        when = datetime.fromtimestamp(record["started"], timezone.utc).isoformat(timespec="seconds")
        lines.append(f"  made on {record.get('node')} (Ray node {record.get('ray_node_id') or '-'}) at {when} "
                     f"in {record['seconds']:.3f} s")
    lines.append(f"  recipe {json.dumps(record['recipe'], sort_keys=True)}")
    return "\n".join(lines)
