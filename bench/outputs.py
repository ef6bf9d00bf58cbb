"""Job outputs: upload throughput through the gateway, and merge throughput on Ray.

What it measures (side by side in one run; medians of ``--repeats``)
--------------------------------------------------------------------
upload   ``PUT /v1/jobs/{id}/ranges/{index}/output`` of one ``--upload-mb`` MB Parquet file
         (streamed from disk by httpx, adler32 header) to a gateway (uvicorn on loopback, in
         this process, its core without Ray) vs a plain PUT of the same bytes to a minimal
         endpoint on the same kind of server that streams the body to a file in the same
         folder (temporary file, fsync, rename) and checks nothing. The gateway also computes
         adler32 and sha256, reads the file back as Parquet and records it. The two alternate.
merge    A job of ``--ranges`` range outputs (Parquet, ``--range-mb`` MB each) merged by the
         service into one Parquet file (Ray task, 2 CPUs) vs pyarrow alone in this process
         (``pq.read_table`` of each output, one ``ParquetWriter``). The service's time runs
         from the last ``finish`` to the job's ``merged`` state (its poll and bookkeeping
         included).

    python bench/outputs.py                   # ~1 minute
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.core.core import Core, CoreConfig  # noqa: E402
from service.core.engine import EngineConfig  # noqa: E402
from service.core.tokens import TokenStore  # noqa: E402
from service.http.server import BackgroundServer  # noqa: E402
from service.settings import Settings  # noqa: E402
from vdata.checksum import adler32_hex, file_adler32  # noqa: E402
from vdata.ranges import EventRange  # noqa: E402


def table(mb: float, seed: int) -> pa.Table:
    """About ``mb`` MB of Parquet: NanoAOD-like floats that do not compress away."""
    rng = np.random.default_rng(seed)
    n = int(mb * 1024**2 / 16)
    return pa.table({"pt": rng.exponential(20, n), "eta": rng.normal(0, 2, n).astype(np.float32),
                     "event": np.arange(n, dtype=np.int64)})


def plain_app(folder: Path):  # type: ignore[no-untyped-def]
    """The alternative: a PUT that streams the body to a file (temp, fsync, rename), nothing else."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def put(request: Request) -> Response:
        temp = folder / f".plain.{time.monotonic_ns()}.tmp"
        with open(temp, "wb") as f:
            async for piece in request.stream():
                f.write(piece)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, folder / "plain.parquet")
        return Response(status_code=200)

    return Starlette(routes=[Route("/raw", put, methods=["PUT"])])


def serve_plain(folder: Path) -> tuple[str, object]:
    import threading

    import uvicorn

    config = uvicorn.Config(plain_app(folder), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", server


def timed_put(http: httpx.Client, url: str, path: Path, **kwargs: object) -> float:
    def pieces():  # type: ignore[no-untyped-def]
        with open(path, "rb") as f:
            while piece := f.read(1 << 20):
                yield piece

    t0 = time.perf_counter()
    r = http.put(url, content=pieces(), **kwargs)  # type: ignore[arg-type]
    r.raise_for_status()
    return time.perf_counter() - t0


def bench_upload(work: Path, mb: float, repeats: int) -> None:
    core = Core(CoreConfig(data_dir=work / "up"))  # no Ray: uploads need none
    settings = Settings(data_dir=work / "up", port=0)
    token = TokenStore(core.db).create("worker")
    job = core.jobs.create_job("vds-bench", [EventRange(0, 0, 1)], outputs="required", lease_seconds=3600)
    core.jobs.lease(job, "w", 1)
    path = work / "upload.parquet"
    pq.write_table(table(mb, 1), path)
    size, adler = file_adler32(path)
    plain_url, plain = serve_plain(core.config.outputs_path)
    gateway_s, plain_s = [], []
    with BackgroundServer(settings, core) as server, httpx.Client(timeout=300) as http:
        gateway = f"{server.url}/v1/jobs/{job}/ranges/0/output"
        headers = {"Authorization": f"Bearer {token}", "X-Vdata-Adler32": adler32_hex(adler)}
        for _ in range(repeats + 1):  # the first of each is a warm-up
            gateway_s.append(timed_put(http, gateway, path, params={"worker": "w", "format": "parquet"},
                                       headers=headers))
            plain_s.append(timed_put(http, f"{plain_url}/raw", path))
    plain.should_exit = True  # type: ignore[attr-defined]
    core.close()
    g, p = statistics.median(gateway_s[1:]), statistics.median(plain_s[1:])
    print(f"upload {size / 1e6:.1f} MB: gateway {size / g / 1e6:.0f} MB/s, plain PUT {size / p / 1e6:.0f} MB/s, "
          f"ratio {p / g:.2f}x of plain (median of {repeats})")


def bench_merge(work: Path, ranges: int, range_mb: float, repeats: int) -> None:
    config = CoreConfig(data_dir=work / "merge", engine=EngineConfig(num_cpus=2, lookahead=0,
                        object_store_bytes=200 * 1024**2), merge_poll_seconds=0.05)
    tables = [table(range_mb, i) for i in range(ranges)]
    datas = []
    for t in tables:
        sink = pa.BufferOutputStream()
        pq.write_table(t, sink)
        datas.append(sink.getvalue().to_pybytes())
    total = sum(map(len, datas))
    service_s, arrow_s = [], []
    with Core(config) as core:
        from vdata.checksum import adler32

        for _ in range(repeats + 1):
            job = core.jobs.create_job("vds-bench", [EventRange(i, i, i + 1) for i in range(ranges)],
                                       outputs="required")
            core.lease(job, "w", ranges)
            for i, data in enumerate(datas):
                upload = core.begin_output(job, i, "w", "parquet")
                upload.write(data)
                core.commit_output(upload, job, i, "w", "parquet", adler32(data))
            for i in range(ranges - 1):
                core.finish(job, i, "w")
            t0 = time.perf_counter()
            core.finish(job, ranges - 1, "w")
            while core.status(job).state != "merged":
                time.sleep(0.01)
            service_s.append(time.perf_counter() - t0)
            paths = [core.outputs.root / o.path for o in core.outputs.range_outputs(job)]
            t0 = time.perf_counter()
            with pq.ParquetWriter(work / "alone.parquet", tables[0].schema) as writer:
                for p in paths:
                    writer.write_table(pq.read_table(p))
            arrow_s.append(time.perf_counter() - t0)
    s, a = statistics.median(service_s[1:]), statistics.median(arrow_s[1:])
    print(f"merge {ranges} x {range_mb:g} MB ({total / 1e6:.0f} MB): service {total / s / 1e6:.0f} MB/s, "
          f"pyarrow alone {total / a / 1e6:.0f} MB/s, ratio {a / s:.2f}x of pyarrow (median of {repeats})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upload-mb", type=float, default=64)
    parser.add_argument("--ranges", type=int, default=16)
    parser.add_argument("--range-mb", type=float, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vdata-bench-outputs-") as tmp:
        bench_upload(Path(tmp), args.upload_mb, args.repeats)
        bench_merge(Path(tmp), args.ranges, args.range_mb, args.repeats)


if __name__ == "__main__":
    main()
