"""Scientists' transforms: hostile or broken source is refused with its line and reason before
anything is compiled; good source compiles and matches a reference on real events."""

from __future__ import annotations

import ast
import pickle
import textwrap
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from realdata import SHARED_DATA, require

from transforms.columns import Column
from transforms.errors import KernelError, TransformCodeError, TransformSignatureError
from transforms.registry import code_hash
from transforms.usercode import check_source, compile_user_transform

DATA = SHARED_DATA

HT = '''
def ht(pt, threshold):
    """Scalar sum of the pt above a threshold."""
    total = 0.0
    for x in pt:
        if x > threshold:
            total += x
    return total
'''

# (source, line, words the reason must contain). Each is refused by the checker, before Numba.
HOSTILE = {
    "import": ("import os", 1, "import is not allowed"),
    "from-import": ("from os import system", 1, "import is not allowed"),
    "dunder": ("def f(x):\n    return ().__class__.__bases__", 2, "starting with '_'"),
    "open": ("def f(x):\n    y = 0.0\n    open('/etc/passwd')\n    return y", 3, "'open' is not allowed"),
    "import-ctypes": ("def f(x):\n    import ctypes\n    return 1.0", 2, "import is not allowed"),
    "numba-carray": ("def f(x):\n    return numba.carray(x, 3)", 2, "attribute access 'numba.carray'"),
    "getattr": ("def f(x):\n    return getattr(x, 'y')", 2, "'getattr' is not allowed"),
    "eval": ("def f(x):\n    return eval('1')", 2, "'eval' is not allowed"),
    "exec": ("def f(x):\n    exec('import os')\n    return 1.0", 2, "'exec' is not allowed"),
    "globals": ("def f(x):\n    g = globals()\n    return 1.0", 2, "'globals' is not allowed"),
    "lambda": ("def f(x):\n    g = lambda: 0\n    return 1.0", 2, "lambda is not allowed"),
    "second-def": ("def f(x):\n    return 1.0\n\n\ndef g(x):\n    return 2.0", 5, "only one function"),
    "class": ("class A:\n    pass\n\n\ndef f(x):\n    return 1.0", 1, "class definition is not allowed"),
    "decorator": ("@njit\ndef f(x):\n    return 1.0", 1, "decorators are not allowed"),
    "top-level-code": ("def f(x):\n    return 1.0\nopen('x')", 3, "'open' is not allowed"),
    "dunder-import": ("def f(x):\n    return __import__('os')", 2, "starting with '_'"),
    "shape": ("def f(x):\n    return x.shape[0]", 2, "attribute access 'x.shape'"),
    "np-dunder": ("def f(x):\n    return np.__dict__", 2, "starting with '_'"),
    "np-other": ("def f(x):\n    return np.load('a.npy')", 2, "attribute access 'np.load'"),
    "string": ("def f(x):\n    y = 'abc'\n    return 1.0", 2, "strings are allowed only"),
    "nested-def": ("def f(x):\n    def g():\n        return 1.0\n    return g()", 2, "nested function definition"),
    "default": ("def f(x=open('y')):\n    return 1.0", 1, "no defaults"),
    "annotation": ("def f(x: print('hi')):\n    return 1.0", 1, "annotations are not allowed"),
    "global": ("def f(x):\n    global y\n    return 1.0", 2, "global is not allowed"),
    "with": ("def f(x):\n    with x:\n        pass\n    return 1.0", 2, "with is not allowed"),
    "try": ("def f(x):\n    try:\n        pass\n    except Exception:\n        pass\n    return 1.0", 2, "try is not allowed"),
    "comprehension": ("def f(x):\n    return np.sum([v for v in x])", 2, "list comprehension is not allowed"),
    "sum": ("def f(x):\n    return sum(x)", 2, "calling 'sum' is not allowed"),
    "list": ("def f(x):\n    y = [1.0]\n    return y[0]", 2, "a list"),
    "unknown-name": ("def f(x):\n    return x[0] + y", 2, "unknown name 'y'"),
    "private-name": ("def f(x):\n    _y = 1.0\n    return _y", 2, "starting with '_'"),
    "shadow": ("def f(x):\n    sqrt = 1.0\n    return sqrt", 2, "cannot be assigned"),
    "raise-other": ("def f(x):\n    raise SystemExit(1)", 2, "only 'raise ValueError"),
    "syntax": ("def f(x):\n    return (", 2, "syntax error"),
    "wrong-name": ("def g(x):\n    return 1.0", 1, "must be named 'f'"),
    "kwargs": ("def f(x):\n    return np.zeros(3, order='F')", 2, "only keyword argument allowed is dtype"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_source_is_refused_with_line_and_reason(case: str) -> None:
    source, line, reason = HOSTILE[case]
    with pytest.raises(TransformCodeError) as info:
        check_source("f", source)
    assert info.value.line == line
    assert f"transform 'f' line {line}: " in str(info.value)
    assert reason in str(info.value)


def test_hostile_source_never_reaches_the_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VDATA_KERNEL_CACHE", str(tmp_path))
    with pytest.raises(TransformCodeError, match="line 2: 'open' is not allowed"):
        compile_user_transform("f", "def f(x):\n    return open('/etc/passwd')", {"x": "jagged"}, {"y": "float64"})
    assert not list(tmp_path.iterdir())


def test_good_source_passes_the_check() -> None:
    tree = check_source("ht", HT)
    assert isinstance(tree, ast.Module)
    check_source("f", textwrap.dedent('''
        def f(pt, eta, out):
            """Docstring."""
            k = 0
            for i, v in enumerate(pt):
                if abs(eta[i]) < 2.4 and not isnan(v):
                    out[k] = sqrt(v) * math.cos(pi / 4) + np.float64(len(pt))
                    k += 1
                elif v < 0:
                    raise ValueError("negative pt")
            best: float = max(np.max(pt), 0.0) if len(pt) else nan
            buf = np.zeros(len(pt), dtype=np.float64)
            buf[0:2] = best
            while k > 100:
                k -= 1
            return k
    '''))


def test_user_transform_matches_a_reference_on_real_jets() -> None:
    path = DATA / "nanoAOD_2015_CMS_Open_Data_ttbar.root"
    require(path)
    with uproot.open(path) as f:
        arrays = f["Events"].arrays(["Jet_pt"])
    pt = Column.from_arrow(ak.to_arrow_table(arrays, extensionarray=False).column("Jet_pt"))
    n = len(arrays)
    t = compile_user_transform("ht", HT, {"pt": "jagged", "threshold": "flat"}, {"ht": "float64"})
    assert (t.name, t.kind, t.user, t.source) == ("ht", "event", True, textwrap.dedent(HT))
    assert t.code_hash == code_hash(HT, "event", {"pt": "jagged", "threshold": "flat"}, {"ht": "float64"})
    got = t.apply({"pt": pt, "threshold": Column(np.full(n, 30.0))}, n)["ht"]
    jets = ak.values_astype(arrays.Jet_pt, np.float64)
    np.testing.assert_allclose(got.values, ak.to_numpy(ak.sum(jets[jets > 30.0], axis=1)), rtol=1e-12)
    again = pickle.loads(pickle.dumps(t))  # rebuilt from its source, e.g. in a Ray worker
    assert again.code_hash == t.code_hash
    np.testing.assert_array_equal(again.apply({"pt": pt, "threshold": Column(np.full(n, 30.0))}, n)["ht"].values, got.values)


def test_user_event_list_transform() -> None:
    source = "def hard(pt, cut, out):\n    k = 0\n    for v in pt:\n        if v > cut:\n            out[k] = v\n            k += 1\n    return k\n"
    t = compile_user_transform("hard", source, {"pt": "jagged", "cut": "flat"}, {"out": "float32"}, "event_list", "same")
    pt = Column(np.array([10.0, 50.0, 40.0, 5.0]), np.array([0, 3, 3, 4], dtype=np.int64))
    got = t.apply({"pt": pt, "cut": Column(np.array([20.0, 0.0, 1.0]))}, 3)["out"]
    assert got.values.dtype == np.float32
    np.testing.assert_array_equal(got.offsets, [0, 2, 2, 3])
    np.testing.assert_array_equal(got.values, [50.0, 40.0, 5.0])


def test_out_of_bounds_index_is_a_kernel_error_not_a_crash() -> None:
    t = compile_user_transform("last", "def last(pt):\n    return pt[len(pt)]\n", {"pt": "jagged"}, {"x": "float64"})
    with pytest.raises(KernelError, match="transform 'last' failed: IndexError"):
        t.apply({"pt": Column(np.array([1.0, 2.0]), np.array([0, 2], dtype=np.int64))}, 1)


def test_typing_errors_name_the_line() -> None:
    source = "def f(x):\n    y = 1.0\n\n    z = y + (1, 2)\n    return z\n"
    with pytest.raises(TransformCodeError, match=r"transform 'f' line 4: cannot be compiled: .*add\(float64") as info:
        compile_user_transform("f", source, {"x": "jagged"}, {"y": "float64"})
    assert info.value.line == 4


def test_signature_mismatches() -> None:
    with pytest.raises(TransformSignatureError, match=r"parameters \(pt\) do not match the declared \(pt, out\)"):
        compile_user_transform("f", "def f(pt):\n    return 0\n", {"pt": "jagged"}, {"out": "float64"}, "event_list", "same")
    with pytest.raises(TransformSignatureError, match="result does not fit the declared outputs"):
        compile_user_transform("f", "def f(x):\n    return 1.0, 2.0\n", {"x": "jagged"}, {"y": "float64"})
    with pytest.raises(TransformSignatureError, match="input 'x' must be one of"):
        compile_user_transform("f", "def f(x):\n    return 1.0\n", {"x": "list"}, {"y": "float64"})


def test_code_hash_follows_code_not_layout() -> None:
    sig = ("event", {"pt": "jagged", "threshold": "flat"}, {"ht": "float64"})
    base = code_hash(HT, *sig)
    relaid = HT.replace("    total = 0.0", "    total = 0.0  # running sum\n").replace("x > threshold", "(x)>threshold")
    assert code_hash(textwrap.indent(relaid, "    "), *sig) == base
    assert code_hash(HT.replace("x > threshold", "x >= threshold"), *sig) != base
    assert code_hash(HT, "event", {"pt": "jagged", "threshold": "flat"}, {"ht": "float32"}) != base
