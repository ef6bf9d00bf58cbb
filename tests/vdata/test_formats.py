"""Arrow, Parquet and ROOT output read back equal to the input; ROOT keeps NanoAOD naming; Arrow files are
IPC files (HTTP bodies streams), compressed if asked; the format follows the file's extension."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import uproot
from realdata import EVENT_TREES

import vdata
from vdata.formats import arrow_file_bytes, encode_table, format_for_path, write_encoded
from vdata.testing import assert_tables_equal

# ROOT TTrees hold numbers, booleans, strings and lists of numbers; these trees have more.
NOT_FOR_TTREE = {"three/tree", "EventData", "EventTag"}


@pytest.fixture(scope="module")
def first_ranges(shared_data: Path) -> dict[str, pa.Table]:
    tables = {}
    for name, tree, _ in EVENT_TREES:
        ds = vdata.open_dataset(shared_data / name, tree)
        tables[f"{name}:{tree}"] = ds.read(ds.ranges(1500)[0])
    return tables


@pytest.mark.parametrize("fmt", ["arrow", "parquet"])
def test_columnar_formats_round_trip_every_tree(first_ranges: dict[str, pa.Table], tmp_path: Path, fmt: str) -> None:
    for key, table in first_ranges.items():
        if fmt == "parquet" and key.endswith(":EventData"):
            continue  # has structs with no fields, which Parquet cannot hold: see the test below
        path = vdata.write_table(table, tmp_path / f"out.{fmt}", fmt)
        assert_tables_equal(vdata.read_table(path, fmt), table, what=f"{key} as {fmt}")
        if fmt == "arrow":  # a file; the client turns the HTTP body (a stream) into the same bytes
            assert path.read_bytes() == arrow_file_bytes(encode_table(table, fmt)).to_pybytes()


def test_root_round_trips_every_tree_it_can_hold(first_ranges: dict[str, pa.Table], tmp_path: Path) -> None:
    written = 0
    for key, table in first_ranges.items():
        if key.rsplit(":", 1)[1] in NOT_FOR_TTREE:
            continue
        path = vdata.write_table(table, tmp_path / "out.root", "root")
        assert_tables_equal(vdata.read_table(path, "root"), table, what=f"{key} as root")
        written += 1
    assert written == len(first_ranges) - len(NOT_FOR_TTREE)


def test_root_output_keeps_nanoaod_naming(first_ranges: dict[str, pa.Table], tmp_path: Path) -> None:
    table = first_ranges["nanoAOD_2015_CMS_Open_Data_ttbar.root:Events"]
    path = vdata.write_table(table, tmp_path / "nano.root", "root")
    with uproot.open(path) as f:
        tree = f["Events"]
        assert set(tree.keys()) == set(table.column_names)
        # a NanoAOD reader: jagged muons counted by nMuon
        muon = tree.arrays(["nMuon", "Muon_pt"])
        assert muon["nMuon"].tolist() == [len(x) for x in muon["Muon_pt"].tolist()]
        assert tree["Muon_pt"].count_branch.name == "nMuon"
    # HZZ counts its muons with NMuon: that counter is reused, not doubled with an nMuon
    hzz = first_ranges["uproot-HZZ.root:events"]
    path = vdata.write_table(hzz, tmp_path / "hzz.root", "root")
    with uproot.open(path) as f:
        assert f["Events"]["Muon_Px"].count_branch.name == "NMuon"
        assert "nMuon" not in f["Events"].keys()


def test_generated_collections_get_counters(tmp_path: Path) -> None:
    table = pa.table(
        {
            "Jet_pt": pa.array([[1.0, 2.0], [], [3.0]], pa.large_list(pa.float32())),
            "Jet_eta": pa.array([[0.1, 0.2], [], [0.3]], pa.large_list(pa.float32())),
            "tracks": pa.array([[1], [2, 3], []], pa.large_list(pa.int64())),
            "weight": pa.array([1.0, 0.5, 2.0]),
            "label": pa.array(["a", "bc", ""], pa.large_string()),
        }
    )
    path = vdata.write_table(table, tmp_path / "gen.root", "root")
    with uproot.open(path) as f:
        assert set(f["Events"].keys()) == {"nJet", "Jet_pt", "Jet_eta", "ntracks", "tracks", "weight", "label"}
    assert_tables_equal(vdata.read_table(path, "root"), table)


@pytest.mark.parametrize("fmt", ["arrow", "parquet", "root"])
def test_empty_table_round_trips(tmp_path: Path, fmt: str) -> None:
    table = pa.table({"x": pa.array([], pa.float64()), "n": pa.array([], pa.int32())})
    assert_tables_equal(vdata.read_table(vdata.write_table(table, tmp_path / f"e.{fmt}", fmt), fmt), table)


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(vdata.FormatError, match="'csv'"):
        vdata.write_table(pa.table({"x": [1]}), tmp_path / "x.csv", "csv")


def test_root_refuses_what_a_ttree_cannot_hold_and_names_the_column(
    first_ranges: dict[str, pa.Table], tmp_path: Path
) -> None:
    table = first_ranges["uproot-nesteddirs.root:three/tree"]
    with pytest.raises(vdata.FormatError, match="'StlVecStr'"):
        vdata.write_table(table, tmp_path / "x.root", "root")
    assert not (tmp_path / "x.root").exists()  # refused before anything is written


def test_parquet_refuses_empty_structs_and_names_the_column(first_ranges: dict[str, pa.Table], tmp_path: Path) -> None:
    table = first_ranges["uproot-physlite-rntuple_v1-0-0-0.root:EventData"]
    with pytest.raises(vdata.FormatError, match="EventInfoAux:"):
        vdata.write_table(table, tmp_path / "x.parquet", "parquet")


def test_root_refuses_missing_values(tmp_path: Path) -> None:
    table = pa.table({"ok": [1.0, 2.0], "Jet_pt": pa.array([[1.0, None], []], pa.large_list(pa.float64()))})
    with pytest.raises(vdata.FormatError, match="'Jet_pt' has missing values"):
        vdata.write_table(table, tmp_path / "x.root", "root")


def test_32_bit_lists_write_to_root(tmp_path: Path) -> None:
    table = pa.table({"Muon_pt": pa.array([[1.0, 2.0], [3.0], []], pa.list_(pa.float32()))})
    back = vdata.read_table(vdata.write_table(table, tmp_path / "l.root", "root"), "root")
    assert back.column("Muon_pt").to_pylist() == [[1.0, 2.0], [3.0], []]
    assert back.schema.equals(table.schema)


def test_parquet_keeps_arrow_list_item_names(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    table = pa.table({"x": pa.array([[1.0], []], pa.large_list(pa.field("item", pa.float64(), nullable=False)))})
    path = vdata.write_table(table, tmp_path / "x.parquet", "parquet")
    assert pq.ParquetFile(path).schema_arrow.field("x").type.value_field.name == "item"


@pytest.mark.parametrize(("name", "fmt"), [("a.arrow", "arrow"), ("a.feather", "arrow"), ("a.IPC", "arrow"),
                                           ("a.parquet", "parquet"), ("a.pq", "parquet"), ("a.root", "root")])
def test_the_format_follows_the_extension(tmp_path: Path, name: str, fmt: str) -> None:
    assert format_for_path(name) == fmt
    assert format_for_path(name, fmt) == fmt
    table = pa.table({"x": [1.5, 2.5], "n": pa.array([1, 2], pa.int32())})
    assert_tables_equal(vdata.read_table(vdata.write_table(table, tmp_path / name)), table, what=name)


def test_a_format_the_extension_contradicts_is_refused_naming_both(tmp_path: Path) -> None:
    with pytest.raises(vdata.FormatError, match=r"x\.parquet: the extension '\.parquet' says parquet, but the format "
                                                r"asked for is arrow"):
        vdata.write_table(pa.table({"x": [1]}), tmp_path / "x.parquet", "arrow")
    assert not (tmp_path / "x.parquet").exists()
    with pytest.raises(vdata.FormatError, match="says root"):
        vdata.read_table(tmp_path / "x.root", "parquet")


@pytest.mark.parametrize("name", ["x.dat", "x"])
def test_an_unknown_extension_needs_the_format(tmp_path: Path, name: str) -> None:
    with pytest.raises(vdata.FormatError, match=f"{name}: cannot tell the format .*give the format"):
        vdata.write_table(pa.table({"x": [1]}), tmp_path / name)
    table = pa.table({"x": [1]})
    assert_tables_equal(vdata.read_table(vdata.write_table(table, tmp_path / name, "parquet"), "parquet"), table)


def test_arrow_files_are_ipc_files_and_streams_read_too(tmp_path: Path) -> None:
    import pyarrow.feather as feather

    table = pa.table({"Muon_pt": pa.array([[1.0, 2.0], [], [3.0]], pa.large_list(pa.float32())), "n": [2, 0, 1]})
    path = vdata.write_table(table, tmp_path / "x.arrow")
    assert pa.ipc.open_file(path).read_all().equals(table)
    assert feather.read_table(path).equals(table)
    stream = write_encoded(table, tmp_path / "body.arrow", "arrow")  # the service's cache file: a stream
    with pytest.raises(pa.ArrowInvalid):
        pa.ipc.open_file(stream)
    assert_tables_equal(vdata.read_table(stream), table)


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_arrow_compression_shrinks_and_reads_back(tmp_path: Path, compression: str) -> None:
    table = pa.table({"x": pa.array([i // 7 for i in range(100_000)], pa.int64())})
    plain, packed = encode_table(table, "arrow"), encode_table(table, "arrow", compression)
    assert len(packed) < len(plain) / 2
    assert pa.ipc.open_stream(packed).read_all().equals(table)
    as_file = arrow_file_bytes(packed, compression)
    assert as_file.size < len(plain) / 2
    assert pa.ipc.open_file(as_file).read_all().equals(table)
    path = vdata.write_table(table, tmp_path / "x.feather", compression=compression)
    assert path.stat().st_size == as_file.size
    assert vdata.read_table(path).equals(table)


@pytest.mark.parametrize("fmt", ["parquet", "root"])
def test_compression_is_for_arrow_only(tmp_path: Path, fmt: str) -> None:
    with pytest.raises(vdata.FormatError, match=f"compression 'lz4' applies to arrow only; {fmt} compresses"):
        vdata.write_table(pa.table({"x": [1.0]}), tmp_path / f"x.{fmt}", compression="lz4")
    with pytest.raises(vdata.FormatError, match="unknown compression 'gzip'; choose one of none, lz4, zstd"):
        encode_table(pa.table({"x": [1.0]}), "arrow", "gzip")


def test_root_bytes_depend_on_the_table_only(first_ranges: dict[str, pa.Table], tmp_path: Path) -> None:
    """The same table written twice, a second apart, to files of different names, gives the same
    ROOT bytes (no file name, time of writing or uuid1 in them), and it reads back."""
    import datetime
    import time

    table = first_ranges["uproot-HZZ.root:events"]
    first = encode_table(table, "root")
    time.sleep(1.1)  # ROOT's TDatime counts seconds
    assert encode_table(table, "root") == first
    assert write_encoded(table, tmp_path / "other-name.root", "root").read_bytes() == first
    assert b"\x00" * 16 in first  # the zero file UUID
    assert datetime.datetime.now().year > 2000  # the clock itself was not stopped for anyone else
    (tmp_path / "r.root").write_bytes(first)
    assert_tables_equal(vdata.read_table(tmp_path / "r.root", "root"), table)
