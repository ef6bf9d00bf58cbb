"""The expression compiler against independent NumPy/awkward references, on real ROOT data
(the HZZ and CMS NanoAOD files in ../shared/data), plus refusals, errors, caching and
property tests on random jagged arrays."""

from __future__ import annotations

import math
import os
import pickle
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from realdata import SHARED_DATA, require

from transforms.columns import Column, ColumnType, column_type_of
from transforms.errors import ExpressionError, KernelError
from transforms.expressions import Expression, compile_expression, compile_filter

DATA = SHARED_DATA
FILES = {
    "hzz": ("uproot-HZZ.root", "events", "/^(NMuon|NJet|Muon_.*|Jet_.*|MET_.*|triggerIsoMu24)$/"),
    "nano": ("nanoAOD_2015_CMS_Open_Data_ttbar.root", "Events",
             "/^(event|nMuon|nJet|Muon_(pt|eta|phi|mass|charge|tightId)|Jet_(pt|eta|phi|mass)|MET_(pt|phi))$/"),
}  # fmt: skip


@dataclass
class Dataset:
    n: int
    types: dict[str, ColumnType]
    columns: dict[str, Column]
    arrays: dict[str, ak.Array]  # float columns as float64 (the language computes in double)


@pytest.fixture(scope="module")
def data() -> dict[str, Dataset]:
    import uproot

    require(DATA / "uproot-HZZ.root")
    out = {}
    for key, (file, tree, names) in FILES.items():
        with uproot.open(DATA / file) as f:
            arrays = f[tree].arrays(filter_name=names)
        table = ak.to_arrow_table(arrays, extensionarray=False)
        columns = {name: Column.from_arrow(table[name]) for name in table.column_names}
        types = {name: column_type_of(table.schema.field(name).type) for name in table.column_names}
        assert None not in types.values()
        refs = {name: _double(arrays[name]) for name in arrays.fields}
        out[key] = Dataset(len(arrays), types, columns, refs)  # type: ignore[arg-type]
    return out


def _double(array: ak.Array) -> ak.Array:
    kind = np.dtype(str(ak.type(array).content).split(" * ")[-1]).kind
    return ak.values_astype(array, np.float64) if kind == "f" else array


@contextmanager
def quiet() -> Iterator[None]:
    """References may divide by zero or reduce empty lists; the kernels do that silently."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


def run(ds: Dataset, text: str) -> Column:
    return compile_expression(text, ds.types)(ds.columns, ds.n)


def assert_matches(actual: Column, expected: Any, n: int) -> None:
    """NaN- and null-aware comparison of a Column with an awkward/NumPy reference: the nulls
    (None) must be where the reference has them, and the other values equal."""
    expected = ak.Array(expected) if not isinstance(expected, np.ndarray) else expected
    if actual.jagged:
        assert isinstance(expected, ak.Array) and expected.ndim == 2
        np.testing.assert_array_equal(actual.counts(), ak.to_numpy(ak.num(expected)))
        expected = ak.flatten(expected)
    else:
        assert len(actual) == n
    if isinstance(expected, np.ndarray):
        flat, valid = expected, np.ones(len(expected), dtype=np.bool_)
    else:
        valid = ~ak.to_numpy(ak.is_none(expected, axis=0))
        flat = ak.to_numpy(ak.fill_none(expected, 0))
    got_valid = actual.valid if actual.valid is not None else np.ones(len(actual.values), dtype=np.bool_)
    np.testing.assert_array_equal(got_valid, valid, err_msg="nulls differ")
    got, flat = actual.values[valid], np.asarray(flat)[valid]
    if actual.values.dtype == np.bool_ or flat.dtype.kind in "biu":
        np.testing.assert_array_equal(got, flat)
    else:
        np.testing.assert_allclose(got, flat, rtol=1e-9, atol=1e-12, equal_nan=True)


def at(x: ak.Array, k: int) -> ak.Array:
    """x[k] per event, None where the list is too short (the documented rule), by a plain loop."""
    return ak.Array([lst[k] if -len(lst) <= k < len(lst) else None for lst in ak.to_list(x)])


def spread(x: ak.Array, v: ak.Array, op: Callable[[Any, Any], Any]) -> ak.Array:
    """``op(x, v)`` with the per-event ``v`` used for every entry of ``x``'s list; a null ``v``
    gives a list of nulls (awkward would make the whole list None), by a plain loop."""
    pairs = [(a, b) for xs, b in zip(ak.to_list(x), ak.to_list(v), strict=True) for a in xs]
    flat = np.array([math.nan if b is None else op(a, b) for a, b in pairs], dtype=np.float64)
    valid = np.array([b is not None for _, b in pairs], dtype=np.bool_)
    return ak.unflatten(ak.mask(ak.Array(flat), valid), ak.num(x))


def red(fn: Callable[..., Any], x: ak.Array) -> np.ndarray:
    with quiet():
        return ak.to_numpy(ak.fill_none(fn(x, axis=1), np.nan))


def _mass_of_leading_pair(A: dict[str, ak.Array]) -> ak.Array:
    e, px, py, pz = ((at(A[f"Muon_{c}"], 0) + at(A[f"Muon_{c}"], 1)) for c in ("E", "Px", "Py", "Pz"))
    return np.sqrt(e**2 - px**2 - py**2 - pz**2)


def _mass_from_pt_eta_phi(A: dict[str, ak.Array]) -> ak.Array:
    pt, eta, phi = ([at(A[f"Muon_{c}"], k) for k in (0, 1)] for c in ("pt", "eta", "phi"))
    return np.sqrt(2 * pt[0] * pt[1] * (np.cosh(eta[0] - eta[1]) - np.cos(phi[0] - phi[1])))


# (dataset, expression, reference computed from the float64 awkward arrays A, result type)
# fmt: off
CASES: list[tuple[str, str, Callable[[dict[str, ak.Array]], Any], str]] = [
    # flat arithmetic, promotion, constants
    ("hzz", "NMuon * 2 + 1", lambda A: ak.to_numpy(A["NMuon"]).astype(np.int64) * 2 + 1, "int64"),
    ("hzz", "NMuon / 2", lambda A: ak.to_numpy(A["NMuon"]) / 2, "float64"),
    ("hzz", "NMuon // 2 - NMuon % 3", lambda A: ak.to_numpy(A["NMuon"]) // 2 - ak.to_numpy(A["NMuon"]) % 3, "int64"),
    ("hzz", "-NMuon ** 2", lambda A: -(ak.to_numpy(A["NMuon"]).astype(np.int64) ** 2), "int64"),
    ("hzz", "hypot(MET_px, MET_py)", lambda A: np.hypot(A["MET_px"], A["MET_py"]), "float64"),
    ("hzz", "atan2(MET_py, MET_px) / pi", lambda A: np.arctan2(A["MET_py"], A["MET_px"]) / np.pi, "float64"),
    ("hzz", "MET_px ** 2 + e", lambda A: A["MET_px"] ** 2 + np.e, "float64"),
    ("hzz", "log(abs(MET_px)) + exp(-abs(MET_py) / 100)", lambda A: np.log(abs(A["MET_px"])) + np.exp(-abs(A["MET_py"]) / 100), "float64"),
    ("hzz", "floor(MET_px) + ceil(MET_py)", lambda A: np.floor(A["MET_px"]) + np.ceil(A["MET_py"]), "float64"),
    ("hzz", "min(MET_px, MET_py, 3)", lambda A: np.minimum(np.minimum(A["MET_px"], A["MET_py"]), 3), "float64"),
    ("hzz", "max(NMuon, NJet)", lambda A: np.maximum(A["NMuon"], A["NJet"]), "int64"),
    # booleans
    ("hzz", "triggerIsoMu24 and NMuon >= 2", lambda A: A["triggerIsoMu24"] & (A["NMuon"] >= 2), "bool"),
    ("hzz", "not triggerIsoMu24 or 0 < NMuon < 3", lambda A: ~A["triggerIsoMu24"] | ((A["NMuon"] > 0) & (A["NMuon"] < 3)), "bool"),
    ("hzz", "(MET_px > 0) ^ (MET_py > 0)", lambda A: (A["MET_px"] > 0) ^ (A["MET_py"] > 0), "bool"),
    ("hzz", "MET_px if triggerIsoMu24 else MET_py", lambda A: np.where(A["triggerIsoMu24"], A["MET_px"], A["MET_py"]), "float64"),
    # elementwise on jagged, broadcasting
    ("hzz", "sqrt(Muon_Px ** 2 + Muon_Py ** 2)", lambda A: np.sqrt(A["Muon_Px"] ** 2 + A["Muon_Py"] ** 2), "var * float64"),
    ("hzz", "abs(Muon_Charge) * 3 - 1", lambda A: abs(A["Muon_Charge"]) * 3 - 1, "var * int64"),
    ("hzz", "Jet_Px > MET_px", lambda A: A["Jet_Px"] > A["MET_px"], "var * bool"),
    ("hzz", "Muon_E / sum(Muon_E)", lambda A: A["Muon_E"] / ak.sum(A["Muon_E"], axis=1), "var * float64"),
    ("hzz", "where(Muon_Charge > 0, Muon_Px, -Muon_Py)", lambda A: ak.where(A["Muon_Charge"] > 0, A["Muon_Px"], -A["Muon_Py"]), "var * float64"),
    ("hzz", "max(Muon_Px, Muon_Py)", lambda A: np.maximum(A["Muon_Px"], A["Muon_Py"]), "var * float64"),
    ("hzz", "(Muon_Px > 0) & ~(Muon_Py > 0) | (Muon_Iso < 1)", lambda A: ((A["Muon_Px"] > 0) & ~(A["Muon_Py"] > 0)) | (A["Muon_Iso"] < 1), "var * bool"),
    ("hzz", "sin(Muon_Px) * cos(Muon_Py) + tan(Muon_Pz / 100)", lambda A: np.sin(A["Muon_Px"]) * np.cos(A["Muon_Py"]) + np.tan(A["Muon_Pz"] / 100), "var * float64"),
    ("hzz", "asinh(Muon_Pz / hypot(Muon_Px, Muon_Py))", lambda A: np.arcsinh(A["Muon_Pz"] / np.hypot(A["Muon_Px"], A["Muon_Py"])), "var * float64"),
    ("nano", "Muon_pt * cosh(Muon_eta)", lambda A: A["Muon_pt"] * np.cosh(A["Muon_eta"]), "var * float64"),
    # masks
    ("hzz", "Muon_Px[Muon_Px > 5]", lambda A: A["Muon_Px"][A["Muon_Px"] > 5], "var * float64"),
    ("hzz", "Muon_Px[Muon_Charge < 0] * 2", lambda A: A["Muon_Px"][A["Muon_Charge"] < 0] * 2, "var * float64"),
    ("hzz", "Muon_Px[Muon_Px > 0][Muon_Px[Muon_Px > 0] < 20]", lambda A: A["Muon_Px"][(A["Muon_Px"] > 0) & (A["Muon_Px"] < 20)], "var * float64"),
    ("hzz", "(Muon_Px + Muon_Py)[Muon_Iso < 2]", lambda A: (A["Muon_Px"] + A["Muon_Py"])[A["Muon_Iso"] < 2], "var * float64"),
    ("hzz", "Jet_E[Jet_ID]", lambda A: A["Jet_E"][A["Jet_ID"]], "var * float64"),
    ("nano", "Muon_pt[(abs(Muon_eta) < 2.4) & Muon_tightId]", lambda A: A["Muon_pt"][(abs(A["Muon_eta"]) < 2.4) & A["Muon_tightId"]], "var * float64"),
    # reductions, empty lists included
    ("nano", "sum(Muon_pt[Muon_pt > 20])", lambda A: red(ak.sum, A["Muon_pt"][A["Muon_pt"] > 20]), "float64"),
    ("hzz", "sum(Muon_Charge)", lambda A: red(ak.sum, A["Muon_Charge"]), "int64"),
    ("hzz", "sum(Jet_ID)", lambda A: red(ak.sum, A["Jet_ID"]), "int64"),
    ("hzz", "count(Jet_Px[Jet_Px > max(Muon_Px)])", lambda A: red(ak.count, A["Jet_Px"][A["Jet_Px"] > ak.fill_none(ak.max(A["Muon_Px"], axis=1), np.nan)]), "int64"),
    ("hzz", "len(Muon_Px) == NMuon", lambda A: ak.num(A["Muon_Px"]) == A["NMuon"], "bool"),
    ("hzz", "any(Jet_ID)", lambda A: red(ak.any, A["Jet_ID"]), "bool"),
    ("hzz", "all(Jet_Px > 0)", lambda A: red(ak.all, A["Jet_Px"] > 0), "bool"),
    ("hzz", "mean(Jet_Py)", lambda A: red(ak.mean, A["Jet_Py"]), "float64"),
    ("hzz", "min(Jet_Px)", lambda A: red(ak.min, A["Jet_Px"]), "float64"),
    ("hzz", "max(Muon_Charge)", lambda A: red(ak.max, A["Muon_Charge"]), "float64"),
    ("hzz", "max(Jet_Pz[Jet_Pz < 0])", lambda A: red(ak.max, A["Jet_Pz"][A["Jet_Pz"] < 0]), "float64"),
    ("nano", "any(Muon_pt > 20) and nMuon >= 1", lambda A: red(ak.any, A["Muon_pt"] > 20) & (A["nMuon"] >= 1), "bool"),
    ("nano", "event % 2 == 0", lambda A: ak.to_numpy(A["event"]) % 2 == 0, "bool"),
    # indexing, lists too short -> null, the element's own type
    ("hzz", "Muon_Px[0]", lambda A: at(A["Muon_Px"], 0), "?float64"),
    ("hzz", "Muon_Px[-1] + Muon_Py[-2]", lambda A: at(A["Muon_Px"], -1) + at(A["Muon_Py"], -2), "?float64"),
    ("hzz", "Muon_Charge[3]", lambda A: at(A["Muon_Charge"], 3), "?int64"),
    ("hzz", "Jet_Px[Jet_Px > 0][1]", lambda A: at(A["Jet_Px"][A["Jet_Px"] > 0], 1), "?float64"),
    ("hzz", "Jet_Px[Jet_Px > 0][-1]", lambda A: at(A["Jet_Px"][A["Jet_Px"] > 0], -1), "?float64"),
    ("hzz", "isnull(Muon_Px[1])", lambda A: ak.to_numpy(ak.num(A["Muon_Px"]) < 2), "bool"),
    ("hzz", "fill_null(Muon_Px[1], -1)", lambda A: ak.to_numpy(ak.fill_none(at(A["Muon_Px"], 1), -1.0)), "float64"),
    ("hzz", "sqrt((Muon_E[0] + Muon_E[1]) ** 2 - (Muon_Px[0] + Muon_Px[1]) ** 2 - (Muon_Py[0] + Muon_Py[1]) ** 2"
            " - (Muon_Pz[0] + Muon_Pz[1]) ** 2)", lambda A: _mass_of_leading_pair(A), "?float64"),
    ("nano", "sqrt(2 * Muon_pt[0] * Muon_pt[1] * (cosh(Muon_eta[0] - Muon_eta[1]) - cos(Muon_phi[0] - Muon_phi[1])))",
     lambda A: _mass_from_pt_eta_phi(A), "?float64"),
]
# fmt: on


@pytest.mark.parametrize(("dataset", "text", "reference", "result"), CASES, ids=[c[1][:60] for c in CASES])
def test_matches_reference(
    data: dict[str, Dataset], dataset: str, text: str, reference: Callable[..., Any], result: str
) -> None:
    ds = data[dataset]
    expression = compile_expression(text, ds.types)
    assert str(expression.result_type) == result
    assert expression.columns == tuple(sorted(expression.columns))
    assert set(expression.columns) <= set(ds.types)
    with quiet():
        expected = reference(ds.arrays)
    assert_matches(expression(ds.columns, ds.n), expected, ds.n)


def test_filter(data: dict[str, Dataset]) -> None:
    ds = data["nano"]
    keep = compile_filter("any(Muon_pt > 20) or nJet >= 4", ds.types)(ds.columns, ds.n)
    expected = red(ak.any, ds.arrays["Muon_pt"] > 20) | (ak.to_numpy(ds.arrays["nJet"]) >= 4)
    np.testing.assert_array_equal(keep.values, expected)
    assert 0 < keep.values.sum() < ds.n


def test_filter_on_jagged_comparison_needs_a_reduction(data: dict[str, Dataset]) -> None:
    message = r"one boolean per event; reduce the jagged comparison with any\(\) or all\(\)"
    with pytest.raises(ExpressionError, match=message):
        compile_filter("Muon_pt > 20", data["nano"].types)
    with pytest.raises(ExpressionError, match="one boolean per event"):
        compile_filter("nMuon", data["nano"].types)


def test_jagged_op_jagged_with_different_counts(data: dict[str, Dataset]) -> None:
    ds = data["nano"]
    expression = compile_expression("sum(Muon_pt * Jet_pt)", ds.types)
    message = r"'sum\(Muon_pt \* Jet_pt\)' at column 5: jagged operands have different numbers of entries in event \d+"
    with pytest.raises(ExpressionError, match=message) as info:
        expression(ds.columns, ds.n)
    assert "Jet_pt" in str(info.value) and "Muon_pt" in str(info.value)


def test_jagged_op_jagged_with_equal_counts(data: dict[str, Dataset]) -> None:
    ds = data["nano"]
    eta = ds.columns["Muon_eta"]
    assert eta.offsets is not None
    columns = {"Muon_pt": ds.columns["Muon_pt"], "Other": Column(eta.values.copy(), eta.offsets.copy())}
    types = {"Muon_pt": ds.types["Muon_pt"], "Other": ds.types["Muon_eta"]}
    out = compile_expression("Muon_pt * Other", types)(columns, ds.n)
    assert_matches(out, ds.arrays["Muon_pt"] * ds.arrays["Muon_eta"], ds.n)


REFUSED = [
    ("__import__('os')", "'__import__'"),
    ("Muon_pt.__class__", "attribute access '.__class__'"),
    ("open('f')", "unknown function 'open'"),
    ("lambda: 1", "lambda"),
    ("Muon_pt.sum()", "attribute access '.sum'"),
    ("foo(Muon_pt)", "unknown function 'foo'"),
    ("sqrtt(Muon_pt)", "did you mean sqrt"),
    ("Muon_ptt > 20", "unknown column 'Muon_ptt'; did you mean 'Muon_pt'"),
    ("Muon_pt > 'x'", "string constant 'x'"),
    ("[x for x in Muon_pt]", "list comprehension"),
    ("sum(x for x in Muon_pt)", "generator expression"),
    ("Muon_pt[1:]", "slices"),
    ("Muon_pt[nMuon]", "integer constant"),
    ("Muon_pt[nMuon > 1]", "to select events use a filter"),
    ("MET_pt[0]", "only jagged lists can be indexed"),
    ("sum(MET_pt)", "sum() reduces a jagged list"),
    ("any(Muon_pt)", "any() needs booleans"),
    ("Muon_pt[Muon_pt > 20] + Muon_eta", "different selections"),
    ("sqrt(Muon_pt, 2)", "sqrt() takes 1 argument"),
    ("sqrt(x=Muon_pt)", "keyword"),
    ("nMuon & 1", "& | ^ combine booleans"),
    ("nMuon > 1 and MET_pt", "'and' needs booleans"),
    ("_x + 1", "'_x'"),
    ("sqrt", "'sqrt' is a function"),
    ("Muon_pt > ", "invalid syntax"),
    ("x = 1", "invalid syntax"),
    ("1 if nMuon else 2", "condition of where"),
    ("Muon_pt @ Muon_eta", "operator @"),
]


@pytest.mark.parametrize(("text", "culprit"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused(data: dict[str, Dataset], text: str, culprit: str) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(text, data["nano"].types)
    message = str(info.value)
    assert message.startswith(f"expression {text!r}")
    assert culprit in message


def test_refusal_names_the_position(data: dict[str, Dataset]) -> None:
    with pytest.raises(ExpressionError, match=r"at column 14: attribute access '\.__class__'") as info:
        compile_expression("MET_pt + 1 + Muon_pt.__class__", data["nano"].types)
    assert info.value.col == 13  # 0-based: where Muon_pt.__class__ starts


def test_missing_or_mistyped_input_columns(data: dict[str, Dataset]) -> None:
    ds = data["nano"]
    expression = compile_expression("MET_pt * 2", ds.types)
    with pytest.raises(ExpressionError, match="column 'MET_pt' was not given"):
        expression({}, ds.n)
    with pytest.raises(ExpressionError, match="compiled for float32"):
        expression({"MET_pt": ds.columns["Muon_pt"]}, ds.n)
    with pytest.raises(ExpressionError, match="has 200 events, expected 10"):
        expression(ds.columns, 10)


def test_broken_offsets_are_caught_before_any_read() -> None:
    broken = object.__new__(Column)  # bypasses Column's own check of the offsets' ends
    object.__setattr__(broken, "values", np.ones(5, dtype=np.float32))
    object.__setattr__(broken, "offsets", np.array([0, 10, 5], dtype=np.int64))
    object.__setattr__(broken, "valid", None)
    types = {"x": ColumnType("float32", True)}
    for text in ("sum(x)", "x[x > 0]"):
        with pytest.raises(KernelError, match="column 'x' has offsets that decrease or pass the end of its values"):
            compile_expression(text, types)({"x": broken}, 2)


def test_cache_in_memory_and_on_disk(data: dict[str, Dataset], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VDATA_KERNEL_CACHE", str(tmp_path))
    ds = data["nano"]
    text = "Muon_pt * 1.2345 + nMuon"  # used by no other test: compiled here, into tmp_path
    first = compile_expression(text, ds.types)
    assert compile_expression(text, ds.types) is first
    assert isinstance(first, Expression) and first.columns == ("Muon_pt", "nMuon")
    sources = list(tmp_path.glob("expr_*.py"))
    assert sources == [first.source_path]
    assert repr(ast_normal(text)) in sources[0].read_text()
    assert_matches(first(ds.columns, ds.n), ds.arrays["Muon_pt"] * 1.2345 + ds.arrays["nMuon"], ds.n)
    if "NUMBA_CACHE_DIR" not in os.environ:
        assert list((tmp_path / "__pycache__").glob("expr_*.nbi")), "Numba did not cache the kernel on disk"
    assert pickle.loads(pickle.dumps(first)) is first
    respaced = compile_expression(" Muon_pt*1.2345+nMuon ", ds.types)
    assert respaced.text == " Muon_pt*1.2345+nMuon " and respaced.source_path == first.source_path


def ast_normal(text: str) -> str:
    import ast

    return ast.unparse(ast.parse(text, mode="eval"))


LOOP_CASES = ["sum(x[x > 0.5])", "count(x[x > 0.5])", "any(x > 1)", "all(x > -1)", "mean(x[x < 1])",
              "min(x[k > 0])", "max(x)", "max(k[x > 0])", "sum(b)", "x[x > 0]", "where(b, k, x)[x < 1]"]  # fmt: skip


def test_short_and_long_list_loops_agree() -> None:
    """Short lists go through the kernels' lane loops, long ones through plain loops (see
    transforms._expr_loops); the same events give the same bits either way, NaN included."""
    rng = np.random.default_rng(7)
    counts = rng.poisson(1.3, 3000)
    total = int(counts.sum())
    x = rng.normal(0.0, 1.0, total)
    x[rng.random(total) < 0.05] = np.nan
    columns: dict[str, np.ndarray] = {"x": x, "k": rng.integers(-3, 4, total).astype(np.int32),
                                      "b": rng.random(total) < 0.5}  # fmt: skip
    types = {name: ColumnType(v.dtype.name, True) for name, v in columns.items()}
    long_counts = np.concatenate([counts, np.full(1000, 40)])  # mean > 3: no lanes
    padded = {name: np.concatenate([v, np.resize(v, 40_000)]) for name, v in columns.items()}

    def make(values: dict[str, np.ndarray], c: np.ndarray) -> dict[str, Column]:
        offsets = np.concatenate([[0], np.cumsum(c)]).astype(np.int64)
        return {name: Column(v, offsets) for name, v in values.items()}

    for text in LOOP_CASES:
        expression = compile_expression(text, types)
        short = expression(make(columns, counts), len(counts))
        long = expression(make(padded, long_counts), len(long_counts))
        if short.offsets is not None and long.offsets is not None:
            np.testing.assert_array_equal(long.offsets[: len(counts) + 1], short.offsets, err_msg=text)
        np.testing.assert_array_equal(long.values[: len(short.values)], short.values, err_msg=text)


# ---------------------------------------------------------------- properties on random lists

HYPOTHESIS_CASES: dict[str, Callable[[ak.Array, ak.Array, np.ndarray], Any]] = {
    "sum(x[x > 1.5])": lambda x, y, z: red(ak.sum, x[x > 1.5]),
    "x * 2 + y": lambda x, y, z: x * 2 + y,
    "count(x[x > z]) + len(y)": lambda x, y, z: red(ak.count, x[x > z]) + ak.to_numpy(ak.num(y)),
    "max(x) - min(y)": lambda x, y, z: red(ak.max, x) - red(ak.min, y),
    "x[-1] * z": lambda x, y, z: at(x, -1) * z,
    "x - y[1]": lambda x, y, z: spread(x, at(y, 1), lambda a, b: a - b),
    "sum(x * y[0]) + count(y - x[-1])": lambda x, y, z: red(ak.sum, spread(x, at(y, 0), lambda a, b: a * b))
    + red(ak.count, spread(y, at(x, -1), lambda a, b: a - b)),
    "where(x > y, x, y - z)[x < 3]": lambda x, y, z: ak.where(x > y, x, y - z)[x < 3],
    "mean(x[y > 0]) + sum(k)": lambda x, y, z: red(ak.mean, x[y > 0]) + z * 0,  # k: all-zero ints
}
_TYPES = {"x": ColumnType("float64", True), "y": ColumnType("float32", True), "z": ColumnType("float64"),
          "k": ColumnType("int16", True)}  # fmt: skip


@st.composite
def jagged_events(draw: st.DrawFn) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    counts = draw(st.lists(st.integers(0, 4), min_size=0, max_size=12))
    total = sum(counts)
    finite = st.floats(-10, 10, allow_nan=False, width=32)
    x = np.array(draw(st.lists(finite, min_size=total, max_size=total)), dtype=np.float64)
    y = np.array(draw(st.lists(finite, min_size=total, max_size=total)), dtype=np.float32)
    z = np.array(draw(st.lists(finite, min_size=len(counts), max_size=len(counts))), dtype=np.float64)
    return counts, x, y, z


@pytest.mark.parametrize("text", sorted(HYPOTHESIS_CASES))
@settings(max_examples=30, deadline=None)
@given(events=jagged_events())
def test_random_jagged_arrays(text: str, events: tuple[list[int], np.ndarray, np.ndarray, np.ndarray]) -> None:
    counts, x, y, z = events
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    columns = {"x": Column(x, offsets), "y": Column(y, offsets), "z": Column(z),
               "k": Column(np.zeros(len(x), dtype=np.int16), offsets)}  # fmt: skip
    counts_array = np.asarray(counts, dtype=np.int64)
    ax = ak.unflatten(x, counts_array)
    ay = ak.unflatten(y.astype(np.float64), counts_array)
    with quiet():
        expected = HYPOTHESIS_CASES[text](ax, ay, z)
    assert_matches(compile_expression(text, _TYPES)(columns, len(counts)), expected, len(counts))
