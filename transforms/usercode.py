"""Scientists' transforms: source text checked against an allow-list, then compiled by Numba.

A submission is the text of exactly one function, named like the transform, whose parameters
are the declared inputs (for ``event_list`` kernels followed by one buffer per output); see
``transforms.transform`` for the kinds. The check (:func:`check_source`) walks the syntax tree
and refuses, naming the line and the reason, anything outside a small numeric language:

- statements: assignment (also ``+=`` and annotated), ``if``, ``for`` over ``range``/
  ``enumerate``/``zip`` or an input, ``while``, ``return``, ``break``, ``continue``, ``pass``,
  ``raise ValueError("...")``/``RuntimeError``, a docstring;
- expressions: numbers, names, arithmetic, comparisons, ``and``/``or``/``not``, ``x if c else y``,
  subscripts and slices, tuples, calls of the allowed functions (``abs``, ``sqrt``, ...) and
  ``math.<name>``/``np.<name>`` from the lists below, with only ``dtype=`` as a keyword;
- never: ``import``, names or attributes starting with ``_``, other attributes, ``open``,
  ``exec``, ``eval``, ``getattr`` and friends, ``lambda``, classes, nested functions,
  decorators, default values or annotations of parameters, ``global``, ``with``, ``try``,
  comprehensions, strings outside docstrings and ``raise``.

The function is then exec'd in a namespace holding only the allowed names and compiled with
``numba.njit`` (nopython, ``boundscheck=True`` so a bad index raises instead of corrupting
memory, NumPy's error model). The text is written to the kernel cache folder first, named by
its hash, so that Numba can cache the machine code for other processes. It is compiled once
for float64 inputs at submission, so typing errors are found then, with their line. This is a
guard against mistakes, not a sandbox against attackers (DESIGN.md, Security).
"""

from __future__ import annotations

import ast
import builtins
import math
import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit

from transforms.columns import Column
from transforms.errors import KernelError, TransformCodeError, TransformSignatureError
from transforms._drivers import exec_source
from transforms.transform import (
    KERNEL_OPTIONS,
    Transform,
    check_signature,
    code_hash,
    kernel_parameters,
    summarise_numba_error,
)

__all__ = [
    "ALLOWED_CALLS", "MATH_ATTRS", "MAX_NESTING", "MAX_SOURCE_CHARS", "NP_ATTRS", "UserTransform",
    "check_source", "compile_user_transform",
]  # fmt: skip

MAX_SOURCE_CHARS = 20_000
MAX_NESTING = 100  # syntax-tree levels: the checker, ast.unparse and Numba recurse over the tree
_MAX_COMPILED = 256
_compiled: dict[tuple[Any, ...], UserTransform] = {}
_BUILTIN_CALLS = frozenset({"abs", "bool", "enumerate", "float", "int", "len", "max", "min", "range", "round", "zip"})
_RAISABLE = frozenset({"ValueError", "RuntimeError"})
_LOOPS = frozenset({"enumerate", "range", "zip"})
_MATH_FUNCS = frozenset({
    "acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "ceil", "copysign", "cos", "cosh",
    "erf", "erfc", "exp", "expm1", "fabs", "floor", "hypot", "isfinite", "isinf", "isnan", "log",
    "log10", "log1p", "log2", "pow", "sin", "sinh", "sqrt", "tan", "tanh", "trunc",
})  # fmt: skip
ALLOWED_CALLS = _BUILTIN_CALLS | _MATH_FUNCS  # callable by bare name (math functions injected)
_CONSTANTS = {"pi": math.pi, "inf": math.inf, "nan": math.nan, "tau": math.tau}
MATH_ATTRS = _MATH_FUNCS | {"e", "inf", "nan", "pi", "tau"}
NP_ATTRS = frozenset({
    "abs", "absolute", "all", "any", "arccos", "arccosh", "arcsin", "arcsinh", "arctan", "arctan2",
    "arctanh", "argmax", "argmin", "argsort", "bool_", "ceil", "cos", "cosh", "count_nonzero",
    "cumsum", "e", "empty", "exp", "expm1", "fabs", "float32", "float64", "floor", "full", "hypot",
    "inf", "int8", "int16", "int32", "int64", "isfinite", "isinf", "isnan", "log", "log10", "log1p",
    "log2", "max", "maximum", "mean", "min", "minimum", "nan", "ones", "pi", "prod", "sign", "sin",
    "sinh", "sort", "sqrt", "square", "std", "sum", "tan", "tanh", "uint8", "uint32", "uint64",
    "where", "zeros",
})  # fmt: skip
_MODULES = {"math": MATH_ATTRS, "np": NP_ATTRS}
_FORBIDDEN = frozenset({
    "breakpoint", "compile", "delattr", "dir", "eval", "exec", "exit", "getattr", "globals",
    "hasattr", "help", "input", "locals", "memoryview", "object", "open", "print", "quit",
    "setattr", "super", "type", "vars",
})  # fmt: skip
_RESERVED = ALLOWED_CALLS | _RAISABLE | set(_CONSTANTS) | set(_MODULES)
_NAMED = {
    ast.Import: "import", ast.ImportFrom: "import", ast.Lambda: "lambda",
    ast.ClassDef: "a class definition", ast.FunctionDef: "a nested function definition",
    ast.AsyncFunctionDef: "an async function", ast.Global: "global", ast.Nonlocal: "nonlocal",
    ast.With: "with", ast.AsyncWith: "async with", ast.Try: "try", ast.Delete: "del",
    ast.Assert: "assert (use if ... raise ValueError)", ast.Yield: "yield", ast.YieldFrom: "yield",
    ast.Await: "await", ast.ListComp: "a list comprehension", ast.SetComp: "a set comprehension",
    ast.DictComp: "a dict comprehension", ast.GeneratorExp: "a generator expression",
    ast.List: "a list (use np.empty)", ast.Dict: "a dict", ast.Set: "a set", ast.Starred: "*unpacking",
    ast.JoinedStr: "an f-string", ast.NamedExpr: "':='", ast.Match: "match",
}  # fmt: skip


def check_source(name: str, source: str) -> ast.Module:
    """The parsed source if it passes the allow-list; else TransformCodeError (line, reason)."""
    if len(source) > MAX_SOURCE_CHARS:
        raise TransformCodeError(name, f"source is longer than {MAX_SOURCE_CHARS} characters")
    too_deep = f"the code is nested too deeply (more than {MAX_NESTING} levels); split the expression"
    try:
        tree = ast.parse(textwrap.dedent(source))
    except SyntaxError as exc:
        raise TransformCodeError(name, f"syntax error: {exc.msg}", exc.lineno) from None
    except (RecursionError, MemoryError):  # the parser's own stack: thousands of levels
        raise TransformCodeError(name, too_deep) from None
    except ValueError as exc:  # e.g. a null byte
        raise TransformCodeError(name, f"cannot be parsed: {exc}") from None
    deepest = _deepest(tree)
    if deepest is not None:  # the checker below, ast.unparse and Numba all recurse
        raise TransformCodeError(name, too_deep, getattr(deepest, "lineno", None))
    _Checker(name, tree).run()
    return tree


def _deepest(tree: ast.Module) -> ast.AST | None:
    """A node more than :data:`MAX_NESTING` levels deep, found without recursion; else None."""
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, level = stack.pop()
        if level > MAX_NESTING:
            return node
        stack.extend((child, level + 1) for child in ast.iter_child_nodes(node))
    return None


def compile_user_transform(
    name: str,
    source: str,
    inputs: Mapping[str, str],
    outputs: Mapping[str, str],
    kind: str = "event",
    max_size: str | int | None = None,
) -> UserTransform:
    """Check, compile (for float64 inputs, to find typing errors now) and return a Transform.
    Not registered: callers keep user transforms by name or ``code_hash``. The same submission
    again (e.g. unpickled in a worker) returns the Transform compiled before in this process."""
    ins, outs = dict(inputs), dict(outputs)
    check_signature(name, kind, ins, outs, max_size)
    key = (name, source, kind, tuple(ins.items()), tuple(outs.items()), max_size)
    if (known := _compiled.get(key)) is not None:
        return known
    tree = check_source(name, source)
    fn = next(node for node in tree.body if isinstance(node, ast.FunctionDef))
    params, expected = [a.arg for a in fn.args.args], kernel_parameters(kind, ins, outs)
    if params != expected:
        raise TransformSignatureError(
            f"transform {name!r}: parameters ({', '.join(params)}) do not match the declared "
            f"({', '.join(expected)}){' (inputs, then output buffers)' if kind == 'event_list' else ''}"
        )
    text = textwrap.dedent(source)  # verbatim, so that Numba's line numbers are the user's
    namespace = _namespace()
    path = exec_source(text, namespace, f"user_{name}")
    kernel = njit(cache=path is not None, boundscheck=True, **KERNEL_OPTIONS)(namespace[name])
    digest = code_hash(text, kind, ins, outs, max_size)
    t = UserTransform(name, kind, ins, outs, digest, text, kernel, max_size, user=True, cacheable=path is not None)
    _trial_compile(t, path)
    if len(_compiled) >= _MAX_COMPILED:
        _compiled.pop(next(iter(_compiled)))
    _compiled[key] = t
    return t


@dataclass(frozen=True, slots=True)
class UserTransform(Transform):
    """A transform compiled from a scientist's source text. It has no module to be imported
    from, so it pickles as its submission and is compiled again where it is unpickled."""

    def __reduce__(self) -> tuple[Any, ...]:
        signature = (self.inputs, self.outputs, self.kind, self.max_size)
        return (_rebuild, (self.name, self.source, *signature, self.code_hash))


def _rebuild(
    name: str, source: str, inputs: dict[str, str], outputs: dict[str, str], kind: str,
    max_size: str | int | None, code: str,
) -> Transform:  # fmt: skip
    t = compile_user_transform(name, source, inputs, outputs, kind=kind, max_size=max_size)
    if t.code_hash != code:
        raise TransformSignatureError(f"transform {name!r} rebuilt with code {t.code_hash[:12]}, not {code[:12]}")
    return t


def _namespace() -> dict[str, Any]:
    allowed_builtins = {n: getattr(builtins, n) for n in _BUILTIN_CALLS | _RAISABLE}
    return {
        "__builtins__": allowed_builtins,
        "math": math,
        "np": np,
        **{n: getattr(math, n) for n in _MATH_FUNCS},
        **_CONSTANTS,
    }


def _trial_compile(t: Transform, path: Path | None) -> None:
    empty = np.empty(0, dtype=np.float64)
    start = np.zeros(1, dtype=np.int64)
    columns = {p: Column(empty, start if how == "jagged" else None) for p, how in t.inputs.items()}
    try:
        t.apply(columns, 0)
    except (TransformSignatureError, KernelError) as exc:
        cause = exc.__cause__ or exc
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(cause))
        filename = re.escape(path.name if path is not None else f"<user_{t.name}>")
        found = re.search(rf'File "(?:[^"]*/)?{filename}", line (\d+)', message) or re.search(
            rf"at (?:\S*/)?{filename} \((\d+)\)", message
        )
        reason = summarise_numba_error(cause)
        if found is not None:
            raise TransformCodeError(t.name, f"cannot be compiled: {reason}", int(found.group(1))) from None
        if "driver" in message:
            raise TransformSignatureError(
                f"transform {t.name!r}: the kernel's result does not fit the declared outputs "
                f"{list(t.outputs)} ({t.kind} kernels {_RETURNS[t.kind]}): {reason}"
            ) from None
        raise TransformCodeError(t.name, f"cannot be compiled: {reason}") from None


_RETURNS = {
    "element": "return one number per output, as a tuple if several",
    "event": "return one number per output, as a tuple if several",
    "event_list": "fill the output buffers and return how many entries they wrote",
}


class _Checker:
    """One pass over the tree in source order; the first problem found is raised."""

    def __init__(self, name: str, tree: ast.Module) -> None:
        self.name, self.tree = name, tree
        self.known: set[str] = set()

    def fail(self, node: ast.AST | None, reason: str) -> TransformCodeError:
        return TransformCodeError(self.name, reason, getattr(node, "lineno", None))

    def run(self) -> None:
        found: ast.FunctionDef | None = None
        for i, node in enumerate(self.tree.body):
            if isinstance(node, ast.FunctionDef):
                if node.decorator_list:
                    raise self.fail(node.decorator_list[0], "decorators are not allowed")
                if found is not None:
                    raise self.fail(node, f"only one function may be defined; {found.name!r} is already defined")
                self.function(node)
                found = node
            elif i == 0 and _is_docstring(node):
                continue
            else:
                self.statement(node)  # a forbidden construct is named as such first
                raise self.fail(node, f"only the definition of function {self.name!r} may appear at top level")
        if found is None:
            raise self.fail(None, f"no function defined; define {self.name!r}")
        if found.name != self.name:
            raise self.fail(found, f"the function must be named {self.name!r}, not {found.name!r}")

    def function(self, node: ast.FunctionDef) -> None:
        a = node.args
        if a.posonlyargs or a.kwonlyargs or a.vararg or a.kwarg or a.defaults or a.kw_defaults:
            raise self.fail(node, "parameters must be plain names: no defaults, *args, **kwargs or '/'")
        if node.returns is not None or any(arg.annotation is not None for arg in a.args):
            raise self.fail(node, "annotations are not allowed on parameters or the return value")
        for arg in a.args:
            self.store_name(arg.arg, arg)
        self.known = {arg.arg for arg in a.args}
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                self.known.add(sub.id)
        body = node.body[1:] if _is_docstring(node.body[0]) else node.body
        self.block(body)

    def block(self, body: list[ast.stmt]) -> None:
        for stmt in body:
            self.statement(stmt)

    def statement(self, node: ast.stmt) -> None:  # noqa: C901 - one branch per statement type
        if isinstance(node, ast.Assign):
            for target in node.targets:
                self.target(target)
            self.expr(node.value)
        elif isinstance(node, ast.AugAssign):
            self.target(node.target)
            self.expr(node.value)
        elif isinstance(node, ast.AnnAssign):
            if not isinstance(node.target, ast.Name):
                raise self.fail(node, "an annotated assignment must assign to a plain name")
            self.target(node.target)
            if not (isinstance(node.annotation, ast.Name) and node.annotation.id in {"bool", "float", "int"}):
                self.expr(node.annotation)
            if node.value is not None:
                self.expr(node.value)
        elif isinstance(node, (ast.If, ast.While)):
            self.expr(node.test)
            self.block(node.body)
            self.block(node.orelse)
        elif isinstance(node, ast.For):
            self.target(node.target)
            it = node.iter
            ranged = isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id in _LOOPS
            if not (ranged or isinstance(it, ast.Name)):
                raise self.fail(node, "a for loop must run over range(...), enumerate, zip or an input array")
            self.expr(it)
            self.block(node.body)
            self.block(node.orelse)
        elif isinstance(node, ast.Return):
            if node.value is not None:
                self.expr(node.value)
        elif isinstance(node, ast.Raise):
            self.raise_(node)
        elif isinstance(node, ast.Expr):
            self.expr(node.value)
        elif not isinstance(node, (ast.Break, ast.Continue, ast.Pass)):
            raise self.fail(node, f"{_describe(node)} is not allowed")

    def raise_(self, node: ast.Raise) -> None:
        exc = node.exc
        call = exc if isinstance(exc, ast.Call) else None
        func = call.func if call is not None else exc
        message_ok = call is None or (
            not call.keywords and len(call.args) <= 1
            and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in call.args)
        )  # fmt: skip
        if node.cause is not None or not (isinstance(func, ast.Name) and func.id in _RAISABLE and message_ok):
            raise self.fail(node, "only 'raise ValueError(\"message\")' or RuntimeError may be raised")

    def target(self, node: ast.expr) -> None:
        if isinstance(node, ast.Name):
            self.store_name(node.id, node)
        elif isinstance(node, ast.Subscript):
            self.expr(node.value)
            self.expr(node.slice)
        elif isinstance(node, ast.Tuple):
            for elt in node.elts:
                self.target(elt)
        elif isinstance(node, ast.Attribute):
            self.attribute(node)  # names a dunder as such
            raise self.fail(node, "assigning to an attribute is not allowed")
        else:
            raise self.fail(node, f"cannot assign to {_describe(node)}")

    def store_name(self, name: str, node: ast.AST) -> None:
        self.check_name(name, node)
        if name in _RESERVED:
            raise self.fail(node, f"{name!r} is an allowed function or constant and cannot be assigned")

    def check_name(self, name: str, node: ast.AST) -> None:
        if name.startswith("_"):
            raise self.fail(node, f"names starting with '_' are not allowed ({name!r})")
        if name in _FORBIDDEN or name == "numba":
            raise self.fail(node, f"{name!r} is not allowed (no I/O, introspection or dynamic code)")

    def expr(self, node: ast.expr) -> None:  # noqa: C901 - one branch per expression type
        if isinstance(node, ast.Name):
            self.check_name(node.id, node)
            if node.id in ALLOWED_CALLS or node.id in _MODULES or node.id in _RAISABLE:
                use = "used as math.<name>/np.<name>" if node.id in _MODULES else "called"
                raise self.fail(node, f"{node.id!r} may only be {use}")
            if node.id not in self.known and node.id not in _CONSTANTS:
                reason = f"unknown name {node.id!r}: not a parameter, a local variable or an allowed constant"
                raise self.fail(node, reason)
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, str):
                raise self.fail(node, "strings are allowed only as a docstring or a raise message")
            if not isinstance(node.value, (int, float, bool, type(None))):
                raise self.fail(node, f"constant {node.value!r} is not allowed")
        elif isinstance(node, ast.Attribute):
            self.attribute(node)
        elif isinstance(node, ast.Call):
            self.call(node)
        elif isinstance(node, ast.BinOp):
            self.expr(node.left)
            self.expr(node.right)
        elif isinstance(node, ast.UnaryOp):
            self.expr(node.operand)
        elif isinstance(node, ast.BoolOp):
            for value in node.values:
                self.expr(value)
        elif isinstance(node, ast.Compare):
            for sub in (node.left, *node.comparators):
                self.expr(sub)
        elif isinstance(node, ast.IfExp):
            for sub in (node.test, node.body, node.orelse):
                self.expr(sub)
        elif isinstance(node, ast.Subscript):
            self.expr(node.value)
            self.expr(node.slice)
        elif isinstance(node, ast.Slice):
            for part in (node.lower, node.upper, node.step):
                if part is not None:
                    self.expr(part)
        elif isinstance(node, ast.Tuple):
            for elt in node.elts:
                self.expr(elt)
        else:
            raise self.fail(node, f"{_describe(node)} is not allowed")

    def attribute(self, node: ast.Attribute) -> None:
        if node.attr.startswith("_"):
            raise self.fail(node, f"names starting with '_' are not allowed ({node.attr!r})")
        base = node.value
        if isinstance(base, ast.Name) and base.id in _MODULES and node.attr in _MODULES[base.id]:
            return
        raise self.fail(
            node,
            f"attribute access {ast.unparse(node)!r} is not allowed; only math.<name> and np.<name> "
            "from the allow-list (array sizes: len(x))",
        )

    def call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name):
            self.check_name(func.id, func)
            if func.id not in ALLOWED_CALLS:
                allowed = ", ".join(sorted(ALLOWED_CALLS))
                raise self.fail(node, f"calling {func.id!r} is not allowed; allowed: {allowed}")
        elif isinstance(func, ast.Attribute):
            self.attribute(func)
        else:
            raise self.fail(node, "only allowed functions may be called, by name")
        for arg in node.args:
            self.expr(arg)
        for kw in node.keywords:
            if kw.arg != "dtype":
                raise self.fail(node, "the only keyword argument allowed is dtype=")
            self.expr(kw.value)


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _describe(node: ast.AST) -> str:
    return _NAMED.get(type(node), f"{type(node).__name__} syntax")
