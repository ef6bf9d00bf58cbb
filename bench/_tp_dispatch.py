"""The dispatch load generator: simulated workers (asyncio + one httpx.AsyncClient per process)
running lease -> finish cycles against a gateway. Run in separate processes (multiprocessing,
spawn) so the load generator's CPU is separable from the gateway's."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx


async def _worker(client: httpx.AsyncClient, job: str, name: str, start_at: float, stop_at: float,
                  out: dict[str, Any]) -> None:
    while time.time() < start_at:
        await asyncio.sleep(min(0.05, start_at - time.time()))
    lease_url, body = f"/v1/jobs/{job}/lease", {"worker": name, "n": 1}
    while time.time() < stop_at:
        t0 = time.perf_counter()
        try:
            r = await client.post(lease_url, json=body)
        except httpx.HTTPError as exc:
            out["errors"].append(f"lease: {type(exc).__name__}: {exc}")
            continue
        t1 = time.perf_counter()
        if r.status_code != 200:
            out["errors"].append(f"lease: {r.status_code} {r.text[:200]}")
            continue
        leases = r.json()
        if not leases:
            out["empty"] += 1
            if out["empty"] > 1000:
                return  # the job ran out of ranges
            continue
        out["lease"].append(t1 - t0)
        index = leases[0]["index"]
        t2 = time.perf_counter()
        try:
            r = await client.post(f"/v1/jobs/{job}/ranges/{index}/finish", json={"worker": name})
        except httpx.HTTPError as exc:
            out["errors"].append(f"finish: {type(exc).__name__}: {exc}")
            continue
        t3 = time.perf_counter()
        if r.status_code != 200:
            out["errors"].append(f"finish: {r.status_code} {r.text[:200]}")
            continue
        out["finish"].append(t3 - t2)
        if time.time() <= stop_at:
            out["cycles"] += 1  # cycles completed inside the window


async def _run(url: str, token: str, job: str, workers: int, proc_index: int, start_at: float,
               duration: float) -> dict[str, Any]:
    out: dict[str, Any] = {"lease": [], "finish": [], "cycles": 0, "empty": 0, "errors": []}
    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, limits=limits,
                                 timeout=60.0) as client:
        stop_at = start_at + duration
        await asyncio.gather(*(_worker(client, job, f"sim-{proc_index}-{i}", start_at, stop_at, out)
                               for i in range(workers)))
    out["errors"] = out["errors"][:20] + ([f"... {len(out['errors'])} errors"] if len(out["errors"]) > 20 else [])
    return out


def run_load(url: str, token: str, job: str, workers: int, proc_index: int, start_at: float,
             duration: float) -> dict[str, Any]:
    """One load-generator process: ``workers`` simulated workers from ``start_at`` (epoch s) for
    ``duration`` s. Returns latencies (s), cycle count, CPU seconds of this process."""
    cpu0 = time.process_time()
    out = asyncio.run(_run(url, token, job, workers, proc_index, start_at, duration))
    out["cpu_s"] = time.process_time() - cpu0
    return out
