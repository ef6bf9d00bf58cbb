"""Every endpoint and every error code, through the ASGI app with a real core (Ray)."""

from __future__ import annotations

import io
import itertools
import re
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from gateway_helpers import HZZ, RECIPE, SCALE, Client, Env, error_of

from service.http.deps import InFlight, get_inflight
from service.core.cache import CacheKey
from vdata.formats import MEDIA_TYPES
from service.core.tokens import hash_token
from vdata.testing import wait_until


@pytest.fixture(scope="module")
def env(started_env: Env) -> Env:
    return started_env


@pytest.fixture(scope="module")
def admin(env: Env) -> Iterator[Client]:
    client = env.client("admin")
    yield client
    client.close()


@pytest.fixture(scope="module")
def recipe_id(admin: Client, shared_data: Path) -> str:
    r = admin.post("/v1/datasets", json={"name": "opendata:hzz", "paths": [str(shared_data / HZZ)], "tree": "events"})
    assert r.status_code == 201, r.text
    r = admin.post("/v1/transforms", json=SCALE)
    assert r.status_code == 201, r.text
    r = admin.post("/v1/recipes", json=RECIPE)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


# -- health, metrics, docs ---------------------------------------------------------------------


def test_healthz_needs_no_token(env: Env) -> None:
    client = env.client(None)
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert re.fullmatch(r"[0-9a-f]{16}", r.headers["x-request-id"])
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"


def test_docs_and_openapi(env: Env) -> None:
    client = env.client(None)
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/recipes/{recipe_id}/ranges/{index}" in paths and "/v1/jobs/{job_id}/lease" in paths


def test_metrics_in_prometheus_format(admin: Client, recipe_id: str) -> None:
    assert admin.get(f"/v1/recipes/{recipe_id}/ranges/1?format=parquet").status_code == 200
    text = admin.get("/metrics").text
    assert 'vdata_http_requests_total{method="GET",route="/v1/recipes/{recipe_id}/ranges/{index}",status="200"}' in text
    assert 'vdata_ranges_served_total{format="parquet"}' in text
    assert re.search(r'vdata_bytes_served_total\{format="parquet"\} [1-9]', text)
    for name in ("vdata_http_request_seconds_bucket", "vdata_cache_lookups_total", "vdata_cache_corrupt_total",
                 "vdata_tasks_in_flight", "vdata_ranges_materialized_total", "vdata_lookahead_ranges_total"):
        assert name in text, name


# -- datasets ------------------------------------------------------------------------------------


def test_datasets(admin: Client, recipe_id: str, shared_data: Path) -> None:
    r = admin.get("/v1/datasets/opendata:hzz")
    assert r.status_code == 200
    ds = r.json()
    assert ds["name"] == "opendata:hzz" and ds["num_events"] == 2421 and "NMuon" in ds["columns"]
    assert ds["files"] == [{"path": str((shared_data / HZZ).resolve()), "entries": 2421,
                            "size": (shared_data / HZZ).stat().st_size, "adler32": ds["files"][0]["adler32"]}]
    assert re.fullmatch(r"[0-9a-f]{8}", ds["files"][0]["adler32"])
    assert [d["name"] for d in admin.get("/v1/datasets").json()] == ["opendata:hzz"]


def test_dataset_errors(admin: Client, env: Env, shared_data: Path) -> None:
    assert "no dataset 'nope'" in error_of(admin.get("/v1/datasets/nope"), 404, "dataset_not_found")
    body = {"name": "x", "paths": [str(shared_data / HZZ)], "tree": "nope"}
    assert "nope" in error_of(admin.post("/v1/datasets", json=body), 400, "tree_not_found")
    body = {"name": "x", "paths": [str(env.data_dir / "missing.root")], "tree": "events"}
    assert "missing.root" in error_of(admin.post("/v1/datasets", json=body), 400, "source_file_not_found")
    assert "paths" in error_of(admin.post("/v1/datasets", json={"name": "x", "tree": "t"}), 422, "validation_error")
    body = {"name": "x", "paths": ["/etc/passwd"], "tree": "t"}
    assert "/etc/passwd" in error_of(admin.post("/v1/datasets", json=body), 403, "path_not_allowed")


# -- transforms ----------------------------------------------------------------------------------


def test_transforms(admin: Client, recipe_id: str) -> None:
    listed = admin.get("/v1/transforms").json()
    assert [t["name"] for t in listed] == ["scale"]
    assert re.fullmatch(r"[0-9a-f]{64}", listed[0]["id"])
    again = admin.post("/v1/transforms", json=SCALE).json()
    assert again == {"id": listed[0]["id"], "name": "scale", "kind": "element",
                     "inputs": {"x": "flat"}, "outputs": {"y": "float64"}}
    bad = dict(SCALE, source="import os\ndef scale(x):\n    return x\n")
    assert "scale" in error_of(admin.post("/v1/transforms", json=bad), 400, "transform_refused")
    error_of(admin.post("/v1/transforms", json=dict(SCALE, extra=1)), 422, "validation_error")


# -- recipes and ranges --------------------------------------------------------------------------


def test_recipe_plan_and_ranges(admin: Client, recipe_id: str) -> None:
    r = admin.get(f"/v1/recipes/{recipe_id}")
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == recipe_id and body["num_events"] == 2421 and body["num_ranges"] == 7
    assert body["schema"] == [{"name": "met_px2", "type": "double"}, {"name": "NMuon", "type": "int32"},
                              {"name": "Muon_Px", "type": "large_list<item: float not null>"}]
    [warning] = body["warnings"]  # HZZ's collection is MET, not met: coffea would see a collection met
    assert warning.startswith("steps[0].transform.outputs.y: ") and "collection 'met' that the data do not have" in warning
    fine = admin.post("/v1/recipes", json=dict(RECIPE, steps=[{"transform": {**RECIPE["steps"][0]["transform"],
                                                                             "outputs": {"y": "metPx2"}}}],
                                               columns=["metPx2"]))
    assert fine.status_code == 201 and fine.json()["warnings"] == []
    ranges = admin.get(f"/v1/recipes/{recipe_id}/ranges").json()
    assert len(ranges) == 7 and ranges[0]["first"] == 0 and ranges[-1]["stop"] == 2421
    assert all(set(r) == {"index", "first", "stop"} for r in ranges)
    assert all(a["stop"] == b["first"] for a, b in itertools.pairwise(ranges))


def test_range_bytes(admin: Client, recipe_id: str) -> None:
    r = admin.get(f"/v1/recipes/{recipe_id}/ranges/0", params={"format": "arrow"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == MEDIA_TYPES["arrow"]
    assert r.headers["x-vdata-adler32"] == f"{zlib.adler32(r.content):08x}"
    table = pa.ipc.open_stream(io.BytesIO(r.content)).read_all()
    assert table.num_rows == int(r.headers["x-vdata-events"]) > 0
    assert table.column_names == ["met_px2", "NMuon", "Muon_Px"]
    again = admin.get(f"/v1/recipes/{recipe_id}/ranges/0")  # a hit: the same bytes
    assert again.content == r.content and int(again.headers["content-length"]) == len(r.content)


def test_root_range_with_nulls_is_a_4xx_naming_the_column(admin: Client, recipe_id: str) -> None:
    lead = {"source": {"dataset": "opendata:hzz"}, "steps": [{"define": {"lead_mu_px": "Muon_Px[1]"}}],
            "columns": ["lead_mu_px"], "range_events": 400}  # fmt: skip
    r = admin.post("/v1/recipes", json=lead)
    assert r.status_code == 201, r.text
    ranges = f"/v1/recipes/{r.json()['id']}/ranges/0"
    detail = error_of(admin.get(ranges, params={"format": "root"}), 400, "bad_format")
    assert "'lead_mu_px' has missing values" in detail and "fill_null" in detail
    arrow = admin.get(ranges, params={"format": "arrow"})
    assert arrow.status_code == 200, arrow.text
    assert pa.ipc.open_stream(io.BytesIO(arrow.content)).read_all()["lead_mu_px"].null_count > 0
    filled = dict(lead, steps=[{"define": {"lead_mu_px": "fill_null(Muon_Px[1], -1)"}}])
    r = admin.post("/v1/recipes", json=filled)
    assert r.status_code == 201, r.text
    assert admin.get(f"/v1/recipes/{r.json()['id']}/ranges/0", params={"format": "root"}).status_code == 200


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_range_bytes_compressed(env: Env, admin: Client, recipe_id: str, compression: str) -> None:
    """An IPC stream whose buffers are compressed: a cache entry of its own, the same table."""
    plain = admin.get(f"/v1/recipes/{recipe_id}/ranges/1?format=arrow")
    r = admin.get(f"/v1/recipes/{recipe_id}/ranges/1", params={"format": "arrow", "compression": compression})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == MEDIA_TYPES["arrow"]
    assert r.headers["x-vdata-adler32"] == f"{zlib.adler32(r.content):08x}"
    assert r.headers["content-disposition"].endswith('00000001.arrow"')
    assert r.content != plain.content
    assert pa.ipc.open_stream(r.content).read_all().equals(pa.ipc.open_stream(plain.content).read_all())
    assert env.core.cache.contains(CacheKey(recipe_id, 1, f"arrow+{compression}"))
    assert f'vdata_bytes_served_total{{format="arrow+{compression}"}}' in admin.get("/metrics").text


def test_bad_compression_is_400_naming_it(admin: Client, recipe_id: str) -> None:
    url = f"/v1/recipes/{recipe_id}/ranges/0"
    detail = error_of(admin.get(url, params={"compression": "gzip"}), 400, "bad_format")
    assert "unknown compression 'gzip'; choose one of none, lz4, zstd" in detail
    detail = error_of(admin.get(url, params={"format": "parquet", "compression": "lz4"}), 400, "bad_format")
    assert "compression 'lz4' applies to arrow only; parquet" in detail
    stage = f"/v1/recipes/{recipe_id}/stage"
    assert "'brotli'" in error_of(admin.post(stage, json={"count": 1, "compression": "brotli"}), 400, "bad_format")


def test_recipe_errors(admin: Client, recipe_id: str) -> None:
    assert "vds-000" in error_of(admin.get("/v1/recipes/vds-000"), 404, "recipe_not_found")
    error_of(admin.get("/v1/recipes/vds-000/ranges"), 404, "recipe_not_found")
    error_of(admin.get("/v1/recipes/vds-000/ranges/0"), 404, "recipe_not_found")
    assert "range 7" in error_of(admin.get(f"/v1/recipes/{recipe_id}/ranges/7"), 416, "range_out_of_bounds")
    error_of(admin.get(f"/v1/recipes/{recipe_id}/ranges/-1"), 416, "range_out_of_bounds")
    assert "'csv'" in error_of(admin.get(f"/v1/recipes/{recipe_id}/ranges/0?format=csv"), 400, "bad_format")
    error_of(admin.get(f"/v1/recipes/{recipe_id}/ranges/x"), 422, "validation_error")
    detail = error_of(admin.post("/v1/recipes", json=dict(RECIPE, columns=["nope"])), 400, "bad_recipe")
    assert "nope" in detail
    assert "unknown" in error_of(admin.post("/v1/recipes", json={"source": {"dataset": "unknown"}}), 400, "bad_recipe")
    error_of(admin.post("/v1/recipes", json=[1, 2]), 422, "validation_error")
    error_of(admin.post("/v1/recipes", content=b"{not json", headers={"content-type": "application/json"}),
             422, "validation_error")


def _cached(env: Env, recipe_id: str, indices: list[int], fmt: str) -> None:
    """Wait until the ranges are in the cache (they are made in the background)."""
    wait_until(lambda: all(env.core.cache.contains(CacheKey(recipe_id, i, fmt)) for i in indices),
               timeout=120, message=f"ranges {indices} of {recipe_id} as {fmt} in the cache")


def _engine_misses(client: Client) -> float:
    """The ranges the service set out to make so far, from /metrics: the requests that missed
    the cache (counted at the door) and the ranges queued ahead of any request (read-ahead,
    counted when queued, before the asker hears back)."""
    text = client.get("/metrics").text
    found = re.search(r'^vdata_cache_lookups_total\{result="miss"\} (\S+)$', text, re.MULTILINE)
    ahead = re.search(r'^vdata_lookahead_ranges_total (\S+)$', text, re.MULTILINE)
    assert found and ahead, text
    return float(found.group(1)) + float(ahead.group(1))


def test_stage_materializes_ahead_of_any_request(env: Env, recipe_id: str) -> None:
    reader = env.client("reader")
    assert not any(env.core.cache.contains(CacheKey(recipe_id, i, "parquet")) for i in (2, 3, 4))
    r = reader.post(f"/v1/recipes/{recipe_id}/stage", json={"first": 2, "count": 3, "format": "parquet"})
    assert r.status_code == 202, r.text
    assert r.json() == {"recipe_id": recipe_id, "format": "parquet", "compression": "none", "ranges": [2, 3, 4]}
    _cached(env, recipe_id, [2, 3, 4], "parquet")  # nobody asked for the bytes yet
    assert not env.core.cache.contains(CacheKey(recipe_id, 1, "root"))  # only what was staged
    served = reader.get(f"/v1/recipes/{recipe_id}/ranges/3?format=parquet")
    assert served.status_code == 200 and served.headers["x-vdata-events"] != "0"
    # near the end the count is clipped at the last range; staging again is harmless
    r = reader.post(f"/v1/recipes/{recipe_id}/stage", json={"first": 5, "count": 10, "format": "arrow"})
    assert r.status_code == 202 and r.json()["ranges"] == [5, 6]
    _cached(env, recipe_id, [5, 6], "arrow")
    assert reader.post(f"/v1/recipes/{recipe_id}/stage", json={"first": 5, "format": "arrow"}).json()["ranges"] == [5, 6]
    r = reader.post(f"/v1/recipes/{recipe_id}/stage", json={"first": 6, "count": 1, "compression": "zstd"})
    assert r.status_code == 202 and r.json()["compression"] == "zstd"
    _cached(env, recipe_id, [6], "arrow+zstd")  # its own entry, next to the plain one


def test_sequential_gets_read_ahead_random_ones_do_not(env: Env, recipe_id: str) -> None:
    reader = env.client("reader", env.settings_with(readahead=2))
    cached = lambda i: env.core.cache.contains(CacheKey(recipe_id, i, "root"))  # noqa: E731
    # The gateway asks for what it reads ahead before it answers (then the range is served), so
    # the misses counted when a GET has returned are all it set out to make: no waiting needed.
    misses = _engine_misses(reader)
    assert reader.get(f"/v1/recipes/{recipe_id}/ranges/3?format=root").status_code == 200
    assert _engine_misses(reader) == misses + 1  # range 3 alone: random access (2 not cached) reads nothing ahead
    assert [cached(i) for i in range(7)] == [False, False, False, True, False, False, False]
    assert reader.get(f"/v1/recipes/{recipe_id}/ranges/0?format=root").status_code == 200  # a start
    assert _engine_misses(reader) == misses + 4  # 0, and 1 and 2 ahead of it
    _cached(env, recipe_id, [1, 2], "root")
    assert not cached(4)
    assert reader.get(f"/v1/recipes/{recipe_id}/ranges/2?format=root").status_code == 200  # after 1: sequential
    assert _engine_misses(reader) == misses + 5  # 4 (3 is cached); 5 is beyond the read-ahead
    _cached(env, recipe_id, [4], "root")
    assert not cached(5) and not cached(6)


def test_stage_errors(env: Env, recipe_id: str) -> None:
    reader = env.client("reader", env.settings_with(max_stage_ranges=2))
    url = f"/v1/recipes/{recipe_id}/stage"
    assert "range 7" in error_of(reader.post(url, json={"first": 7, "count": 1}), 416, "range_out_of_bounds")
    assert "max_stage_ranges" in error_of(reader.post(url, json={"count": 3}), 400, "limit_exceeded")
    assert "'csv'" in error_of(reader.post(url, json={"count": 1, "format": "csv"}), 400, "bad_format")
    error_of(reader.post(url, json={"count": 0}), 422, "validation_error")
    error_of(reader.post(url, json={"count": 1, "ranges": [1]}), 422, "validation_error")  # unknown field
    error_of(reader.post("/v1/recipes/vds-000/stage", json={"count": 1}), 404, "recipe_not_found")


# -- jobs ----------------------------------------------------------------------------------------


def test_job_lease_heartbeat_finish_fail(env: Env, recipe_id: str) -> None:
    worker = env.client("worker")
    r = worker.post("/v1/jobs", json={"recipe_id": recipe_id, "max_attempts": 2, "lease_seconds": 30})
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    leases = worker.post(f"/v1/jobs/{job}/lease", json={"worker": "w1", "n": 3}).json()
    assert [x["index"] for x in leases] == [0, 1, 2]
    assert leases[1]["url"] == f"/v1/recipes/{recipe_id}/ranges/1?format=arrow"
    assert all(x["lease_deadline"] > 0 and x["first"] < x["stop"] for x in leases)
    r = worker.post(f"/v1/jobs/{job}/ranges/0/heartbeat", json={"worker": "w1"})
    assert r.status_code == 200 and r.json()["lease_deadline"] >= leases[0]["lease_deadline"]
    assert worker.post(f"/v1/jobs/{job}/ranges/0/finish", json={"worker": "w1"}).json() == {"index": 0, "ok": True}
    r = worker.post(f"/v1/jobs/{job}/ranges/1/fail", json={"worker": "w1", "message": "payload crashed"})
    assert r.status_code == 200
    r = worker.post(f"/v1/jobs/{job}/ranges/2/fail", json={"worker": "w1", "message": "bad input", "fatal": True})
    assert r.status_code == 200
    status = worker.get(f"/v1/jobs/{job}").json()
    assert status["counts"] == {"ready": 5, "running": 0, "finished": 1, "failed": 0, "fatal": 1}
    assert status["events_finished"] == leases[0]["stop"] - leases[0]["first"] and not status["done"]
    assert status["recipe_id"] == recipe_id and status["ranges_total"] == 7 and status["events_total"] == 2421
    # the lease URL serves the range
    assert worker.get(leases[0]["url"]).status_code == 200


def test_job_errors(env: Env, recipe_id: str) -> None:
    worker = env.client("worker")
    error_of(worker.post("/v1/jobs", json={"recipe_id": "vds-000"}), 404, "recipe_not_found")
    error_of(worker.post("/v1/jobs", json={"recipe_id": recipe_id, "lease_seconds": 0}), 422, "validation_error")
    error_of(worker.get("/v1/jobs/job-nope"), 404, "job_not_found")
    error_of(worker.post("/v1/jobs/job-nope/lease", json={"worker": "w"}), 404, "job_not_found")
    job = worker.post("/v1/jobs", json={"recipe_id": recipe_id}).json()["id"]
    assert "range 99" in error_of(worker.post(f"/v1/jobs/{job}/ranges/99/finish", json={"worker": "w"}),
                                  404, "range_not_found")
    error_of(worker.post(f"/v1/jobs/{job}/lease", json={"worker": "w", "n": 0}), 422, "validation_error")
    error_of(worker.post(f"/v1/jobs/{job}/lease", json={"worker": ""}), 422, "validation_error")
    assert worker.post(f"/v1/jobs/{job}/lease", json={"worker": "w1"}).json()[0]["index"] == 0
    detail = error_of(worker.post(f"/v1/jobs/{job}/ranges/0/finish", json={"worker": "w2"}), 409, "lease_conflict")
    assert "'w2'" in detail and "'w1'" in detail
    error_of(worker.post(f"/v1/jobs/{job}/ranges/1/heartbeat", json={"worker": "w1"}), 409, "lease_conflict")
    error_of(worker.post(f"/v1/jobs/{job}/ranges/-1/finish", json={"worker": "w1"}), 400, "bad_job_request")


# -- auth, unknown routes ----------------------------------------------------------------------


def test_unauthenticated_and_forbidden(env: Env, recipe_id: str) -> None:
    r = env.client(None).get(f"/v1/recipes/{recipe_id}")
    error_of(r, 401, "unauthenticated")
    assert r.headers["www-authenticate"] == "Bearer"
    error_of(env.client(None).get("/v1/datasets", headers={"Authorization": "Bearer vdt_wrong"}), 401)
    error_of(env.client(None).get("/v1/datasets", headers={"Authorization": "Basic YTpi"}), 401)
    assert "'admin'" in error_of(env.client("scientist").post("/v1/datasets", json={}), 403, "forbidden")


def test_admin_creates_tokens(admin: Client, env: Env) -> None:
    r = admin.post("/v1/tokens", json={"role": "worker", "note": "ci"})
    assert r.status_code == 201 and r.json()["role"] == "worker"
    assert env.client(None).get("/v1/jobs/x", headers={"Authorization": f"Bearer {r.json()['token']}"}).status_code == 404
    error_of(admin.post("/v1/tokens", json={"role": "god"}), 422, "validation_error")


def test_unknown_route_and_method(admin: Client) -> None:
    error_of(admin.get("/v2/nothing"), 404, "not_found")
    error_of(admin.request("DELETE", "/v1/datasets"), 405, "method_not_allowed")


# -- limits --------------------------------------------------------------------------------------


def test_body_too_large(env: Env) -> None:
    client = env.client("admin", env.settings_with(max_body_bytes=1000))
    big = {"name": "x", "paths": ["a" * 2000], "tree": "t"}
    assert "max_body_bytes" in error_of(client.post("/v1/datasets", json=big), 413, "body_too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        yield b'{"name": "x", "paths": ["'
        for _ in range(10):
            yield b"a" * 200
        yield b'"], "tree": "t"}'

    r = client.post("/v1/datasets", content=chunks(), headers={"content-type": "application/json"})
    error_of(r, 413, "body_too_large")
    assert client.post("/v1/datasets", json={"name": "x", "paths": ["/nope"], "tree": "t"}).status_code == 403


def test_column_and_range_events_limits(env: Env, recipe_id: str) -> None:
    client = env.client("reader", env.settings_with(max_columns=2, max_range_events=500))
    assert "max_columns" in error_of(client.post("/v1/recipes", json=RECIPE), 400, "limit_exceeded")
    assert "max_columns" in error_of(client.post("/v1/recipes", json=dict(RECIPE, columns=None)), 400,
                                     "limit_exceeded")  # no columns: every column of the dataset
    small = dict(RECIPE, columns=["NMuon"])
    assert client.post("/v1/recipes", json=small).status_code == 201
    detail = error_of(client.post("/v1/recipes", json=dict(small, range_events=501)), 400, "limit_exceeded")
    assert "max_range_events" in detail
    error_of(client.post("/v1/recipes", json={k: v for k, v in small.items() if k != "range_events"}),
             400, "limit_exceeded")  # the default, 100000 events per range
    error_of(client.get(f"/v1/recipes/{recipe_id}/ranges/0"), 400, "limit_exceeded")  # stored before


def test_materializations_in_flight_per_token(env: Env, recipe_id: str) -> None:
    client = env.client("reader")
    busy = InFlight(limit=1)
    client.app.dependency_overrides[get_inflight] = lambda: busy
    with busy.slot(hash_token(env.tokens["reader"])):  # the token already waits on one
        r = client.get(f"/v1/recipes/{recipe_id}/ranges/5?format=root")
        assert "max_inflight_per_token" in error_of(r, 429, "too_many_in_flight")
        assert r.headers["retry-after"] == "1"
        assert client.get(f"/v1/recipes/{recipe_id}/ranges/0").status_code == 200  # a hit waits on nothing
        assert env.client("worker").get(f"/v1/recipes/{recipe_id}/ranges/5?format=root").status_code == 200
    assert client.get(f"/v1/recipes/{recipe_id}/ranges/5?format=root").status_code == 200


def test_range_timeout_is_503_with_retry_after(env: Env, recipe_id: str) -> None:
    client = env.client("reader", env.settings_with(range_timeout_seconds=1e-6))
    r = client.get(f"/v1/recipes/{recipe_id}/ranges/6?format=parquet")
    assert "range_timeout_seconds" in error_of(r, 503, "range_unavailable")
    assert r.headers["retry-after"] == "5"
    env.core.request(recipe_id, 6, "parquet").result(timeout=120)  # the materialization went on
    assert client.get(f"/v1/recipes/{recipe_id}/ranges/6?format=parquet").status_code == 200
