"""The README's "Reading vdata's outputs" block, run as written on the files a fetch writes: each
reader's line works and gives the values vdata materialized (issue 14)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import awkward as ak
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from coffea.nanoevents import NanoAODSchema

import vdata
from vdata.formats import write_table
from vdata.testing import assert_tables_equal

README = Path(__file__).resolve().parents[1] / "README.md"
RECIPE = {
    "source": {"generator": "zmumu", "events": 3000, "seed": 5, "params": {"extra_jets": 1.5}},
    "steps": [{"transform": {"name": "leading_pair_mass_ptetaphim", "outputs": {"mass": "mMuMu"},
                             "inputs": {"pt": "Muon_pt", "eta": "Muon_eta", "phi": "Muon_phi", "m": "Muon_mass"}}},
              {"define": {"leadMuonPt": "Muon_pt[0]"}}],
    "range_events": 1000,
}  # fmt: skip


def readers_block() -> str:
    text = README.read_text()
    section = text[text.index("## Reading vdata's outputs"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def ranges(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[pa.Table]]:
    """A folder laid out as `vdata fetch` writes it (range-NNNNN.<format>), three formats;
    ROOT cannot hold the nulls of ``leadMuonPt``, so the ROOT files leave that column out."""
    root = tmp_path_factory.mktemp("readers")
    (root / "ranges").mkdir()
    catalog = vdata.Catalog()
    the_plan = vdata.plan(vdata.Recipe.from_dict(RECIPE), catalog)
    tables = [vdata.materialize(the_plan, i, catalog) for i in range(len(the_plan.ranges))]
    for i, table in enumerate(tables):
        for fmt in ("arrow", "parquet"):
            write_table(table, root / "ranges" / f"range-{i:05d}.{fmt}", fmt)
        write_table(table.drop_columns(["leadMuonPt"]), root / "ranges" / f"range-{i:05d}.root", "root")
    return root, tables


def test_every_reader_line_runs_and_agrees(ranges: tuple[Path, list[pa.Table]], monkeypatch: pytest.MonkeyPatch) -> None:
    folder, tables = ranges
    everything = pa.concat_tables(tables)
    first = tables[0]
    monkeypatch.chdir(folder)
    scope: dict[str, object] = {}
    with warnings.catch_warnings():  # coffea's one warning per cross-reference the file lacks
        for indexer, target in NanoAODSchema.all_cross_references.items():
            message = re.escape(f"Missing cross-reference index for {indexer} => {target}") + r"\Z"
            warnings.filterwarnings("ignore", message=message, category=RuntimeWarning)
        exec(compile(readers_block(), "README.md", "exec"), scope)  # noqa: S102 - the README's own lines

    pt = first["Muon_pt"].to_pylist()
    assert ak.to_list(scope["events"]["Muon_pt"]) == pt  # type: ignore[index]
    assert ak.to_list(scope["arrays"]["leadMuonPt"]) == first["leadMuonPt"].to_pylist()  # type: ignore[index]
    ev = scope["ev"]
    assert ak.to_list(ev.Muon.pt) == pt  # type: ignore[attr-defined]
    assert np.array_equal(ak.to_numpy(ev.event), first["event"].to_numpy())  # type: ignore[attr-defined]
    assert_tables_equal(scope["table"], first)  # type: ignore[arg-type]
    lead = everything["leadMuonPt"]
    assert scope["frame"].item() == pytest.approx(pc.mean(lead).as_py(), rel=1e-12)  # type: ignore[attr-defined]
    two = pc.equal(everything["nMuon"], 2)
    assert scope["mean"] == pytest.approx(pc.mean(everything["mMuMu"].filter(two)).as_py(), rel=1e-12)
    assert scope["counts"] == (len(lead) - lead.null_count, everything.num_rows)
    assert everything["leadMuonPt"].null_count > 0  # the nulls the README speaks of are there
