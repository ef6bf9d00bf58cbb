"""Remote sources that fail: stall, answer 500 or 403, cut bodies short, ignore ``Range``, or are
gone. Registering such a dataset, or materializing a range of one that was fine when it was
registered, answers 502 naming the URL (never a 500); a stall answers within the configured
read timeout (``remote_read_timeout_seconds``), not after aiohttp's 300 s default."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from remote_sources import HZZ, READ_TIMEOUT, SLACK, Gateway, gateway, remote_error

from service.http.app import core_config
from service.settings import Settings
from vdata.data.catalog import Catalog
from vdata.errors import RemoteReadError
from vdata.data.remote import RemoteOptions
from vdata.data.sources import open_dataset
from vdata.testing import HostileFileServer

# (mode, HTTP status for "error", what the message says)
FAILURES = [
    ("stall", 500, "timed out"),
    ("error", 500, "500"),
    ("error", 403, "403"),
    ("truncate", 500, "payload"),
    ("no_range", 500, "Range"),
]
IDS = ["stall", "500", "403", "truncated", "no-range"]
# A column per case that no other case reads: the node's remote byte cache keeps what one has read
UNREAD = {"stall500": "Jet_Pz", "error500": "Muon_Py", "error403": "Muon_Pz", "truncate500": "Electron_Py",
          "no_range500": "Photon_Px"}


@pytest.fixture(scope="module")
def gw(embedded_ray: None, tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[Gateway]:
    with gateway(tmp_path_factory.mktemp("remote"), shared_data) as running:
        yield running


@pytest.fixture
def hostile(gw: Gateway) -> Iterator[Gateway]:
    """The gateway, its source put back to "ok" after the test."""
    yield gw
    gw.hostile.mode = "ok"
    gw.hostile.status = 500


@pytest.mark.parametrize(("mode", "status", "says"), FAILURES, ids=IDS)
def test_registering_a_failing_source_answers_502(hostile: Gateway, mode: str, status: int, says: str) -> None:
    url = f"{hostile.hostile.url}/{HZZ}"
    hostile.hostile.mode, hostile.hostile.status = mode, status
    r, seconds = hostile.timed("POST", "/v1/datasets", json={"name": f"bad:{mode}{status}", "paths": [url],
                                                              "tree": "events"})
    detail = remote_error(r, url)
    assert says.lower() in detail.lower()
    if mode == "stall":
        assert seconds < READ_TIMEOUT + SLACK


def test_registering_a_source_that_is_gone_answers_502(hostile: Gateway) -> None:
    url = f"{hostile.gone_url}/{HZZ}"
    remote_error(hostile.register("bad:gone", url), url)


def test_a_missing_file_is_still_a_404_of_the_source(hostile: Gateway) -> None:
    """404 at registration stays the admin's mistake (400 source_file_not_found), not a 502."""
    url = f"{hostile.hostile.url}/nope.root"
    r = hostile.register("bad:missing", url)
    assert r.status_code == 400 and r.json()["error"] == "source_file_not_found", r.text
    assert url in r.json()["detail"]


@pytest.mark.parametrize(("mode", "status", "says"), FAILURES, ids=IDS)
def test_materializing_from_a_source_that_starts_failing_answers_502(
    hostile: Gateway, mode: str, status: int, says: str
) -> None:
    """The dataset registered fine and range 0 was read (the worker holds the file open);
    then the source fails while a Ray worker reads range 1 of a column nobody read yet (this
    file is one cluster: range 0's baskets, kept by the node's remote byte cache, hold all of
    range 1 of the same columns)."""
    url = f"{hostile.hostile.url}/{HZZ}"
    name = f"later:{mode}{status}"
    assert hostile.register(name, url).status_code == 201
    first = hostile.recipe(name, ["MET_px", "Jet_Px"])
    assert hostile.http.get(f"/v1/recipes/{first}/ranges/0").status_code == 200
    recipe = hostile.recipe(name, ["MET_px", UNREAD[f"{mode}{status}"]])
    hostile.hostile.mode, hostile.hostile.status = mode, status
    r, seconds = hostile.timed("GET", f"/v1/recipes/{recipe}/ranges/1")
    detail = remote_error(r, url)
    assert says.lower() in detail.lower()
    if mode == "stall":
        assert seconds < READ_TIMEOUT + SLACK
    hostile.hostile.mode = "ok"  # the failure was not cached: the range comes once the source heals
    assert hostile.http.get(f"/v1/recipes/{recipe}/ranges/1").status_code == 200


def test_materializing_from_a_source_that_went_away_answers_502(hostile: Gateway) -> None:
    """Connection refused in the Ray worker: the source's server stops after registration (and
    after the recipe's submission: a recipe without steps needs no dry run, so no worker has read
    the file yet; once one has, its reader holds every byte of this small file)."""
    url = f"{hostile.closable.url}/{HZZ}"
    assert hostile.register("gone:later", url).status_code == 201
    recipe = hostile.recipe("gone:later", ["MET_px", "Jet_Py"])
    hostile.closable.stop()
    remote_error(hostile.http.get(f"/v1/recipes/{recipe}/ranges/1"), url)


@pytest.mark.parametrize(("mode", "status", "says"), FAILURES, ids=IDS)
def test_reading_an_open_dataset_raises_remote_read_error(
    shared_data: Path, mode: str, status: int, says: str
) -> None:
    """The library alone (as in the gateway's dry run or a worker holding the file): a read of
    an already open remote file raises RemoteReadError naming the URL and the entries, not an
    UninterpretableColumn made of the network error."""
    with HostileFileServer(shared_data) as source:
        url = f"{source.url}/{HZZ}"
        ds = open_dataset(url, "events", RemoteOptions(connect_timeout=READ_TIMEOUT, read_timeout=READ_TIMEOUT))
        source.mode, source.status = mode, status
        second = ds.ranges(1000)[1]
        start = time.monotonic()
        with pytest.raises(RemoteReadError, match=re.escape(url)) as caught:
            ds.read(second, ["MET_px", "Jet_Px"])
        assert f"reading entries [{second.first}, {second.stop})" in str(caught.value)
        assert says.lower() in str(caught.value).lower()
        if mode == "stall":
            assert time.monotonic() - start < READ_TIMEOUT + SLACK
        ds.close()


def test_the_timeouts_are_settings_that_reach_the_catalog(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, remote_connect_timeout_seconds=1.5, remote_read_timeout_seconds=4,
                        remote_cache_bytes=10**9)
    config = core_config(settings)
    assert config.remote == RemoteOptions(connect_timeout=1.5, read_timeout=4.0,
                                          cache_dir=str((tmp_path / "remote-cache").resolve()), cache_bytes=10**9)
    elsewhere = core_config(settings.model_copy(update={"remote_cache_dir": tmp_path / "elsewhere"})).remote
    assert elsewhere.cache_dir == str((tmp_path / "elsewhere").resolve())
    assert Catalog(config.remote).remote is config.remote  # pickled into the Ray workers with it
    with pytest.raises(ValidationError, match="remote_read_timeout_seconds"):
        Settings(data_dir=tmp_path, remote_read_timeout_seconds=0)


def test_a_server_that_never_accepts_answers_within_the_connect_timeout() -> None:
    """A listening socket whose accept queue is full: the connection never completes. The read
    timeout is long here, so only the connect timeout can end the wait."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/{HZZ}"
        queued = [socket.socket() for _ in range(3)]  # fill the accept queue (never accepted)
        try:
            for client in queued:
                client.setblocking(False)
                client.connect_ex(listener.getsockname())
            start = time.monotonic()
            with pytest.raises(RemoteReadError, match=re.escape(url)) as caught:
                open_dataset(url, "events", RemoteOptions(connect_timeout=READ_TIMEOUT, read_timeout=600))
            assert time.monotonic() - start < READ_TIMEOUT + SLACK
            assert "timed out" in str(caught.value)
        finally:
            for client in queued:
                client.close()
