"""A range's provenance without the service: what it records, which parts its id covers, and
the id in Parquet and ROOT files."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import uproot

from vdata import Catalog, Recipe
from vdata.checksum import adler32_hex, file_adler32
from vdata.data.plans import plan
from vdata.formats import PROVENANCE_KEY, encode_table, read_table, write_encoded
from vdata.provenance import RUN_FIELDS, describe, made, provenance_id, text

GENERATED = {"source": {"generator": "zmumu", "events": 3000, "seed": 5}, "range_events": 1000}
SCALE = "def scale(x):\n    return 2.0 * x\n"


def hzz(shared_data: Path) -> tuple[Catalog, Recipe]:
    catalog = Catalog()
    catalog.add_dataset("opendata:hzz", shared_data / "uproot-HZZ.root", "events")
    catalog.add_transform("scale", SCALE, {"x": "flat"}, {"y": "float64"}, "element")
    recipe = Recipe.from_dict({
        "source": {"dataset": "opendata:hzz"},
        "steps": [{"transform": {"name": "scale", "inputs": {"x": "MET_px"}, "outputs": {"y": "met2"}}}],
        "columns": ["met2", "NMuon"], "range_events": 400}, catalog)
    return catalog, recipe


def test_a_source_range_names_its_file_checksum_window_and_transform_code(shared_data: Path) -> None:
    catalog, recipe = hzz(shared_data)
    record = describe(plan(recipe, catalog), 2, catalog)
    path = shared_data / "uproot-HZZ.root"
    size, checksum = file_adler32(path)
    the_range = plan(recipe, catalog).range(2)
    assert record["inputs"] == [{"path": str(path), "tree": "events", "size": size, "adler32": adler32_hex(checksum),
                                 "entry_start": the_range.first, "entry_stop": the_range.stop}]
    assert record["transforms"] == [{"name": "scale", "code": catalog.transform("scale").code_hash}]
    assert record["generator"] is None
    assert record["recipe_id"] == recipe.id and record["recipe"] == recipe.to_dict()
    assert record["range"] == {"index": 2, "first": the_range.first, "stop": the_range.stop}
    assert set(record["versions"]) == {"vdata", "uproot", "awkward", "numba", "numpy", "pyarrow", "ray"}
    assert record["versions"]["pyarrow"] == pa.__version__ and record["versions"]["uproot"] == uproot.__version__


def test_a_generated_range_names_its_generator_and_the_id_covers_what_made_the_bytes() -> None:
    catalog = Catalog()
    recipe = Recipe.from_dict(GENERATED, catalog)
    record = describe(plan(recipe, catalog), 1, catalog)
    assert record["generator"] == {"name": "zmumu", "version": recipe.source["version"], "seed": 5,
                                   "params": recipe.source["params"]}
    assert record["inputs"] == [] and record["transforms"] == []
    assert record["id"].startswith("prov-") and record["id"] == provenance_id(record)
    assert describe(plan(recipe, catalog), 1, catalog) == record  # the same every time
    other_range = describe(plan(recipe, catalog), 2, catalog)
    other_seed = describe(plan(Recipe.from_dict({**GENERATED, "source": {**GENERATED["source"], "seed": 6}}), catalog),
                          1, catalog)
    assert len({record["id"], other_range["id"], other_seed["id"]}) == 3
    upgraded = {**record, "versions": {**record["versions"], "numba": "0.0.1"}}
    assert provenance_id(upgraded) != record["id"]  # a library upgrade is another id (module docstring)
    ran = made(record, started=1_700_000_000.0, seconds=0.25)
    assert provenance_id(ran) == record["id"] and set(ran) - set(record) == set(RUN_FIELDS) - {"ray_node_id"}
    assert "generator zmumu" in text(ran) and record["id"] in text(ran) and "2023-11-14T22:13:20" in text(ran)


def test_parquet_and_root_carry_the_id_and_arrow_stays_as_it_was(tmp_path: Path) -> None:
    table = pa.table({"x": [1.0, 2.0, 3.0], "Muon_pt": [[1.0], [], [2.0, 3.0]]})
    body = encode_table(table, "parquet", provenance="prov-abc")
    assert pq.read_metadata(io.BytesIO(body)).metadata[PROVENANCE_KEY.encode()] == b"prov-abc"
    assert pq.read_table(io.BytesIO(body)).equals(table)
    assert PROVENANCE_KEY.encode() not in (pq.read_metadata(io.BytesIO(encode_table(table, "parquet"))).metadata or {})
    root = write_encoded(table, tmp_path / "r.root", "root", provenance="prov-abc")
    with uproot.open(root) as f:
        assert str(f[PROVENANCE_KEY]) == "prov-abc"
    assert read_table(root).equals(table)
    assert encode_table(table, "arrow", provenance="prov-abc") == encode_table(table, "arrow")
