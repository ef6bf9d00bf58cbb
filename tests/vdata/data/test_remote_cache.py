"""The node's cache of remote files' byte ranges (vdata/data/_remote_cache.py), against real
loopback servers (HTTP with range requests, XRootD) that count what they send: a cached read
equals an uncached one; a second reader costs the server nothing while the header it read is
fresh (then the header alone); a rewritten file is never served from the old file's bytes once
that header is older than cache_fresh_seconds; the budget holds; a damaged entry is read again; and
two processes that ask for the same ranges at once make the server send them once."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pytest

import vdata
from vdata.data._remote_cache import HEADER_BYTES, byte_cache
from vdata.data.remote import RemoteOptions
from vdata.data.synthetic import write_nanoaod_like
from vdata.testing import RangeFileServer, XRootDServer, assert_tables_equal

from children import run_together

ROOT = Path(__file__).resolve().parents[3]
COLUMNS = ["nMuon", "Muon_pt", "Jet_pt", "MET_pt"]
NANOAOD = "nanoAOD_2015_CMS_Open_Data_ttbar.root"  # 200 events, one cluster


def read_all(url: str, remote: RemoteOptions, range_events: int = 2000) -> pa.Table:
    with vdata.open_dataset(url, "Events", remote) as ds:
        return pa.concat_tables([ds.read(r, COLUMNS) for r in ds.ranges(range_events)])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a NanoAOD-like file of 10,000 events in 5,000-event clusters."""
    folder = tmp_path_factory.mktemp("site")
    write_nanoaod_like(folder / "events.root", 10_000, chunk_events=5_000)
    return folder


def test_a_cached_read_equals_an_uncached_one_and_a_second_costs_the_header(site: Path, tmp_path: Path) -> None:
    with RangeFileServer(site) as server:
        url = f"{server.url}/events.root"
        plain = read_all(url, RemoteOptions())
        uncached = server.bytes_sent
        cached = RemoteOptions(cache_dir=str(tmp_path / "cache"))
        assert_tables_equal(read_all(url, cached), plain, what="cold cache")
        cold = server.bytes_sent - uncached
        assert_tables_equal(read_all(url, cached), plain, what="warm cache")
        # ranges of 2,000 events share 5,000-event clusters: the cache reads each basket once,
        # the uncached reader once per range
        assert cold < uncached / 2
        assert server.bytes_sent - uncached - cold == 0  # the header read a moment ago is trusted: nothing
        before = server.bytes_sent
        asking = RemoteOptions(cache_dir=str(tmp_path / "cache"), cache_fresh_seconds=0)  # the header at every open
        assert_tables_equal(read_all(url, asking), plain, what="warm cache, header asked for")
        assert server.bytes_sent - before == HEADER_BYTES  # the open's header: nothing else


def test_root_urls_read_through_the_cache_too(xrootd_server: XRootDServer, shared_data: Path, tmp_path: Path) -> None:
    url = f"{xrootd_server.url}/{NANOAOD}"
    cached = RemoteOptions(cache_dir=str(tmp_path / "cache"))
    local = read_all(str(shared_data / NANOAOD), RemoteOptions(), range_events=50)
    assert_tables_equal(read_all(url, cached, range_events=50), local, what="root:// cold cache")
    assert byte_cache(str(tmp_path / "cache"), cached.cache_bytes, 40.0).volume > 100_000  # the baskets are kept
    assert_tables_equal(read_all(url, cached, range_events=50), local, what="root:// warm cache")


@pytest.mark.parametrize("fresh", [0.0, 1.0])
def test_a_rewritten_file_is_never_served_from_the_old_files_bytes(tmp_path: Path, fresh: float) -> None:
    """Once the header read last is older than cache_fresh_seconds (at once for 0), the next
    open asks the server, sees another file, and reads none of the old file's bytes."""
    site = tmp_path / "site"
    site.mkdir()
    write_nanoaod_like(site / "f.root", 4000, chunk_events=2000, seed=1)
    cached = RemoteOptions(cache_dir=str(tmp_path / "cache"), cache_fresh_seconds=fresh)
    with RangeFileServer(site) as server:
        url = f"{server.url}/f.root"
        first = read_all(url, cached)
        write_nanoaod_like(site / "f.root", 4000, chunk_events=2000, seed=2)  # same layout, other values
        time.sleep(fresh * 1.2)
        second = read_all(url, cached)
    assert_tables_equal(second, read_all(str(site / "f.root"), RemoteOptions()), what="the rewritten file")
    assert not first.equals(second)


def test_the_budget_holds_and_the_least_recently_used_ranges_go(site: Path, tmp_path: Path) -> None:
    budget = 200_000  # about half of what the header, metadata and the baskets of the columns take
    cached = RemoteOptions(cache_dir=str(tmp_path / "cache"), cache_bytes=budget)
    with RangeFileServer(site) as server:
        url = f"{server.url}/events.root"
        plain = read_all(url, RemoteOptions(), range_events=5000)
        once = server.bytes_sent
        assert_tables_equal(read_all(url, cached, range_events=5000), plain, what="under a small budget")
        assert byte_cache(str(tmp_path / "cache"), budget, 40.0).volume <= budget
        before = server.bytes_sent
        assert_tables_equal(read_all(url, cached, range_events=5000), plain, what="again")
        # the first cluster's baskets were evicted for the second's: read again from the server
        assert server.bytes_sent - before > once / 4


def test_a_damaged_entry_is_read_again(site: Path, tmp_path: Path) -> None:
    cached = RemoteOptions(cache_dir=str(tmp_path / "cache"))
    with RangeFileServer(site) as server:
        url = f"{server.url}/events.root"
        plain = read_all(url, cached)
        store = tmp_path / "cache" / "store"
        files = sorted(store.rglob("*.val"), key=lambda p: p.stat().st_size)
        assert files, "baskets are kept as files"
        for damaged in files[-3:]:
            data = bytearray(damaged.read_bytes())
            data[len(data) // 2] ^= 0xFF
            damaged.write_bytes(bytes(data))
        before = server.bytes_sent
        assert_tables_equal(read_all(url, cached), plain, what="after damage")
        assert server.bytes_sent - before > HEADER_BYTES  # the damaged ones came from the server again


CHILD = textwrap.dedent("""
    import sys
    import pyarrow as pa
    import vdata
    from vdata.data.remote import RemoteOptions
    url, cache = sys.argv[1], sys.argv[2]
    print("ready", flush=True)
    sys.stdin.readline()  # the go, sent to both readers at once
    with vdata.open_dataset(url, "Events", RemoteOptions(cache_dir=cache)) as ds:
        table = pa.concat_tables([ds.read(r, ["nMuon", "Muon_pt", "Jet_pt", "MET_pt"]) for r in ds.ranges(2500)])
    print(table.num_rows, table.column("Jet_pt").combine_chunks().flatten().to_numpy().sum(), flush=True)
""")


def test_two_processes_asking_for_the_same_ranges_at_once_fetch_them_once(site: Path, tmp_path: Path) -> None:
    with RangeFileServer(site) as server:
        url = f"{server.url}/events.root"
        read_all(url, RemoteOptions(cache_dir=str(tmp_path / "alone")), range_events=2500)
        alone = server.bytes_sent  # one reader, cold cache
        results = [out.strip() for out in run_together([[CHILD, url, str(tmp_path / "shared")]] * 2, ROOT, 300)]
        assert results[0] == results[1] and results[0].startswith("10000 ")
        # everything once; the header once or twice (the second reader may find it read a moment ago)
        assert server.bytes_sent - alone in (alone, alone + HEADER_BYTES)


def test_a_pickled_cached_source_reads_through_the_same_cache(site: Path, tmp_path: Path) -> None:
    import pickle

    from vdata.data import _uproot

    with RangeFileServer(site) as server:
        url = f"{server.url}/events.root"
        source = _uproot.open_file(url, RemoteOptions(cache_dir=str(tmp_path / "cache"))).file.source
        before = source.chunk(1000, 3000).raw_data.tobytes()
        sent = server.bytes_sent
        copy = pickle.loads(pickle.dumps(source))
        assert copy.chunk(1000, 3000).raw_data.tobytes() == before
        assert server.bytes_sent == sent  # the same open file (its header travels): the range came from the cache
