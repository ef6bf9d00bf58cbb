"""Parse an expression with :mod:`ast`, refuse everything not allow-listed, and type-check it
into a :class:`~transforms._expr_ir.Program` (private to :mod:`transforms.expressions`)."""

from __future__ import annotations

import ast
import difflib
import math
from collections.abc import Mapping
from typing import NoReturn

from ._expr_ir import Val, cast, kind_of, promote, valid_of
from ._expr_program import Program
from .columns import ColumnType
from .errors import ExpressionError

__all__ = ["FUNCTIONS", "check", "parse"]

MAX_LENGTH = 10_000
MAX_DEPTH = 50  # syntax-tree levels; keeps the generated source within Python's nesting limits
MAX_NODES = 1000  # syntax-tree nodes: bounds Numba's compile time (~6 s here for 1,000)
MAX_ARGS = 64  # of min/max: each argument is one more inlined helper call for Numba to compile
_SHOWN = 200  # characters of an expression an error message repeats
CONSTANTS = {"pi": math.pi, "e": math.e, "inf": math.inf, "nan": math.nan}
UNARY_MATH = {
    "sqrt": "np.sqrt", "exp": "np.exp", "log": "np.log", "log10": "np.log10", "log2": "np.log2",
    "log1p": "np.log1p", "expm1": "np.expm1", "sin": "np.sin", "cos": "np.cos", "tan": "np.tan",
    "asin": "np.arcsin", "acos": "np.arccos", "atan": "np.arctan", "sinh": "np.sinh",
    "cosh": "np.cosh", "tanh": "np.tanh", "asinh": "np.arcsinh", "acosh": "np.arccosh",
    "atanh": "np.arctanh", "floor": "np.floor", "ceil": "np.ceil",
}  # fmt: skip
PREDICATES = {"isnan": "np.isnan", "isinf": "np.isinf", "isfinite": "np.isfinite"}
BINARY_MATH = {"atan2": "np.arctan2", "hypot": "np.hypot", "pow": "np.power"}
REDUCTIONS = ("sum", "count", "len", "any", "all", "mean")
NULLS = ("isnull", "fill_null")
FUNCTIONS = sorted([*UNARY_MATH, *PREDICATES, *BINARY_MATH, *REDUCTIONS, *NULLS, "abs", "min", "max", "where"])

_ARITH = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.FloorDiv: "//", ast.Mod: "%"}
_COMPARE = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}
_LOGICAL = {ast.BitAnd: "and", ast.BitOr: "or", ast.BitXor: "!="}
_REFUSED = {
    ast.Lambda: "lambda", ast.ListComp: "list comprehension", ast.SetComp: "set comprehension",
    ast.DictComp: "dict comprehension", ast.GeneratorExp: "generator expression",
    ast.List: "list display", ast.Tuple: "tuple", ast.Dict: "dict display", ast.Set: "set display",
    ast.JoinedStr: "f-string", ast.NamedExpr: "assignment expression (:=)", ast.Await: "await",
    ast.Starred: "starred argument", ast.Slice: "slice", ast.MatMult: "operator @",
    ast.LShift: "operator <<", ast.RShift: "operator >>", ast.In: "operator 'in'",
    ast.NotIn: "operator 'not in'", ast.Is: "operator 'is'", ast.IsNot: "operator 'is not'",
}  # fmt: skip


def parse(text: str) -> ast.Expression:
    """The syntax tree of ``text`` (an expression, not a statement), within the size limits:
    at most :data:`MAX_LENGTH` characters and :data:`MAX_DEPTH` levels. Every tree this returns
    can be walked, printed (``ast.unparse``) and type-checked without overflowing the stack."""
    if not isinstance(text, str):
        raise ExpressionError(repr(text)[:_SHOWN], f"an expression must be a string, got {type(text).__name__}")
    if not text.strip():
        raise ExpressionError(text, "the expression is empty")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(_shown(text), f"the expression is longer than {MAX_LENGTH} characters "
                                            f"({len(text)}); split it into several defines")  # fmt: skip
    lead = len(text) - len(text.lstrip())
    too_deep = f"the expression is nested too deeply (more than {MAX_DEPTH} levels); split it into several defines"
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        col = _offset(text.strip(), exc.lineno or 1, (exc.offset or 1) - 1, utf8=False) + lead
        raise ExpressionError(_shown(text), f"invalid syntax ({exc.msg})", col) from None
    except (RecursionError, MemoryError):  # the parser's own stack: thousands of levels
        raise ExpressionError(_shown(text), too_deep) from None
    depth, nodes = _size(tree)
    if depth > MAX_DEPTH:
        raise ExpressionError(_shown(text), too_deep)
    if nodes > MAX_NODES:
        raise ExpressionError(_shown(text), f"the expression has more than {MAX_NODES} syntax-tree nodes; "
                                            "split it into several defines")  # fmt: skip
    return tree


def _size(tree: ast.Expression) -> tuple[int, int]:
    """Levels and nodes of the syntax tree below ``Expression``, counted without recursion
    (stops counting past either limit)."""
    depth = nodes = 0
    stack: list[tuple[ast.AST, int]] = [(tree.body, 1)]
    while stack and depth <= MAX_DEPTH and nodes <= MAX_NODES:
        node, level = stack.pop()
        depth, nodes = max(depth, level), nodes + 1
        stack.extend((child, level + 1) for child in ast.iter_child_nodes(node))
    return depth, nodes


def _shown(text: str) -> str:
    """``text`` as an error message shows it: long ones are cut (the message must stay readable)."""
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def check(text: str, tree: ast.Expression, types: Mapping[str, ColumnType]) -> tuple[Program, Val]:
    """Type-check ``tree`` (from :func:`parse`); returns the program (prelude, columns) and the
    result value."""
    checker = _Checker(text, types)
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    names = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id in types
                    and id(n) not in called})  # fmt: skip
    checker.program = Program({name: types[name] for name in names})
    try:
        return checker.program, checker.visit(tree.body)
    except RecursionError:
        raise ExpressionError(_shown(text), "the expression is nested too deeply") from None


def _offset(text: str, lineno: int, col: int, *, utf8: bool = True) -> int:
    lines = text.splitlines(keepends=True)
    before = sum(len(line) for line in lines[: lineno - 1])
    line = lines[lineno - 1] if 0 < lineno <= len(lines) else ""
    return before + (len(line.encode()[:col].decode(errors="ignore")) if utf8 else col)


class _Checker:
    def __init__(self, text: str, types: Mapping[str, ColumnType]) -> None:
        self.text = text
        self.source = text.strip()
        self.lead = len(text) - len(text.lstrip())
        self.types = types
        self.program: Program

    # ---------------------------------------------------------------- helpers

    def fail(self, node: ast.AST, reason: str) -> NoReturn:
        lineno, col = getattr(node, "lineno", None), getattr(node, "col_offset", None)
        pos = None if lineno is None or col is None else _offset(self.source, lineno, col) + self.lead
        raise ExpressionError(self.text, reason, pos)

    def pos(self, node: ast.AST) -> int:
        return _offset(self.source, node.lineno, node.col_offset) + self.lead  # type: ignore[attr-defined]

    def snippet(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.source, node) or ast.unparse(node)

    def align(self, node: ast.AST, vals: list[Val]) -> tuple[tuple[str, ...], str | None, int | None]:
        """The group, mask and alignment position of an elementwise operation on ``vals``."""
        jagged = [v for v in vals if v.jagged]
        if not jagged:
            return (), None, None
        if len({v.mask for v in jagged}) > 1:
            self.fail(node, "jagged operands carry different selections (masks): apply the same mask "
                            "to every jagged operand, or mask the result, e.g. (a + b)[a > 20]")  # fmt: skip
        group = tuple(sorted({name for v in jagged for name in v.group}))
        at = next((v.at for v in jagged if v.at is not None), None)
        if at is None and all(len(v.group) < len(group) for v in jagged):
            at = self.pos(node)
        return group, jagged[0].mask, at

    def need(self, node: ast.AST, val: Val, kinds: str, what: str) -> None:
        if val.kind not in kinds:
            got = {"b": "a boolean", "i": "an integer", "f": "a float"}[val.kind]
            self.fail(node, f"{what}, but {self.snippet(node)!r} is {got}")

    # ---------------------------------------------------------------- nodes

    def visit(self, node: ast.AST) -> Val:
        method = getattr(self, f"visit_{type(node).__name__}", None)
        if method is None:
            what = _REFUSED.get(type(node), type(node).__name__)
            self.fail(node, f"{what} is not allowed in expressions")
        return method(node)

    def visit_Constant(self, node: ast.Constant) -> Val:
        value = node.value
        if isinstance(value, bool):
            return Val("b", repr(value))
        if isinstance(value, int):
            if not -(2**63) <= value < 2**63:
                self.fail(node, f"integer constant {value} does not fit in 64 bits")
            return Val("i", repr(value))
        if isinstance(value, float):
            return Val("f", _float_code(value))
        kind = "string" if isinstance(value, str) else "bytes" if isinstance(value, bytes) else type(value).__name__
        self.fail(node, f"{kind} constant {value!r} is not allowed (only numbers, True and False)")

    def visit_Name(self, node: ast.Name) -> Val:
        name = node.id
        if name.startswith("_"):
            self.fail(node, f"name {name!r} is not allowed (names starting with '_' are reserved)")
        if name in self.types:
            ctype = self.types[name]
            code = self.program.load(name, ctype.jagged)
            valid = self.program.load_valid(name, ctype.jagged) if ctype.nullable else None
            return Val(kind_of(ctype), code, (name,) if ctype.jagged else (), valid=valid)
        if name in CONSTANTS:
            return Val("f", _float_code(CONSTANTS[name]))
        if name in FUNCTIONS:
            self.fail(node, f"{name!r} is a function: call it, e.g. {name}(x)")
        close = difflib.get_close_matches(name, list(self.types), n=3)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        self.fail(node, f"unknown column {name!r}{hint}")

    def visit_Attribute(self, node: ast.Attribute) -> Val:
        self.fail(node, f"attribute access '.{node.attr}' is not allowed (call functions instead, "
                        f"e.g. sum(x) rather than x.sum())")  # fmt: skip

    def visit_BinOp(self, node: ast.BinOp) -> Val:
        left, right = self.visit(node.left), self.visit(node.right)
        group, mask, at = self.align(node, [left, right])
        op = type(node.op)
        if op in _LOGICAL:
            why = "& | ^ combine booleans (bitwise operations on numbers are not supported)"
            self.need(node.left, left, "b", why)
            self.need(node.right, right, "b", why)
            if op is ast.BitXor:
                return Val("b", f"({left.code} != {right.code})", group, mask, at, valid_of(left, right))
            code, valid = _kleene(_LOGICAL[op], [(left.code, left.valid), (right.code, right.valid)])
            return Val("b", code, group, mask, at, valid)
        if op is ast.Div:
            kind, sym = "f", "/"
        elif op is ast.Pow:
            exact = isinstance(node.right, ast.Constant) and right.kind == "i" and int(right.code) >= 0
            kind, sym = ("i" if exact and left.kind != "f" else "f"), "**"
        elif op in _ARITH:
            kind, sym = promote("i", left.kind, right.kind), _ARITH[op]
        else:
            self.fail(node, f"{_REFUSED.get(op, op.__name__)} is not allowed in expressions")
        return Val(kind, f"({cast(left, kind)} {sym} {cast(right, kind)})", group, mask, at, valid_of(left, right))

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Val:
        val = self.visit(node.operand)
        if isinstance(node.op, ast.Not | ast.Invert):
            word = "not" if isinstance(node.op, ast.Not) else "~"
            self.need(node.operand, val, "b", f"'{word}' needs a boolean (compare first, e.g. not (x > 0))")
            return Val("b", f"(not {val.code})", val.group, val.mask, val.at, val.valid)
        kind = promote("i", val.kind)
        sym = "-" if isinstance(node.op, ast.USub) else "+"
        return Val(kind, f"({sym}{cast(val, kind)})", val.group, val.mask, val.at, val.valid)

    def visit_BoolOp(self, node: ast.BoolOp) -> Val:
        vals = [self.visit(v) for v in node.values]
        word = "and" if isinstance(node.op, ast.And) else "or"
        for sub, val in zip(node.values, vals, strict=True):
            self.need(sub, val, "b", f"'{word}' needs booleans (compare first, e.g. x > 0 {word} y > 0)")
        group, mask, at = self.align(node, vals)
        code, valid = _kleene(word, [(v.code, v.valid) for v in vals])
        return Val("b", code, group, mask, at, valid)

    def visit_Compare(self, node: ast.Compare) -> Val:
        vals = [self.visit(node.left), *(self.visit(c) for c in node.comparators)]
        group, mask, at = self.align(node, vals)
        parts = []
        for op, left, right in zip(node.ops, vals, vals[1:], strict=False):
            if type(op) not in _COMPARE:
                self.fail(node, f"{_REFUSED.get(type(op), type(op).__name__)} is not allowed in expressions")
            kind = promote(left.kind, right.kind)
            parts.append((f"({cast(left, kind)} {_COMPARE[type(op)]} {cast(right, kind)})", valid_of(left, right)))
        code, valid = parts[0] if len(parts) == 1 else _kleene("and", parts)  # a < b < c is a < b and b < c
        return Val("b", code, group, mask, at, valid)

    def visit_IfExp(self, node: ast.IfExp) -> Val:
        return self.where(node, node.test, node.body, node.orelse)

    def where(self, node: ast.AST, test: ast.AST, body: ast.AST, orelse: ast.AST) -> Val:
        cond, yes, no = self.visit(test), self.visit(body), self.visit(orelse)
        self.need(test, cond, "b", "the condition of where(c, a, b) must be a boolean")
        group, mask, at = self.align(node, [cond, yes, no])
        kind = promote(yes.kind, no.kind)
        valid = None  # the validity of the branch taken, and null where the condition is
        if yes.valid is not None or no.valid is not None:
            valid = f"({yes.valid or 'True'} if {cond.code} else {no.valid or 'True'})"
        if cond.valid is not None:
            valid = f"({cond.valid} and {valid})" if valid else cond.valid
        return Val(kind, f"({cast(yes, kind)} if {cond.code} else {cast(no, kind)})", group, mask, at, valid)

    def visit_Subscript(self, node: ast.Subscript) -> Val:
        val = self.visit(node.value)
        index = node.slice
        if isinstance(index, ast.Slice):
            self.fail(node, "slices are not supported; use an integer constant x[0] or a mask x[x > 20]")
        position = _int_constant(index)
        if not val.jagged:
            self.fail(node, f"only jagged lists can be indexed or masked; {self.snippet(node.value)!r} "
                            "has one value per event")  # fmt: skip
        if position is not None:
            if not -(2**62) <= position < 2**62:
                self.fail(index, f"index {position} is out of range")
            return self.program.index_at(val, position)
        sel = self.visit(index)
        if sel.kind != "b":
            self.fail(index, "an index must be an integer constant (x[0], x[-1]) or a jagged boolean "
                             f"mask (x[x > 20]); {self.snippet(index)!r} is neither")  # fmt: skip
        if not sel.jagged:
            self.fail(index, "a mask must be a jagged boolean with one entry per list element; "
                             "to select events use a filter")  # fmt: skip
        if sel.mask != val.mask:
            self.fail(index, "the mask was computed on a different selection than the list it selects from")
        unmasked = [Val(v.kind, v.code, v.group, None, v.at) for v in (val, sel)]
        group, _, at = self.align(node, unmasked)
        selected = sel.code if sel.valid is None else f"({sel.valid} and {sel.code})"  # null: not selected
        mask = selected if val.mask is None else f"({val.mask} and {selected})"
        return Val(val.kind, val.code, group, mask, at, val.valid)

    def visit_Call(self, node: ast.Call) -> Val:
        func = node.func
        if isinstance(func, ast.Attribute):
            self.visit_Attribute(func)
        if not isinstance(func, ast.Name):
            self.fail(func, "only named functions can be called, e.g. sqrt(x)")
        name = func.id
        if name.startswith("_"):
            self.fail(func, f"name {name!r} is not allowed (names starting with '_' are reserved)")
        if name not in FUNCTIONS:
            what = f"{name!r} is a column, not a function" if name in self.types else f"unknown function {name!r}"
            close = difflib.get_close_matches(name, FUNCTIONS, n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else f"; known: {', '.join(FUNCTIONS)}"
            self.fail(func, what + hint)
        if node.keywords:
            self.fail(node.keywords[0].value, f"{name}() takes no keyword arguments")
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                self.visit(arg)
        return self.call(node, name, node.args)

    def call(self, node: ast.Call, name: str, args: list[ast.expr]) -> Val:
        def arity(low: int, high: int) -> None:
            if not low <= len(args) <= high:
                want = f"{low} or more" if high > low else str(low)
                self.fail(node, f"{name}() takes {want} argument{'s' if high > 1 else ''}, got {len(args)}")

        if name == "where":
            arity(3, 3)
            return self.where(node, *args)
        if name in ("min", "max") and len(args) != 1:
            arity(2, MAX_LENGTH)
            if len(args) > MAX_ARGS:
                self.fail(node, f"{name}() takes at most {MAX_ARGS} arguments, got {len(args)}")
            vals = [self.visit(a) for a in args]
            group, mask, at = self.align(node, vals)
            kind = promote(*(v.kind for v in vals))
            # Helpers of the generated module (NaN propagates like numpy.minimum), paired up so
            # that the generated source nests log2(n) calls deep, not n (Python's parser stops
            # at 200 levels). Ties give the rightmost operand either way, as a chain would.
            codes = [cast(v, kind) for v in vals]
            while len(codes) > 1:
                pairs = [f"_{name}2({a}, {b})" for a, b in zip(codes[::2], codes[1::2], strict=False)]
                codes = pairs + (codes[-1:] if len(codes) % 2 else [])
            return Val(kind, codes[0], group, mask, at, valid_of(*vals))
        arity(2, 2) if name in BINARY_MATH or name == "fill_null" else arity(1, 1)
        vals = [self.visit(a) for a in args]
        if name in REDUCTIONS or name in ("min", "max"):
            val = vals[0]
            if not val.jagged:
                self.fail(node, f"{name}() reduces a jagged list per event, but {self.snippet(args[0])!r} "
                                "has one value per event")  # fmt: skip
            if name in ("any", "all"):
                self.need(args[0], val, "b", f"{name}() needs booleans, e.g. {name}(Muon_pt > 20)")
            return self.program.reduce(name, val)
        group, mask, at = self.align(node, vals)
        if name in NULLS:
            return _nulls(name, vals, group, mask, at)
        valid = valid_of(*vals)
        if name == "abs":
            kind = promote("i", vals[0].kind)
            return Val(kind, f"abs({cast(vals[0], kind)})", group, mask, at, valid)
        if name in UNARY_MATH:
            return Val("f", f"{UNARY_MATH[name]}({cast(vals[0], 'f')})", group, mask, at, valid)
        if name in PREDICATES:
            return Val("b", f"{PREDICATES[name]}({cast(vals[0], 'f')})", group, mask, at, valid)
        fn = BINARY_MATH[name]
        return Val("f", f"{fn}({cast(vals[0], 'f')}, {cast(vals[1], 'f')})", group, mask, at, valid)


def _nulls(name: str, vals: list[Val], group: tuple[str, ...], mask: str | None, at: int | None) -> Val:
    """``isnull(x)`` (never null itself) or ``fill_null(x, v)``: ``v`` where ``x`` is null."""
    x = vals[0]
    if name == "isnull":
        return Val("b", "False" if x.valid is None else f"(not {x.valid})", group, mask, at)
    fill = vals[1]
    kind = promote(x.kind, fill.kind)
    if x.valid is None:
        return Val(kind, cast(x, kind), group, mask, at)
    code = f"({cast(x, kind)} if {x.valid} else {cast(fill, kind)})"
    return Val(kind, code, group, mask, at, None if fill.valid is None else f"({x.valid} or {fill.valid})")


def _kleene(word: str, parts: list[tuple[str, str | None]]) -> tuple[str, str | None]:
    """``and``/``or`` of (code, validity) pairs in three-valued logic, as SQL has it: false and
    null is false, true or null is true, otherwise a null operand makes the result null."""
    if all(valid is None for _, valid in parts):
        return "(" + f" {word} ".join(code for code, _ in parts) + ")", None
    known = [code if valid is None else f"({valid} and {code})" for code, valid in parts]  # known true
    if word == "and":
        deciding = [f"(not {code})" if valid is None else f"({valid} and not {code})" for code, valid in parts]
    else:
        deciding = known
    every = " and ".join(valid for _, valid in parts if valid is not None)
    return "(" + f" {word} ".join(known) + ")", f"(({every}) or " + " or ".join(deciding) + ")"


def _int_constant(node: ast.AST) -> int | None:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _int_constant(node.operand)
        return None if inner is None else (-inner if isinstance(node.op, ast.USub) else inner)
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    return None


def _float_code(value: float) -> str:
    if math.isnan(value):
        return "np.nan"
    if math.isinf(value):
        return "np.inf" if value > 0 else "(-np.inf)"
    return repr(value)
