"""Nulls in expressions: ``x[k]`` past the end of a list, how every operation carries them
(three-valued ``and``/``or``, ``where``, masks, reductions), ``isnull``/``fill_null``, nullable
input columns, and the same results from the kernels' lane and plain loops; references are
awkward's option types (``ak.firsts``, ``ak.pad_none``) or plain Python loops."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.columns import Column, ColumnType
from transforms.errors import ExpressionError
from transforms.expressions import compile_expression, compile_filter

OFFSETS = np.array([0, 0, 1, 3, 6], dtype=np.int64)  # lists of 0, 1, 2 and 3 entries
TYPES = {"x": ColumnType("float32", True), "k": ColumnType("int32", True), "b": ColumnType("bool", True),
         "z": ColumnType("float64"), "n": ColumnType("int64", nullable=True)}  # fmt: skip
COLUMNS = {
    "x": Column(np.array([1, 2, 3, 4, 5, 6], dtype=np.float32), OFFSETS),
    "k": Column(np.array([5, 6, 7, 8, 9, 10], dtype=np.int32), OFFSETS),
    "b": Column(np.array([True, False, True, True, False, True]), OFFSETS),
    "z": Column(np.array([1.0, 2.0, 3.0, 4.0])),
    "n": Column(np.array([0, 7, 0, -2]), None, np.array([False, True, False, True])),
}
N = 4


def values(text: str) -> list[object]:
    """The result as Python values, None for null (jagged results as lists)."""
    return compile_expression(text, TYPES)(COLUMNS, N).to_arrow().to_pylist()


# (expression, result type, per-event values)
CASES = [
    ("x[0]", "?float64", [None, 1.0, 2.0, 4.0]),
    ("k[1]", "?int64", [None, None, 7, 9]),  # int stays int
    ("b[-2]", "?bool", [None, None, False, False]),
    ("k[1] * 2 + z", "?float64", [None, None, 17.0, 22.0]),
    ("sqrt(x[2])", "?float64", [None, None, None, 6.0**0.5]),
    ("k[1] > 7", "?bool", [None, None, False, True]),
    ("k[1] == n", "?bool", [None, None, None, False]),
    # and/or: SQL's three-valued logic
    ("k[1] > 0 and z > 1", "?bool", [False, None, True, True]),
    ("k[1] > 0 or z > 1", "?bool", [None, True, True, True]),
    ("(k[1] > 0) & (z > 3)", "?bool", [False, False, False, True]),
    ("(k[1] > 0) | (z < 2)", "?bool", [True, None, True, True]),
    ("not k[1] > 7", "?bool", [None, None, True, False]),
    ("(k[1] > 7) ^ (z > 0)", "?bool", [None, None, True, False]),
    ("0 < k[1] < 8", "?bool", [None, None, True, False]),
    # where: the branch taken; a null condition gives null
    ("where(z > 2, k[1], -1)", "?int64", [-1, -1, 7, 9]),
    ("where(k[1] > 7, 1, 0)", "?int64", [None, None, 0, 1]),
    ("k[2] if z > 3 else 0.5", "?float64", [0.5, 0.5, 0.5, 10.0]),
    # filling, testing
    ("isnull(k[1])", "bool", [True, True, False, False]),
    ("fill_null(k[1], -1)", "int64", [-1, -1, 7, 9]),
    ("fill_null(k[1], 0.5)", "float64", [0.5, 0.5, 7.0, 9.0]),
    ("fill_null(k[1], n)", "?int64", [None, 7, 7, 9]),
    ("fill_null(z, 0)", "float64", [1.0, 2.0, 3.0, 4.0]),
    # a nullable input column
    ("n + 1", "?int64", [None, 8, None, -1]),
    ("isnull(n) or n > 0", "?bool", [True, True, True, False]),  # typed by its parts
    # broadcast into lists: a list of nulls, which reductions skip (len counts them)
    ("x - x[1]", "var * ?float64", [[], [None], [-1.0, 0.0], [-1.0, 0.0, 1.0]]),
    ("sum(x - x[1])", "float64", [0.0, 0.0, -1.0, 0.0]),
    ("count(x - x[1])", "int64", [0, 0, 2, 3]),
    ("len(x - x[1])", "int64", [0, 1, 2, 3]),
    ("mean(x - x[1])", "float64", [None, None, -0.5, 0.0]),  # None here: NaN (no entry), never null
    ("any(x > x[1])", "bool", [False, False, False, True]),
    ("all(x > x[1])", "bool", [True, True, False, False]),
    ("max(where(b, x, x[2]))", "float64", [None, 1.0, 3.0, 6.0]),
    # masks: a null selects nothing
    ("x[x > x[1]]", "var * float64", [[], [], [], [6.0]]),
    ("k[x > x[1]][0]", "?int64", [None, None, None, 10]),
    ("(x - x[1])[b]", "var * ?float64", [[], [None], [0.0], [-1.0, 1.0]]),
    ("(x - x[2])[b][-1]", "?float64", [None, None, None, 0.0]),
]


@pytest.mark.parametrize(("text", "result", "expected"), CASES, ids=[c[0] for c in CASES])
def test_nulls(text: str, result: str, expected: list[object]) -> None:
    expression = compile_expression(text, TYPES)
    assert str(expression.result_type) == result
    got = expression(COLUMNS, N)
    assert (got.valid is not None) == expression.result_type.nullable  # a validity only where nulls can be
    if text.startswith(("mean", "max")):  # NaN for an empty (or all-null) list, as before: None above
        expected = [np.nan if v is None else v for v in expected]
        np.testing.assert_array_equal(got.values, np.asarray(expected, dtype=np.float64))
        return
    assert got.to_arrow().to_pylist() == expected


def test_arrow_columns_have_a_bitmap_only_with_nulls() -> None:
    with_nulls = compile_expression("x[1]", TYPES)(COLUMNS, N).to_arrow()
    assert with_nulls.null_count == 2 and with_nulls.buffers()[0] is not None
    none_here = compile_expression("x[0]", TYPES)(COLUMNS, N).to_arrow().slice(1)
    assert none_here.null_count == 0
    full = compile_expression("k[0]", TYPES)({**COLUMNS, "k": Column(COLUMNS["k"].values, np.arange(7))}, 6)
    assert full.valid is not None and full.to_arrow().buffers()[0] is None  # nullable type, no nulls: no bitmap
    jagged = compile_expression("x - x[1]", TYPES)(COLUMNS, N).to_arrow()
    assert jagged.type == pa.large_list(pa.field("item", pa.float64(), nullable=True))
    back = Column.from_arrow(with_nulls)
    assert back.type == ColumnType("float64", nullable=True) and back.valid is not None
    np.testing.assert_array_equal(back.valid, [False, False, True, True])


def test_filter_keeps_nulls_as_a_value_the_caller_drops() -> None:
    keep = compile_filter("k[1] > 7 or z > 3", TYPES)(COLUMNS, N)
    assert keep.valid is not None
    assert (keep.values & keep.valid).tolist() == [False, False, False, True]


def test_nullable_input_given_without_nulls_and_non_null_type_refusing_nulls() -> None:
    plain = {**COLUMNS, "n": Column(np.array([1, 2, 3, 4]))}
    assert compile_expression("n * 2", TYPES)(plain, N).to_arrow().to_pylist() == [2, 4, 6, 8]
    strict = {**TYPES, "n": ColumnType("int64")}
    with pytest.raises(ExpressionError, match=r"column 'n' is \?int64, but the expression was compiled for int64"):
        compile_expression("n * 2", strict)(COLUMNS, N)


def test_null_functions_take_their_arguments() -> None:
    with pytest.raises(ExpressionError, match=r"fill_null\(\) takes 2 arguments, got 1"):
        compile_expression("fill_null(x[0])", TYPES)
    with pytest.raises(ExpressionError, match=r"isnull\(\) takes 1 argument, got 2"):
        compile_expression("isnull(x[0], 1)", TYPES)


def test_short_and_long_lists_give_the_same_nulls() -> None:
    """Nulls through the lane loops (short lists) and the plain loops (long ones) agree."""
    rng = np.random.default_rng(3)
    counts = rng.poisson(1.3, 2000)
    x = rng.normal(0.0, 1.0, int(counts.sum()))
    long_counts = np.concatenate([counts, np.full(500, 40)])
    padded = np.concatenate([x, rng.normal(0.0, 1.0, 20_000)])
    types = {"x": ColumnType("float64", True)}
    for text in ("x - x[1]", "(x - x[1])[x > 0]", "sum(x * x[0])", "count(x[x > x[2]])", "x[x > 0][1]"):
        expression = compile_expression(text, types)
        short = expression({"x": Column(x, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))}, len(counts))
        long = expression({"x": Column(padded, np.concatenate([[0], np.cumsum(long_counts)]).astype(np.int64))},
                          len(long_counts))  # fmt: skip
        got, want = short.to_arrow().to_pylist(), long.to_arrow().slice(0, len(counts)).to_pylist()
        assert got == want, text


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(-50, 50), max_size=4), max_size=12), st.integers(-3, 3))
def test_index_matches_awkward(lists: list[list[int]], k: int) -> None:
    """``x[k]`` equals awkward's (None where the list is too short), type included."""
    counts = np.array([len(lst) for lst in lists], dtype=np.int64)
    flat = np.array([v for lst in lists for v in lst], dtype=np.int16)
    column = Column(flat, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
    array = ak.unflatten(flat.astype(np.int64), counts)
    reach = k + 1 if k >= 0 else -k
    padded = ak.pad_none(array, reach, axis=1)  # pads at the end: right for k >= 0
    want = ak.to_list(ak.firsts(array) if k == 0 else padded[:, k] if k >= 0 else
                      [lst[k] if len(lst) >= reach else None for lst in ak.to_list(array)])  # fmt: skip
    got = compile_expression(f"x[{k}]", {"x": ColumnType("int16", True)})({"x": column}, len(lists))
    assert got.type.dtype == "int64" and got.to_arrow().to_pylist() == want
    total = compile_expression(f"sum(x - x[{k}])", {"x": ColumnType("int16", True)})({"x": column}, len(lists))
    ref = [sum(v - lst[k] for v in lst) if -len(lst) <= k < len(lst) else 0 for lst in ak.to_list(array)]
    assert total.values.tolist() == ref
