"""Source datasets read real ROOT files exactly: every column of every range equals uproot."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import awkward as ak
import pyarrow as pa
import pytest
import uproot
from realdata import EVENT_TREES

import vdata
from vdata.testing import assert_tables_equal


@pytest.fixture(scope="module")
def trees(shared_data: Path) -> Iterator[dict[tuple[str, str], Any]]:
    """uproot's own tree objects, opened once per file (opening PHYSLITE costs seconds)."""
    files: dict[str, Any] = {}
    opened: dict[tuple[str, str], Any] = {}

    def get(name: str, tree: str) -> Any:
        if (name, tree) not in opened:
            if name not in files:
                files[name] = uproot.open(shared_data / name, array_cache=None)
            opened[name, tree] = files[name][tree]
        return opened[name, tree]

    yield get  # type: ignore[misc]
    for f in files.values():
        f.close()


def direct(tree: Any, start: int, stop: int, **kwargs: object) -> pa.Table:
    """uproot's own read of the same entries, converted as the issue specifies."""
    return ak.to_arrow_table(tree.arrays(entry_start=start, entry_stop=stop, **kwargs), extensionarray=False)


def targets(n: int, columns: int) -> list[int]:
    """Several range sizes: ranges smaller than a cluster, groups of clusters, one range.

    Trees with hundreds of columns (NanoAOD, PHYSLITE) get thirds and the whole: each read of
    them costs a second or more (a PHYSLITE RNTuple several); thirds still split the file.
    """
    if columns >= 500:
        return sorted({n // 3 + 1, n})
    return sorted({max(1, n // 13), n // 3 + 1, n})


@pytest.mark.parametrize(("name", "tree", "entries"), EVENT_TREES, ids=[f"{n}:{t}" for n, t, _ in EVENT_TREES])
def test_every_range_equals_uproot(shared_data: Path, trees: Any, name: str, tree: str, entries: int) -> None:
    path = shared_data / name
    ds = vdata.open_dataset(path, tree)
    assert ds.num_events == entries
    reference = trees(name, tree)
    whole = direct(reference, 0, entries)
    assert ds.schema.equals(whole.schema)
    assert ds.columns == whole.column_names
    for target in targets(entries, len(ds.columns)):
        ranges = ds.ranges(target)
        assert sum(r.num_events for r in ranges) == entries
        for r in ranges:
            expected = direct(reference, r.first, r.stop) if entries <= 100_000 else whole.slice(r.first, r.num_events)
            assert_tables_equal(ds.read(r), expected, what=f"{name}:{tree} {r}")


def test_file_facts(shared_data: Path) -> None:
    path = shared_data / "uproot-HZZ.root"
    ds = vdata.open_dataset(str(path), "events")
    (f,) = ds.files
    data = path.read_bytes()
    assert f.path == str(path) and f.entries == 2421 and f.size == len(data)
    assert f.adler32 == zlib.adler32(data)
    assert f.clusters == (0, 2421)


def test_schema_types(shared_data: Path) -> None:
    nano = vdata.open_dataset(shared_data / "nanoAOD_2015_CMS_Open_Data_ttbar.root", "Events")
    assert pa.types.is_unsigned_integer(nano.schema.field("run").type)
    assert pa.types.is_boolean(nano.schema.field("Flag_HBHENoiseFilter").type)
    muon_pt = nano.schema.field("Muon_pt").type
    assert pa.types.is_large_list(muon_pt) and pa.types.is_float32(muon_pt.value_type)
    physlite = vdata.open_dataset(shared_data / "uproot-physlite-rntuple_v1-0-0-0.root", "EventData")
    assert any(pa.types.is_struct(f.type) for f in physlite.schema)
    tag = vdata.open_dataset(shared_data / "uproot-physlite-rntuple_v1-0-0-0.root", "EventTag")
    assert pa.types.is_large_string(tag.schema.field("Token").type)


def test_several_files_form_one_dataset(shared_data: Path, trees: Any) -> None:
    names = ["uproot-HZZ.root", "uproot-HZZ-lz4.root", "uproot-HZZ-zstd.root"]
    ds = vdata.open_dataset([shared_data / n for n in names], "events")
    assert ds.num_events == 3 * 2421
    ranges = ds.ranges(1000)
    assert [r.index for r in ranges] == list(range(len(ranges)))
    starts = [0, 2421, 4842, 7263]
    for r in ranges:
        file = max(i for i in range(3) if starts[i] <= r.first)
        assert r.stop <= starts[file + 1]
        expected = direct(trees(names[file], "events"), r.first - starts[file], r.stop - starts[file])
        assert_tables_equal(ds.read(r, ["Muon_*", "NMuon"]), expected.select(ds.resolve(["Muon_*", "NMuon"])))


def test_columns_by_name_and_glob(shared_data: Path, trees: Any) -> None:
    ds = vdata.open_dataset(shared_data / "uproot-HZZ.root", "events")
    r = ds.ranges(500)[2]
    table = ds.read(r, ["MET_px", "Muon_P*"])
    assert table.column_names == ["MET_px", "Muon_Px", "Muon_Py", "Muon_Pz"]
    assert table.num_rows == r.num_events
    expected = direct(trees("uproot-HZZ.root", "events"), r.first, r.stop, filter_name=["MET_px", "Muon_P*"])
    assert_tables_equal(table, expected.select(table.column_names))
    assert ds.read(r, "NJet").column_names == ["NJet"]


def test_column_names_with_brackets_are_names_not_patterns(shared_data: Path) -> None:
    ds = vdata.open_dataset(shared_data / "uproot-nesteddirs.root", "three/tree")
    table = ds.read(ds.ranges(1000)[0], ["ArrayI16[10]"])
    assert table.column_names == ["ArrayI16[10]"]
    assert pa.types.is_fixed_size_list(table.schema.field(0).type)


# -- errors ----------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.root"
    with pytest.raises(vdata.SourceFileNotFound, match="nope.root") as info:
        vdata.open_dataset(missing, "Events")
    assert isinstance(info.value, FileNotFoundError)


def test_not_a_root_file(shared_data: Path) -> None:
    with pytest.raises(vdata.NotARootFile, match="README.md"):
        vdata.open_dataset(shared_data / "README.md", "Events")


def test_unknown_tree_lists_the_trees(shared_data: Path) -> None:
    with pytest.raises(vdata.TreeNotFound) as info:
        vdata.open_dataset(shared_data / "uproot-nesteddirs.root", "tree")
    message = str(info.value)
    for tree in ("one/two/tree", "one/tree", "three/tree"):
        assert repr(tree) in message
    assert isinstance(info.value, KeyError)


def test_unknown_column_lists_close_matches(shared_data: Path) -> None:
    ds = vdata.open_dataset(shared_data / "uproot-HZZ.root", "events")
    with pytest.raises(vdata.ColumnNotFound) as info:
        ds.read(ds.ranges(5000)[0], ["Muon_PX"])
    assert "'Muon_PX'" in str(info.value) and "'Muon_Px'" in str(info.value)
    with pytest.raises(vdata.ColumnNotFound, match="Tau_"):
        ds.read(ds.ranges(5000)[0], ["Tau_*"])


def test_range_out_of_bounds(shared_data: Path) -> None:
    ds = vdata.open_dataset(shared_data / "uproot-HZZ.root", "events")
    with pytest.raises(vdata.RangeOutOfBounds, match=r"\[2000, 3000\).*2421"):
        ds.read(vdata.EventRange(0, 2000, 3000))
    two = vdata.open_dataset([shared_data / "uproot-HZZ.root", shared_data / "uproot-HZZ-lz4.root"], "events")
    with pytest.raises(vdata.RangeOutOfBounds, match="spans two files"):
        two.read(vdata.EventRange(0, 2400, 2500))


def test_uninterpretable_column_is_named_and_the_others_still_read(shared_data: Path, trees: Any) -> None:
    ds = vdata.open_dataset(shared_data / "uproot-nesteddirs.root", "three/tree")
    r = ds.ranges(40)[1]
    with pytest.raises(vdata.UninterpretableColumn) as info:
        ds.read(r, ["I32", "evt"])
    assert "'evt'" in str(info.value) and "Event" in str(info.value)
    assert info.value.column == "evt"
    assert_tables_equal(ds.read(r, ["I32"]), direct(trees("uproot-nesteddirs.root", "three/tree"), r.first, r.stop, filter_name="I32"))
    assert ds.read(r).num_columns == 41


def test_tree_whose_only_column_cannot_be_read(shared_data: Path) -> None:
    ds = vdata.open_dataset(shared_data / "uproot-physlite-rntuple_v1-0-0-0.root", "MetaDataHdr")
    assert ds.columns == []
    assert ds.unreadable == {"DataHeader": "DataHeader_p6"}
    with pytest.raises(vdata.UninterpretableColumn, match="DataHeader_p6"):
        ds.read(ds.ranges(10)[0], "DataHeader")


def test_files_with_other_columns_do_not_mix(shared_data: Path) -> None:
    with pytest.raises(vdata.SchemaMismatch, match="uproot-Zmumu.root"):
        vdata.open_dataset([shared_data / "uproot-HZZ.root", shared_data / "uproot-Zmumu.root"], "events")


def test_a_dataset_pickles_without_its_open_files(shared_data: Path) -> None:
    import pickle

    ds = vdata.open_dataset(shared_data / "uproot-Zmumu.root", "events")
    r = ds.ranges(1000)[1]
    before = ds.read(r)
    copy = pickle.loads(pickle.dumps(ds))
    assert_tables_equal(copy.read(r), before)
