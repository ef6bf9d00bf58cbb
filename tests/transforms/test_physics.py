"""Built-in physics transforms against NumPy/awkward references, on real events from
../shared/data (the HZZ sample: px, py, pz, E muons; CMS NanoAOD: pt, eta, phi, mass)."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import uproot
from hypothesis import given, settings
from hypothesis import strategies as st
from realdata import SHARED_DATA, require

from transforms.columns import Column
from transforms.errors import KernelError, TransformSignatureError, UnknownName
from transforms.registry import get_transform, list_transforms

DATA = SHARED_DATA
# Inputs are float32; kernels and references both work in float64 from the same numbers, so
# only formula rounding differs: float32-scale tolerances leave plenty of room.
RTOL, ATOL = 1e-6, 1e-5


def _read(filename: str, tree: str, branches: list[str]) -> tuple[ak.Array, dict[str, Column]]:
    path = DATA / filename
    require(path)
    with uproot.open(path) as f:
        arrays = f[tree].arrays(branches)
    table = ak.to_arrow_table(arrays, extensionarray=False)
    return ak.values_astype(arrays, np.float64), {b: Column.from_arrow(table.column(b)) for b in branches}


@pytest.fixture(scope="module")
def hzz() -> tuple[ak.Array, dict[str, Column]]:
    return _read("uproot-HZZ.root", "events", ["Muon_Px", "Muon_Py", "Muon_Pz", "Muon_E"])


@pytest.fixture(scope="module")
def nano() -> tuple[ak.Array, dict[str, Column]]:
    return _read("nanoAOD_2015_CMS_Open_Data_ttbar.root", "Events", ["Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass"])


def _flat(a: ak.Array) -> np.ndarray:
    return np.asarray(ak.flatten(a), dtype=np.float64)


def _close(got: Column, want: np.ndarray, rtol: float = RTOL, atol: float = ATOL) -> None:
    np.testing.assert_allclose(got.values, want, rtol=rtol, atol=atol, equal_nan=True)


def _signed_mass(e: ak.Array, px: ak.Array, py: ak.Array, pz: ak.Array) -> ak.Array:
    p = np.sqrt(px**2 + py**2 + pz**2)
    m2 = (e - p) * (e + p)
    return np.sign(m2) * np.sqrt(np.abs(m2))


def _wrap(dphi: np.ndarray) -> np.ndarray:
    return np.arctan2(np.sin(dphi), np.cos(dphi))


def _top2(key: ak.Array, *values: ak.Array) -> list[tuple[np.ndarray, np.ndarray]]:
    """(first, second) of each value array, ordered by descending key; NaN where missing."""
    order = ak.argsort(key, ascending=False, stable=True)
    out = []
    for v in values:
        ranked = ak.pad_none(v[order], 2, axis=1)
        first, second = (np.asarray(ak.fill_none(ranked[:, k], np.nan), dtype=np.float64) for k in (0, 1))
        out.append((first, second))
    return out


def _hzz_inputs(cols: dict[str, Column]) -> dict[str, Column]:
    return {"px": cols["Muon_Px"], "py": cols["Muon_Py"], "pz": cols["Muon_Pz"], "e": cols["Muon_E"]}


def _jet_inputs(cols: dict[str, Column]) -> dict[str, Column]:
    return {"pt": cols["Jet_pt"], "eta": cols["Jet_eta"], "phi": cols["Jet_phi"], "m": cols["Jet_mass"]}


def test_pxpypze_to_ptetaphim(hzz: tuple[ak.Array, dict[str, Column]]) -> None:
    arr, cols = hzz
    out = get_transform("pxpypze_to_ptetaphim").apply(_hzz_inputs(cols), len(arr))
    px, py, pz, e = arr.Muon_Px, arr.Muon_Py, arr.Muon_Pz, arr.Muon_E
    pt = np.hypot(px, py)
    theta = np.arctan2(pt, pz)
    for name in out:
        np.testing.assert_array_equal(out[name].offsets, cols["Muon_Px"].offsets)
        assert out[name].values.dtype == np.float64
    _close(out["pt"], _flat(pt))
    _close(out["eta"], _flat(-np.log(np.tan(theta / 2))))
    _close(out["phi"], _flat(np.arctan2(py, px)))
    _close(out["m"], _flat(_signed_mass(e, px, py, pz)))


def test_ptetaphim_to_pxpypze(nano: tuple[ak.Array, dict[str, Column]]) -> None:
    arr, cols = nano
    out = get_transform("ptetaphim_to_pxpypze").apply(_jet_inputs(cols), len(arr))
    pt, eta, phi, m = arr.Jet_pt, arr.Jet_eta, arr.Jet_phi, arr.Jet_mass
    _close(out["px"], _flat(pt * np.cos(phi)))
    _close(out["py"], _flat(pt * np.sin(phi)))
    _close(out["pz"], _flat(pt * np.sinh(eta)))
    _close(out["e"], _flat(np.sqrt((pt * np.cosh(eta)) ** 2 + m**2)))


def test_round_trip_on_real_muons(hzz: tuple[ak.Array, dict[str, Column]]) -> None:
    arr, cols = hzz
    polar = get_transform("pxpypze_to_ptetaphim").apply(_hzz_inputs(cols), len(arr))
    back = get_transform("ptetaphim_to_pxpypze").apply(polar, len(arr))
    for name, original in _hzz_inputs(cols).items():
        np.testing.assert_array_equal(back[name].offsets, original.offsets)
        np.testing.assert_allclose(back[name].values, original.values.astype(np.float64), rtol=1e-9, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(1e-3, 1e4), st.floats(-5, 5), st.floats(-np.pi, np.pi), st.floats(0, 1e3)
        ),
        max_size=20,
    )
)
def test_round_trip_property(objects: list[tuple[float, float, float, float]]) -> None:
    values = np.array(objects, dtype=np.float64).reshape(-1, 4)
    offsets = np.array([0, len(values) // 2, len(values)], dtype=np.int64)
    polar = {k: Column(np.ascontiguousarray(values[:, i]), offsets) for i, k in enumerate(["pt", "eta", "phi", "m"])}
    cartesian = get_transform("ptetaphim_to_pxpypze").apply(polar, 2)
    back = get_transform("pxpypze_to_ptetaphim").apply(cartesian, 2)
    for k in ("pt", "eta", "phi"):
        np.testing.assert_allclose(back[k].values, polar[k].values, rtol=1e-9, atol=1e-9)
    # The mass comes from e^2 - p^2: absolute precision follows e, not m.
    scale = cartesian["e"].values
    assert np.all(np.abs(back["m"].values - polar["m"].values) <= 1e-6 * np.maximum(scale, 1.0))


def test_leading_pair_mass(hzz: tuple[ak.Array, dict[str, Column]]) -> None:
    arr, cols = hzz
    got = get_transform("leading_pair_mass").apply(_hzz_inputs(cols), len(arr))["mass"]
    pt = np.hypot(arr.Muon_Px, arr.Muon_Py)
    (px1, px2), (py1, py2), (pz1, pz2), (e1, e2) = _top2(pt, arr.Muon_Px, arr.Muon_Py, arr.Muon_Pz, arr.Muon_E)
    want = _signed_mass(e1 + e2, px1 + px2, py1 + py2, pz1 + pz2)
    assert got.offsets is None and len(got) == len(arr)
    np.testing.assert_array_equal(np.isnan(got.values), ak.to_numpy(ak.num(pt) < 2))
    _close(got, np.asarray(want))
    # The Z peak is there: a sanity check that the reference is physics, not only arithmetic.
    assert np.nanmedian(got.values) == pytest.approx(91, abs=10)


def test_leading_pair_mass_ptetaphim(nano: tuple[ak.Array, dict[str, Column]]) -> None:
    arr, cols = nano
    got = get_transform("leading_pair_mass_ptetaphim").apply(_jet_inputs(cols), len(arr))["mass"]
    (pt1, pt2), (eta1, eta2), (phi1, phi2), (m1, m2) = _top2(arr.Jet_pt, arr.Jet_pt, arr.Jet_eta, arr.Jet_phi, arr.Jet_mass)
    px, py = pt1 * np.cos(phi1) + pt2 * np.cos(phi2), pt1 * np.sin(phi1) + pt2 * np.sin(phi2)
    pz = pt1 * np.sinh(eta1) + pt2 * np.sinh(eta2)
    e = np.hypot(pt1 * np.cosh(eta1), m1) + np.hypot(pt2 * np.cosh(eta2), m2)
    _close(got, np.asarray(_signed_mass(e, px, py, pz)), rtol=1e-6, atol=1e-4)
    assert np.isnan(got.values).sum() == int(np.sum(ak.num(arr.Jet_pt) < 2))


def test_all_pairs_mass(hzz: tuple[ak.Array, dict[str, Column]]) -> None:
    arr, cols = hzz
    got = get_transform("all_pairs_mass").apply(_hzz_inputs(cols), len(arr))["mass"]
    a, b = ak.unzip(ak.combinations(ak.zip({"x": arr.Muon_Px, "y": arr.Muon_Py, "z": arr.Muon_Pz, "e": arr.Muon_E}), 2))
    want = _signed_mass(a.e + b.e, a.x + b.x, a.y + b.y, a.z + b.z)
    np.testing.assert_array_equal(got.counts(), ak.to_numpy(ak.num(want)))
    _close(got, _flat(want))


def test_delta_r(nano: tuple[ak.Array, dict[str, Column]]) -> None:
    arr, cols = nano
    # Each jet against the jets of its event in reverse order: equal counts, real values.
    reversed_eta, reversed_phi = arr.Jet_eta[:, ::-1], arr.Jet_phi[:, ::-1]
    table = ak.to_arrow_table(ak.zip({"eta": reversed_eta, "phi": reversed_phi}, depth_limit=1), extensionarray=False)
    inputs = {
        "eta1": cols["Jet_eta"], "phi1": cols["Jet_phi"],
        "eta2": Column.from_arrow(table.column("eta")), "phi2": Column.from_arrow(table.column("phi")),
    }  # fmt: skip
    got = get_transform("delta_r").apply(inputs, len(arr))["dr"]
    want = np.hypot(_flat(arr.Jet_eta - reversed_eta), _wrap(_flat(arr.Jet_phi - reversed_phi)))
    _close(got, want)
    assert got.values.max() < np.hypot(10, np.pi)


def test_delta_r_to_the_leading_jet(nano: tuple[ak.Array, dict[str, Column]]) -> None:
    arr, cols = nano
    n = len(arr)
    lead_eta = get_transform("leading").apply({"pt": cols["Jet_pt"], "value": cols["Jet_eta"]}, n)["value"]
    lead_phi = get_transform("leading").apply({"pt": cols["Jet_pt"], "value": cols["Jet_phi"]}, n)["value"]
    inputs = {"eta": cols["Jet_eta"], "phi": cols["Jet_phi"], "eta0": lead_eta, "phi0": lead_phi}
    got = get_transform("delta_r_to").apply(inputs, n)["dr"]
    ((eta0, _), (phi0, _)) = _top2(arr.Jet_pt, arr.Jet_eta, arr.Jet_phi)
    want = np.hypot(_flat(arr.Jet_eta - eta0), _wrap(_flat(arr.Jet_phi - phi0)))
    _close(got, want)
    np.testing.assert_array_equal(got.offsets, cols["Jet_eta"].offsets)
    assert np.sum(got.values == 0.0) == int(np.sum(ak.num(arr.Jet_pt) > 0))  # the leading jet itself


def test_leading_and_leading_delta_r(nano: tuple[ak.Array, dict[str, Column]]) -> None:
    arr, cols = nano
    n = len(arr)
    got = get_transform("leading").apply({"pt": cols["Jet_pt"], "value": cols["Jet_mass"]}, n)["value"]
    best = ak.argmax(arr.Jet_pt, axis=1, keepdims=True)
    want = np.asarray(ak.fill_none(ak.firsts(arr.Jet_mass[best]), np.nan), dtype=np.float64)
    _close(got, want)
    dr = get_transform("leading_delta_r").apply({"pt": cols["Jet_pt"], "eta": cols["Jet_eta"], "phi": cols["Jet_phi"]}, n)
    ((eta1, eta2), (phi1, phi2)) = _top2(arr.Jet_pt, arr.Jet_eta, arr.Jet_phi)
    _close(dr["dr"], np.hypot(eta1 - eta2, _wrap(phi1 - phi2)))


def test_met(hzz: tuple[ak.Array, dict[str, Column]]) -> None:
    arr, cols = hzz
    got = get_transform("met").apply({"px": cols["Muon_Px"], "py": cols["Muon_Py"]}, len(arr))
    sx, sy = np.asarray(ak.sum(arr.Muon_Px, axis=1)), np.asarray(ak.sum(arr.Muon_Py, axis=1))
    pt = np.hypot(sx, sy)
    _close(got["met_pt"], pt)
    _close(got["met_phi"], np.where(pt > 0, np.arctan2(-sy, -sx), 0.0))


def test_wrong_inputs_are_refused(nano: tuple[ak.Array, dict[str, Column]]) -> None:
    arr, cols = nano
    n, phi = len(arr), cols["Jet_phi"]
    all_in_event_0 = Column(phi.values, np.r_[0, np.full(n, len(phi.values))].astype(np.int64))
    inputs = {"eta1": cols["Jet_eta"], "phi1": phi, "eta2": cols["Jet_eta"], "phi2": all_in_event_0}
    with pytest.raises(KernelError, match=r"transform 'delta_r': jagged inputs 'eta1' and 'phi2' .* event 0"):
        get_transform("delta_r").apply(inputs, n)
    with pytest.raises(TransformSignatureError, match="'leading'.*'value' must be a jagged column"):
        get_transform("leading").apply({"pt": cols["Jet_pt"], "value": Column(np.zeros(n))}, n)


def test_builtins_are_listed_and_found() -> None:
    names = {t.name for t in list_transforms()}
    assert {
        "pxpypze_to_ptetaphim", "ptetaphim_to_pxpypze", "leading_pair_mass", "leading_pair_mass_ptetaphim",
        "all_pairs_mass", "delta_r", "delta_r_to", "leading_delta_r", "leading", "met",
    } <= names  # fmt: skip
    pair = get_transform("all_pairs_mass")
    assert (pair.kind, pair.max_size, pair.inputs, pair.outputs) == (
        "event_list", "pairs", {"px": "jagged", "py": "jagged", "pz": "jagged", "e": "jagged"}, {"mass": "float64"}
    )
    assert len({t.code_hash for t in list_transforms()}) == len(names)
    with pytest.raises(UnknownName, match="did you mean leading_pair_mass"):
        get_transform("leading_pair_mas")
