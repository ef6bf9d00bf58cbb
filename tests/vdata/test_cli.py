"""The ``vdata`` command line: the demo behind ``make run``, inspect and get."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from typer.testing import CliRunner

import vdata
from vdata.cli import app
from vdata.testing import assert_tables_equal

runner = CliRunner()


def test_demo_writes_only_under_its_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = runner.invoke(app, ["demo", "--data-dir", str(data), "--events", "3000", "--range-events", "1000"])
    assert result.exit_code == 0, result.output
    assert "3,000 events" in result.output and "read back equal" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    written = sorted(p.name for p in (data / "ranges").iterdir())
    assert written == [f"range-{i:05d}.{fmt}" for i in range(3) for fmt in ("arrow", "parquet", "root")]
    ds = vdata.open_dataset(data / "nanoaod-demo.root", "Events")
    assert ds.num_events == 3000 and "Muon_pt" in ds.columns and "nMuon" in ds.columns
    assert_tables_equal(vdata.read_table(data / "ranges" / "range-00001.root", "root"), ds.read(ds.ranges(1000)[1]))


def test_inspect_lists_columns_and_unreadable_ones(shared_data: Path) -> None:
    result = runner.invoke(app, ["inspect", str(shared_data / "uproot-physlite-rntuple_v1-0-0-0.root"), "--tree", "MetaDataHdr"])
    assert result.exit_code == 0, result.output
    assert "DataHeader: DataHeader_p6" in result.output
    result = runner.invoke(app, ["inspect", str(shared_data / "uproot-HZZ.root"), "-t", "events", "--range-events", "1000"])
    assert "2,421 events, 51 columns, 3 ranges" in result.output


def test_get_writes_one_range(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.parquet"
    result = runner.invoke(
        app,
        ["get", str(shared_data / "uproot-Zmumu.root"), "-t", "events", "-o", str(out), "--index", "1",
         "--range-events", "1000", "--format", "parquet", "-c", "E*", "-c", "M"],
    )
    assert result.exit_code == 0, result.output
    ds = vdata.open_dataset(shared_data / "uproot-Zmumu.root", "events")
    expected = ds.read(ds.ranges(1000)[1], ["E*", "M"])
    table = vdata.read_table(out, "parquet")
    assert table.column_names == ["Event", "E1", "E2", "M"]
    assert_tables_equal(table, expected)
    assert isinstance(table, pa.Table)


def test_errors_are_clear_and_exit_non_zero(shared_data: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["inspect", str(shared_data / "uproot-HZZ.root"), "-t", "Events"])
    assert result.exit_code == 2
    assert "no tree 'Events'" in result.output and "'events'" in result.output
    result = runner.invoke(app, ["get", str(shared_data / "uproot-HZZ.root"), "-t", "events", "-o", str(tmp_path / "x"), "--index", "9"])
    assert result.exit_code == 2 and "range 9 does not exist" in result.output
    result = runner.invoke(app, ["get", str(shared_data / "uproot-HZZ.root"), "-t", "events", "-o", str(tmp_path / "x"), "--format", "csv"])
    assert result.exit_code == 2 and "unknown format 'csv'" in result.output
