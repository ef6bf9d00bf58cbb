"""A cold stream of a remote dataset whose ranges are a fifth of a ROOT cluster, through a real
gateway (uvicorn on loopback, the module's Ray) reading a loopback HTTP server that counts the
bytes it sends: registration, the recipe check's dry run, every worker's open and five sibling
ranges per cluster cost the server no more than uproot reading the same columns directly
(issue 15 part 2; bench/remote_bytes.py measures the same at scale, over HTTP and XRootD)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uproot

from service.http.server import BackgroundServer
from service.settings import Settings
from vdata.client import Client
from vdata.data._remote_cache import HEADER_BYTES
from vdata.data.synthetic import write_nanoaod_like
from vdata.testing import RangeFileServer

COLUMNS = ["nMuon", "Muon_pt", "Muon_eta", "Jet_pt"]
EVENTS, CLUSTER = 20_000, 10_000


@dataclass
class Site:
    files: RangeFileServer
    gateway: BackgroundServer


@pytest.fixture(scope="module")
def site(embedded_ray: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("site")
    write_nanoaod_like(folder / "events.root", EVENTS, chunk_events=CLUSTER)
    data = tmp_path_factory.mktemp("gateway")
    with RangeFileServer(folder) as files:
        settings = Settings(data_dir=data, allowed_roots=[data], port=0, allowed_url_prefixes=[f"{files.url}/"],
                            max_in_flight=2, lookahead=0, readahead=0, log_level="warning")
        with BackgroundServer(settings) as gateway:
            yield Site(files, gateway)


def test_a_cold_stream_of_sibling_ranges_reads_the_remote_file_about_once(site: Site) -> None:
    url = f"{site.files.url}/events.root"
    range_events = CLUSTER // 5
    start = site.files.bytes_sent
    with uproot.open(url) as f:
        for _ in f["Events"].iterate(COLUMNS, step_size=range_events):
            pass
    direct = site.files.bytes_sent - start

    start = site.files.bytes_sent
    with Client(site.gateway.url, site.gateway.admin_token) as client:
        client.add_dataset("remote:siblings", [url], "Events")
        # a define: the recipe check runs a dry run of the first range in a Ray worker
        info = client.submit({"source": {"dataset": "remote:siblings"}, "steps": [{"define": {"s": "sum(Muon_pt)"}}],
                              "columns": [*COLUMNS, "s"], "range_events": range_events})
        assert info.num_ranges == EVENTS // range_events
        rows = sum(batch.num_rows for batch in client.stream(info.id, format="arrow", prefetch=4))
    served = site.files.bytes_sent - start
    assert rows == EVENTS
    # without the node's byte cache: each range fetched its whole cluster (5x), registration
    # the first basket of every column, and the dry run and each worker's open the metadata again
    opens = 8  # registration, the dry run, the Ray workers: each reads the 403-byte header itself
    assert served <= 1.1 * direct + opens * HEADER_BYTES, f"served {served} bytes, direct uproot read {direct}"
