"""Reads over XRootD (root://, a real xrootd on loopback) equal local reads; its failures are
RemoteReadErrors naming the URL (a missing file, as over HTTP, is SourceFileNotFound)."""

from __future__ import annotations

import os
import pickle
import re
import socket
import time
from pathlib import Path

import pytest
from realdata import REMOTE_CASES
from realdata import XROOTD_BIG as BIG

import vdata
from vdata.data.remote import RemoteOptions
from vdata.testing import XRootDServer, assert_tables_equal

# A bound on a failure's wait on 2 shared, busy cores, not a speed measurement.
SLACK = 20.0


@pytest.mark.parametrize(("name", "tree"), REMOTE_CASES)
def test_xrootd_reads_equal_local_reads(shared_data: Path, xrootd_server: XRootDServer, name: str, tree: str) -> None:
    local = vdata.open_dataset(shared_data / name, tree)
    url = f"{xrootd_server.url}/{name}"
    assert url.startswith("root://127.0.0.1:") and not Path(url).exists()
    remote = vdata.open_dataset(url, tree)
    assert remote.num_events == local.num_events
    assert remote.schema.equals(local.schema)
    assert remote.ranges(700) == local.ranges(700)
    for r in remote.ranges(700):
        assert_tables_equal(remote.read(r), local.read(r), what=f"{name} {r} over XRootD")
    assert remote.files[0].remote and remote.files[0].adler32 is None


def test_local_and_xrootd_files_mix_in_one_dataset(shared_data: Path, xrootd_server: XRootDServer) -> None:
    ds = vdata.open_dataset([shared_data / "uproot-HZZ.root", f"{xrootd_server.url}/uproot-HZZ-lz4.root"], "events")
    assert ds.num_events == 2 * 2421
    last = ds.ranges(5000)[-1]
    expected = vdata.open_dataset(shared_data / "uproot-HZZ-lz4.root", "events").read(vdata.EventRange(0, 0, 2421))
    assert_tables_equal(ds.read(last), expected)


def test_a_missing_file_is_a_remote_read_error_and_source_file_not_found(xrootd_server: XRootDServer) -> None:
    url = f"{xrootd_server.url}/nope.root"
    with pytest.raises(vdata.RemoteFileNotFound, match=re.escape(url)) as caught:
        vdata.open_dataset(url, "events")
    assert isinstance(caught.value, vdata.RemoteReadError) and isinstance(caught.value, vdata.SourceFileNotFound)


def test_a_file_the_server_may_not_read_is_a_remote_read_error(xrootd_own_server: XRootDServer) -> None:
    url = f"{xrootd_own_server.url}/locked.root"
    with pytest.raises(vdata.RemoteReadError, match=re.escape(url)) as caught:
        vdata.open_dataset(url, "events")
    assert "permission denied" in str(caught.value)


def test_a_server_that_is_gone_fails_at_once() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"root://127.0.0.1:{s.getsockname()[1]}//data/x.root"
    start = time.monotonic()
    with pytest.raises(vdata.RemoteReadError, match=re.escape(url)) as caught:
        vdata.open_dataset(url, "events", RemoteOptions(connect_timeout=60, read_timeout=60))
    assert time.monotonic() - start < SLACK  # refused is not retried for the connect timeout
    assert "Connection error" in str(caught.value)


def test_a_server_that_never_answers_times_out_within_the_settings() -> None:
    """A socket that accepts connections (the kernel does) and never says a word: only the
    timeouts can end the wait (XRootD's own defaults would wait 30 minutes)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"root://127.0.0.1:{listener.getsockname()[1]}//data/x.root"
        options = RemoteOptions(connect_timeout=1, read_timeout=2)
        start = time.monotonic()
        with pytest.raises(vdata.RemoteReadError, match=re.escape(url)) as caught:
            vdata.open_dataset(url, "events", options)
        waited = time.monotonic() - start
    # XRootD keeps request deadlines in whole seconds of the wall clock (time_t): a request made
    # at 10.9 s with a 3 s timeout expires at 13 s, so the wait is (timeout - 1, timeout + SLACK)
    assert options.xrootd_timeout - 1 < waited < options.xrootd_timeout + SLACK
    assert "timed out" in str(caught.value)


def test_reading_after_the_server_stopped_is_a_remote_read_error_until_it_is_back(
    shared_data: Path, xrootd_root: Path, xrootd_own_server: XRootDServer
) -> None:
    """The dataset was opened and one range read; then the server stops while the file is open
    (a worker keeps it open across tasks), and later comes back at the same address: the open
    dataset reads again (XRootD's client would refuse that host for 30 minutes after the error,
    and fsspec-xrootd would hand out the dead handle again: neither is left to do so)."""
    url = f"{xrootd_own_server.url}/{BIG}"
    ds = vdata.open_dataset(url, "test", RemoteOptions(connect_timeout=3, read_timeout=3))
    ranges = ds.ranges(10_000)
    first = ds.read(ranges[0])
    assert_tables_equal(first, vdata.open_dataset(shared_data / BIG, "test").read(ranges[0]))
    xrootd_own_server.stop()
    later = ranges[50]
    start = time.monotonic()
    with pytest.raises(vdata.RemoteReadError, match=re.escape(url)) as caught:
        ds.read(later)
    assert time.monotonic() - start < 6 + SLACK
    assert f"reading entries [{later.first}, {later.stop})" in str(caught.value)
    local = vdata.open_dataset(shared_data / BIG, "test")
    with XRootDServer(xrootd_root, port=xrootd_own_server.port):
        for r in (later, ranges[60]):
            assert_tables_equal(ds.read(r), local.read(r), what=f"{r} after the server came back")
    ds.close()


def test_the_timeouts_reach_every_xrootd_request(xrootd_server: XRootDServer) -> None:
    options = RemoteOptions(connect_timeout=1.5, read_timeout=2.2)
    assert options.xrootd_timeout == 4  # whole seconds, rounded up
    url = f"{xrootd_server.url}/uproot-HZZ.root"
    assert options.uproot_options(url)["timeout"] == 4
    ds = vdata.open_dataset(url, "events", options)
    copy = pickle.loads(pickle.dumps(ds))  # as a Ray worker gets it
    assert copy.remote == options
    assert copy.read(copy.ranges(1000)[1]).num_rows == ds.ranges(1000)[1].num_events
    assert os.environ.get("XRD_REQUESTTIMEOUT") is None  # per request, not a process-wide default
