"""NanoAOD naming of derived columns: the plan warns where coffea's NanoAODSchema would misread
a name (a collection that does not exist, a flat column in a jagged collection, a column taken
for a collection, two coordinate systems in one collection), and only there."""

from __future__ import annotations

from pathlib import Path

import pytest

import vdata

ZMUMU = {"generator": "zmumu", "events": 1000, "seed": 3}


def warnings_of(steps: list[dict[str, object]], source: dict[str, object] | None = None,
                catalog: vdata.Catalog | None = None) -> list[str]:
    catalog = catalog or vdata.Catalog()
    recipe = vdata.Recipe.from_dict({"source": source or ZMUMU, "steps": steps, "range_events": 1000}, catalog)
    return vdata.plan(recipe, catalog).warnings


def test_names_that_follow_nanoaod_give_no_warning() -> None:
    steps = [
        {"define": {"sumPt": "sum(Muon_pt)", "mMuMu": "Muon_pt[0] * 2", "nGoodMuon": "count(Muon_pt > 20)"}},
        {"define": {"Muon_isHighPt": "Muon_pt > 50", "Jet_ptOverMass": "Jet_pt / Jet_mass", "Muon_p": "Muon_pt * 2"}},
        {"filter": "nMuon == 2"},
        {"transform": {"name": "leading_pair_mass_ptetaphim", "outputs": {"mass": "dimuonMass"},
                       "inputs": {"pt": "Muon_pt", "eta": "Muon_eta", "phi": "Muon_phi", "m": "Muon_mass"}}},
    ]
    assert warnings_of(steps) == []


def test_a_flat_column_with_a_prefix_makes_a_collection_that_does_not_exist() -> None:
    steps = [{"transform": {"name": "leading_pair_mass_ptetaphim", "outputs": {"mass": "m_mumu"},
                            "inputs": {"pt": "Muon_pt", "eta": "Muon_eta", "phi": "Muon_phi", "m": "Muon_mass"}}}]
    [warning] = warnings_of(steps)
    assert warning.startswith("steps[0].transform.outputs.mass: ")
    assert "'m_mumu' as field 'mumu' of a collection 'm' that the data do not have" in warning
    assert "without '_'" in warning
    [jagged] = warnings_of([{"define": {"Lepton_pt": "Muon_pt * 1"}}])
    assert jagged.startswith("steps[0].define.Lepton_pt: ") and "collection 'Lepton'" in jagged
    assert "name it after the collection its entries belong to" in jagged


def test_flat_and_jagged_do_not_mix_in_one_collection() -> None:
    [flat] = warnings_of([{"define": {"Muon_ptSum": "sum(Muon_pt)"}}])
    assert "per-event (flat) column 'Muon_ptSum' into 'Muon', a per-object (jagged) collection" in flat


def test_a_column_named_like_a_collection_is_refused_by_coffea() -> None:
    [warning] = warnings_of([{"define": {"Jet": "nJet * 1"}}])
    assert "take 'Jet' for the collection 'Jet'" in warning


@pytest.mark.parametrize("field", ["px", "x", "pz", "theta", "E", "energy", "m", "tau"])
def test_a_second_coordinate_system_in_a_four_vector_collection(field: str) -> None:
    [warning] = warnings_of([{"define": {f"Muon_{field}": "Muon_pt * 2"}}])
    assert f"'Muon_{field}' is a four-vector coordinate that conflicts with Muon_" in warning


def test_every_bad_name_is_reported_and_the_recipe_still_runs() -> None:
    catalog = vdata.Catalog()
    steps = [{"define": {"m_x": "nMuon * 1", "okName": "nJet * 1"}}, {"define": {"sum_pt": "sum(Muon_pt)"}}]
    recipe = vdata.Recipe.from_dict({"source": ZMUMU, "steps": steps, "range_events": 1000}, catalog)
    plan = vdata.plan(recipe, catalog)
    assert [w.split(":")[0] for w in plan.warnings] == ["steps[0].define.m_x", "steps[1].define.sum_pt"]
    assert vdata.materialize(plan, 0, catalog).column_names[-3:] == ["m_x", "okName", "sum_pt"]


def test_the_collections_are_the_source_dataset_s(shared_data: Path) -> None:
    """HZZ has its own names (``MET_px``, ``Muon_Px``): ``MET_`` and ``Muon_`` are collections there."""
    catalog = vdata.Catalog()
    catalog.add_dataset("opendata:hzz", [str(shared_data / "uproot-HZZ.root")], "events")
    source = {"dataset": "opendata:hzz"}
    assert warnings_of([{"define": {"MET_pxOverPy": "MET_px / MET_py"}}], source, catalog) == []
    [warning] = warnings_of([{"define": {"met_pt": "sqrt(MET_px**2 + MET_py**2)"}}], source, catalog)
    assert "collection 'met' that the data do not have" in warning
