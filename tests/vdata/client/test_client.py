"""The client SDK against a fake-but-real HTTP service: a small FastAPI app with the gateway's
endpoints over an in-memory table, served by uvicorn on a loopback port, with switches for a
per-request delay, a corrupted body, a dropped connection and error statuses."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import os
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyarrow as pa
import pytest
import uproot
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

import vdata
from vdata.client import (
    ChecksumMismatch,
    Client,
    LeasedRange,
    RecipeInfo,
    ServiceError,
    ServiceUnreachable,
)
from vdata.errors import RecipeError
from vdata.formats import FORMATS, MEDIA_TYPES, encode_table
from vdata.data.recipes import Recipe
from vdata.testing import assert_tables_equal, wait_until

TOKEN = "s3cret"
RECIPE = {"source": {"generator": "zmumu", "events": 3800, "seed": 1}, "range_events": 500}
SIZES = [500] * 7 + [300]  # 8 ranges


def make_table() -> pa.Table:
    rng = np.random.default_rng(7)
    n = sum(SIZES)
    counts = rng.poisson(1.5, n)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
    total = int(counts.sum())
    return pa.table({
        "event": pa.array(np.arange(n, dtype=np.int64)),
        "MET_pt": pa.array(rng.exponential(30.0, n).astype(np.float32)),
        "HLT_IsoMu24": pa.array(rng.random(n) < 0.3),
        "Muon_pt": pa.LargeListArray.from_arrays(offsets, pa.array(rng.exponential(25.0, total).astype(np.float32))),
        "Muon_eta": pa.LargeListArray.from_arrays(offsets, pa.array(rng.normal(0.0, 1.4, total).astype(np.float32))),
    })


def error(status: int, name: str, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": name, "detail": detail}, status_code=status, headers=headers)


class FakeService:
    """The gateway's HTTP contract, minimally: recipes (every id serves the same table), range
    bytes, and jobs with leases, attempts and deadlines. All handlers run on uvicorn's loop."""

    def __init__(self) -> None:
        self.table = make_table()
        bounds = np.concatenate([[0], np.cumsum(SIZES)]).tolist()
        self.ranges = list(itertools.pairwise(bounds))
        self.slices = [self.table.slice(a, b - a).combine_chunks() for a, b in self.ranges]
        self.bodies = {fmt: [encode_table(t, fmt) for t in self.slices] for fmt in FORMATS}
        self.reset()

    def reset(self) -> None:
        self.delay = 0.0
        self.corrupt = self.drop = self.garbage = 0
        self.chunked = False  # send bodies without a Content-Length, in pieces
        self.first_body: bytes | None = None  # range 0's Arrow body instead of the usual one
        self.hold: threading.Event | None = None  # range 0: send half its body, the rest once set
        self.replace: list[bytes] = []  # range 0: send these bodies (one per request) under its real headers
        self.statuses: list[tuple[int, str]] = []  # error answers for the next range requests
        self.recipes: set[str] = set()
        self.range_requests: list[tuple[int, str]] = []  # when each arrived
        self.compressions: list[str] = []  # what each asked for
        self.served: list[int] = []  # when each was answered (after the delay)
        self.jobs: dict[str, dict[str, Any]] = {}
        self.finishes: list[int] = []
        self.failures: list[tuple[int, str]] = []
        self.heartbeats: list[tuple[int, float]] = []
        self.expired: list[int] = []

    def info(self, rid: str) -> dict[str, Any]:
        schema = [{"name": f.name, "type": str(f.type)} for f in self.table.schema]
        return {"id": rid, "num_events": self.table.num_rows, "num_ranges": len(self.ranges), "schema": schema}

    def range_body(self, index: int, fmt: str, compression: str = "none") -> Response:
        body = self.bodies[fmt][index] if compression == "none" else encode_table(self.slices[index], fmt, compression)
        if index == 0 and fmt == "arrow" and compression == "none" and self.first_body is not None:
            body = self.first_body
        headers = {"X-Vdata-Adler32": f"{zlib.adler32(body) & 0xFFFFFFFF:08x}",
                   "X-Vdata-Events": str(self.slices[index].num_rows)}
        if self.statuses:
            status, detail = self.statuses.pop(0)
            return error(status, "unavailable" if status in (429, 503) else "not_found", detail, **{"Retry-After": "0"})
        if index == 0 and self.replace:
            body = self.replace.pop(0)
        if index == 0 and self.hold is not None:
            hold, half = self.hold, len(body) // 2

            async def held() -> Any:
                yield body[:half]
                while not hold.is_set():
                    await asyncio.sleep(0.01)
                yield body[half:]

            return StreamingResponse(held(), media_type=MEDIA_TYPES[fmt],
                                     headers={**headers, "Content-Length": str(len(body))})
        if self.garbage:  # intact bytes, per the checksum, that are not the format
            self.garbage -= 1
            body = b"not a table"
            headers["X-Vdata-Adler32"] = f"{zlib.adler32(body):08x}"
        if self.corrupt:
            self.corrupt -= 1
            body = body[:100] + bytes([body[100] ^ 0xFF]) + body[101:]
        if self.drop:  # declare the full length, send half: uvicorn then closes the connection
            self.drop -= 1
            headers["Content-Length"] = str(len(body))
            body = body[: len(body) // 2]
        if self.chunked:
            pieces = [body[i:i + 1000] for i in range(0, len(body), 1000)]
            return StreamingResponse(iter(pieces), media_type=MEDIA_TYPES[fmt], headers=headers)
        return Response(body, media_type=MEDIA_TYPES[fmt], headers=headers)

    def job_rows(self, job_id: str) -> dict[str, Any]:
        job = self.jobs[job_id]
        now = time.time()
        for row in job["rows"]:  # reclaim overdue leases
            if row["state"] == "running" and row["deadline"] < now:
                self.expired.append(row["index"])
                row["attempts"] += 1
                row["state"] = "failed" if row["attempts"] >= job["max_attempts"] else "ready"
        return job

    def status(self, job_id: str) -> dict[str, Any]:
        job = self.job_rows(job_id)
        counts = dict.fromkeys(("ready", "running", "finished", "failed", "fatal"), 0)
        for row in job["rows"]:
            counts[row["state"]] += 1
        finished = sum(r["stop"] - r["first"] for r in job["rows"] if r["state"] == "finished")
        return {"id": job_id, "recipe_id": job["recipe_id"], "counts": counts, "events_finished": finished,
                "events_total": self.table.num_rows, "done": counts["ready"] + counts["running"] == 0,
                "lease_seconds": job["lease_seconds"], "max_attempts": job["max_attempts"]}

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def auth(request: Request, call_next: Any) -> Response:
            if request.headers.get("Authorization") != f"Bearer {TOKEN}":
                return error(401, "unauthorized", "missing or unknown bearer token")
            response: Response = await call_next(request)
            return response

        @app.post("/v1/recipes")
        async def submit(request: Request) -> Response:
            try:
                rid = Recipe.from_dict(await request.json()).id
            except RecipeError as exc:
                return error(422, "invalid_recipe", str(exc))
            self.recipes.add(rid)
            return JSONResponse(self.info(rid))

        @app.get("/v1/recipes/{rid}")
        async def recipe(rid: str) -> Response:
            return JSONResponse(self.info(rid)) if rid in self.recipes else error(404, "not_found", f"no recipe {rid!r}")

        @app.get("/v1/recipes/{rid}/ranges")
        async def ranges(rid: str) -> Response:
            if rid not in self.recipes:
                return error(404, "not_found", f"no recipe {rid!r}")
            return JSONResponse([{"index": i, "first": a, "stop": b} for i, (a, b) in enumerate(self.ranges)])

        @app.get("/v1/recipes/{rid}/ranges/{index}")
        async def range_data(rid: str, index: int, format: str = "arrow", compression: str = "none") -> Response:
            self.range_requests.append((index, format))
            self.compressions.append(compression)
            if self.delay:
                await asyncio.sleep(self.delay)
            if rid not in self.recipes:
                return error(404, "not_found", f"no recipe {rid!r}")
            if not 0 <= index < len(self.ranges):
                return error(404, "not_found", f"recipe {rid!r} has no range {index}")
            response = self.range_body(index, format, compression)
            self.served.append(index)
            return response

        @app.post("/v1/jobs")
        async def create_job(request: Request) -> Response:
            body = await request.json()
            job_id = f"job-{len(self.jobs) + 1}"
            self.jobs[job_id] = {
                "recipe_id": body["recipe_id"], "max_attempts": body.get("max_attempts", 3),
                "lease_seconds": body.get("lease_seconds", 60.0),
                "rows": [{"index": i, "first": a, "stop": b, "state": "ready", "attempts": 0, "worker": None, "deadline": 0.0}
                         for i, (a, b) in enumerate(self.ranges)],
            }
            return JSONResponse({"id": job_id})

        @app.get("/v1/jobs/{job_id}")
        async def job(job_id: str) -> Response:
            return JSONResponse(self.status(job_id)) if job_id in self.jobs else error(404, "not_found", f"no job {job_id!r}")

        @app.post("/v1/jobs/{job_id}/lease")
        async def lease(job_id: str, request: Request) -> Response:
            body = await request.json()
            job = self.job_rows(job_id)
            out = []
            for row in [r for r in job["rows"] if r["state"] == "ready"][: body["n"]]:
                row.update(state="running", worker=body["worker"], deadline=time.time() + job["lease_seconds"])
                out.append({"index": row["index"], "first": row["first"], "stop": row["stop"], "lease_deadline": row["deadline"],
                            "url": f"/v1/recipes/{job['recipe_id']}/ranges/{row['index']}?format=arrow"})
            return JSONResponse(out)

        @app.post("/v1/jobs/{job_id}/ranges/{index}/{action}")
        async def act(job_id: str, index: int, action: str, request: Request) -> Response:
            body = await request.json()
            job = self.job_rows(job_id)
            row = job["rows"][index]
            if row["state"] != "running" or row["worker"] != body["worker"]:
                return error(409, "lease_error", f"worker {body['worker']!r} does not hold range {index} ({row['state']})")
            if action == "heartbeat":
                self.heartbeats.append((index, time.monotonic()))
                row["deadline"] = time.time() + job["lease_seconds"]
            elif action == "finish":
                self.finishes.append(index)
                row["state"] = "finished"
            else:
                self.failures.append((index, body["message"]))
                row["attempts"] += 1
                row["state"] = "failed" if row["attempts"] >= job["max_attempts"] else "ready"
            return JSONResponse({"index": index, "state": row["state"]})

        return app


class ServerThread:
    """A real uvicorn server in a thread, on a socket bound to a free loopback port."""

    def __init__(self, app: FastAPI) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_config=None, access_log=False, ws="none", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        wait_until(lambda: self.server.started or not self.thread.is_alive(), timeout=20,
                   message="the fake service to start")
        assert self.server.started, "the fake service's thread ended before it started"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture(scope="module")
def service() -> Iterator[tuple[FakeService, str]]:
    fake = FakeService()
    with ServerThread(fake.app()) as server:
        yield fake, server.url


@pytest.fixture
def fake(service: tuple[FakeService, str]) -> FakeService:
    service[0].reset()
    return service[0]


@pytest.fixture
def client(service: tuple[FakeService, str], fake: FakeService) -> Iterator[Client]:
    with Client(service[1], TOKEN, timeout=10.0, backoff=0.01) as c:
        yield c


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("vdata-prefetch")]


# -- recipes and streams -------------------------------------------------------------------------


def test_submit_accepts_a_recipe_a_mapping_or_a_file(client: Client, tmp_path: Path) -> None:
    expected = Recipe.from_dict(RECIPE).id
    (tmp_path / "r.yaml").write_text("source: {generator: zmumu, events: 3800, seed: 1}\nrange_events: 500\n")
    (tmp_path / "r.json").write_text(json.dumps(RECIPE))
    for recipe in (RECIPE, Recipe.from_dict(RECIPE), tmp_path / "r.yaml", str(tmp_path / "r.json")):
        info = client.submit(recipe)
        assert info == RecipeInfo(expected, sum(SIZES), len(SIZES), info.schema)
    assert client.info(expected).num_ranges == 8
    assert [(r.index, r.first, r.stop) for r in client.ranges(expected)][-1] == (7, 3500, 3800)


@pytest.mark.parametrize("fmt", FORMATS)
def test_stream_yields_every_range_in_order(client: Client, fake: FakeService, fmt: str) -> None:
    batches = list(client.stream(RECIPE, format=fmt, prefetch=3))
    assert_tables_equal(pa.Table.from_batches(batches), fake.table, what=f"stream as {fmt}")
    if fmt == "arrow":
        assert [b.num_rows for b in batches] == SIZES
    assert sorted(fake.range_requests) == [(i, fmt) for i in range(8)]


def test_prefetch_overlaps_fetching_with_the_payload(client: Client, fake: FakeService) -> None:
    """While the payload works on a range (here: holds it and asks for nothing), the next one is
    fetched, so it is there when the payload asks. The order of events, not a speed, is asserted."""
    fake.delay = 0.05
    for i, batch in enumerate(client.stream(RECIPE, prefetch=4)):
        assert batch.num_rows == SIZES[i]
        if i + 1 < len(SIZES):
            wait_until(lambda: i + 1 in fake.served, timeout=30,
                       message=f"range {i + 1} fetched while the payload holds range {i}")


def test_the_first_range_is_asked_for_beside_the_listing_and_only_once(client: Client, fake: FakeService) -> None:
    """With prefetch, the first range's request leaves with the listing, before the payload
    iterates (one round trip less before its first batch); it is not asked for again."""
    batches = client.stream(RECIPE, prefetch=2)
    wait_until(lambda: 0 in fake.served, timeout=30, message="range 0 answered before the first next()")
    assert fake.range_requests[0] == (0, "arrow")
    # once range 0's body is in, the window ahead opens (ranges 1 and 2), before the payload iterates
    wait_until(lambda: len(fake.range_requests) == 3, timeout=30, message="the window's ranges asked for")
    assert sorted(fake.range_requests) == [(i, "arrow") for i in range(3)]
    assert_tables_equal(pa.Table.from_batches(list(batches)), fake.table)
    assert sorted(fake.range_requests) == [(i, "arrow") for i in range(len(SIZES))]


def batched(table: pa.Table, batches: int) -> bytes:
    """An Arrow IPC stream of ``table`` in ``batches`` record batches (as the service sends a large range)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=-(-table.num_rows // batches))
    return sink.getvalue().to_pybytes()


def test_the_first_range_is_handed_out_batch_by_batch_as_it_arrives(client: Client, fake: FakeService) -> None:
    """Range 0 in four record batches, its body held after the first half: the payload gets
    the first batch while the rest has not been sent; then every event once, in order."""
    fake.first_body = batched(fake.slices[0], 4)
    fake.hold = threading.Event()
    batches = client.stream(RECIPE, prefetch=2)
    first = next(batches)
    assert first.num_rows == SIZES[0] // 4 and not fake.hold.is_set()
    assert fake.range_requests == [(0, "arrow")]  # range 1 waits for range 0's body: the link is its
    fake.hold.set()
    assert_tables_equal(pa.Table.from_batches([first, *batches]), fake.table)
    assert sorted(fake.range_requests) == [(i, "arrow") for i in range(len(SIZES))]  # range 0 once


def test_a_first_range_broken_off_after_batches_were_handed_out_goes_on_where_it_stopped(
    client: Client, fake: FakeService
) -> None:
    """The body breaks off half way: the range is fetched again whole and checked, the batches
    already handed out equal its first rows, and the rest follows: each event once."""
    fake.first_body = batched(fake.slices[0], 4)
    fake.drop = 1
    assert_tables_equal(pa.Table.from_batches(list(client.stream(RECIPE, prefetch=2))), fake.table)
    assert fake.range_requests.count((0, "arrow")) == 2


def test_first_batches_handed_out_that_the_checked_range_contradicts_fail_the_stream(
    client: Client, fake: FakeService
) -> None:
    """Range 0's first body decodes, but into other values (its adler32 gives it away at the end):
    the payload has seen them, so the stream fails rather than hand out the right ones after."""
    wrong = fake.slices[0].set_column(0, fake.table.schema.field(0), pa.array(
        pa.compute.add(fake.slices[0].column(0), 1)))
    fake.replace = [batched(wrong, 4)]
    batches = client.stream(RECIPE, prefetch=2)
    seen = [next(batches)]
    with pytest.raises(ServiceError, match=r"range 0: its first 500 events were handed out .* differ") as info:
        seen.extend(batches)
    assert info.value.error == "bad_response"
    assert sum(b.num_rows for b in seen) == SIZES[0]  # range 0's wrong batches, nothing after


def test_without_prefetch_the_payload_waits_for_every_range(client: Client, fake: FakeService) -> None:
    """prefetch=0: a range is asked for only when the payload asks for it (no thread fetches ahead)."""
    for i, _ in enumerate(client.stream(RECIPE, prefetch=0)):
        assert len(fake.range_requests) == i + 1, fake.range_requests
        assert not prefetch_threads()


def test_the_window_bounds_what_is_fetched_ahead(client: Client, fake: FakeService) -> None:
    batches = client.stream(RECIPE, prefetch=2)
    for in_hand in (0, 1):
        next(batches)  # a slow payload from here: the pipeline must not run ahead of its window
        window = in_hand + 3  # the range in hand and two ahead
        # once the window's ranges are all answered, a pipeline that runs ahead would ask for more
        wait_until(lambda: len(fake.served) >= window, timeout=30, message=f"the {window} ranges of the window answered")
        assert len(fake.range_requests) == window, fake.range_requests
    batches.close()


def test_a_corrupted_body_is_detected_and_fetched_again(client: Client, fake: FakeService) -> None:
    fake.corrupt = 1
    assert_tables_equal(pa.Table.from_batches(list(client.stream(RECIPE))), fake.table)
    assert len(fake.range_requests) == len(SIZES) + 1


def test_a_body_corrupted_every_time_raises_checksum_mismatch(service: tuple[FakeService, str], fake: FakeService) -> None:
    fake.corrupt = 100
    with Client(service[1], TOKEN, retries=2, backoff=0.01) as client, \
            pytest.raises(ChecksumMismatch, match=r"range 0: adler32 .* \(3 attempts\)") as info:
        list(client.stream(RECIPE, prefetch=0))
    assert isinstance(info.value, OSError)


def test_a_body_without_a_length_is_read_and_checked_too(client: Client, fake: FakeService) -> None:
    fake.chunked = True
    fake.corrupt = 1
    assert_tables_equal(pa.Table.from_batches(list(client.stream(RECIPE, prefetch=2))), fake.table)
    assert len(fake.range_requests) == len(SIZES) + 1  # the corrupted one fetched again


def test_the_bodies_held_are_bounded_by_the_window_not_by_the_ranges(client: Client, fake: FakeService) -> None:
    """The range bodies live in Arrow's memory pool (the tables point into them, no copy), so
    the pool tells what the stream keeps: at most the range in hand and ``prefetch`` ahead.
    (Range 0 is decoded batch by batch as it arrives, into buffers of its own: not counted.)"""
    prefetch = 2
    largest = max(len(b) for b in fake.bodies["arrow"])
    gc.collect()
    base = pa.total_allocated_bytes()
    held = []

    def in_memory() -> int:
        return pa.total_allocated_bytes() - base

    batches = client.stream(RECIPE, prefetch=prefetch)
    for i, batch in enumerate(batches):
        # a slow payload: it holds range i until the ranges ahead are read in (the worst case)
        window = sum(len(b) for b in fake.bodies["arrow"][max(i, 1):i + prefetch + 1])
        wait_until(lambda: in_memory() >= window, timeout=30, message=f"ranges {i}-{i + prefetch} ({window} bytes) read in")
        held.append(in_memory())
    assert len(held) == len(SIZES) > prefetch + 1
    assert 0 < max(held) <= (prefetch + 1) * largest
    del batches, batch
    gc.collect()
    assert pa.total_allocated_bytes() == base  # nothing kept once the stream is done


def test_a_dropped_connection_is_retried(client: Client, fake: FakeService) -> None:
    fake.drop = 1
    assert_tables_equal(pa.Table.from_batches(list(client.stream(RECIPE, format="parquet"))), fake.table)
    assert len(fake.range_requests) == len(SIZES) + 1


def test_busy_answers_are_retried(client: Client, fake: FakeService) -> None:
    fake.statuses = [(503, "busy"), (429, "slow down")]
    assert sum(b.num_rows for b in client.stream(RECIPE)) == sum(SIZES)
    assert len(fake.range_requests) == len(SIZES) + 2


def test_a_404_raises_service_error_with_the_detail_at_once(client: Client, fake: FakeService) -> None:
    with pytest.raises(ServiceError, match="no recipe 'vds-000000000000000000000000'") as info:
        client.stream("vds-000000000000000000000000", prefetch=0)  # no range asked for beside the listing
    assert (info.value.status, info.value.error) == (404, "not_found")
    fake.statuses = [(404, "range 0 was deleted")]
    with pytest.raises(ServiceError, match="range 0 was deleted") as info:
        list(client.stream(RECIPE, prefetch=0))
    assert info.value.status == 404 and info.value.detail == "range 0 was deleted"
    assert len(fake.range_requests) == 1  # not retried


def test_a_body_that_is_not_the_format_raises_service_error(client: Client, fake: FakeService) -> None:
    fake.garbage = 1
    with pytest.raises(ServiceError, match=r"range 0 does not read as parquet") as info:
        list(client.stream(RECIPE, format="parquet", prefetch=0))
    assert info.value.error == "bad_response"


def test_a_bad_token_or_recipe_raises_service_error(service: tuple[FakeService, str], fake: FakeService) -> None:
    with Client(service[1], "wrong") as client, pytest.raises(ServiceError, match="unknown bearer token") as info:
        client.submit(RECIPE)
    assert info.value.status == 401
    with Client(service[1], TOKEN) as client, pytest.raises(ServiceError, match="source.generator") as info:
        client.submit({"source": {"generator": "nope", "events": 5, "seed": 1}})
    assert info.value.status == 422


def test_an_unreachable_service_raises_after_the_retries() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before use: nothing listens there
    with Client(f"http://127.0.0.1:{port}", TOKEN, retries=2, backoff=0.01) as client, \
            pytest.raises(ServiceUnreachable, match="3 attempts"):
        client.info("vds-x")


def test_closing_a_stream_early_stops_its_threads(client: Client, fake: FakeService) -> None:
    fake.delay = 0.05
    batches = client.stream(RECIPE, prefetch=4)
    assert next(batches).num_rows == SIZES[0]
    assert prefetch_threads()
    batches.close()
    assert not prefetch_threads()
    dropped = client.stream(RECIPE, prefetch=4)
    next(dropped)
    del dropped
    gc.collect()
    assert not prefetch_threads()
    for _ in client.stream(RECIPE, prefetch=4):
        break
    gc.collect()
    assert not prefetch_threads()


def test_bad_arguments_fail_before_any_request(client: Client, fake: FakeService) -> None:
    with pytest.raises(vdata.FormatError, match="'csv'"):
        client.stream(RECIPE, format="csv")
    with pytest.raises(ValueError, match="prefetch"):
        client.fetch(RECIPE, "unused", prefetch=-1)
    with pytest.raises(TypeError, match="a recipe is"):
        client.submit(42)  # type: ignore[arg-type]
    assert not fake.range_requests and not fake.recipes


# -- fetch (file mode) -----------------------------------------------------------------------------


def test_fetch_writes_one_root_file_per_range(client: Client, fake: FakeService, tmp_path: Path) -> None:
    paths = client.fetch(RECIPE, tmp_path / "in", format="root", progress=True)
    assert [p.name for p in paths] == [f"range-{i:05d}.root" for i in range(8)]
    for path, expected in zip(paths, fake.slices):
        with uproot.open(path) as f:
            assert f["Events"].num_entries == expected.num_rows
            assert f["Events"]["Muon_pt"].count_branch.name == "nMuon"
        assert_tables_equal(vdata.read_table(path, "root"), expected, what=path.name)
    streamed = pa.Table.from_batches(list(client.stream(RECIPE, format="root")))
    assert_tables_equal(pa.concat_tables(vdata.read_table(p, "root") for p in paths), streamed)
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == [".vdata-fetch.jsonl"] + [p.name for p in paths]


def test_fetch_resumes_and_replaces_damaged_files(client: Client, fake: FakeService, tmp_path: Path) -> None:
    first = client.fetch(RECIPE, tmp_path, format="arrow")
    fake.range_requests.clear()
    assert client.fetch(RECIPE, tmp_path, format="arrow") == first
    assert fake.range_requests == []
    first[3].write_bytes(b"damaged")
    client.fetch(RECIPE, tmp_path, format="arrow", prefetch=0)
    assert fake.range_requests == [(3, "arrow")]
    assert_tables_equal(vdata.read_table(first[3], "arrow"), fake.slices[3])
    client.fetch(RECIPE, tmp_path, format="parquet")  # another format: its own files
    assert len(fake.range_requests) == 1 + len(SIZES)


@pytest.fixture
def umask() -> Iterator[Any]:
    """Sets the process's umask for a test (``umask(0o027)``), and puts the old one back."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_range_files_get_the_users_umask(client: Client, tmp_path: Path, umask: Any, mask: int, mode: int) -> None:
    umask(mask)
    paths = client.fetch(RECIPE, tmp_path / "in", format="parquet", prefetch=2)
    paths.append(tmp_path / "one.root")
    client.get(RECIPE, 2, paths[-1])
    assert {oct(p.stat().st_mode & 0o777) for p in paths} == {oct(mode)}
    assert sorted(p.name for p in (tmp_path / "in").iterdir() if p.name.endswith(".tmp")) == []


def test_fetched_arrow_files_are_ipc_files_and_the_manifest_holds_their_checksum(
    client: Client, fake: FakeService, tmp_path: Path
) -> None:
    import pyarrow.feather as feather

    from vdata.checksum import file_adler32

    paths = client.fetch(RECIPE, tmp_path, format="arrow")
    for path, expected in zip(paths, fake.slices):
        assert pa.ipc.open_file(path).read_all().equals(expected)
        assert feather.read_table(path).equals(expected)
    lines = [json.loads(line) for line in (tmp_path / ".vdata-fetch.jsonl").read_text().splitlines()]
    assert {(e["file"], e["adler32"], e["compression"]) for e in lines} == {
        (p.name, f"{file_adler32(p)[1]:08x}", "none") for p in paths}
    fake.range_requests.clear()
    assert client.fetch(RECIPE, tmp_path, format="arrow") == paths
    assert fake.range_requests == []  # the files' checksums match what the manifest says


def test_arrow_files_a_fetch_wrote_as_streams_are_fetched_again_as_files(
    client: Client, fake: FakeService, tmp_path: Path
) -> None:
    """A manifest line without a compression comes from a vdata that wrote Arrow streams."""
    rid = Recipe.from_dict(RECIPE).id
    old = tmp_path / "range-00000.arrow"
    old.write_bytes(fake.bodies["arrow"][0])
    line = {"recipe": rid, "format": "arrow", "file": old.name, "adler32": f"{zlib.adler32(old.read_bytes()):08x}",
            "events": SIZES[0]}
    (tmp_path / ".vdata-fetch.jsonl").write_text(json.dumps(line) + "\n")
    client.fetch(RECIPE, tmp_path, format="arrow", prefetch=0)
    assert fake.range_requests == [(i, "arrow") for i in range(len(SIZES))]
    assert pa.ipc.open_file(old).read_all().equals(fake.slices[0])


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_compression_is_asked_for_and_kept_in_the_files(client: Client, fake: FakeService, tmp_path: Path,
                                                        compression: str) -> None:
    plain = client.fetch(RECIPE, tmp_path / "plain", format="arrow")
    packed = client.fetch(RECIPE, tmp_path / "packed", format="arrow", compression=compression)
    assert fake.compressions == ["none"] * len(SIZES) + [compression] * len(SIZES)
    for a, b, expected in zip(plain, packed, fake.slices):
        assert pa.ipc.open_file(b).read_all().equals(expected)
        assert b.stat().st_size < a.stat().st_size
    fake.range_requests.clear()
    client.fetch(RECIPE, tmp_path / "packed", format="arrow")  # another compression: other files
    assert len(fake.range_requests) == len(SIZES)
    batches = list(client.stream(RECIPE, compression=compression))
    assert_tables_equal(pa.Table.from_batches(batches), fake.table, what=f"stream with {compression}")
    assert fake.compressions[-len(SIZES):] == [compression] * len(SIZES)


def test_get_takes_the_format_from_the_extension(client: Client, fake: FakeService, tmp_path: Path) -> None:
    assert client.get(RECIPE, 3, tmp_path / "r3.parquet") == SIZES[3]
    assert client.get(RECIPE, 3, tmp_path / "r3.feather", compression="zstd") == SIZES[3]
    assert client.get(RECIPE, 3, tmp_path / "r3.data", format="root") == SIZES[3]
    assert fake.range_requests == [(3, "parquet"), (3, "arrow"), (3, "root")]
    assert fake.compressions == ["none", "zstd", "none"]
    assert_tables_equal(vdata.read_table(tmp_path / "r3.parquet"), fake.slices[3])
    assert pa.ipc.open_file(tmp_path / "r3.feather").read_all().equals(fake.slices[3])
    assert_tables_equal(vdata.read_table(tmp_path / "r3.data", "root"), fake.slices[3])
    with pytest.raises(vdata.FormatError, match="x.parquet: the extension '.parquet' says parquet, but the format "
                                                "asked for is arrow"):
        client.get(RECIPE, 3, tmp_path / "x.parquet", format="arrow")
    with pytest.raises(vdata.FormatError, match="x.txt: cannot tell the format"):
        client.get(RECIPE, 3, tmp_path / "x.txt")
    with pytest.raises(vdata.FormatError, match="compression 'lz4' applies to arrow only"):
        client.get(RECIPE, 3, tmp_path / "x.root", compression="lz4")
    with pytest.raises(vdata.FormatError, match="unknown compression 'snappy'"):
        client.fetch(RECIPE, tmp_path, format="arrow", compression="snappy")
    assert len(fake.range_requests) == 3 and not (tmp_path / "x.parquet").exists()


# -- run_worker (event-service mode) ---------------------------------------------------------------


def test_run_worker_finishes_every_range_once(client: Client, fake: FakeService) -> None:
    job = client.create_job(RECIPE, lease_seconds=30)
    seen: dict[int, pa.Table] = {}

    def process(table: pa.Table, lease: LeasedRange) -> None:
        seen[lease.index] = table

    summary = client.run_worker(job, process, worker="w1", n=3)
    assert (summary.worker, summary.finished, summary.failed, summary.events) == ("w1", 8, 0, sum(SIZES))
    assert sorted(fake.finishes) == list(range(8))
    for index, table in seen.items():
        assert_tables_equal(table, fake.slices[index], what=f"range {index}")
    status = client.job(job)
    assert status["done"] and status["counts"]["finished"] == 8


def test_run_worker_reports_payload_errors_as_fail_and_goes_on(client: Client, fake: FakeService) -> None:
    job = client.create_job(RECIPE, max_attempts=2)
    attempts: list[int] = []

    def process(table: pa.Table, lease: LeasedRange) -> None:
        attempts.append(lease.index)
        if (lease.index in (2, 5) and attempts.count(lease.index) == 1) or lease.index == 6:
            raise ValueError(f"bad muon in range {lease.index}")

    summary = client.run_worker(job, process, worker="w1")
    assert (summary.finished, summary.failed) == (7, 4)  # 2 and 5 succeed on their 2nd attempt; 6 never
    assert sorted(fake.failures) == [(2, "ValueError: bad muon in range 2"), (5, "ValueError: bad muon in range 5"),
                             (6, "ValueError: bad muon in range 6"), (6, "ValueError: bad muon in range 6")]
    assert client.job(job)["counts"] == {"ready": 0, "running": 0, "finished": 7, "failed": 1, "fatal": 0}


def test_run_worker_reports_input_it_cannot_fetch_as_fail(service: tuple[FakeService, str], fake: FakeService) -> None:
    fake.corrupt = 1
    with Client(service[1], TOKEN, retries=0) as client:
        summary = client.run_worker(client.create_job(RECIPE), lambda table: None, worker="w1")
    assert (summary.finished, summary.failed) == (8, 1)
    assert len(fake.failures) == 1
    assert fake.failures[0][0] == 0 and "fetching the input failed" in fake.failures[0][1]
    assert "adler32" in fake.failures[0][1]


def test_run_worker_gives_back_its_leases_when_interrupted(client: Client, fake: FakeService) -> None:
    class Interrupt(BaseException):
        pass

    job = client.create_job(RECIPE)

    def process(table: pa.Table) -> None:
        wait_until(lambda: sum(row["state"] == "running" for row in fake.jobs[job]["rows"]) == 4, timeout=30,
                   message="the next lease (ranges 2 and 3) taken while the payload runs")
        raise Interrupt

    with pytest.raises(Interrupt):
        client.run_worker(job, process, worker="w1", n=2)
    assert sorted(fake.failures) == [(i, "worker w1 stopped before processing it") for i in range(4)]
    assert client.job(job)["counts"]["ready"] == 8


def test_run_worker_heartbeats_while_a_slow_payload_runs(client: Client, fake: FakeService) -> None:
    job = client.create_job(RECIPE, lease_seconds=0.6)
    tables: list[int] = []

    def process(table: pa.Table) -> None:  # one argument: gets the table only
        tables.append(table.num_rows)
        if len(tables) == 1:  # runs past its lease: four heartbeats, lease/3 = 0.2 s apart, after it was taken
            wait_until(lambda: len([i for i, _ in fake.heartbeats if i == 0]) >= 4, timeout=30,
                       message="four heartbeats of range 0")

    summary = client.run_worker(job, process, worker="slow", max_ranges=2)
    assert summary.finished == 2 and tables == SIZES[:2]
    beats = [t for i, t in fake.heartbeats if i == 0]
    assert len(beats) >= 3, fake.heartbeats
    assert fake.expired == [] and sorted(fake.finishes) == [0, 1]
    assert client.job(job)["counts"]["running"] == 0  # max_ranges: no lease left behind


def test_run_worker_fetches_the_next_lease_while_the_payload_runs(client: Client, fake: FakeService) -> None:
    """The payload of range k holds on until range k+1 is leased and fetched: were the next lease
    taken only after the payload returned, this would never happen (the order, not a speed)."""
    fake.delay = 0.05
    job = client.create_job(RECIPE)
    calls: list[int] = []

    def process(table: pa.Table, lease: LeasedRange) -> None:
        calls.append(lease.index)
        if len(calls) < 6:  # max_ranges: after the sixth there is no next lease
            wait_until(lambda: len(fake.served) > len(calls), timeout=30,
                       message=f"the next range fetched while the payload of range {lease.index} runs")

    summary = client.run_worker(job, process, worker="w1", max_ranges=6)
    assert summary.finished == 6 and calls == list(range(6))
    assert fake.served == list(range(6))


def test_two_workers_share_a_job_and_wait_for_leases_held_by_others(client: Client, fake: FakeService) -> None:
    job = client.create_job(RECIPE, lease_seconds=0.5)
    stuck = client.lease(job, 1, worker="crashed")  # never finished: expires, then another worker takes it
    results = []
    threads = [threading.Thread(target=lambda w=w: results.append(client.run_worker(job, lambda t: None, worker=w, n=2)))
               for w in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sum(r.finished for r in results) == 8 and len(results) == 2
    assert sorted(fake.finishes) == list(range(8))
    assert fake.expired == [stuck[0].index]


def test_run_worker_on_an_unknown_job_raises(client: Client) -> None:
    with pytest.raises(ServiceError, match="no job 'job-404'"):
        client.run_worker("job-404", print)


# -- against the real gateway ----------------------------------------------------------------------


@pytest.mark.slow
def test_end_to_end_against_the_gateway(embedded_ray: None, shared_data: Path, tmp_path: Path) -> None:
    """stream, fetch and run_worker through service.http.server.BackgroundServer over a started core."""
    from service.http.server import BackgroundServer
    from service.settings import Settings
    from service.core.core import Core, CoreConfig
    from service.core.engine import EngineConfig
    from service.core.tokens import TokenStore

    engine = EngineConfig(max_in_flight=4, lookahead=0)
    core = Core(CoreConfig(data_dir=tmp_path / "data", engine=engine, cache_budget_bytes=64 * 1024**2))
    try:
        core.start()
        core.add_dataset("opendata:hzz", [str(shared_data / "uproot-HZZ.root")], "events")
        token = TokenStore(core.db).create("scientist")
        settings = Settings(data_dir=tmp_path / "data", allowed_roots=[tmp_path, shared_data], port=0, lookahead=0)
        recipe = {"source": {"dataset": "opendata:hzz"}, "steps": [{"filter": "NMuon >= 1"}],
                  "columns": ["NMuon", "Muon_Px", "MET_px"], "range_events": 400}
        with BackgroundServer(settings, core) as server, Client(server.url, token) as client:
            info = client.submit(recipe)
            assert (info.num_events, info.num_ranges) == (2421, 7)
            streamed = pa.Table.from_batches(list(client.stream(info.id, format="arrow")))
            assert streamed.column_names == ["NMuon", "Muon_Px", "MET_px"]
            assert 0 < streamed.num_rows < 2421 and min(streamed["NMuon"].to_pylist()) >= 1
            files = client.fetch(info.id, tmp_path / "files", format="root")
            assert len(files) == 7
            assert_tables_equal(pa.concat_tables(vdata.read_table(p, "root") for p in files), streamed)
            rows: list[int] = []
            summary = client.run_worker(client.create_job(info.id, lease_seconds=10), lambda t: rows.append(t.num_rows),
                                        worker="e2e", n=2)
            assert (summary.finished, summary.failed, summary.events) == (7, 0, 2421)
            assert sum(rows) == streamed.num_rows
            with pytest.raises(ServiceError, match="recipe_not_found") as missing:
                client.info("vds-000000000000000000000000")
            assert missing.value.status == 404
    finally:
        core.close()
