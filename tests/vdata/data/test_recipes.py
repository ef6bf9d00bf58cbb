"""Recipes: canonical form and id; every problem reported at once."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import vdata
from transforms import generators
from vdata import Catalog, Recipe, RecipeError

HZZ_RECIPE = {
    "source": {"dataset": "opendata:hzz"},
    "steps": [
        {"filter": "NMuon >= 2"},
        {"define": {"sumPt2": "sum(Muon_Px**2 + Muon_Py**2)", "leadPx": "Muon_Px[0]"}},
        {
            "transform": {
                "name": "leading_pair_mass",
                "inputs": {"px": "Muon_Px", "py": "Muon_Py", "pz": "Muon_Pz", "e": "Muon_E"},
                "outputs": {"mass": "mMuMu"},
            }
        },
    ],
    "columns": ["mMuMu", "sumPt2", "leadPx"],
    "range_events": 1000,
}

ZMUMU = {"source": {"generator": "zmumu", "events": 10_000, "seed": 7}, "columns": ["Muon_pt"], "range_events": 2500}

HZZ_YAML = """
range_events: 1.0e+3
columns: [mMuMu, sumPt2, leadPx]
steps:
  - filter: "NMuon>=2"
  - define:
      leadPx: "Muon_Px[ 0 ]"
      sumPt2: "sum(Muon_Px ** 2 + Muon_Py ** 2)"
  - transform:
      outputs: {mass: mMuMu}
      name: leading_pair_mass
      inputs: {e: Muon_E, pz: Muon_Pz, py: Muon_Py, px: Muon_Px}
source: {dataset: "opendata:hzz"}
"""


@pytest.fixture(scope="module")
def catalog(shared_data: Path) -> Catalog:
    cat = Catalog()
    cat.add_dataset("opendata:hzz", shared_data / "uproot-HZZ.root", "events")
    return cat


def test_same_recipe_written_differently_has_the_same_id(catalog: Catalog, tmp_path: Path) -> None:
    base = Recipe.from_dict(HZZ_RECIPE, catalog)
    assert base.id.startswith("vds-") and len(base.id) == 4 + 24
    assert Recipe.from_yaml(HZZ_YAML, catalog).id == base.id
    assert Recipe.from_json(json.dumps(HZZ_RECIPE, indent=3), catalog).id == base.id
    path = tmp_path / "r.yaml"
    path.write_text(HZZ_YAML)
    assert Recipe.from_yaml(path, catalog).id == base.id
    # defaults written out or left out
    g = Recipe.from_dict(ZMUMU)
    defaults = generators.get_generator("zmumu").validate({})
    explicit = {**ZMUMU, "source": {**ZMUMU["source"], "events": 1e4, "params": defaults}}
    assert Recipe.from_dict(explicit).id == g.id
    assert Recipe.from_dict({k: v for k, v in HZZ_RECIPE.items() if k != "range_events"}, catalog).id == Recipe.from_dict(
        {**HZZ_RECIPE, "range_events": vdata.data.recipes.DEFAULT_RANGE_EVENTS}, catalog
    ).id


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r["steps"].__setitem__(0, {"filter": "NMuon >= 3"}),
        lambda r: r.__setitem__("columns", ["mMuMu", "sumPt2"]),
        lambda r: r.__setitem__("range_events", 999),
        lambda r: r["steps"][1]["define"].__setitem__("leadPx", "Muon_Px[1]"),
        lambda r: r["steps"].pop(0),
    ],
)
def test_any_change_of_the_output_changes_the_id(catalog: Catalog, change: object) -> None:
    changed = json.loads(json.dumps(HZZ_RECIPE))
    change(changed)  # type: ignore[operator]
    assert Recipe.from_dict(changed, catalog).id != Recipe.from_dict(HZZ_RECIPE, catalog).id


def test_seed_params_and_generator_version_change_the_id(monkeypatch: pytest.MonkeyPatch) -> None:
    base = Recipe.from_dict(ZMUMU).id
    assert Recipe.from_dict({**ZMUMU, "source": {**ZMUMU["source"], "seed": 8}}).id != base
    assert Recipe.from_dict({**ZMUMU, "source": {**ZMUMU["source"], "params": {"mass": 91.0}}}).id != base
    zmumu = generators.get_generator("zmumu")
    monkeypatch.setitem(generators.GENERATORS, "zmumu", dataclasses.replace(zmumu, version=zmumu.version + ".next"))
    assert Recipe.from_dict(ZMUMU).id != base


def test_more_events_than_uint32_luminosity_blocks_hold_are_refused() -> None:
    source = {**ZMUMU["source"], "events": 2**42}
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict({**ZMUMU, "source": source})
    [problem] = info.value.problems
    assert problem.startswith("source.params: events_per_lumi=1000 numbers event 4398046511103 in luminosityBlock")
    assert problem.endswith("use events_per_lumi >= 1025")
    with pytest.raises(RecipeError, match="events_per_lumi >= 1025"):
        Recipe.from_dict({**ZMUMU, "source": {**source, "params": {"events_per_lumi": 1024}}})
    assert Recipe.from_dict({**ZMUMU, "source": {**source, "params": {"events_per_lumi": 1025}}}).source["events"] == 2**42


def test_transform_code_changes_the_id(catalog: Catalog) -> None:
    source = "def scaled(pt):\n    return pt * 2.0\n"
    recipe = {
        "source": {"generator": "zmumu", "events": 100, "seed": 1},
        "steps": [{"transform": {"name": "scaled", "inputs": {"pt": "Muon_pt"}, "outputs": {"out": "pt2"}}}],
        "columns": ["pt2"],
    }
    catalog.add_transform("scaled", source, {"pt": "jagged"}, {"out": "float64"}, kind="element")
    first = Recipe.from_dict(recipe, catalog).id
    catalog.add_transform("scaled", "def scaled(pt):\n    # twice\n    return pt * 2.0\n", {"pt": "jagged"}, {"out": "float64"}, kind="element")
    assert Recipe.from_dict(recipe, catalog).id == first  # comments do not change the code
    catalog.add_transform("scaled", "def scaled(pt):\n    return pt * 3.0\n", {"pt": "jagged"}, {"out": "float64"}, kind="element")
    assert Recipe.from_dict(recipe, catalog).id != first


def test_dataset_files_are_part_of_the_id(shared_data: Path) -> None:
    a, b = Catalog(), Catalog()
    a.add_dataset("opendata:hzz", shared_data / "uproot-HZZ.root", "events")
    b.add_dataset("opendata:hzz", shared_data / "uproot-HZZ-zstd.root", "events")
    assert Recipe.from_dict(HZZ_RECIPE, a).id != Recipe.from_dict(HZZ_RECIPE, b).id


def test_structural_problems_are_all_reported() -> None:
    bad = {
        "source": {"generator": "zmumu", "events": -5, "seed": "x", "params": {"mass": -1, "nope": 3}},
        "steps": [{"filter": "NMuon >"}, {"explode": 1}, {"define": {"1x": "a"}}],
        "columns": "Muon_pt",
        "range_events": 0,
        "colour": "blue",
    }
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict(bad)
    text = str(info.value)
    for culprit in ("colour", "source.events", "source.seed", "mass", "nope", "steps[0].filter", "steps[1]", "'1x'", "columns", "range_events"):
        assert culprit in text, culprit
    assert len(info.value.problems) >= 10


def test_problems_against_the_catalog_are_all_reported(catalog: Catalog) -> None:
    bad = {
        "source": {"dataset": "opendata:hzz"},
        "steps": [
            {"filter": "Muon_Px > 20"},  # jagged filter without a reduction
            {"define": {"x": "sum(Muon_Pxx)"}},  # unknown column
            {"transform": {"name": "no_such_transform", "inputs": {}, "outputs": {"a": "b"}}},
            {"transform": {"name": "leading_pair_mass", "inputs": {"px": "MET_px", "py": "Muon_Py", "pz": "Muon_Pz", "e": "Muon_E"}, "outputs": {"mass": "m"}}},
        ],
        "columns": ["m", "absent"],
    }
    with pytest.raises(RecipeError) as info:
        vdata.plan(Recipe.from_dict(bad, catalog), catalog)
    text = str(info.value)
    for culprit in ("any() or all()", "Muon_Pxx", "'Muon_Px'", "no_such_transform", "MET_px", "'absent'"):
        assert culprit in text, culprit
    with pytest.raises(RecipeError, match="no dataset 'opendata:nope'.*opendata:hzz"):
        Recipe.from_dict({"source": {"dataset": "opendata:nope"}}, catalog)


def test_a_define_whose_length_does_not_match_is_refused(catalog: Catalog) -> None:
    recipe = Recipe.from_dict({"source": {"dataset": "opendata:hzz"}, "steps": [{"define": {"x": "Muon_Px + Jet_Px"}}], "columns": ["x"]}, catalog)
    with pytest.raises(RecipeError, match="Muon_Px \\+ Jet_Px"):
        vdata.plan(recipe, catalog)
