"""Nulls where data are missing, through recipes and formats: ``Muon_pt[0]`` of an event
without muons is null (not NaN) and keeps its type; DuckDB's SQL aggregates over the output
give what an analyst expects; Parquet keeps the nulls; ROOT refuses them naming the column
unless the recipe fills them with ``fill_null``."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uproot

import vdata
from vdata import Catalog, Recipe
from vdata.errors import FormatError
from vdata.formats import read_table, write_table

NANO = "nanoAOD_2015_CMS_Open_Data_ttbar.root"


@pytest.fixture(scope="module")
def catalog(shared_data: Path) -> Catalog:
    cat = Catalog()
    cat.add_dataset("cms:ttbar", shared_data / NANO, "Events")
    return cat


@pytest.fixture(scope="module")
def muons(shared_data: Path) -> ak.Array:
    with uproot.open(shared_data / NANO) as f:
        return f["Events"].arrays(["Muon_pt", "Muon_charge", "Jet_pt"])


def _table(catalog: Catalog, steps: list[dict[str, object]], columns: list[str]) -> pa.Table:
    recipe = Recipe.from_dict({"source": {"dataset": "cms:ttbar"}, "steps": steps, "columns": columns,
                               "range_events": 70}, catalog)  # fmt: skip
    the_plan = vdata.plan(recipe, catalog)
    assert len(the_plan.ranges) > 1  # ranges concatenated: each carries its own nulls
    return pa.concat_tables([vdata.materialize(the_plan, i, catalog) for i in range(len(the_plan.ranges))])


LEAD = [{"define": {"lead_mu_pt": "Muon_pt[0]", "lead_mu_charge": "Muon_charge[0]", "second_jet_pt": "Jet_pt[1]"}}]


@pytest.fixture(scope="module")
def lead(catalog: Catalog) -> pa.Table:
    return _table(catalog, LEAD, ["lead_mu_pt", "lead_mu_charge", "second_jet_pt"])


def test_index_past_the_end_is_null_of_the_element_type(lead: pa.Table, muons: ak.Array) -> None:
    schema = lead.schema
    assert schema.field("lead_mu_pt").type == pa.float64() and schema.field("lead_mu_pt").nullable
    assert schema.field("lead_mu_charge").type == pa.int64()  # int stays int
    expected = ak.firsts(muons.Muon_pt)  # awkward's own answer: None where there is no muon
    assert 0 < lead["lead_mu_pt"].null_count == int(ak.sum(ak.is_none(expected))) < lead.num_rows
    assert lead["lead_mu_charge"].to_pylist() == ak.to_list(ak.firsts(muons.Muon_charge))
    got = lead["lead_mu_pt"].to_pylist()
    want = ak.to_list(expected)
    assert [g is None for g in got] == [w is None for w in want]
    np.testing.assert_allclose([g for g in got if g is not None], [w for w in want if w is not None], rtol=1e-7)


def test_duckdb_aggregates_skip_the_nulls(lead: pa.Table, muons: ak.Array, tmp_path: Path) -> None:
    write_table(lead, tmp_path / "lead.parquet", "parquet")
    first = ak.to_numpy(ak.drop_none(ak.firsts(muons.Muon_pt))).astype(np.float64)
    charge = ak.to_numpy(ak.drop_none(ak.firsts(muons.Muon_charge)))
    query = ("select sum(lead_mu_pt), count(lead_mu_pt), count(*), avg(lead_mu_pt), sum(lead_mu_charge), "
             "typeof(sum(lead_mu_charge)), min(second_jet_pt) from {}")  # fmt: skip
    con = duckdb.connect()
    con.register("lead", lead)
    for source in ("lead", f"read_parquet('{tmp_path / 'lead.parquet'}')"):
        total, counted, rows, mean, charges, charge_type, jet = con.execute(query.format(source)).fetchone()
        assert rows == len(muons) and counted == len(first) < rows  # count(col) skips nulls, count(*) does not
        assert total == pytest.approx(first.sum(), rel=1e-12) and not np.isnan(total)
        assert mean == pytest.approx(first.mean(), rel=1e-12)
        assert charges == int(charge.sum()) and charge_type in ("HUGEINT", "INT128", "BIGINT")
        assert jet == pytest.approx(float(np.min(ak.to_numpy(ak.drop_none(ak.firsts(muons.Jet_pt[:, 1:]))))))
    con.close()


def test_parquet_and_arrow_keep_the_nulls(lead: pa.Table, tmp_path: Path) -> None:
    for fmt in ("parquet", "arrow"):
        back = read_table(write_table(lead, tmp_path / f"lead.{fmt}", fmt), fmt)
        assert back.schema == lead.schema, fmt
        assert back.equals(lead), fmt
    assert pq.read_table(tmp_path / "lead.parquet")["lead_mu_pt"].null_count == lead["lead_mu_pt"].null_count


def test_root_refuses_nulls_naming_the_column_and_takes_a_stated_fill(
    catalog: Catalog, lead: pa.Table, muons: ak.Array, tmp_path: Path,
) -> None:
    with pytest.raises(FormatError, match="column 'lead_mu_pt' has missing values.*fill_null"):
        write_table(lead.select(["lead_mu_pt"]), tmp_path / "lead.root", "root")
    filled = _table(catalog, [*LEAD, {"define": {"lead_pt": "fill_null(lead_mu_pt, -1)"}}], ["lead_pt"])
    assert filled.schema.field("lead_pt").type == pa.float64() and not filled.schema.field("lead_pt").nullable
    back = read_table(write_table(filled, tmp_path / "filled.root", "root"), "root")
    first = ak.firsts(ak.values_astype(muons.Muon_pt, np.float64))
    assert back["lead_pt"].to_pylist() == ak.to_list(ak.fill_none(first, -1.0))


def test_null_columns_through_later_steps(catalog: Catalog, muons: ak.Array) -> None:
    """A filter on a null drops the event (SQL's WHERE); a later define sees the nulls."""
    steps = [*LEAD, {"filter": "lead_mu_pt > 20 or isnull(second_jet_pt)"},
             {"define": {"has_jet2": "not isnull(second_jet_pt)", "ratio": "second_jet_pt / lead_mu_pt"}}]  # fmt: skip
    table = _table(catalog, steps, ["lead_mu_pt", "has_jet2", "ratio"])
    lead_pt, n_jets = ak.firsts(muons.Muon_pt), ak.num(muons.Jet_pt)
    keep = ak.to_numpy(ak.fill_none(lead_pt > 20, False) | (n_jets < 2))
    assert table.num_rows == int(keep.sum())
    assert table["has_jet2"].to_pylist() == ak.to_list(n_jets[keep] >= 2)
    assert table["ratio"].null_count == int(np.sum(ak.to_numpy(ak.is_none(lead_pt[keep]) | (n_jets[keep] < 2))))


def test_a_transform_refuses_a_column_that_can_be_null(catalog: Catalog) -> None:
    catalog.add_transform("twice", "def twice(x):\n    return 2.0 * x\n", {"x": "flat"}, {"y": "float64"}, "element")
    steps = [*LEAD, {"transform": {"name": "twice", "inputs": {"x": "lead_mu_pt"}, "outputs": {"y": "y"}}}]
    recipe = Recipe.from_dict({"source": {"dataset": "cms:ttbar"}, "steps": steps}, catalog)
    with pytest.raises(vdata.RecipeError, match=r"column 'lead_mu_pt' \(\?float64\) can be null.*fill_null"):
        vdata.plan(recipe, catalog)
    steps[0] = {"define": {"lead_mu_pt": "fill_null(Muon_pt[0], 0)"}}
    table = vdata.materialize(Recipe.from_dict({"source": {"dataset": "cms:ttbar"}, "steps": steps,
                                                "columns": ["y"]}, catalog), 0, catalog)  # fmt: skip
    assert table["y"].null_count == 0 and table.num_rows == 200
