"""Reads over HTTP (range requests, loopback file server) equal local reads."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from realdata import REMOTE_CASES

import vdata
from vdata.data.remote import RemoteOptions
from vdata.testing import HostileFileServer, RangeFileServer, assert_tables_equal


@pytest.mark.parametrize(("name", "tree"), REMOTE_CASES)
def test_http_reads_equal_local_reads(shared_data: Path, file_server: RangeFileServer, name: str, tree: str) -> None:
    local = vdata.open_dataset(shared_data / name, tree)
    before = file_server.requests
    remote = vdata.open_dataset(f"{file_server.url}/{name}", tree)
    assert remote.num_events == local.num_events
    assert remote.schema.equals(local.schema)
    assert remote.ranges(700) == local.ranges(700)
    for r in remote.ranges(700):
        assert_tables_equal(remote.read(r), local.read(r), what=f"{name} {r} over HTTP")
    assert file_server.requests > before  # the bytes really came over HTTP
    assert remote.files[0].remote and remote.files[0].adler32 is None


def test_http_reads_fetch_only_part_of_a_file(shared_data: Path, file_server: RangeFileServer) -> None:
    name = "uproot-issue412.root"
    remote = vdata.open_dataset(f"{file_server.url}/{name}", "test")
    sent = file_server.bytes_sent
    r = remote.ranges(10_000)[50]
    table = remote.read(r)
    assert table.num_rows == 10_000
    assert file_server.bytes_sent - sent < (shared_data / name).stat().st_size / 10


def test_local_and_remote_files_mix_in_one_dataset(shared_data: Path, file_server: RangeFileServer) -> None:
    ds = vdata.open_dataset([shared_data / "uproot-HZZ.root", f"{file_server.url}/uproot-HZZ-lz4.root"], "events")
    assert ds.num_events == 2 * 2421
    last = ds.ranges(5000)[-1]
    assert_tables_equal(ds.read(last), vdata.open_dataset(shared_data / "uproot-HZZ-lz4.root", "events").read(vdata.EventRange(0, 0, 2421)))


def test_missing_remote_file(file_server: RangeFileServer) -> None:
    with pytest.raises(vdata.RemoteFileNotFound, match="nope.root") as caught:
        vdata.open_dataset(f"{file_server.url}/nope.root", "events")
    assert isinstance(caught.value, vdata.RemoteReadError) and isinstance(caught.value, vdata.SourceFileNotFound)


def test_server_that_is_gone() -> None:
    with RangeFileServer(Path(__file__).parent) as server:
        url = f"{server.url}/x.root"
    with pytest.raises(vdata.RemoteReadError, match="127.0.0.1"):
        vdata.open_dataset(url, "events")


def test_redirects_are_not_followed(shared_data: Path, file_server: RangeFileServer) -> None:
    with HostileFileServer(shared_data) as source:
        source.redirect_to, source.mode = file_server.url, "redirect"
        before = file_server.requests
        with pytest.raises(vdata.RemoteReadError, match="redirects are not followed"):
            vdata.open_dataset(f"{source.url}/uproot-HZZ.root", "events")
        assert file_server.requests == before


def test_remote_options_travel_with_the_dataset(file_server: RangeFileServer) -> None:
    options = RemoteOptions(connect_timeout=1.5, read_timeout=2.5)
    ds = vdata.open_dataset(f"{file_server.url}/uproot-HZZ.root", "events", options)
    copy = pickle.loads(pickle.dumps(ds))  # as a Ray worker gets it
    assert copy.remote == options
    assert copy.read(copy.ranges(1000)[1]).num_rows == ds.ranges(1000)[1].num_events


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "3"])
def test_remote_options_must_be_positive(bad: object) -> None:
    with pytest.raises(ValueError, match="read_timeout"):
        RemoteOptions(read_timeout=bad)  # type: ignore[arg-type]
