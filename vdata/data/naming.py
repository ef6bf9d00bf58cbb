"""NanoAOD naming of derived columns, as coffea's ``NanoAODSchema`` reads names.

coffea reads a column ``X_y`` as field ``y`` of a collection ``X`` (``Muon_pt`` is
``events.Muon.pt``) and a name without ``_`` as a per-event column (``events.run``). So the
rule for the columns a recipe derives (defines and transform outputs):

- a **per-event** value is named without ``_``, in NanoAOD's lowerCamelCase (``mMuMu``,
  ``sumPt2``, like ``luminosityBlock`` or ``genWeight``) — unless it belongs to a per-event
  collection of the source (``MET_significance`` next to ``MET_pt``);
- a **per-object** value is ``Collection_field`` of a jagged collection of the source, one
  entry per object (``Muon_isHighPt``), and its field is not a four-vector coordinate of
  another system than the collection's (``Muon_px`` next to ``Muon_pt``: coffea's vector
  refuses a collection with two).

:func:`naming_warnings` says, at submission, where a derived name breaks the rule: coffea
would then see a collection the data do not have (``m_mumu`` read as ``events.m.mumu``), mix
a flat column into a jagged collection (or the reverse), take the column for a collection, or
find two coordinate systems in one collection.
These are warnings, not errors: a recipe read with uproot, pyarrow or SQL may name columns as
it likes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from transforms.columns import ColumnType

from vdata.data.recipes import Step

__all__ = ["naming_warnings"]


# The coordinate names of scikit-hep vector (vector/_methods.py), by part of a four-vector: a
# collection that has one of a part (Muon_pt) and gets another (Muon_px) has two conflicting
# coordinate systems, and coffea's four-vector methods refuse the collection.
VECTOR_PARTS = (
    frozenset({"x", "px", "y", "py", "rho", "pt", "phi"}),
    frozenset({"z", "pz", "theta", "eta"}),
    frozenset({"t", "E", "e", "energy", "tau", "M", "m", "mass"}),
)


@dataclass(frozen=True, slots=True)
class _Collection:
    jagged: bool
    fields: frozenset[str]


def naming_warnings(steps: Sequence[Step], source: Mapping[str, Any], types: Mapping[str, Any]) -> list[str]:
    """One message per derived column whose name coffea's NanoAODSchema would misread.

    ``source`` maps the source's columns to their types (a ColumnType or an Arrow type),
    ``types`` every column after the steps, derived ones included."""
    collections = _collections(source)
    out = []
    for i, step in enumerate(steps):
        if step.kind == "define":
            named = [(f"steps[{i}].define.{name}", name) for name in step.expressions]
        elif step.kind == "transform":
            named = [(f"steps[{i}].transform.outputs.{out}", name) for out, name in step.outputs.items()]
        else:
            continue
        for where, name in named:
            problem = _problem(name, _is_jagged(types.get(name)), collections)
            if problem is not None:
                out.append(f"{where}: {problem}")
    return out


def _collections(source: Mapping[str, Any]) -> dict[str, _Collection]:
    """The source's collections (the ``X`` of its ``X_y`` columns): jagged or not, and their fields."""
    jagged: dict[str, bool] = {}
    fields: dict[str, set[str]] = {}
    for name, kind in source.items():
        if "_" in name:
            prefix, field = name.split("_", 1)
            jagged[prefix] = jagged.get(prefix, False) or _is_jagged(kind)
            fields.setdefault(prefix, set()).add(field)
    return {prefix: _Collection(jagged[prefix], frozenset(fields[prefix])) for prefix in jagged}


def _problem(name: str, jagged: bool, collections: Mapping[str, _Collection]) -> str | None:
    if "_" not in name:
        if name in collections:
            return f"coffea's NanoAODSchema would take {name!r} for the collection {name!r} of the source; choose another name"
        return None
    prefix, field = name.split("_", 1)
    hint = (f"name it after the collection its entries belong to (e.g. 'Muon_{field}')" if jagged
            else "name a per-event column without '_' (e.g. 'mMuMu')")
    collection = collections.get(prefix)
    if collection is None:
        return (f"coffea's NanoAODSchema would read {name!r} as field {field!r} of a collection {prefix!r} that "
                f"the data do not have; {hint}")
    if collection.jagged != jagged:
        return (f"coffea's NanoAODSchema would put the {_kind(jagged)} column {name!r} into {prefix!r}, a "
                f"{_kind(collection.jagged)} collection of the source; {hint}")
    clash = next((sorted(part & collection.fields) for part in VECTOR_PARTS if field in part and part & collection.fields), None)
    if clash:
        return (f"{name!r} is a four-vector coordinate that conflicts with {', '.join(f'{prefix}_{c}' for c in clash)}: "
                f"coffea's vector methods refuse a collection with two coordinate systems; choose a field name "
                f"that is not a coordinate (x, px, z, E, energy, m, ...)")
    return None


def _kind(jagged: bool) -> str:
    return "per-object (jagged)" if jagged else "per-event (flat)"


def _is_jagged(kind: Any) -> bool:
    if isinstance(kind, ColumnType):
        return kind.jagged
    if isinstance(kind, pa.DataType):
        return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    return False
