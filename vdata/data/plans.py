"""Materialization: produce one range of a virtual dataset, locally (no Ray).

:func:`plan` checks a recipe against the catalog — every problem at once — and compiles its
expressions and resolves its transforms; :func:`materialize` reads or generates the events of
one range, applies the steps and keeps the output columns. The same recipe and range give the
same bytes every time, anywhere.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.columns import Column, ColumnType, column_type_of
from transforms.errors import ExpressionError, KernelError, TransformsError
from transforms.expressions import compile_expression, compile_filter
from transforms.generators import get_generator
from transforms.registry import Transform

from vdata.data.catalog import Catalog
from vdata.data.naming import naming_warnings
from vdata.errors import RangeOutOfBounds, RecipeError, TaskLimitExceeded, TransformError, VdataError, array_error
from vdata.ranges import EventRange, RegularRanges
from vdata.data.recipes import Recipe, Step

__all__ = ["Plan", "dry_run", "materialize", "plan"]

DRY_RUN_EVENTS = 1000  # events of the first range run at planning time to catch runtime type errors

Kind = ColumnType | pa.DataType  # kernel-usable columns have a ColumnType; others pass through


@dataclass
class _Op:
    describe: str
    run: Callable[[_Env], None]


class _Env:
    """The columns of one range while steps run: Arrow arrays and kernel Columns, converted lazily."""

    def __init__(self, num_events: int) -> None:
        self.num_events = num_events
        self.arrow: dict[str, pa.Array] = {}
        self.kernel: dict[str, Column] = {}

    def column(self, name: str) -> Column:
        if name not in self.kernel:
            self.kernel[name] = Column.from_arrow(self.arrow[name])
        return self.kernel[name]

    def to_arrow(self, name: str) -> pa.Array:
        if name not in self.arrow:
            self.arrow[name] = self.kernel[name].to_arrow()
        return self.arrow[name]

    def put(self, name: str, column: Column) -> None:
        self.kernel[name] = column
        self.arrow.pop(name, None)

    def keep(self, mask: np.ndarray) -> None:
        """Keep the events where ``mask`` is true, in every column."""
        for name, col in self.kernel.items():
            if col.offsets is None:
                self.kernel[name] = Column(col.values[mask], None, None if col.valid is None else col.valid[mask])
            else:
                counts = np.diff(col.offsets)[mask]
                offsets = np.zeros(len(counts) + 1, dtype=np.int64)
                np.cumsum(counts, out=offsets[1:])
                entries = np.repeat(mask, np.diff(col.offsets))
                valid = None if col.valid is None else col.valid[entries]
                self.kernel[name] = Column(col.values[entries], offsets, valid)
        arrow_mask = pa.array(mask)
        for name in list(self.arrow):
            if name in self.kernel:
                del self.arrow[name]  # re-derived from the filtered Column when needed
            else:
                self.arrow[name] = pc.filter(self.arrow[name], arrow_mask)
        self.num_events = int(mask.sum())


@dataclass
class Plan:
    """A recipe checked against the catalog: sizes, ranges, output schema, compiled steps, and
    warnings that do not stop it (derived names coffea would misread: :mod:`vdata.data.naming`)."""

    recipe: Recipe
    num_events: int
    ranges: Sequence[EventRange]  # a RegularRanges (computed, not listed) for generated events
    schema: pa.Schema
    source_columns: list[str]
    ops: list[_Op]
    warnings: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.recipe.id

    def range(self, index: int) -> EventRange:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.ranges):
            raise RangeOutOfBounds(f"range {index!r} does not exist: {self.id} has {len(self.ranges)} ranges")
        return self.ranges[index]


def plan(recipe: Recipe, catalog: Catalog, dry_run: bool = True) -> Plan:
    """Check ``recipe`` against ``catalog`` and compile it; RecipeError lists every problem.

    ``dry_run`` runs the first events of the first range too (see :func:`dry_run`). The
    service plans with ``dry_run=False`` and runs the dry run in a Ray worker under time and
    memory limits: a scientist's code never runs in the gateway process."""
    problems: list[str] = []
    types, num_events, ranges = _source(recipe, catalog, problems)
    if types is None:
        raise RecipeError(problems)
    source_types = dict(types)
    paths = _Paths(_source_paths(recipe, catalog), source_types, types)
    ops: list[_Op] = []
    used: set[str] = set()
    for i, step in enumerate(recipe.steps):
        builder = {"filter": _filter, "define": _define, "transform": _transform}[step.kind]
        paths.refuse_new(i, step, problems)
        paths.admit(step.inputs.values())
        builder(i, step, types, catalog, ops, used, problems)
    columns = list(recipe.columns) if recipe.columns is not None else [t for t in types if t not in paths.admitted]
    paths.admit(columns)
    for name in columns:
        if name not in types:
            close = difflib.get_close_matches(name, [*types, *paths.paths], n=5, cutoff=0.6)
            hint = f"; close matches: {', '.join(map(repr, close))}" if close else ""
            problems.append(f"columns: no column {name!r} after the steps; available: {_some(types)}{hint}")
    if problems:
        raise RecipeError(problems)
    schema = pa.schema([_field(name, types[name]) for name in columns])
    source_columns = [c for c in source_types if c in used or c in columns]
    warnings = naming_warnings(recipe.steps, source_types, types)
    result = Plan(recipe, num_events, ranges, schema, source_columns, ops, warnings)
    if dry_run:
        _dry_run(result, catalog)
    return result


def materialize(
    recipe: Recipe | Plan, range_index: int, catalog: Catalog, *, note: Callable[[str], None] | None = None,
) -> pa.Table:
    """The ``range_index``-th range of ``recipe`` as a ``pyarrow.Table``. ``note`` is told what
    runs before each step (for the task's time limit to name it)."""
    the_plan = recipe if isinstance(recipe, Plan) else plan(recipe, catalog)
    return _run(the_plan, the_plan.range(range_index), catalog, note)


# -- running -----------------------------------------------------------------------------------


def _run(
    the_plan: Plan, event_range: EventRange, catalog: Catalog, note: Callable[[str], None] | None = None,
) -> pa.Table:
    recipe = the_plan.recipe
    where = f"{event_range} of {the_plan.id}"
    env = _Env(event_range.num_events)
    if recipe.is_generated:
        src = recipe.source
        generated = get_generator(src["generator"]).generate(src["seed"], event_range.first, event_range.stop, src["params"])
        for name in the_plan.source_columns:
            env.put(name, generated[name])
    elif the_plan.source_columns:
        table = catalog.dataset(recipe.source["dataset"]).read(event_range, the_plan.source_columns)
        for name in table.column_names:
            env.arrow[name] = table[name].combine_chunks()
    for op in the_plan.ops:
        if note is not None:
            note(op.describe)
        try:
            op.run(env)
        except (MemoryError, ExpressionError, KernelError) as exc:
            raise array_error(exc, op.describe, where) from None
    arrays = [env.to_arrow(f.name) for f in the_plan.schema]
    return pa.Table.from_arrays(arrays, schema=the_plan.schema)


def _dry_run(the_plan: Plan, catalog: Catalog, *, note: Callable[[str], None] | None = None) -> None:
    """Run the first events of the first range, so that errors only data can show (jagged
    columns of different lengths combined, a kernel that fails) are reported at submission."""
    if not the_plan.ranges:
        return
    first = the_plan.ranges[0]
    probe = EventRange(0, first.first, min(first.stop, first.first + DRY_RUN_EVENTS))
    try:
        _run(the_plan, probe, catalog, note)
    except TaskLimitExceeded:
        raise
    except TransformError as exc:
        raise RecipeError([f"on the first {probe.num_events} events: {exc}"]) from None


dry_run = _dry_run  # public name; ``plan``'s flag of the same name hides it there


# -- planning ----------------------------------------------------------------------------------


def _source(recipe: Recipe, catalog: Catalog, problems: list[str]) -> tuple[dict[str, Kind] | None, int, Sequence[EventRange]]:
    src = recipe.source
    if recipe.is_generated:
        generator = get_generator(src["generator"])
        events = src["events"]
        size = recipe.range_events
        return dict(generator.schema(src["params"])), events, RegularRanges(events, size)
    try:
        ds = catalog.dataset(src["dataset"])
    except VdataError as exc:
        problems.append(f"source.dataset: {exc}")
        return None, 0, []
    if "fingerprint" in src and src["fingerprint"] != catalog.fingerprint(src["dataset"]):
        problems.append(f"source.dataset: {src['dataset']!r} now holds other files than when this recipe was bound")
    types: dict[str, Kind] = {}
    for f in ds.schema:
        types[f.name] = column_type_of(f.type) or f.type
    return types, ds.num_events, ds.ranges(recipe.range_events)


def _source_paths(recipe: Recipe, catalog: Catalog) -> dict[str, str]:
    """uproot's full paths of the source's split sub-branches (``evt/Beg`` -> ``Beg``)."""
    return {} if recipe.is_generated else catalog.dataset(recipe.source["dataset"]).aliases


class _Paths:
    """uproot's full paths of the source's columns, admitted as source columns of their own
    where the recipe names them (``columns``, transform ``inputs``): the column keeps that name."""

    def __init__(self, paths: dict[str, str], source_types: dict[str, Kind], types: dict[str, Kind]) -> None:
        self.paths = paths
        self.source_types = source_types
        self.types = types
        self.admitted: set[str] = set()

    def admit(self, names: Any) -> None:
        for name in names:
            column = self.paths.get(name)
            if name not in self.types and column in self.source_types:
                self.types[name] = self.source_types[name] = self.source_types[column]
                self.admitted.add(name)

    def refuse_new(self, i: int, step: Step, problems: list[str]) -> None:
        """A new column may not take the name of a source column's full path."""
        new = step.outputs.values() if step.kind == "transform" else step.expressions.keys()
        for name in new:
            if name in self.paths and name not in self.types:
                problems.append(f"steps[{i}].{step.kind}: {name!r} is uproot's name of column {self.paths[name]!r}")


def _kernel_types(types: dict[str, Kind]) -> dict[str, ColumnType]:
    return {name: t for name, t in types.items() if isinstance(t, ColumnType)}


def _filter(i: int, step: Step, types: dict[str, Kind], catalog: Catalog, ops: list[_Op], used: set[str], problems: list[str]) -> None:
    text = step.expressions[""]
    try:
        expr = compile_filter(text, _kernel_types(types))
    except TransformsError as exc:
        problems.append(f"steps[{i}].filter: {exc}")
        return
    used.update(expr.columns)

    def run(env: _Env) -> None:
        mask = expr({c: env.column(c) for c in expr.columns}, env.num_events)
        keep = np.asarray(mask.values, dtype=np.bool_)
        env.keep(keep if mask.valid is None else keep & mask.valid)  # null: dropped, as SQL's WHERE

    ops.append(_Op(f"filter {text!r}", run))


def _define(i: int, step: Step, types: dict[str, Kind], catalog: Catalog, ops: list[_Op], used: set[str], problems: list[str]) -> None:
    available = _kernel_types(types)  # every define of a step sees the columns before the step
    for name, text in step.expressions.items():
        if name in types:
            problems.append(f"steps[{i}].define.{name}: a column {name!r} exists already")
            continue
        try:
            expr = compile_expression(text, available)
        except TransformsError as exc:
            problems.append(f"steps[{i}].define.{name}: {exc}")
            continue
        used.update(expr.columns)
        types[name] = expr.result_type
        ops.append(_Op(f"define {name} = {text!r}", _define_run(name, expr)))


def _define_run(name: str, expr: Any) -> Callable[[_Env], None]:
    def run(env: _Env) -> None:
        env.put(name, expr({c: env.column(c) for c in expr.columns}, env.num_events))

    return run


def _transform(i: int, step: Step, types: dict[str, Kind], catalog: Catalog, ops: list[_Op], used: set[str], problems: list[str]) -> None:
    where = f"steps[{i}].transform"
    tf = catalog.find_transform(step.name)
    if tf is None:
        known = sorted({*catalog.transforms(), *_builtin_names()})
        problems.append(f"{where}: no transform {step.name!r}; known: {', '.join(known)}")
        return
    if step.code is not None and step.code != tf.code_hash:
        problems.append(f"{where}: code {step.code} does not match transform {step.name!r} ({tf.code_hash})")
    before = len(problems)
    missing = sorted(set(tf.inputs) - set(step.inputs))
    extra = sorted(set(step.inputs) - set(tf.inputs))
    if missing or extra:
        problems.append(f"{where}.inputs: {step.name!r} takes {sorted(tf.inputs)}; missing {missing}, unknown {extra}")
    jagged_in = False
    for param, column in step.inputs.items():
        if param not in tf.inputs:
            continue
        t = types.get(column)
        if t is None:
            problems.append(f"{where}.inputs.{param}: no column {column!r}; available: {_some(types)}")
        elif not isinstance(t, ColumnType):
            problems.append(f"{where}.inputs.{param}: column {column!r} of type {t} is not numeric")
        elif t.jagged != (tf.inputs[param] == "jagged"):
            problems.append(f"{where}.inputs.{param}: {step.name!r} wants a {tf.inputs[param]} column, {column!r} is {t}")
        elif t.nullable:
            problems.append(f"{where}.inputs.{param}: column {column!r} ({t}) can be null, which transforms do not "
                            f"take; define a filled copy first, e.g. fill_null(x, 0)")
        else:
            jagged_in |= t.jagged
    unknown_out = sorted(set(step.outputs) - set(tf.outputs))
    if unknown_out or not step.outputs:
        problems.append(f"{where}.outputs: {step.name!r} gives {sorted(tf.outputs)}; map at least one, unknown {unknown_out}")
    for out, column in step.outputs.items():
        if column in types:
            problems.append(f"{where}.outputs.{out}: a column {column!r} exists already")
    if len(problems) > before:
        return
    out_jagged = tf.kind == "event_list" or (tf.kind == "element" and jagged_in)
    for out, column in step.outputs.items():
        types[column] = ColumnType(tf.outputs[out], out_jagged)
    used.update(step.inputs.values())
    ops.append(_Op(f"transform {step.name!r}", _transform_run(tf, dict(step.inputs), dict(step.outputs))))


def _transform_run(tf: Transform, inputs: dict[str, str], outputs: dict[str, str]) -> Callable[[_Env], None]:
    def run(env: _Env) -> None:
        result = tf.apply({param: env.column(column) for param, column in inputs.items()}, env.num_events)
        for out, column in outputs.items():
            env.put(column, result[out])

    return run


def _builtin_names() -> list[str]:
    from transforms.registry import list_transforms

    return [t.name for t in list_transforms()]


def _field(name: str, kind: Kind) -> pa.Field:
    if isinstance(kind, ColumnType):  # a jagged column's entries may be null, its lists never
        return pa.field(name, kind.arrow_type(), nullable=kind.nullable and not kind.jagged)
    return pa.field(name, kind, nullable=False)


def _some(types: dict[str, Kind], n: int = 12) -> str:
    names = list(types)
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")
