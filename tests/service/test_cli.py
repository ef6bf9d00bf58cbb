"""The ``vdata`` command line against a real gateway on a loopback port (and ``inspect``,
which reads files directly). Errors print one line and exit with status 2. What ``vdata get``
and the client's ``get``/``fetch`` write opens in every reader an analyst uses."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset
import pyarrow.feather
import pyarrow.parquet as pq
import pytest
import uproot
from typer.testing import CliRunner

import vdata
from service.cli import app
from service.http.server import BackgroundServer
from service.settings import Settings
from vdata.client import Client
from vdata.testing import assert_tables_equal

runner = CliRunner()

RECIPE_YAML = """
source: {dataset: "opendata:hzz"}
steps:
  - filter: "NMuon >= 2"
  - transform: {name: leading_pair_mass, inputs: {px: Muon_Px, py: Muon_Py, pz: Muon_Pz, e: Muon_E},
                outputs: {mass: mMuMu}}
columns: [mMuMu, NMuon]
range_events: 1000
"""

TRANSFORM = "def met2(px, py):\n    return px * px + py * py\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[tuple[BackgroundServer, Path]]:
    data = tmp_path_factory.mktemp("cli-data")
    settings = Settings(data_dir=data, port=0, num_cpus=2, object_store_bytes=100 * 1024**2, allowed_roots=[shared_data], log_level="warning")
    with BackgroundServer(settings) as srv:
        yield srv, data


def run(*args: str, token: str | None = None, url: str | None = None) -> tuple[int, str]:
    env = {"VDATA_TOKEN": token or "", "VDATA_URL": url or ""}
    result = runner.invoke(app, list(args), env={k: v for k, v in env.items() if v})
    return result.exit_code, result.output


def test_the_whole_command_line(server: tuple[BackgroundServer, Path], shared_data: Path, tmp_path: Path) -> None:
    srv, data = server
    admin = srv.admin_token
    assert admin
    code, out = run("token", "create", "--role", "scientist", "--data-dir", str(data))
    assert code == 0, out
    scientist = out.strip()
    url = srv.url

    code, out = run("datasets", "add", "opendata:hzz", str(shared_data / "uproot-HZZ.root"), "--tree", "events", token=admin, url=url)
    assert code == 0, out
    registered = json.loads(out)
    assert registered["num_events"] == 2421
    code, out = run("datasets", "list", token=scientist, url=url)
    assert code == 0 and "opendata:hzz" in out and "2,421" in out

    source = tmp_path / "met2.py"
    source.write_text(TRANSFORM)
    code, out = run("transforms", "submit", "met2", str(source), "-i", "px=flat", "-i", "py=flat", "-o", "out=float64", "--kind", "element", token=scientist, url=url)
    assert code == 0, out
    assert json.loads(out)["name"] == "met2"
    code, out = run("transforms", "list", token=scientist, url=url)
    assert code == 0 and "met2" in out

    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(RECIPE_YAML)
    code, out = run("recipes", "submit", str(recipe_file), token=scientist, url=url)
    assert code == 0, out
    recipe_id = out.split(":")[0].strip()
    assert recipe_id.startswith("vds-") and "2,421 events in 3 ranges" in out
    assert "warning:" not in out
    recipe_file.write_text(RECIPE_YAML.replace("mMuMu", "m_mumu"))
    code, out = run("recipes", "submit", str(recipe_file), token=scientist, url=url)
    assert code == 0 and "warning: steps[1].transform.outputs.mass: coffea's NanoAODSchema would read 'm_mumu'" in out, out
    recipe_file.write_text(RECIPE_YAML)
    code, out = run("recipes", "show", recipe_id, token=scientist, url=url)
    assert code == 0 and "mMuMu" in out and "0: [0, 807)" in out
    code, out = run("recipes", "stage", recipe_id, "--first", "1", "--count", "5", "-f", "root", token=scientist, url=url)
    assert code == 0 and f"staging ranges 1..2 of {recipe_id} as root" in out, out
    code, out = run("recipes", "stage", recipe_id, "--first", "3", token=scientist, url=url)
    assert code == 2 and "range 3" in out, out

    catalog = vdata.Catalog()
    catalog.add_dataset("opendata:hzz", registered["files"][0]["path"], "events")  # as the service resolved it
    recipe = vdata.Recipe.from_yaml(RECIPE_YAML, catalog)
    assert recipe.id == recipe_id  # the service and the library name it alike
    code, out = run("get", recipe_id, "1", "-o", str(tmp_path / "r1.parquet"), "--format", "parquet", token=scientist, url=url)
    assert code == 0, out
    assert_tables_equal(vdata.read_table(tmp_path / "r1.parquet", "parquet"), vdata.materialize(recipe, 1, catalog))

    code, out = run("fetch", recipe_id, str(tmp_path / "files"), token=scientist, url=url)
    assert code == 0, out
    files = sorted((tmp_path / "files").glob("*.root"))
    assert len(files) == 3
    with uproot.open(files[2]) as f:
        assert f["Events"].num_entries == vdata.materialize(recipe, 2, catalog).num_rows

    code, out = run("jobs", "create", recipe_id, "--lease-seconds", "30", token=scientist, url=url)
    assert code == 0, out
    job = out.strip()
    code, out = run("worker", job, "--n", "2", token=scientist, url=url)
    assert code == 0, out
    assert "3 ranges finished, 0 failed" in out and "sum(NMuon)" in out
    code, out = run("jobs", "status", job, "--json", token=scientist, url=url)
    assert code == 0 and json.loads(out)["done"] is True


def test_errors_exit_2_with_one_clear_line(server: tuple[BackgroundServer, Path], shared_data: Path) -> None:
    srv, data = server
    code, out = run("datasets", "list", token="not-a-token", url=srv.url)
    assert code == 2 and "error" in out.lower() and "token" in out.lower()
    code, out = run("recipes", "show", "vds-000000000000000000000000", token=srv.admin_token, url=srv.url)
    assert code == 2 and "vds-000000000000000000000000" in out
    code, out = run("datasets", "list", url=srv.url)
    assert code == 2 and "no token" in out
    code, out = run("token", "create", "--role", "emperor", "--data-dir", str(data))
    assert code == 2 and "emperor" in out
    code, out = run("datasets", "add", "x", "/etc/passwd", "--tree", "t", token=srv.admin_token, url=srv.url)
    assert code == 2 and "/etc/passwd" in out
    code, out = run("datasets", "list", token="x", url="http://127.0.0.1:9")
    assert code == 2 and "127.0.0.1:9" in out and "refused" in out


def test_inspect_lists_columns_and_unreadable_ones(shared_data: Path) -> None:
    code, out = run("inspect", str(shared_data / "uproot-physlite-rntuple_v1-0-0-0.root"), "--tree", "MetaDataHdr")
    assert code == 0, out
    assert "DataHeader: DataHeader_p6" in out
    code, out = run("inspect", str(shared_data / "uproot-HZZ.root"), "-t", "events", "--range-events", "1000")
    assert "2,421 events, 51 columns, 3 ranges" in out
    code, out = run("inspect", str(shared_data / "uproot-HZZ.root"), "-t", "Events")
    assert code == 2 and "no tree 'Events'" in out and "'events'" in out


# -- every reader opens every format ---------------------------------------------------------------

GENERATED = {"source": {"generator": "zmumu", "events": 2500, "seed": 11}, "range_events": 1000}
VARIANTS = [("arrow", "none", ".arrow"), ("arrow", "lz4", ".feather"), ("arrow", "zstd", ".ipc"),
            ("parquet", "none", ".parquet"), ("root", "none", ".root")]


def _duckdb(sql_from: Callable[[duckdb.DuckDBPyConnection], duckdb.DuckDBPyRelation]) -> pa.Table:
    with duckdb.connect() as con:
        return sql_from(con).to_arrow_table()


def _duckdb_ipc(path: Path) -> pa.Table:
    """DuckDB over Arrow files (its own Arrow reader is an extension from the internet): a
    pyarrow dataset, which DuckDB scans itself (filters and columns pushed down)."""
    def query(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyRelation:
        con.register("ranges", pyarrow.dataset.dataset(path, format="ipc"))
        return con.sql("SELECT * FROM ranges")
    return _duckdb(query)


def _uproot(path: Path) -> pa.Table:
    with uproot.open(path) as f:
        arrays = f["Events"].arrays()
    return pa.table({name: pa.array(arrays[name].to_list()) for name in arrays.fields})


READERS: dict[str, dict[str, Callable[[Path], pa.Table]]] = {
    "arrow": {
        "pyarrow.ipc.open_file": lambda p: pa.ipc.open_file(p).read_all(),
        "pyarrow.feather": pyarrow.feather.read_table,
        "polars.read_ipc": lambda p: pl.read_ipc(p).to_arrow(),
        "polars.scan_ipc": lambda p: pl.scan_ipc(p).collect().to_arrow(),
        "duckdb": _duckdb_ipc,
    },
    "parquet": {
        "pyarrow.parquet": pq.read_table,
        "polars.read_parquet": lambda p: pl.read_parquet(p).to_arrow(),
        "polars.scan_parquet": lambda p: pl.scan_parquet(p).collect().to_arrow(),
        "duckdb.read_parquet": lambda p: _duckdb(lambda con: con.read_parquet(str(p))),
    },
    "root": {"uproot": _uproot},
}


def _same_values(got: pa.Table, expected: pa.Table, what: str) -> None:
    """Every column of ``expected`` in ``got`` with the same values (each reader picks its own
    types: large lists, views, ...; ROOT adds the counter branches)."""
    missing = set(expected.column_names) - set(got.column_names)
    assert not missing, f"{what}: no {sorted(missing)}"
    for name in expected.column_names:
        assert got[name].to_pylist() == expected[name].to_pylist(), f"{what}: column {name!r} differs"


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_every_reader_opens_every_format_written_by_get_and_fetch(
    server: tuple[BackgroundServer, Path], tmp_path: Path, umask_022: None
) -> None:
    srv, data = server
    code, token = run("token", "create", "--role", "reader", "--data-dir", str(data))
    assert code == 0, token
    token = token.strip()
    recipe = vdata.Recipe.from_dict(GENERATED)
    expected = [vdata.materialize(recipe, i, vdata.Catalog()) for i in range(3)]
    written: list[tuple[str, Path, pa.Table]] = []  # (format, file, what it should hold)
    with Client(srv.url, token) as client:
        rid = client.submit(GENERATED).id
        for fmt, compression, ext in VARIANTS:
            fetched = client.fetch(rid, tmp_path / f"fetch-{fmt}-{compression}", format=fmt, compression=compression)
            written += [(fmt, path, table) for path, table in zip(fetched, expected)]
            cli_file = tmp_path / f"cli-{compression}{ext}"  # no --format: the extension says it
            code, out = run("get", rid, "1", "-o", str(cli_file), "--compression", compression,
                            token=token, url=srv.url)
            assert code == 0, out
            assert client.get(rid, 2, tmp_path / f"get-{compression}{ext}", compression=compression) == len(expected[2])
            written += [(fmt, cli_file, expected[1]), (fmt, tmp_path / f"get-{compression}{ext}", expected[2])]
    assert len(written) == len(VARIANTS) * 5
    for fmt, path, table in written:
        assert path.stat().st_mode & 0o777 == 0o644, path
        for reader, read in READERS[fmt].items():
            _same_values(read(path), table, f"{path.name} by {reader}")
    # a fetched folder is one dataset to polars and DuckDB
    folder = tmp_path / "fetch-arrow-zstd"
    whole = pa.concat_tables(expected)
    _same_values(pl.scan_ipc(folder / "*.arrow").collect().to_arrow(), whole, "polars.scan_ipc over the folder")
    _same_values(_duckdb_ipc(folder), whole, "duckdb over the folder")


def test_get_refuses_a_format_the_extension_contradicts(server: tuple[BackgroundServer, Path], tmp_path: Path) -> None:
    srv, data = server
    code, token = run("token", "create", "--role", "reader", "--data-dir", str(data))
    rid = vdata.Recipe.from_dict(GENERATED).id
    code, out = run("get", rid, "0", "-o", str(tmp_path / "x.parquet"), "--format", "arrow", token=token.strip(),
                    url=srv.url)
    assert code == 2 and "x.parquet: the extension '.parquet' says parquet, but the format asked for is arrow" in out
    code, out = run("get", rid, "0", "-o", str(tmp_path / "x.dat"), token=token.strip(), url=srv.url)
    assert code == 2 and "give the format (--format" in out, out
    code, out = run("get", rid, "0", "-o", str(tmp_path / "x.root"), "--compression", "lz4", token=token.strip(),
                    url=srv.url)
    assert code == 2 and "compression 'lz4' applies to arrow only" in out, out
    assert list(tmp_path.iterdir()) == []
