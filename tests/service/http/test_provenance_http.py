"""Provenance through a real gateway (uvicorn on loopback, the SDK and the command line), on
SQLite and PostgreSQL: a range deleted from the cache (alone, or the whole cache) and asked for
again has the same bytes and adler32 and the same provenance but for node and times, for a
source-backed and a generated recipe; Parquet and ROOT files carry the provenance id; a restart
keeps it; a job's range tells it with the job's record."""

from __future__ import annotations

import io
import json
import socket
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
import uproot
from gateway_helpers import ENGINE, HZZ, RECIPE, SCALE, make_settings
from typer.testing import CliRunner

from service.cli import app
from service.core.cache import CacheKey
from service.core.core import Core, CoreConfig
from service.core.tokens import TokenStore
from service.http.server import BackgroundServer
from vdata.checksum import adler32_hex, file_adler32
from vdata.client import Client
from vdata.formats import FORMATS, PROVENANCE_KEY, read_table
from vdata.provenance import RUN_FIELDS

GENERATED = {"source": {"generator": "zmumu", "events": 3000, "seed": 5}, "range_events": 1000}


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/v.db"
    return str(request.getfixturevalue("postgres").new())


@contextmanager
def gateway(data_dir: Path, db_url: str, shared_data: Path) -> Iterator[tuple[Core, Client, httpx.Client, str]]:
    """A core on ``data_dir`` and ``db_url`` behind uvicorn: the core, the SDK, raw HTTP and the
    URL (each with a reader's token: the provenance routes are a reader's)."""
    core = Core(CoreConfig(data_dir=data_dir, engine=ENGINE, cache_budget_bytes=64 * 1024**2, database_url=db_url))
    try:
        core.start()
        tokens = TokenStore(core.db)
        admin, reader = tokens.create("admin", note="test admin"), tokens.create("reader", note="test reader")
        settings = make_settings(data_dir, shared_data, port=0, database_url=db_url)
        with BackgroundServer(settings, core) as server, Client(server.url, admin) as sdk, \
                httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {reader}"}, timeout=120) as http:
            yield core, sdk, http, server.url
    finally:
        core.close()


def fetch(http: httpx.Client, rid: str, index: int) -> dict[str, tuple[bytes, str]]:
    """The range's body and X-Vdata-Adler32 in every format."""
    out = {}
    for fmt in FORMATS:
        r = http.get(f"/v1/recipes/{rid}/ranges/{index}", params={"format": fmt})
        assert r.status_code == 200, r.text
        assert r.headers["x-vdata-adler32"] == adler32_hex(zlib.adler32(r.content))
        out[fmt] = (r.content, r.headers["x-vdata-adler32"])
    return out


def provenance(http: httpx.Client, rid: str, index: int, fmt: str | None = None) -> dict[str, Any]:
    r = http.get(f"/v1/recipes/{rid}/ranges/{index}/provenance", params={"format": fmt} if fmt else {})
    assert r.status_code == 200, r.text
    return dict(r.json())


def fixed(record: dict[str, Any]) -> dict[str, Any]:
    """Everything but where and when it ran."""
    return {k: v for k, v in record.items() if k not in RUN_FIELDS}


def check_carried(bodies: dict[str, tuple[bytes, str]], pid: str, tmp_path: Path) -> None:
    assert pq.read_metadata(io.BytesIO(bodies["parquet"][0])).metadata[PROVENANCE_KEY.encode()] == pid.encode()
    root = tmp_path / "range.root"
    root.write_bytes(bodies["root"][0])
    with uproot.open(root) as f:
        assert str(f[PROVENANCE_KEY]) == pid


def check_remade(core: Core, http: httpx.Client, rid: str, index: int, tmp_path: Path, whole: bool) -> dict[str, Any]:
    """Make range ``index``, delete it (or the whole cache), make it again: same bytes and adler32
    in every format, same provenance but node and times."""
    before = fetch(http, rid, index)
    old = {fmt: provenance(http, rid, index, fmt) for fmt in FORMATS}
    pid = old["arrow"]["id"]
    assert {p["id"] for p in old.values()} == {pid} and pid.startswith("prov-")
    assert provenance(http, rid, index)["format"] in FORMATS
    check_carried(before, pid, tmp_path)
    keys = [e.key for e in core.cache.entries()] if whole else [CacheKey(rid, index, fmt) for fmt in FORMATS]
    for key in keys:
        assert core.cache.remove(key)
    r = http.get(f"/v1/recipes/{rid}/ranges/{index}/provenance")
    assert r.status_code == 404 and r.json()["error"] == "not_materialized", r.text
    assert f"range {index} of {rid}" in r.json()["detail"]
    after = fetch(http, rid, index)
    for fmt in FORMATS:
        assert after[fmt] == before[fmt], fmt
    check_carried(after, pid, tmp_path)
    for fmt in FORMATS:
        new = provenance(http, rid, index, fmt)
        assert fixed(new) == fixed(old[fmt]), fmt
        assert new["started"] >= old[fmt]["started"] and new["seconds"] > 0
    return old["parquet"]


def test_remade_ranges_are_the_same_bytes_with_the_same_provenance(
    tmp_path: Path, db_url: str, shared_data: Path, embedded_ray: None,
) -> None:
    data_dir = tmp_path / "data"
    with gateway(data_dir, db_url, shared_data) as (core, sdk, http, _):
        sdk.add_dataset("opendata:hzz", [str(shared_data / HZZ)], "events")
        sdk.add_transform(SCALE["name"], SCALE["source"], SCALE["inputs"], SCALE["outputs"], SCALE["kind"])
        source, generated = sdk.submit(RECIPE).id, sdk.submit(GENERATED).id
        r = http.get(f"/v1/recipes/{source}/ranges/1/provenance")  # never made
        assert r.status_code == 404 and r.json()["error"] == "not_materialized", r.text

        made = check_remade(core, http, source, 1, tmp_path, whole=False)
        size, checksum = file_adler32(shared_data / HZZ)
        window = sdk.ranges(source)[1]  # one file: its entries are the dataset's events
        assert made["inputs"] == [{"path": str(shared_data / HZZ), "tree": "events", "size": size,
                                   "adler32": adler32_hex(checksum), "entry_start": window.first,
                                   "entry_stop": window.stop}]
        assert made["transforms"] == [{"name": "scale", "code": core.catalog.transform("scale").code_hash}]
        assert made["generator"] is None and made["recipe_id"] == source and made["range"]["index"] == 1
        assert made["node"] == socket.gethostname() and made["ray_node_id"]
        assert set(made["versions"]) >= {"vdata", "uproot", "awkward", "numba", "pyarrow", "ray"}

        made = check_remade(core, http, generated, 2, tmp_path, whole=True)
        assert made["generator"]["name"] == "zmumu" and made["generator"]["seed"] == 5 and made["inputs"] == []
        assert made["range"] == {"index": 2, "first": 2000, "stop": 3000}
        assert sdk.provenance(generated, 2, format="parquet") == provenance(http, generated, 2, "parquet")
        fetch(http, source, 1)  # the whole cache went: made once more, to be told after the restart
        kept = {rid: provenance(http, rid, i, "root") for rid, i in ((source, 1), (generated, 2))}

    with gateway(data_dir, db_url, shared_data) as (core, sdk, http, _):  # a restart: still told, as it was
        for (rid, i), record in zip(((source, 1), (generated, 2)), kept.values(), strict=True):
            assert provenance(http, rid, i, "root") == record


def test_a_job_range_its_output_and_the_command_line(tmp_path: Path, shared_data: Path, embedded_ray: None) -> None:
    with gateway(tmp_path / "data", f"sqlite:///{tmp_path}/v.db", shared_data) as (core, sdk, http, url):
        rid = sdk.submit(GENERATED).id
        job = sdk.create_job(rid, outputs="optional")
        leased = sdk.lease(job, 1, worker="w1")[0]
        early = http.get(f"/v1/jobs/{job}/ranges/{leased.index}/provenance").json()  # not made yet: no input
        assert early["state"] == "running" and early["worker"] == "w1" and early["input"] is None
        assert early["output"] is None
        sdk.get(rid, leased.index, tmp_path / "range.parquet")
        table = read_table(tmp_path / "range.parquet")
        stored = sdk.upload_output(job, leased.index, table.slice(0, 10), worker="w1")
        sdk.finish(job, leased.index, worker="w1")
        answer = http.get(f"/v1/jobs/{job}/ranges/{leased.index}/provenance").json()
        assert answer["state"] == "finished" and answer["worker"] == "w1" and answer["attempts"] == 0
        assert answer["input"] == sdk.provenance(rid, leased.index)
        output = answer["output"]
        assert output["worker"] == "w1" and output["input_provenance_id"] == answer["input"]["id"]
        assert output["format"] == "parquet" and output["events"] == 10
        assert (output["adler32"], output["size"]) == (stored["adler32"], stored["size"])
        assert sdk.job_provenance(job, leased.index) == answer
        assert pq.read_metadata(tmp_path / "range.parquet").metadata[PROVENANCE_KEY.encode()] == \
            answer["input"]["id"].encode()
        assert http.get(f"/v1/jobs/{job}/ranges/99/provenance").json()["error"] == "range_not_found"
        assert http.get(f"/v1/jobs/{job}/ranges/{2**70}/provenance").json()["error"] == "bad_job_request"
        assert http.get(f"/v1/recipes/{rid}/ranges/{2**70}/provenance").json()["error"] == "range_out_of_bounds"
        assert http.get(f"/v1/recipes/{rid}/ranges/0/provenance?format=csv").json()["error"] == "bad_format"
        assert http.get(f"/v1/jobs/job-nope/ranges/0/provenance").json()["error"] == "job_not_found"
        assert http.get(f"/v1/recipes/{rid}/ranges/9/provenance").json()["error"] == "range_out_of_bounds"

        env = {"VDATA_URL": url, "VDATA_TOKEN": http.headers["Authorization"].removeprefix("Bearer ")}
        result = CliRunner().invoke(app, ["recipes", "show", rid, "--range", "2"], env=env)  # never made
        assert result.exit_code == 2 and f"range 2 of {rid}" in result.output and "not in the cache" in result.output
        result = CliRunner().invoke(app, ["recipes", "show", rid, "--range", str(leased.index), "--json"], env=env)
        assert result.exit_code == 0, result.output
        assert json.loads(result.output) == sdk.provenance(rid, leased.index)
        result = CliRunner().invoke(app, ["recipes", "show", rid, "--range", str(leased.index)], env=env)
        assert result.exit_code == 0, result.output
        assert answer["input"]["id"] in result.output and "generator zmumu" in result.output
        assert "made on" in result.output
