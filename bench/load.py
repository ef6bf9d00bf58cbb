"""Load: many concurrent streaming clients against one gateway, on cached ranges.

What it measures
----------------
A real gateway (``python -m service`` in a subprocess, on a loopback port, the same as
``vdata serve``) serves a zmumu recipe whose ranges (``--range-events`` events, ~1.2 MB of
Arrow each) are all pre-staged into the cache first. Then ``--clients`` clients (asyncio +
``httpx.AsyncClient``, spread over ``--procs`` load-generator processes, one keep-alive
connection each) each GET one range after another, picked at random, reading the body in
chunks as a streaming client does, for ``--seconds``. The loop stops by itself: no request
starts after the deadline, and one request may take at most ``--timeout`` seconds.

Per run: requests, errors (non-200 status, short body or exception), p50/p99 latency (first
byte of the request to last byte of the body), MB/s of bodies over the run, and the gateway's
peak RSS (psutil, sampled every 0.1 s, the gateway process alone; Ray's processes apart) and
its RSS before the load. The JSON keeps every run and the median of the runs.

How to run
----------
    .venv/bin/python bench/load.py                 # 200 clients, 30 s, median of 3 runs (~3 min)
    .venv/bin/python bench/load.py --short         # 20 clients, 5 s, 1 run (also VDATA_BENCH_SHORT=1)

It prints one table and writes ``bench/results/load.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._tp_procs import Gateway  # noqa: E402
from bench.read import machine_info  # noqa: E402

DEFAULT_OUTPUT = ROOT / "bench" / "results" / "load.json"
CHUNK = 256 * 1024


# -- the load generator (one process: ``clients`` asyncio tasks) ---------------------------------

async def _client(url: str, token: str, ranges: int, expected: dict[int, int], deadline: float, timeout: float,
                  seed: int, out: list[tuple[float, int, str | None]]) -> None:
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout,
                                 limits=limits) as http:
        while time.monotonic() < deadline:
            index = rng.randrange(ranges)
            start = time.monotonic()
            size, error = 0, None
            try:
                async with http.stream("GET", f"/ranges/{index}") as response:
                    async for chunk in response.aiter_raw(CHUNK):
                        size += len(chunk)
                    if response.status_code != 200:
                        error = f"status {response.status_code}"
                    elif size != expected[index]:
                        error = f"short body: {size} of {expected[index]} bytes"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            out.append((time.monotonic() - start, size, error))


def _generator(url: str, token: str, ranges: int, expected: dict[int, int], clients: int, start_at: float,
               seconds: float, timeout: float, seed: int, queue: mp.Queue[Any]) -> None:
    """One load-generator process; puts its (latency, bytes, error) list on ``queue``."""
    out: list[tuple[float, int, str | None]] = []

    async def main() -> None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(_client(url, token, ranges, expected, deadline, timeout, seed * 1000 + k, out)
                               for k in range(clients)))

    asyncio.run(main())
    queue.put(out)


# -- one run --------------------------------------------------------------------------------------

class PeakRss:
    """The peak RSS of one process, sampled by a thread until ``stop()``."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def run_once(gw: Gateway, base: str, ranges: int, expected: dict[int, int], args: argparse.Namespace) -> dict[str, Any]:
    assert gw.token is not None
    ctx = mp.get_context("spawn")
    queue: mp.Queue[Any] = ctx.Queue()
    per_proc = [args.clients // args.procs + (1 if k < args.clients % args.procs else 0) for k in range(args.procs)]
    start_at = time.time() + 3.0  # every generator imported and connected first
    procs = [ctx.Process(target=_generator, args=(base, gw.token, ranges, expected, n, start_at, args.seconds,
                                                  args.timeout, seed, queue))
             for seed, n in enumerate(per_proc) if n]
    rss_before = psutil.Process(gw.pid).memory_info().rss
    results: list[tuple[float, int, str | None]] = []
    with PeakRss(gw.pid) as rss:
        for p in procs:
            p.start()
        try:
            for _ in procs:  # bounded: each generator stops after seconds + timeout
                results += queue.get(timeout=args.seconds + args.timeout + 60)
        finally:
            for p in procs:
                p.join(timeout=30)
                if p.is_alive():
                    p.kill()
                    p.join()
    wall = max(args.seconds, max((lat for lat, _, _ in results), default=0.0))
    ok = sorted(lat for lat, _, err in results if err is None)
    errors = [err for _, _, err in results if err is not None]
    total = sum(size for _, size, err in results if err is None)
    q = statistics.quantiles(ok, n=100) if len(ok) >= 2 else [float("nan")] * 99
    return {
        "requests": len(results), "errors": len(errors), "error_examples": sorted(set(errors))[:5],
        "p50_s": q[49], "p99_s": q[98], "max_s": ok[-1] if ok else float("nan"),
        "MBps": total / 1e6 / wall, "bytes": total, "rss_before_MB": rss_before / 1e6, "rss_peak_MB": rss.peak / 1e6,
    }


def stage(gw: Gateway, args: argparse.Namespace) -> tuple[str, int, dict[int, int]]:
    """Submit the recipe, materialize every range, and return (base URL, ranges, body sizes)."""
    recipe = {"source": {"generator": "zmumu", "events": args.range_events * args.ranges, "seed": 1},
              "columns": ["Muon_pt", "Muon_eta", "Muon_phi", "Muon_charge", "nMuon"],
              "range_events": args.range_events}
    headers = {"Authorization": f"Bearer {gw.token}"}
    with httpx.Client(base_url=gw.url, headers=headers, timeout=300) as http:
        r = http.post("/v1/recipes", json=recipe)
        r.raise_for_status()
        info = r.json()
        base = f"{gw.url}/v1/recipes/{info['id']}"
        n = info["num_ranges"]
        for first in range(0, n, 32):
            http.post(f"/v1/recipes/{info['id']}/stage", json={"first": first, "count": min(32, n - first)})
        sizes = {}
        for index in range(n):  # waits for each range to be cached (a GET of a staged range)
            r = http.get(f"/v1/recipes/{info['id']}/ranges/{index}")
            r.raise_for_status()
            sizes[index] = len(r.content)
    return base, n, sizes


def main(argv: list[str] | None = None) -> dict[str, Any]:
    short = os.environ.get("VDATA_BENCH_SHORT", "") not in ("", "0")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", default=short, help="20 clients, 5 s, one run")
    parser.add_argument("--clients", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--procs", type=int, default=2, help="load-generator processes")
    parser.add_argument("--ranges", type=int, default=32, help="distinct cached ranges the clients pick from")
    parser.add_argument("--range-events", type=int, default=18_000, help="events per range (~1.2 MB of Arrow)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds one request may take")
    parser.add_argument("--num-cpus", type=int, default=1, help="Ray CPUs of the gateway (only staging uses them)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    args.clients = args.clients or (20 if args.short else 200)
    args.seconds = args.seconds or (5.0 if args.short else 30.0)
    args.repeats = args.repeats or (1 if args.short else 3)

    with tempfile.TemporaryDirectory(prefix="vdata-load-") as tmp:
        with Gateway(Path(tmp), "load", num_cpus=args.num_cpus, lookahead=0, allowed_roots=[],
                     max_in_flight=2) as gw:
            gw_env_note = "python -m service (as vdata serve), readahead 0"
            base, ranges, sizes = stage(gw, args)
            runs = []
            for k in range(args.repeats):
                res = run_once(gw, base, ranges, sizes, args)
                runs.append(res)
                print(f"run {k + 1}/{args.repeats}: {res['requests']} requests, {res['errors']} errors, "
                      f"p50 {res['p50_s']:.3f} s, p99 {res['p99_s']:.3f} s, {res['MBps']:.0f} MB/s, "
                      f"gateway RSS {res['rss_before_MB']:.0f} -> peak {res['rss_peak_MB']:.0f} MB", flush=True)

    keys = ("requests", "errors", "p50_s", "p99_s", "max_s", "MBps", "rss_peak_MB", "rss_before_MB")
    median = {key: statistics.median(r[key] for r in runs) for key in keys}
    out = {
        "benchmark": "load", "command": "bench/load.py" + (" --short" if args.short else ""),
        "config": {"clients": args.clients, "seconds": args.seconds, "repeats": args.repeats, "procs": args.procs,
                   "ranges": ranges, "range_events": args.range_events,
                   "range_bytes": statistics.median(sizes.values()), "gateway": gw_env_note},
        "machine": machine_info(), "runs": runs, "median": median,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nload: {args.clients} clients x {args.seconds:.0f} s, ranges of {out['config']['range_bytes'] / 1e6:.2f} MB, "
          f"median of {len(runs)}: {median['requests']:.0f} requests, {median['errors']:.0f} errors, "
          f"p50 {median['p50_s']:.3f} s, p99 {median['p99_s']:.3f} s, {median['MBps']:.0f} MB/s, "
          f"gateway peak RSS {median['rss_peak_MB']:.0f} MB -> {args.output}")
    return out


if __name__ == "__main__":
    main()
