"""Job outputs through the gateway: PUT .../ranges/{index}/output (checked, streamed, limited),
``Client.run_worker`` uploading what the payload returns, the merge, GET /v1/jobs/{id}/outputs,
``Client.fetch_outputs`` and ``vdata jobs outputs``: a real uvicorn on loopback over a core with Ray."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from gateway_helpers import Env, error_of
from typer.testing import CliRunner

from service.cli import app
from service.http.server import BackgroundServer
from vdata import Client, EventRange
from vdata.checksum import adler32, adler32_hex
from vdata.formats import encode_table
from vdata.testing import wait_until

RECIPE = {"source": {"generator": "zmumu", "events": 4000, "seed": 11}, "columns": ["Muon_pt", "nMuon"],
          "range_events": 1000}
TABLE = pa.table({"x": [1.0, 2.0, 3.0]})


def put(client: object, job: str, index: int, data: bytes, worker: str = "w1", fmt: str | None = "parquet",
        checksum: str | None = None, **headers: str) -> object:
    params = {"worker": worker} | ({"format": fmt} if fmt else {})
    header = {"X-Vdata-Adler32": checksum or adler32_hex(adler32(data))} | headers
    return client.request("PUT", f"/v1/jobs/{job}/ranges/{index}/output", params=params,  # type: ignore[attr-defined]
                          content=data, headers=header)


def test_upload_checks_limits_and_conflicts(started_env: Env) -> None:
    ranges = [EventRange(i, 10 * i, 10 * i + 10) for i in range(3)]
    job = started_env.core.jobs.create_job("vds-up", ranges, outputs="required")
    worker = started_env.client("worker", started_env.settings_with(max_output_bytes=2000, max_body_bytes=100))
    try:
        assert worker.post(f"/v1/jobs/{job}/lease", json={"worker": "w1", "n": 3}).status_code == 200
        data = encode_table(TABLE, "parquet")  # larger than max_body_bytes: uploads have their own limit
        first = put(worker, job, 0, data)
        assert first.status_code == 200, first.text
        body = first.json()
        assert (body["events"], body["size"], body["stored"], body["adler32"]) == (3, len(data), True,
                                                                                   adler32_hex(adler32(data)))
        assert put(worker, job, 0, data).json()["stored"] is False  # idempotent
        got = worker.get(body["url"])
        assert got.content == data and got.headers["X-Vdata-Adler32"] == body["adler32"]
        assert "range 1" in error_of(put(worker, job, 1, data, checksum="00000000"), 400, "bad_output")
        detail = error_of(put(worker, job, 1, data, fmt="arrow"), 400, "bad_output")
        assert "range 1" in detail and "arrow" in detail
        assert "X-Vdata-Adler32" in error_of(put(worker, job, 1, data, checksum="zz"), 400, "bad_output")
        assert "format" in error_of(put(worker, job, 1, data, fmt=None), 400, "bad_output")
        by_type = put(worker, job, 1, data, fmt=None, **{"Content-Type": "application/vnd.apache.parquet"})
        assert by_type.status_code == 200, by_type.text
        assert "max_output_bytes" in error_of(put(worker, job, 2, b"x" * 2001), 413, "body_too_large")
        error_of(put(worker, job, 2, data, worker="w2"), 409, "lease_conflict")
        assert "requires its output" in error_of(worker.post(f"/v1/jobs/{job}/ranges/2/finish",
                                                             json={"worker": "w1"}), 409, "output_conflict")
        assert worker.post(f"/v1/jobs/{job}/ranges/0/finish", json={"worker": "w1"}).status_code == 200
        other = encode_table(TABLE.slice(1), "parquet")
        assert "finished" in error_of(put(worker, job, 0, other), 409, "output_conflict")
        listing = worker.get(f"/v1/jobs/{job}/outputs").json()
        assert listing["state"] == "open" and [r["index"] for r in listing["ranges"]] == [0, 1]
        assert worker.get(f"/v1/jobs/{job}").json()["state"] == "running"
    finally:
        worker.close()


def test_run_worker_uploads_then_the_merge_is_fetched(started_env: Env, server: BackgroundServer,
                                                      tmp_path: Path) -> None:
    admin = Client(server.url, started_env.tokens["admin"], retries=0)
    with admin, Client(server.url, started_env.tokens["worker"], retries=0) as worker:
        recipe = admin.submit(RECIPE).id
        job = worker.create_job(recipe, outputs="required", output_format="parquet")

        def payload(table: pa.Table) -> pa.Table:  # what a user's selection might return
            return pa.table({"muons": pc.list_value_length(table["Muon_pt"])})

        summary = worker.run_worker(job, payload, worker="w1", n=2)
        assert summary.finished == 4
        wait_until(lambda: worker.job(job)["state"] == "merged", timeout=120, message="the merge")
        paths = worker.fetch_outputs(job, tmp_path / "merged")
        merged = pa.concat_tables([pq.read_table(p) for p in paths])
        whole = pa.concat_tables([admin._range_table(f"/v1/recipes/{recipe}/ranges/{i}?format=arrow", "r", "arrow",
                                                     None) for i in range(4)])
        assert merged.num_rows == 4000 and merged["muons"].equals(pc.list_value_length(whole["Muon_pt"]))
        listing = worker.outputs(job)
        assert sum(f["events"] for f in listing["files"]) == 4000 and listing["state"] == "merged"
        assert [p.name for p in paths] == [f["name"] for f in listing["files"]]
        result = CliRunner().invoke(app, ["jobs", "outputs", job, str(tmp_path / "cli"), "--url", server.url,
                                          "--token", started_env.tokens["worker"]])
        assert result.exit_code == 0, result.output
        assert sorted(p.read_bytes() for p in (tmp_path / "cli").iterdir()) == sorted(p.read_bytes() for p in paths)
        ranges = worker.fetch_outputs(job, tmp_path / "ranges", ranges=True)  # kept: retention is a day
        assert len(ranges) == 4 and sum(pq.read_table(p).num_rows for p in ranges) == 4000


def test_fetched_arrow_outputs_are_ipc_files_with_the_users_umask(started_env: Env, server: BackgroundServer,
                                                                  tmp_path: Path) -> None:
    """Arrow outputs travel as IPC streams; what fetch_outputs writes is an IPC file (every reader
    opens it, as with Client.fetch) of mode 0644 under umask 022."""
    with Client(server.url, started_env.tokens["worker"], retries=0) as worker:
        job = worker.create_job(worker.submit(RECIPE).id, outputs="required", output_format="arrow")
        worker.run_worker(job, lambda table: pa.table({"n": pc.list_value_length(table["Muon_pt"])}), worker="w1")
        wait_until(lambda: worker.job(job)["state"] == "merged", timeout=120, message="the merge")
        old = os.umask(0o022)
        try:
            paths = worker.fetch_outputs(job, tmp_path / "ranges", ranges=True) + worker.fetch_outputs(job, tmp_path / "m")
        finally:
            os.umask(old)
    assert paths and all(p.suffix == ".arrow" for p in paths)
    for p in paths:
        assert pa.ipc.open_file(p).read_all().column_names == ["n"]
        assert p.stat().st_mode & 0o777 == 0o644
