"""root:// datasets through a real gateway (uvicorn on loopback, the module's Ray) and real XRootD
servers on loopback: ranges equal local reads; a server that is gone, a file it may not read,
and a server that stops after registration answer 502 naming the URL (never a 500); a missing
file is the admin's mistake, as over HTTP (400 source_file_not_found naming the URL)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from realdata import XROOTD_BIG
from remote_sources import Gateway, gateway, remote_error

import vdata
from vdata.testing import XRootDServer, assert_tables_equal, free_port


@pytest.fixture(scope="module")
def gone_url() -> str:
    return f"root://127.0.0.1:{free_port()}/"  # nothing listens there


@pytest.fixture(scope="module")
def own_url() -> str:
    return f"root://127.0.0.1:{free_port()}/"  # the test's own server starts there


@pytest.fixture(scope="module")
def gw(embedded_ray: None, tmp_path_factory: pytest.TempPathFactory, shared_data: Path,
       xrootd_server: XRootDServer, gone_url: str, own_url: str) -> Iterator[Gateway]:
    prefixes = [f"{xrootd_server.url}/", f"{gone_url}/", f"{own_url}/"]
    with gateway(tmp_path_factory.mktemp("xrootd"), shared_data, prefixes) as running:
        yield running


def arrow(gw: Gateway, recipe: str, index: int) -> pa.Table:
    r = gw.http.get(f"/v1/recipes/{recipe}/ranges/{index}")
    assert r.status_code == 200, r.text
    return pa.ipc.open_stream(io.BytesIO(r.content)).read_all()


def test_ranges_of_a_root_url_dataset_equal_local_reads(gw: Gateway, shared_data: Path,
                                                        xrootd_server: XRootDServer) -> None:
    r = gw.register("xrd:hzz", f"{xrootd_server.url}/uproot-HZZ-zstd.root")
    assert r.status_code == 201, r.text
    columns = ["NMuon", "Muon_Px", "MET_px"]
    recipe = gw.recipe("xrd:hzz", columns, range_events=1000)
    local = vdata.open_dataset(shared_data / "uproot-HZZ-zstd.root", "events")
    assert len(local.ranges(1000)) == 3
    for i, rng in enumerate(local.ranges(1000)):
        assert_tables_equal(arrow(gw, recipe, i), local.read(rng, columns), what=f"range {i} over XRootD")


def test_registering_from_a_server_that_is_gone_answers_502(gw: Gateway, gone_url: str) -> None:
    url = f"{gone_url}/uproot-HZZ.root"
    remote_error(gw.register("xrd:gone", url), url)


def test_registering_a_file_the_server_may_not_read_answers_502(gw: Gateway, xrootd_root: Path,
                                                                 own_url: str) -> None:
    port = int(own_url.rstrip("/").rsplit(":", 1)[1])
    with XRootDServer(xrootd_root, port=port):
        url = f"{own_url}/locked.root"
        assert "permission denied" in remote_error(gw.register("xrd:locked", url), url)


def test_a_missing_file_is_a_400_of_the_source(gw: Gateway, xrootd_server: XRootDServer) -> None:
    url = f"{xrootd_server.url}/nope.root"
    r = gw.register("xrd:missing", url)
    assert r.status_code == 400 and r.json()["error"] == "source_file_not_found", r.text
    assert url in r.json()["detail"]


def test_materializing_after_the_server_stopped_answers_502_then_heals(gw: Gateway, xrootd_root: Path,
                                                                        shared_data: Path, own_url: str) -> None:
    """Registered and range 0 made (a Ray worker read the file and keeps it open); the server
    stops: range 1 answers 502 naming the URL; it comes back: range 1 is made (the failure was
    not cached, and the worker's client tries the server again)."""
    port = int(own_url.rstrip("/").rsplit(":", 1)[1])
    url = f"{own_url}/{XROOTD_BIG}"
    with XRootDServer(xrootd_root, port=port) as server:
        assert gw.register("xrd:later", url, "test").status_code == 201
        recipe = gw.recipe("xrd:later", ["b1"], range_events=10_000)
        arrow(gw, recipe, 0)
        server.stop()
        remote_error(gw.http.get(f"/v1/recipes/{recipe}/ranges/1"), url)
    with XRootDServer(xrootd_root, port=port):
        local = vdata.open_dataset(shared_data / XROOTD_BIG, "test")
        assert_tables_equal(arrow(gw, recipe, 1), local.read(local.ranges(10_000)[1], ["b1"]))
