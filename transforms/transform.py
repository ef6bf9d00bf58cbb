"""A transform: a Numba kernel with declared inputs and outputs, run over all events by a driver.

A kernel is written for one element or one event; a generated Numba driver loops over the
events, so no Python runs per event. Three kinds:

``element``
    ``kernel(x, y, ...) -> value | (value, ...)`` on scalars: one element of each jagged input
    (which must have equal counts per event) and the event's value of each flat input. Outputs
    are jagged (offsets of the jagged inputs) if any input is jagged, else flat.
``event``
    ``kernel(xs, y, ...) -> value | (value, ...)`` per event: a read-only 1-d view for each
    jagged input, a scalar for each flat one. Outputs are flat.
``event_list``
    ``kernel(xs, y, ..., out1, out2, ...) -> count``: like ``event`` plus one 1-d buffer per
    output, sized by ``max_size`` of the first jagged input's length ``n`` (``"same"``: n,
    ``"pairs"``: n*(n-1)//2, ``"square"``: n*n, or an int); it returns how many entries it
    wrote. Outputs are jagged.

Each transform gets a driver generated as source text from its kind, which inputs are
jagged and how many outputs it has; the text also carries the kernel's code hash and its
file's sha256 (a changed kernel never reuses a stale driver). It is written to the kernel
cache folder (``VDATA_KERNEL_CACHE``, else ``~/.cache/vdata/kernels``, as transforms.expressions
uses), named by its hash, so ``@njit(cache=True)`` works and another process (a Ray worker)
loads machine code instead of compiling. Without a writable folder it is compiled in memory.
Kernels use NumPy's error model (x/0 gives inf or NaN, not ZeroDivisionError).

The :func:`transform` decorator makes one from a Python function; it does not register it
(:mod:`transforms.registry` holds the named ones: the built-ins of :mod:`transforms.physics`
and whatever is passed to ``register``). Scientists' source text becomes a transform in
:mod:`transforms.usercode`. This module imports neither, so neither imports the registry.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import json
import pickle
import re
import textwrap
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit
from numba.core.dispatcher import Dispatcher
from numba.core.errors import NumbaError

from transforms._drivers import make_driver
from transforms.columns import Column, ColumnType
from transforms.errors import KernelError, TransformCodeError, TransformSignatureError

__all__ = [
    "INPUT_KINDS", "KERNEL_OPTIONS", "KINDS", "MAX_SIZES", "Transform", "check_signature", "code_hash",
    "kernel_parameters", "normalise_source", "summarise_numba_error", "transform",
]  # fmt: skip

KINDS = ("element", "event", "event_list")
INPUT_KINDS = ("flat", "jagged")
MAX_SIZES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "same": lambda n: n,
    "pairs": lambda n: n * (n - 1) // 2,
    "square": lambda n: n * n,
}
KERNEL_OPTIONS: dict[str, Any] = {"error_model": "numpy"}  # x/0 gives inf/nan, as in NumPy


@dataclass(frozen=True, slots=True)
class Transform:
    """A kernel with declared inputs (parameter -> ``"flat"``/``"jagged"``, in kernel order)
    and outputs (name -> dtype name). ``code_hash`` identifies the code and the signature."""

    name: str
    kind: str
    inputs: dict[str, str]
    outputs: dict[str, str]
    code_hash: str
    source: str
    kernel: Dispatcher = field(repr=False, compare=False)
    max_size: str | int | None = None
    user: bool = False  # submitted source text (transforms.usercode), not a Python module
    cacheable: bool = field(default=False, repr=False, compare=False)
    _driver: list[Any] = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", dict(self.inputs))
        object.__setattr__(self, "outputs", dict(self.outputs))
        check_signature(self.name, self.kind, self.inputs, self.outputs, self.max_size)
        if not re.fullmatch(r"[0-9a-f]{64}", self.code_hash):
            raise TransformSignatureError(f"transform {self.name!r}: code_hash must be 64 hex digits")

    def __hash__(self) -> int:
        return hash((self.name, self.code_hash))

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as where it is defined (Ray ships transforms to workers): the receiving
        # process imports the kernel's module and takes the transform from it, so no registry
        # is involved. A scientist's transform has no module: transforms.usercode's subclass
        # pickles it as its source instead.
        fn = self.kernel.py_func
        where = (fn.__module__, fn.__qualname__)
        try:
            _defined_at(*where, self.name, self.code_hash)  # refused here, not in the worker
        except (ImportError, AttributeError, TransformSignatureError) as exc:
            raise pickle.PicklingError(
                f"transform {self.name!r} cannot be pickled: it is not importable as "
                f"{'.'.join(where)} ({exc})"
            ) from None
        return (_defined_at, (*where, self.name, self.code_hash))

    @property
    def jagged_inputs(self) -> list[str]:
        return [p for p, k in self.inputs.items() if k == "jagged"]

    def apply(self, columns: Mapping[str, Column], num_events: int) -> dict[str, Column]:
        """Run over ``num_events`` events; ``columns`` maps each input parameter to a Column."""
        given = [self._column(columns, p, num_events) for p in self.inputs]
        if extra := sorted(set(columns) - set(self.inputs)):
            raise self._refuse(f"unknown inputs {extra}; it takes {list(self.inputs)}")
        jagged = [c.offsets for c in given if c.offsets is not None]
        out_jagged = self.kind == "event_list" or (self.kind == "element" and bool(jagged))
        args: list[Any] = [num_events]
        if self.kind == "element" and jagged:
            self._check_equal_counts(given)
            args.append(_readonly(jagged[0]))
        for col in given:
            if self.kind != "element" and col.offsets is not None:
                args.append(_readonly(col.offsets))
            args.append(_readonly(np.ascontiguousarray(col.values)))
        if self.kind == "element":
            size = int(jagged[0][-1]) if jagged else num_events
        elif self.kind == "event":
            size = num_events
        else:
            caps = _capacities(self.max_size, np.diff(jagged[0]))
            cap_offsets = np.zeros(num_events + 1, dtype=np.int64)
            np.cumsum(caps, out=cap_offsets[1:])
            out_offsets = np.zeros(num_events + 1, dtype=np.int64)
            args += [cap_offsets, out_offsets]
            size = int(cap_offsets[-1])
        buffers = [np.empty(size, dtype=np.dtype(d)) for d in self.outputs.values()]
        status = self._run(args + buffers, given)
        if self.kind == "event_list":
            if status < 0:
                bound = f"{self.max_size}(len({self.jagged_inputs[0]}))" if isinstance(self.max_size, str) else self.max_size
                raise KernelError(f"transform {self.name!r}: event {-status - 1} returned a count outside 0..{bound}")
            buffers = [b[:status].copy() if status < size // 2 else b[:status] for b in buffers]
            return {n: Column(b, out_offsets) for n, b in zip(self.outputs, buffers)}
        offsets = jagged[0] if out_jagged else None
        return {n: Column(b, offsets) for n, b in zip(self.outputs, buffers)}

    def _column(self, columns: Mapping[str, Column], param: str, num_events: int) -> Column:
        if param not in columns:
            raise self._refuse(f"input {param!r} is missing")
        col, want = columns[param], self.inputs[param]
        if not isinstance(col, Column) or col.jagged != (want == "jagged"):
            got = col.type if isinstance(col, Column) else type(col).__name__
            raise self._refuse(f"input {param!r} must be a {want} column, got {got}")
        if len(col) != num_events:
            raise self._refuse(f"input {param!r} has {len(col)} events, expected {num_events}")
        return col

    def _refuse(self, reason: str) -> TransformSignatureError:
        return TransformSignatureError(f"transform {self.name!r}: {reason}")

    def _check_equal_counts(self, given: list[Column]) -> None:
        pairs = [(p, c.offsets) for p, c in zip(self.inputs, given) if c.offsets is not None]
        first, ref = pairs[0]
        for param, offsets in pairs[1:]:
            if not np.array_equal(offsets, ref):
                counts, ref_counts = np.diff(offsets), np.diff(ref)
                event = int(np.flatnonzero(counts != ref_counts)[0])
                raise KernelError(
                    f"transform {self.name!r}: jagged inputs {first!r} and {param!r} have different "
                    f"lengths in event {event} ({ref_counts[event]} and {counts[event]})"
                )

    def _run(self, args: list[Any], given: list[Column]) -> int:
        if not self._driver:
            self._driver.append(make_driver(self))
        try:
            return int(self._driver[0](*args))
        except NumbaError as exc:  # at compile time: the kernel does not fit these types
            types = ", ".join(f"{p}: {c.type}" for p, c in zip(self.inputs, given))
            reason = f"cannot be compiled for its inputs ({types}): {summarise_numba_error(exc)}"
            raise self._refuse(reason) from exc.with_traceback(None)
        except Exception as exc:  # raised by the kernel: the user's error, not ours
            message = f"transform {self.name!r} failed: {type(exc).__name__}: {exc}"
            raise KernelError(message) from exc.with_traceback(None)


# -- signatures and hashes -----------------------------------------------------------------


def check_signature(
    name: str, kind: str, inputs: Mapping[str, str], outputs: Mapping[str, str], max_size: str | int | None
) -> None:
    """Raise TransformSignatureError naming the first problem with a declared signature."""

    def bad(reason: str) -> TransformSignatureError:
        return TransformSignatureError(f"transform {name!r}: {reason}")

    idents = [("the name", name), *(("an input name", p) for p in inputs), *(("an output name", o) for o in outputs)]
    for what, ident in idents:
        if not isinstance(ident, str) or not ident.isidentifier() or ident.startswith("_"):
            raise bad(f"{what} must be an identifier not starting with '_', got {ident!r}")
    if kind not in KINDS:
        raise bad(f"kind must be one of {list(KINDS)}, got {kind!r}")
    if not inputs or not outputs:
        raise bad("it must declare at least one input and at least one output")
    for param, how in inputs.items():
        if how not in INPUT_KINDS:
            raise bad(f"input {param!r} must be one of {list(INPUT_KINDS)}, got {how!r}")
    for out, dtype in outputs.items():
        try:
            ColumnType(dtype)
        except (TypeError, ValueError) as exc:
            raise bad(f"output {out!r}: {dtype!r} is not a numeric dtype name ({exc})") from None
    if kind == "event_list":
        if "jagged" not in inputs.values():
            raise bad("an event_list transform needs a jagged input (max_size refers to it)")
        if set(inputs) & set(outputs):
            raise bad(f"output names {sorted(set(inputs) & set(outputs))} repeat input names")
        if not (max_size in MAX_SIZES or (type(max_size) is int and max_size >= 0)):
            raise bad(f"max_size must be one of {list(MAX_SIZES)} or an int >= 0, got {max_size!r}")
    elif max_size is not None:
        raise bad("max_size applies to event_list transforms only")


def kernel_parameters(kind: str, inputs: Mapping[str, str], outputs: Mapping[str, str]) -> list[str]:
    """The kernel's parameter names: the inputs, then for ``event_list`` the output buffers."""
    return [*inputs, *outputs] if kind == "event_list" else list(inputs)


def normalise_source(source: str) -> str:
    """``ast.unparse(ast.parse(dedent(source)))`` without decorators: blind to layout and comments."""
    tree = ast.parse(textwrap.dedent(source))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            node.decorator_list = []
    return ast.unparse(tree)


def code_hash(
    source: str, kind: str, inputs: Mapping[str, str], outputs: Mapping[str, str],
    max_size: str | int | None = None, helpers: Iterable[str] = (),
) -> str:  # fmt: skip
    """sha256 hex of the normalised source (and of helper kernels it calls) and the signature."""
    payload = {
        "source": normalise_source(source), "helpers": [normalise_source(h) for h in helpers],
        "kind": kind, "inputs": list(inputs.items()), "outputs": list(outputs.items()), "max_size": max_size,
    }  # fmt: skip
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def summarise_numba_error(exc: BaseException) -> str:
    """The lines of a Numba error that say what is wrong, without its pipeline chatter."""
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines()]
    lines = [line for line in lines if line and not line.startswith(("Failed in nopython", "During:"))]
    if not lines:
        return type(exc).__name__
    signature = next((line[3:].strip() for line in lines if line.startswith(">>>")), "")
    return f"{lines[0]} {signature}".strip()[:500]


def _defined_at(module: str, qualname: str, name: str, code: str) -> Transform:
    """The transform at ``module.qualname``, if it is ``name`` with code hash ``code``."""
    found: Any = importlib.import_module(module)
    for attr in qualname.split("."):
        found = getattr(found, attr)
    if not isinstance(found, Transform) or found.name != name:
        raise TransformSignatureError(f"{module}.{qualname} is not the transform {name!r}")
    if found.code_hash != code:
        raise TransformSignatureError(f"transform {name!r} here has code {found.code_hash[:12]}, not {code[:12]}")
    return found


def _capacities(max_size: str | int | None, counts: np.ndarray) -> np.ndarray:
    if isinstance(max_size, str):
        return np.asarray(MAX_SIZES[max_size](counts), dtype=np.int64)
    return np.full(len(counts), max_size, dtype=np.int64)


def _readonly(array: np.ndarray) -> np.ndarray:
    # Kernels see inputs read-only, and one array type means one compilation.
    view = array.view()
    view.flags.writeable = False
    return view


def _dependencies(fn: Callable[..., Any], seen: set[int]) -> list[str]:
    # What Numba compiles into a kernel besides its own source: the jitted functions it calls
    # (recursively) and the global constants it reads. Part of its code hash.
    found = []
    for name in fn.__code__.co_names:
        obj = fn.__globals__.get(name)
        if isinstance(obj, Dispatcher) and id(obj) not in seen:
            seen.add(id(obj))
            found.append(textwrap.dedent(inspect.getsource(obj.py_func)))
            found += _dependencies(obj.py_func, seen)
        elif isinstance(obj, (bool, int, float, complex, str, bytes, tuple)):
            found.append(f"{name} = {obj!r}")
    return found


def transform(
    name: str | None = None,
    *,
    inputs: Mapping[str, str] | Iterable[tuple[str, str]],
    outputs: Mapping[str, str],
    kind: str = "element",
    max_size: str | int | None = None,
) -> Callable[[Callable[..., Any]], Transform]:
    """Decorator: compile the function with ``numba.njit`` (nopython) into a Transform,
    returned in its place (``.kernel`` is the jitted function). It is not registered: pass it
    to :func:`transforms.registry.register` to find it by name (the built-ins are)."""

    def wrap(fn: Callable[..., Any]) -> Transform:
        tname = name or fn.__name__
        ins, outs = dict(inputs.items() if isinstance(inputs, Mapping) else inputs), dict(outputs)
        check_signature(tname, kind, ins, outs, max_size)
        params = list(inspect.signature(fn).parameters)
        expected = kernel_parameters(kind, ins, outs)
        if params != expected:
            raise TransformSignatureError(
                f"transform {tname!r}: kernel parameters ({', '.join(params)}) do not match "
                f"the declared ({', '.join(expected)})"
            )
        try:
            source = textwrap.dedent(inspect.getsource(fn))
        except (OSError, TypeError) as exc:
            raise TransformCodeError(tname, f"kernel source is not available ({exc})") from None
        cacheable = not fn.__code__.co_freevars and Path(fn.__code__.co_filename).is_file()
        kernel = njit(cache=cacheable, **KERNEL_OPTIONS)(fn)
        digest = code_hash(source, kind, ins, outs, max_size, _dependencies(fn, set()))
        return Transform(tname, kind, ins, outs, digest, source, kernel, max_size, cacheable=cacheable)

    return wrap
