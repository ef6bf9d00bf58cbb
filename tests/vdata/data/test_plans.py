"""Materializing ranges locally: real data through steps, generated data, same bytes always."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pyarrow as pa
import pytest
import uproot
from hypothesis import given, settings
from hypothesis import strategies as st

import vdata
from vdata import Catalog, Recipe
from vdata.formats import encode_table


@pytest.fixture(scope="module")
def catalog(shared_data: Path) -> Catalog:
    cat = Catalog()
    cat.add_dataset("opendata:hzz", shared_data / "uproot-HZZ.root", "events")
    cat.add_dataset("cms:ttbar", shared_data / "nanoAOD_2015_CMS_Open_Data_ttbar.root", "Events")
    return cat


def test_hzz_recipe_equals_an_awkward_reference(catalog: Catalog, shared_data: Path) -> None:
    recipe = Recipe.from_dict(
        {
            "source": {"dataset": "opendata:hzz"},
            "steps": [
                {"filter": "NMuon >= 2"},
                {"define": {"sumPt2": "sum(Muon_Px**2 + Muon_Py**2)", "leadPx": "Muon_Px[0]"}},
                {"transform": {"name": "leading_pair_mass", "inputs": {"px": "Muon_Px", "py": "Muon_Py", "pz": "Muon_Pz", "e": "Muon_E"}, "outputs": {"mass": "mMuMu"}}},
            ],
            "columns": ["mMuMu", "sumPt2", "leadPx", "NMuon"],
            "range_events": 1000,
        },
        catalog,
    )
    p = vdata.plan(recipe, catalog)
    assert p.num_events == 2421 and len(p.ranges) == 3
    table = pa.concat_tables([vdata.materialize(p, i, catalog) for i in range(len(p.ranges))])
    with uproot.open(shared_data / "uproot-HZZ.root") as f:
        ev = f["events"].arrays(["NMuon", "Muon_Px", "Muon_Py", "Muon_Pz", "Muon_E"])
    ev = ev[ev.NMuon >= 2]
    px, py, pz, e = (ak.values_astype(ev[c], np.float64) for c in ("Muon_Px", "Muon_Py", "Muon_Pz", "Muon_E"))
    m2 = (e[:, 0] + e[:, 1]) ** 2 - (px[:, 0] + px[:, 1]) ** 2 - (py[:, 0] + py[:, 1]) ** 2 - (pz[:, 0] + pz[:, 1]) ** 2
    assert table.num_rows == len(ev)
    np.testing.assert_allclose(table["mMuMu"].to_numpy(), np.sqrt(np.maximum(ak.to_numpy(m2), 0)), rtol=1e-5)
    np.testing.assert_allclose(table["sumPt2"].to_numpy(), ak.to_numpy(ak.sum(ev.Muon_Px**2 + ev.Muon_Py**2, axis=1)), rtol=1e-5)
    np.testing.assert_allclose(table["leadPx"].to_numpy(), ak.to_numpy(ev.Muon_Px[:, 0]), rtol=1e-6)
    assert table["NMuon"].to_pylist() == ak.to_list(ev.NMuon)
    assert table.schema.field("NMuon").type == pa.int32()


def test_nanoaod_passthrough_of_jagged_columns(catalog: Catalog) -> None:
    recipe = Recipe.from_dict(
        {
            "source": {"dataset": "cms:ttbar"},
            "steps": [{"filter": "any(Muon_pt > 25)"}, {"define": {"good_pt": "Muon_pt[Muon_pt > 25]"}}],
            "columns": ["run", "event", "Muon_pt", "good_pt"],
        },
        catalog,
    )
    table = vdata.materialize(recipe, 0, catalog)
    ds = catalog.dataset("cms:ttbar")
    source = ak.from_arrow(ds.read(ds.ranges(10**6)[0], ["run", "event", "Muon_pt"]))
    keep = ak.any(source.Muon_pt > 25, axis=1)
    assert table["event"].to_pylist() == ak.to_list(source.event[keep])
    assert table["Muon_pt"].to_pylist() == ak.to_list(source.Muon_pt[keep])
    good = source.Muon_pt[keep]
    assert table["good_pt"].to_pylist() == ak.to_list(good[good > 25])
    assert table.schema.field("Muon_pt").type == ds.schema.field("Muon_pt").type


ZMUMU = {
    "source": {"generator": "zmumu", "events": 20_000, "seed": 11},
    "steps": [
        {"define": {"sumPt": "sum(Muon_pt)"}},
        {"filter": "sumPt > 60"},
        {"transform": {"name": "leading_pair_mass_ptetaphim", "inputs": {"pt": "Muon_pt", "eta": "Muon_eta", "phi": "Muon_phi", "m": "Muon_mass"}, "outputs": {"mass": "mMuMu"}}},
    ],
    "columns": ["mMuMu", "sumPt", "Muon_pt", "Muon_charge"],
}


def _whole(range_events: int) -> pa.Table:
    recipe = Recipe.from_dict({**ZMUMU, "range_events": range_events})
    catalog = Catalog()
    p = vdata.plan(recipe, catalog)
    return pa.concat_tables([vdata.materialize(p, i, catalog) for i in range(len(p.ranges))]).combine_chunks()


@given(st.integers(1, 20_000))
@settings(max_examples=12, deadline=None)
def test_generated_ranges_concatenate_to_the_same_bytes(range_events: int) -> None:
    one = _whole(20_000)
    assert encode_table(_whole(range_events), "arrow") == encode_table(one, "arrow")


def test_same_bytes_every_time(catalog: Catalog) -> None:
    recipe = Recipe.from_dict({**ZMUMU, "range_events": 5000})
    a = encode_table(vdata.materialize(recipe, 2, Catalog()), "arrow")
    b = encode_table(vdata.materialize(Recipe.from_dict({**ZMUMU, "range_events": 5000}), 2, Catalog()), "arrow")
    assert a == b and len(a) > 1000


def test_range_index_out_of_bounds() -> None:
    recipe = Recipe.from_dict({**ZMUMU, "range_events": 5000})
    with pytest.raises(vdata.RangeOutOfBounds, match="range 4 does not exist.*4 ranges"):
        vdata.materialize(recipe, 4, Catalog())


PICKY = "def picky(s, limit):\n    if s > limit:\n        raise ValueError('sum too large')\n    return s\n"


def _picky_recipe(cat: Catalog, limit: float) -> Recipe:
    return Recipe.from_dict(
        {
            "source": {"generator": "zmumu", "events": 4000, "seed": 3},
            "steps": [
                {"define": {"s": "sum(Muon_pt)", "limit": f"{limit!r} + 0 * sum(Muon_pt)"}},
                {"transform": {"name": "picky", "inputs": {"s": "s", "limit": "limit"}, "outputs": {"out": "t"}}},
            ],
            "columns": ["t"],
            "range_events": 1000,
        },
        cat,
    )


def test_user_code_failing_at_submission_is_a_recipe_error() -> None:
    cat = Catalog()
    cat.add_transform("picky", PICKY, {"s": "flat", "limit": "flat"}, {"out": "float64"}, kind="element")
    with pytest.raises(vdata.RecipeError, match="picky"):
        vdata.plan(_picky_recipe(cat, 0.0), cat)


def test_user_code_failing_on_a_range_names_transform_and_range() -> None:
    cat = Catalog()
    cat.add_transform("picky", PICKY, {"s": "flat", "limit": "flat"}, {"out": "float64"}, kind="element")
    sums = Recipe.from_dict({"source": {"generator": "zmumu", "events": 4000, "seed": 3}, "steps": [{"define": {"s": "sum(Muon_pt)"}}], "columns": ["s"], "range_events": 1000})
    per_range = [vdata.materialize(sums, i, cat)["s"].to_numpy().max() for i in range(4)]
    limit = float(per_range[0])  # range 0 passes, a range with a larger sum fails
    failing = [i for i, m in enumerate(per_range) if m > limit]
    assert failing, "the seed gives no range with a larger sum than range 0"
    p = vdata.plan(_picky_recipe(cat, limit), cat)
    assert vdata.materialize(p, 0, cat).num_rows == 1000
    with pytest.raises(vdata.TransformError) as info:
        vdata.materialize(p, failing[0], cat)
    assert "'picky'" in str(info.value) and f"range {failing[0]} " in str(info.value)
    assert "sum too large" in str(info.value)
