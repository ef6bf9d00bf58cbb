"""End to end through a real uvicorn server on a loopback port: register a dataset, submit a
recipe, fetch a range in every format, run a job's lease-finish cycle; and a server whose
lifespan owns its core."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
from gateway_helpers import HZZ, RECIPE, SCALE, Env, make_settings

from service.http.server import BackgroundServer
from service.core.core import Core, CoreConfig
from vdata.formats import FORMATS, MEDIA_TYPES, read_table


def test_server_listens_on_loopback(server: BackgroundServer) -> None:
    assert server.url.startswith("http://127.0.0.1:") and server.port > 0
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}


def test_dataset_recipe_and_ranges_in_every_format(http: httpx.Client, shared_data: Path, tmp_path: Path) -> None:
    r = http.post("/v1/datasets", json={"name": "opendata:hzz", "paths": [str(shared_data / HZZ)], "tree": "events"})
    assert r.status_code == 201, r.text
    assert http.post("/v1/transforms", json=SCALE).status_code == 201
    plan = http.post("/v1/recipes", json=RECIPE).json()
    assert plan["num_ranges"] == 7
    ranges = http.get(f"/v1/recipes/{plan['id']}/ranges").json()
    tables = {}
    for fmt in FORMATS:
        r = http.get(f"/v1/recipes/{plan['id']}/ranges/3", params={"format": fmt})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == MEDIA_TYPES[fmt]
        assert r.headers["x-vdata-adler32"] == f"{zlib.adler32(r.content):08x}"
        assert int(r.headers["content-length"]) == len(r.content)
        path = tmp_path / f"range.{fmt}"
        path.write_bytes(r.content)
        tables[fmt] = read_table(path, fmt)
        assert tables[fmt].num_rows == int(r.headers["x-vdata-events"]) == ranges[3]["stop"] - ranges[3]["first"]
    arrow = pa.ipc.open_stream(io.BytesIO(http.get(f"/v1/recipes/{plan['id']}/ranges/3").content)).read_all()
    assert arrow.equals(tables["arrow"]) and arrow.column_names == ["met_px2", "NMuon", "Muon_Px"]
    assert pq.read_table(io.BytesIO(http.get(f"/v1/recipes/{plan['id']}/ranges/3?format=parquet").content)).equals(arrow)
    assert tables["root"].num_rows == arrow.num_rows


def test_job_lease_finish_cycle(http: httpx.Client, started_env: Env) -> None:
    worker = {"Authorization": f"Bearer {started_env.tokens['worker']}"}
    recipe_id = http.post("/v1/recipes", json=RECIPE).json()["id"]
    job = http.post("/v1/jobs", json={"recipe_id": recipe_id, "lease_seconds": 60}, headers=worker).json()["id"]
    events = 0
    while leases := http.post(f"/v1/jobs/{job}/lease", json={"worker": "w1", "n": 3}, headers=worker).json():
        for lease in leases:
            r = http.get(lease["url"], headers=worker)
            assert r.status_code == 200 and int(r.headers["x-vdata-events"]) == lease["stop"] - lease["first"]
            assert http.post(f"/v1/jobs/{job}/ranges/{lease['index']}/heartbeat", json={"worker": "w1"},
                             headers=worker).status_code == 200
            assert http.post(f"/v1/jobs/{job}/ranges/{lease['index']}/finish", json={"worker": "w1"},
                             headers=worker).status_code == 200
            events += lease["stop"] - lease["first"]
    status = http.get(f"/v1/jobs/{job}", headers=worker).json()
    assert status["done"] and status["counts"]["finished"] == 7 and status["events_finished"] == events == 2421


def test_metrics_count_what_was_served(http: httpx.Client) -> None:
    text = httpx.get(f"{str(http.base_url).rstrip('/')}/metrics").text
    for fmt in FORMATS:
        assert f'vdata_ranges_served_total{{format="{fmt}"}}' in text
    assert 'vdata_lease_events_total{event="finish"} 7.0' in text


def test_a_server_that_owns_its_core(started_env: Env, tmp_path: Path, shared_data: Path) -> None:
    """core=None: the lifespan builds and starts the core, and closes it on shutdown (Ray is
    already up in this process, so this core does not start or stop it)."""
    settings = make_settings(tmp_path / "own", shared_data, port=0)
    with BackgroundServer(settings) as running:
        token = running.admin_token
        assert token is not None
        r = httpx.get(f"{running.url}/v1/datasets", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json() == []
    with BackgroundServer(settings) as again:  # the same data folder: the admin token is not shown twice
        assert again.admin_token is None
        assert httpx.get(f"{again.url}/v1/datasets", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    Core(CoreConfig(data_dir=settings.data_dir)).close()  # the cache folder was released
