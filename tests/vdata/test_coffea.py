"""coffea reads vdata's generated events as NanoAOD (issue 14): ``NanoAODSchema`` with its
default options opens the ROOT output of a generated recipe, and what it sees — event ids,
``Muon.pt``, ``Jet.pt``, the dimuon mass of its float32 four-vectors — equals vdata's Arrow."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import awkward as ak
import numpy as np
import pyarrow as pa
import pytest
from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

import vdata
from vdata.formats import read_table, write_table
from vdata.testing import assert_tables_equal

DIMUON = {"transform": {"name": "leading_pair_mass_ptetaphim", "outputs": {"mass": "mMuMu"},
                        "inputs": {"pt": "Muon_pt", "eta": "Muon_eta", "phi": "Muon_phi", "m": "Muon_mass"}}}


def recipe(generator: str, params: dict[str, object], range_events: int = 2000) -> vdata.Recipe:
    steps = [DIMUON] if generator == "zmumu" else []
    source = {"generator": generator, "events": 6000, "seed": 14, "params": params}
    return vdata.Recipe.from_dict({"source": source, "steps": steps, "range_events": range_events})


@contextmanager
def coffea_warnings_we_expect(present: set[str]) -> Iterator[None]:
    """coffea warns once for each cross-reference of full NanoAOD (``Muon_jetIdx => Jet``, ...)
    the file does not have; those exact messages, and nothing else, are expected."""
    with warnings.catch_warnings():
        for indexer, target in NanoAODSchema.all_cross_references.items():
            if indexer not in present:
                message = f"Missing cross-reference index for {indexer} => {target}"
                warnings.filterwarnings("ignore", message=re.escape(message) + r"\Z", category=RuntimeWarning)
        yield


def open_with_coffea(path: Path, columns: list[str]) -> ak.Array:
    with coffea_warnings_we_expect(set(columns)):
        return NanoEventsFactory.from_root({str(path): "Events"}, schemaclass=NanoAODSchema).events()


@pytest.fixture(scope="module")
def zmumu(tmp_path_factory: pytest.TempPathFactory) -> tuple[pa.Table, ak.Array]:
    """Range 1 (events 2000..3999) of a zmumu recipe with extra jets: vdata's Arrow table, and
    coffea's events from vdata's ROOT output of the same range."""
    catalog = vdata.Catalog()
    table = vdata.materialize(vdata.plan(recipe("zmumu", {"extra_jets": 2.0}), catalog), 1, catalog)
    arrow = read_table(write_table(table, tmp_path_factory.mktemp("coffea") / "range.arrow", "arrow"), "arrow")
    root = write_table(table, tmp_path_factory.mktemp("coffea") / "range.root", "root")
    return arrow, open_with_coffea(root, table.column_names)


def test_coffea_sees_nanoaod_collections_and_event_ids(zmumu: tuple[pa.Table, ak.Array]) -> None:
    arrow, events = zmumu
    assert set(events.fields) == {"run", "luminosityBlock", "event", "Muon", "Jet", "mMuMu"}
    assert events.event.to_numpy().tolist() == list(range(2000, 4000))  # the global event index
    for name, dtype in (("run", np.uint32), ("luminosityBlock", np.uint32), ("event", np.uint64)):
        values = ak.to_numpy(events[name])
        assert values.dtype == dtype and arrow.schema.field(name).type == pa.from_numpy_dtype(dtype), name
        assert (values == arrow[name].to_numpy()).all(), name
    assert set(ak.to_numpy(events.luminosityBlock).tolist()) == {3, 4}  # 1 + event // 1000
    assert arrow.schema.field("nMuon").type == pa.uint32() and arrow.schema.field("nJet").type == pa.uint32()


def test_coffea_muons_and_jets_equal_vdata_arrow(zmumu: tuple[pa.Table, ak.Array]) -> None:
    arrow, events = zmumu
    assert ak.to_list(events.Muon.pt) == arrow["Muon_pt"].to_pylist()
    assert ak.to_list(events.Muon.charge) == arrow["Muon_charge"].to_pylist()
    assert ak.to_list(events.Jet.pt) == arrow["Jet_pt"].to_pylist()
    assert ak.to_list(ak.num(events.Muon)) == arrow["nMuon"].to_pylist()
    assert ak.sum(ak.num(events.Jet)) > 3000  # extra jets were there to compare
    counts = set(ak.to_list(ak.num(events.Muon)))
    assert counts == {0, 1, 2}  # muons outside the acceptance are dropped
    assert ak.all(abs(events.Muon.eta) < 2.4) and ak.all(events.Muon.pt > 3.0)


def test_coffea_dimuon_mass_in_float32_equals_vdata(zmumu: tuple[pa.Table, ak.Array]) -> None:
    arrow, events = zmumu
    two = ak.to_numpy(ak.num(events.Muon) == 2)
    muons = events.Muon[two]
    coffea_mass = ak.to_numpy((muons[:, 0] + muons[:, 1]).mass)
    assert coffea_mass.dtype == np.float32 and len(coffea_mass) > 1000
    ours = arrow["mMuMu"].to_numpy()
    np.testing.assert_allclose(coffea_mass, ours[two], rtol=1e-4)
    assert np.isnan(ours[~two]).all()  # fewer than two muons: no pair
    assert (ak.to_numpy(events.mMuMu)[two] == ours[two]).all()  # the derived column itself, as written


def test_root_output_reads_back_as_the_arrow_table(zmumu: tuple[pa.Table, ak.Array], tmp_path: Path) -> None:
    """uproot writes counters as int32; vdata restores uint32 (and keeps uint32/uint64 ids) on read."""
    arrow, _ = zmumu
    back = read_table(write_table(arrow, tmp_path / "again.root", "root"), "root")
    assert back.schema.equals(arrow.schema)
    assert_tables_equal(back, arrow, what="zmumu read back from ROOT")  # mMuMu's NaNs compare equal


def test_coffea_opens_multijet_with_default_parameters(tmp_path: Path) -> None:
    catalog = vdata.Catalog()
    table = vdata.materialize(vdata.plan(recipe("multijet", {}), catalog), 2, catalog)
    events = open_with_coffea(write_table(table, tmp_path / "jets.root", "root"), table.column_names)
    assert set(events.fields) == {"run", "luminosityBlock", "event", "Jet"}
    assert ak.to_list(events.Jet.pt) == table["Jet_pt"].to_pylist() and len(events) == 2000
    assert events.event.to_numpy().tolist() == list(range(4000, 6000))
    assert ak.all(events.Jet.pt > 20.0) and ak.all(abs(events.Jet.eta) <= 2.5)


@pytest.mark.parametrize("generator", ["zmumu", "multijet"])
def test_event_ids_are_the_same_for_any_range_split(generator: str) -> None:
    catalog = vdata.Catalog()
    params = {"run": 7, "events_per_lumi": 250}
    ids = {}
    for size in (6000, 1000, 700):
        the_plan = vdata.plan(recipe(generator, params, size), catalog)
        tables = [vdata.materialize(the_plan, i, catalog) for i in range(len(the_plan.ranges))]
        ids[size] = pa.concat_tables(tables).select(["run", "luminosityBlock", "event"])
    assert ids[1000].equals(ids[6000]) and ids[700].equals(ids[6000])
    event = ids[6000]["event"].to_numpy()
    assert (event == np.arange(6000)).all()
    assert (ids[6000]["luminosityBlock"].to_numpy() == 1 + event // 250).all()
    assert (ids[6000]["run"].to_numpy() == 7).all()
