"""The transform decorator, the three kernel kinds, input checks, errors and the registry."""

from __future__ import annotations

import pickle
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot
from realdata import SHARED_DATA, require

from transforms.columns import Column
from transforms.errors import KernelError, TransformSignatureError, UnknownName
from transforms.registry import (
    Transform,
    code_hash,
    get_transform,
    list_transforms,
    register,
    transform,
)

DATA = SHARED_DATA


@transform(inputs={"x": "jagged", "shift": "flat"}, outputs={"y": "float32", "twice": "int64"})
def regtest_shift(x: float, shift: float) -> tuple[float, int]:
    return x + shift, 2 * int(x)


@transform("regtest_polar", inputs=[("px", "flat"), ("py", "flat")], outputs={"pt": "float64", "phi": "float64"})
def regtest_polar_kernel(px: float, py: float) -> tuple[float, float]:
    return np.hypot(np.float64(px), np.float64(py)), np.arctan2(np.float64(py), np.float64(px))


@transform(inputs={"x": "jagged", "cut": "flat"}, outputs={"n": "int64", "total": "float64"}, kind="event")
def regtest_count(x: np.ndarray, cut: float) -> tuple[int, float]:
    n, total = 0, 0.0
    for v in x:
        if v > cut:
            n += 1
            total += v
    return n, total


@transform(inputs={"x": "jagged"}, outputs={"pos": "float64", "idx": "int32"}, kind="event_list", max_size="same")
def regtest_positive(x: np.ndarray, pos: np.ndarray, idx: np.ndarray) -> int:
    k = 0
    for j in range(len(x)):
        if x[j] > 0:
            pos[k] = x[j]
            idx[k] = j
            k += 1
    return k


@transform(inputs={"x": "jagged"}, outputs={"y": "float64"}, kind="event_list", max_size=1)
def regtest_overflow(x: np.ndarray, y: np.ndarray) -> int:
    return len(x)  # claims more entries than the buffer holds for events with 2+ objects


@transform(inputs={"x": "jagged"}, outputs={"y": "float64"}, kind="event")
def regtest_raises(x: np.ndarray) -> float:
    if len(x) > 2:
        raise ValueError("too many objects")
    return 0.0


def _jagged(*events: list[float]) -> Column:
    offsets = np.cumsum([0, *map(len, events)]).astype(np.int64)
    return Column(np.array([v for e in events for v in e], dtype=np.float64), offsets)


X = _jagged([1.5, -2.0, 3.0], [], [-1.0], [4.0, 5.0])


def test_element_kernel_broadcasts_flat_inputs() -> None:
    out = regtest_shift.apply({"x": X, "shift": Column(np.array([10.0, 20.0, 30.0, 40.0]))}, 4)
    assert out["y"].values.dtype == np.float32 and out["twice"].values.dtype == np.int64
    np.testing.assert_array_equal(out["y"].values, [11.5, 8.0, 13.0, 29.0, 44.0, 45.0])
    np.testing.assert_array_equal(out["twice"].values, [2, -4, 6, -2, 8, 10])
    np.testing.assert_array_equal(out["y"].offsets, X.offsets)


def test_flat_element_kernel_on_real_met() -> None:
    path = DATA / "uproot-HZZ.root"
    require(path)
    with uproot.open(path) as f:
        arrays = f["events"].arrays(["MET_px", "MET_py"])
    table = ak.to_arrow_table(arrays, extensionarray=False)
    cols = {"px": Column.from_arrow(table.column("MET_px")), "py": Column.from_arrow(table.column("MET_py"))}
    register(regtest_polar_kernel)  # found by its name, not the function's
    out = get_transform("regtest_polar").apply(cols, len(arrays))
    px, py = np.asarray(arrays.MET_px, dtype=np.float64), np.asarray(arrays.MET_py, dtype=np.float64)
    assert out["pt"].offsets is None
    np.testing.assert_allclose(out["pt"].values, np.hypot(px, py), rtol=1e-12)
    np.testing.assert_allclose(out["phi"].values, np.arctan2(py, px), rtol=1e-12)


def test_event_kernel() -> None:
    out = regtest_count.apply({"x": X, "cut": Column(np.array([0.0, 0.0, -5.0, 4.5]))}, 4)
    np.testing.assert_array_equal(out["n"].values, [2, 0, 1, 1])
    np.testing.assert_array_equal(out["total"].values, [4.5, 0.0, -1.0, 5.0])
    assert out["n"].offsets is None and out["n"].values.dtype == np.int64


def test_event_list_kernel() -> None:
    out = regtest_positive.apply({"x": X}, 4)
    np.testing.assert_array_equal(out["pos"].offsets, [0, 2, 2, 2, 4])
    np.testing.assert_array_equal(out["pos"].values, [1.5, 3.0, 4.0, 5.0])
    np.testing.assert_array_equal(out["idx"].values, [0, 2, 0, 1])
    assert out["idx"].values.dtype == np.int32


def test_no_events() -> None:
    empty = Column(np.empty(0), np.zeros(1, dtype=np.int64))
    assert len(regtest_positive.apply({"x": empty}, 0)["pos"]) == 0
    assert len(regtest_count.apply({"x": empty, "cut": Column(np.empty(0))}, 0)["n"]) == 0


def test_kernel_errors_name_the_transform() -> None:
    with pytest.raises(KernelError, match="transform 'regtest_raises' failed: ValueError: too many objects") as info:
        regtest_raises.apply({"x": X}, 4)
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(KernelError, match=r"transform 'regtest_overflow': event 0 returned a count outside 0\.\.1"):
        regtest_overflow.apply({"x": X}, 4)


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"x": Column(np.zeros(4)), "shift": Column(np.zeros(4))}, "input 'x' must be a jagged column, got float64"),
        ({"x": X, "shift": X}, "input 'shift' must be a flat column, got var \\* float64"),
        ({"x": X}, "input 'shift' is missing"),
        ({"x": X, "shift": Column(np.zeros(3))}, "input 'shift' has 3 events, expected 4"),
        ({"x": X, "shift": Column(np.zeros(4)), "z": X}, "unknown inputs \\['z'\\]"),
    ],
)
def test_wrong_columns(columns: dict[str, Column], message: str) -> None:
    with pytest.raises(TransformSignatureError, match=f"transform 'regtest_shift': {message}"):
        regtest_shift.apply(columns, 4)


def test_wrong_declarations() -> None:
    def kernel(x: float) -> float:
        return x

    cases = [
        ({"inputs": {"y": "jagged"}, "outputs": {"z": "float64"}}, "parameters \\(x\\) do not match the declared \\(y\\)"),
        ({"inputs": {"x": "ragged"}, "outputs": {"z": "float64"}}, "input 'x' must be one of"),
        ({"inputs": {"x": "flat"}, "outputs": {"z": "string"}}, "'string' is not a numeric dtype"),
        ({"inputs": {"x": "flat"}, "outputs": {"z": "float64"}, "kind": "events"}, "kind must be one of"),
        ({"inputs": {"x": "jagged"}, "outputs": {"z": "float64"}, "kind": "event_list"}, "max_size must be one of"),
        ({"inputs": {"x": "flat"}, "outputs": {}}, "at least one output"),
    ]
    for kwargs, message in cases:
        with pytest.raises(TransformSignatureError, match=message):
            transform("regtest_bad", **kwargs)(kernel)  # type: ignore[arg-type]
    with pytest.raises(UnknownName):
        get_transform("regtest_bad")


def test_registry() -> None:
    assert get_transform("met").name == "met"  # the built-ins are there from the start
    with pytest.raises(UnknownName):  # the decorator makes a transform; it does not register it
        get_transform("regtest_count")
    assert register(regtest_count) is regtest_count
    assert get_transform("regtest_count") is regtest_count and regtest_count in list_transforms()
    assert register(regtest_count) is regtest_count  # the same code again is fine
    other = Transform("regtest_count", "event", {"x": "jagged"}, {"n": "int64"}, "0" * 64, "", regtest_count.kernel)
    with pytest.raises(TransformSignatureError, match="registered already with other code"):
        register(other)
    with pytest.raises(UnknownName, match="did you mean regtest_count"):
        get_transform("regtest_cont")
    assert pickle.loads(pickle.dumps(regtest_count)) is regtest_count


def test_code_hash() -> None:
    sig = ("event", {"x": "jagged"}, {"y": "float64"})
    base = code_hash("def f(x):\n    return len(x)\n", *sig)
    assert base == code_hash("def f( x ):  # counts\n\n    return   len(x)", *sig)
    assert base != code_hash("def f(x):\n    return len(x) + 1\n", *sig)
    assert base != code_hash("def f(x):\n    return len(x)\n", "event", {"x": "jagged"}, {"y": "float32"})
    assert len(regtest_count.code_hash) == 64 and regtest_count.code_hash != regtest_shift.code_hash


def test_drivers_are_written_to_the_kernel_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VDATA_KERNEL_CACHE", str(tmp_path))

    @transform(inputs={"x": "jagged"}, outputs={"y": "float64"}, kind="event")
    def regtest_cached(x: np.ndarray) -> float:
        return np.float64(len(x))

    np.testing.assert_array_equal(regtest_cached.apply({"x": X}, 4)["y"].values, [3, 0, 1, 2])
    (driver,) = tmp_path.glob("driver_*.py")
    assert regtest_cached.code_hash in driver.read_text()
