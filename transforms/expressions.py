"""Filter and define expressions (like RDataFrame's ``Filter``/``Define``) in Python syntax,
compiled to Numba kernels over column buffers (values + offsets): no Python runs per event.

::

    expr = compile_expression("sum(Muon_pt[Muon_pt > 20])", {"Muon_pt": ColumnType("float32", True)})
    expr.columns        # ('Muon_pt',)
    expr.result_type    # ColumnType(dtype='float64', jagged=False, nullable=False)
    expr({"Muon_pt": column}, num_events)   # -> Column, one float64 per event

The language
------------
An expression is one Python expression, parsed with :mod:`ast`; only the constructs below are
accepted, anything else is an :class:`~transforms.errors.ExpressionError` naming the construct
and its position (attribute access, method calls, lambdas, comprehensions, strings, slices,
keyword arguments, names starting with ``_``, unknown functions or columns, ...).

Names
    Column names (a column shadows a constant of the same name), and the constants ``pi``,
    ``e``, ``inf``, ``nan``. Literals: integers, floats, ``True``, ``False``.
Operators
    ``+ - * / // % **``, unary ``- +``; comparisons ``< <= > >= == !=`` (chains like
    ``0 < x < 5`` too); ``and or not`` and, for masks written numpy-style, ``& | ^ ~`` — all
    of these on booleans only (no bitwise arithmetic on numbers); ``a if c else b``.
Functions
    math (float results): ``sqrt exp log log10 log2 log1p expm1 sin cos tan asin acos atan
    sinh cosh tanh asinh acosh atanh floor ceil``, ``atan2(y, x) hypot(x, y) pow(x, y)``;
    ``isnan isinf isfinite`` (booleans); ``abs(x)``; ``min(a, b, ...)``/``max(a, b, ...)``
    with two or more arguments are elementwise (NaN propagates, like numpy.minimum);
    ``where(c, a, b)`` is elementwise ``a if c else b``; ``isnull(x)`` and ``fill_null(x, v)``
    (see *Nulls*).
Reductions (one jagged argument, one value per event)
    ``sum count len any all mean min max``; ``min``/``max`` with *one* jagged argument reduce.
    On an empty (or fully masked) list: ``sum`` -> 0, ``count``/``len`` -> 0, ``any`` -> False,
    ``all`` -> True, ``min``/``max``/``mean`` -> NaN. ``count(x)`` counts entries (selected
    ones for ``count(x[m])``); ``sum(x > 20)`` counts true entries. ``any``/``all`` need booleans.
    Null entries are skipped, as SQL's aggregates and awkward's reducers skip them (a list of
    nulls reduces like an empty one), except by ``len``, which counts every entry.
Masks
    ``x[m]`` with ``m`` a jagged boolean aligned with ``x``, e.g. ``Muon_pt[Muon_pt > 20]``;
    masks chain: ``x[m1][x[m1] > 3]``. A flat boolean cannot mask a list (use a filter).
Indexing
    ``x[k]`` with ``k`` an integer constant; negative ``k`` counts from the end, and it works on
    masked lists too (``Muon_pt[Muon_pt > 20][0]`` is the first selected muon). **Rule for lists
    that are too short: the result is null** (awkward's ``None``, SQL's ``NULL``), and it keeps
    the element's type: ``Muon_charge[0]`` is an int64 that can be null (test with
    ``isnull(x[1])``, or fill with ``fill_null(x[1], -1)``).
Nulls
    A value that can be null has a type shown with ``?`` (``?float64``, ``var * ?float64``).
    Nulls come from ``x[k]`` past the end of a list and from input columns that hold them
    (a define that can be null, used by a later step). Arithmetic, comparisons, functions and
    ``not`` give null where any operand is null. ``and``/``or`` (and ``&``/``|``) follow SQL's
    three-valued logic: false and null is false, true or null is true, otherwise null.
    ``where(c, a, b)`` (and ``a if c else b``) gives the branch taken, null where it is null
    or where ``c`` is. A flat null used with a jagged list gives a list of nulls (awkward would
    make the whole list None): ``sum(Muon_pt - Muon_pt[1])`` is 0 for an event with one muon.
    A null in a mask selects nothing (``x[x > x[0]]``). ``isnull(x)`` is true where ``x`` is
    null (never null itself); ``fill_null(x, v)`` is ``v`` where ``x`` is null (promoted like
    ``where``; never null unless ``v`` can be). A **filter** whose value is null drops the
    event, as SQL's ``WHERE`` does. A result that can be null is a :class:`Column` with a
    ``valid`` mask, and an Arrow column with a validity bitmap where it has a null; one that
    cannot be null has neither. A null holds 0, False or NaN in the values buffer.

Types
    Values are computed as bool, int64 or float64: every integer column is read as int64 (a
    uint64 above 2**63 wraps), every float column as float64 (float32 inputs are computed in
    double precision). Arithmetic promotes bool < int < float; ``/`` always gives float; ``**``
    gives int only for an integer base and a non-negative integer constant exponent. Integers
    wrap on overflow; integer ``//`` or ``%`` by zero gives 0; float division follows IEEE
    (``1/0`` is inf, ``0/0`` NaN); math functions outside their domain give NaN, not errors.
    Comparisons and ``and``/``or``/``not`` give booleans and need booleans where stated.
    ``sum`` keeps int for bool/int lists; ``count``/``len`` give int64; ``mean``, ``min``,
    ``max`` (reductions) give float64; indexing gives the element's kind (bool, int64, float64).
Broadcasting
    flat op jagged: the per-event value is used for every entry of the event's list
    (``Muon_pt / sum(Muon_pt)``, ``Jet_pt > MET_pt``). jagged op jagged: the lists must have
    equal counts in every event (columns of one collection do); otherwise the call raises an
    ExpressionError naming the expression, the operation's position, the event and the counts.
    Jagged operands must also carry the same mask: ``x[m] + y`` is refused at compile time,
    ``(x + y)[m]`` or ``x[m] + y[m]`` are fine.
Evaluation
    Every part of an expression is evaluated for every event (``and``/``or`` do not protect a
    reduction elsewhere in the expression from a count mismatch).
Limits
    At most 10,000 characters, 50 levels of nesting and 1,000 nodes in the syntax tree, and
    64 arguments to ``min``/``max``; a bigger expression is an ExpressionError naming the limit
    (split it into several defines). These bound the stack the parser needs and Numba's
    compile time (a few seconds at the limits).

Filters (:func:`compile_filter`) must give one boolean per event (which may be null: the
caller drops those events); a jagged boolean result is refused ("reduce the jagged comparison
with any() or all()").

Compilation and caching
-----------------------
The checked expression becomes the source of one ``@njit(cache=True)`` kernel: a loop over
events that reads flat inputs once per event, runs each reduction or ``x[k]`` once per event
(hoisted out of the element loops), then writes the event's value, or appends the event's
selected elements for a jagged result (one pass; the values buffer may be a view of a larger
one). Short lists are processed with branch-free "lanes" (:mod:`transforms._expr_loops`).
The source is written to ``$VDATA_KERNEL_CACHE`` (default ``~/.cache/vdata/kernels``) as
``expr_<sha256 of the source>.py`` and imported from there, so that Numba keeps its machine
code for other processes (see :mod:`transforms._expr_cache`). Numba compiles once per input
dtype signature, on the first call. Compiled kernels are kept in memory, keyed by the sha256
of the normalised expression (``ast.unparse``), the language and code generator versions and
the types of the columns it uses (a kernel file holds the generator version too, so a new
generator never reuses an old cached kernel); calling
:func:`compile_expression` again with the same text and types returns the same object.
Expressions pickle by (text, types) and recompile (from the caches) where they are unpickled.
"""

from __future__ import annotations

import ast
import hashlib
import json
import operator
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._expr_cache import load_kernel
from ._expr_check import check, parse
from ._expr_codegen import GENERATOR_VERSION, generate
from ._expr_ir import KIND_DTYPE, Site, kind_of
from ._expr_loops import lane_width
from .columns import Column, ColumnType
from .errors import ExpressionError, KernelError

__all__ = ["Expression", "compile_expression", "compile_filter", "normalise_expression"]

LANGUAGE_VERSION = 2  # part of every cache key: bump when the meaning of an expression changes (2: nulls)
_MAX_CACHED = 4096
_lock = threading.RLock()
_kernels: dict[str, _Kernel] = {}
_expressions: OrderedDict[tuple[Any, ...], Expression] = OrderedDict()


@dataclass(frozen=True, slots=True)
class _Kernel:
    function: Callable[..., int]
    text: str
    path: Path
    inputs: tuple[tuple[str, ColumnType], ...]
    result_type: ColumnType
    capacity_column: str | None  # jagged results: the column whose values bound the output
    sites: tuple[Site, ...]


@dataclass(frozen=True, eq=False, slots=True)
class Expression:
    """A compiled expression; call it with the columns it uses and the number of events."""

    text: str
    columns: tuple[str, ...]
    result_type: ColumnType
    _types: tuple[tuple[str, ColumnType], ...] = field(repr=False)
    _kernel: _Kernel = field(repr=False)

    def __reduce__(self) -> tuple[Any, ...]:
        return compile_expression, (self.text, dict(self._types))

    @property
    def source_path(self) -> Path:
        """The generated kernel source (for inspection)."""
        return self._kernel.path

    def __call__(self, columns: Mapping[str, Column], num_events: int) -> Column:
        n = operator.index(num_events)
        if n < 0:
            raise ValueError(f"num_events must be >= 0, got {n}")
        args: list[np.ndarray] = []
        widths = np.zeros(len(self._kernel.inputs), dtype=np.int64)
        for k, (name, ctype) in enumerate(self._kernel.inputs):
            col = self._input(columns, name, ctype, n)
            args.append(col.values)
            if col.offsets is not None:
                args.append(col.offsets)
                widths[k] = lane_width(len(col.values) / n) if n else 0
            if ctype.nullable:  # a column that may hold nulls but has none: all valid
                args.append(col.valid if col.valid is not None else np.ones(len(col.values), dtype=np.bool_))
        err = np.zeros(2, dtype=np.int64)
        dtype = np.dtype(self.result_type.dtype)
        nullable = self.result_type.nullable
        if self.result_type.jagged:
            cap = len(columns[self._kernel.capacity_column].values)  # type: ignore[index]
            # one spare slot: the lane form writes a dropped lane at the end (see _expr_loops)
            values, offsets = np.empty(cap + 1, dtype=dtype), np.empty(n + 1, dtype=np.int64)
            outs = [values, np.empty(cap + 1, dtype=np.bool_)] if nullable else [values]
            status = self._kernel.function(n, err, *outs, offsets, widths, *args)
            if status < 0:
                raise self._failure(err, columns)
            # A view keeps the whole buffer alive: copy only when that would waste most of it.
            kept = [a[:status] if 2 * status >= cap else a[:status].copy() for a in outs]
            return Column(kept[0], offsets, kept[1] if nullable else None)
        outs = [np.empty(n, dtype=dtype)] + ([np.empty(n, dtype=np.bool_)] if nullable else [])
        if self._kernel.function(n, err, *outs, widths, *args) < 0:
            raise self._failure(err, columns)
        return Column(outs[0], None, outs[1] if nullable else None)

    def _input(self, columns: Mapping[str, Column], name: str, ctype: ColumnType, n: int) -> Column:
        try:
            col = columns[name]
        except KeyError:
            raise ExpressionError(self.text, f"column {name!r} was not given") from None
        if not isinstance(col, Column):
            raise TypeError(f"column {name!r} must be a transforms.columns.Column, got {type(col).__name__}")
        mismatch = col.jagged != ctype.jagged or kind_of(col.type) != kind_of(ctype)
        if mismatch or (col.valid is not None and not ctype.nullable):
            reason = f"column {name!r} is {col.type}, but the expression was compiled for {ctype}"
            raise ExpressionError(self.text, reason)
        if len(col) != n:
            raise ExpressionError(self.text, f"column {name!r} has {len(col)} events, expected {n}")
        return col

    def _failure(self, err: np.ndarray, columns: Mapping[str, Column]) -> Exception:
        sites = self._kernel.sites
        if self.text != self._kernel.text:  # the kernel is shared with a differently spaced text
            program, result = check(self.text, parse(self.text), dict(self._types))
            generate(program, result, "")
            sites = tuple(program.sites)
        event, site = int(err[0]), sites[int(err[1])]
        if site.what == "offsets":
            column = site.columns[0]
            reason = f"column {column!r} has offsets that decrease or pass the end of its values at event {event}"
            return KernelError(f"expression {self.text!r}: {reason}")
        counts = {name: int(columns[name].counts()[event]) for name in site.columns}
        first = counts[site.columns[0]]
        other = next(name for name in site.columns if counts[name] != first)
        return ExpressionError(
            self.text,
            f"jagged operands have different numbers of entries in event {event}: {site.columns[0]} has "
            f"{first}, {other} has {counts[other]} (an elementwise operation on two jagged lists needs "
            "equal counts in every event)",
            site.at,
        )


def compile_expression(text: str, types: Mapping[str, ColumnType]) -> Expression:
    """Parse, type-check and compile ``text`` against the available column ``types``.

    Raises :class:`~transforms.errors.ExpressionError` for anything the language refuses
    (see the module docstring); the message names the expression, the position and the reason.
    """
    tree = parse(text)
    names = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id in types})
    used = tuple((name, _column_type(types[name], name)) for name in names)
    key = (text, used)
    with _lock:
        cached = _expressions.get(key)
        if cached is not None:
            _expressions.move_to_end(key)
            return cached
        normalised = ast.unparse(tree)
        digest = json.dumps([LANGUAGE_VERSION, GENERATOR_VERSION, normalised, [(name, str(t)) for name, t in used]])
        sha = hashlib.sha256(digest.encode()).hexdigest()
        kernel = _kernels.get(sha)
        if kernel is None:
            kernel = _kernels[sha] = _build(text, tree, types, normalised)
        expression = Expression(text, tuple(name for name, _ in kernel.inputs), kernel.result_type, used, kernel)
        _expressions[key] = expression
        if len(_expressions) > _MAX_CACHED:
            _expressions.popitem(last=False)
        return expression


def normalise_expression(text: str) -> str:
    """``text`` as :mod:`ast` prints it (same meaning, same text), without type-checking it.

    Raises :class:`~transforms.errors.ExpressionError` if it is not one Python expression or is
    over the size limits (see *Limits* above), so that nothing downstream overflows the stack.
    """
    return ast.unparse(parse(text))


def compile_filter(text: str, types: Mapping[str, ColumnType]) -> Expression:
    """Like :func:`compile_expression`, but the result must be one boolean per event."""
    expression = compile_expression(text, types)
    result = expression.result_type
    if result.jagged and result.dtype == "bool":
        raise ExpressionError(text, "a filter needs one boolean per event; reduce the jagged comparison "
                                    "with any() or all(), e.g. any(Muon_pt > 20)")  # fmt: skip
    if result.jagged or result.dtype != "bool":
        raise ExpressionError(text, f"a filter needs one boolean per event, but the expression gives {result} "
                                    "(compare it, e.g. nMuon > 0)")  # fmt: skip
    return expression


def _column_type(ctype: Any, name: str) -> ColumnType:
    if not isinstance(ctype, ColumnType):
        raise TypeError(f"the type of column {name!r} must be a ColumnType, got {type(ctype).__name__}")
    return ctype


def _build(text: str, tree: ast.Expression, types: Mapping[str, ColumnType], normalised: str) -> _Kernel:
    program, result = check(text, tree, types)
    source = generate(program, result, normalised)
    path, function = load_kernel(source)
    result_type = ColumnType(KIND_DTYPE[result.kind], result.jagged, result.valid is not None)
    capacity = result.group[0] if result.jagged else None
    return _Kernel(function, text, path, tuple(program.columns.items()), result_type, capacity, tuple(program.sites))
