"""The dispatch load generator: simulated workers running lease -> finish cycles against a
gateway. Each worker holds one keep-alive HTTP/1.1 connection driven by plain asyncio streams
(a request is a few hundred bytes; httpx's AsyncClient cost ~5 ms of CPU per request here, so
the load generator, not the gateway, set the pace). Run in separate processes
(multiprocessing, spawn) so the load generator's CPU is separable from the gateway's.

Two shapes of load: closed loop (:func:`run_load`: each worker sends its next request when
the last is answered, so the pace is the service's and the latency is bound by Little's law)
and open loop (:func:`run_open_loop`: cycles start at Poisson arrival times whatever the
service does, and latency counts from the arrival, queueing in the client included, so a
service that falls behind shows it)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any
from urllib.parse import urlsplit


class _Connection:
    """One keep-alive connection that POSTs JSON and reads ``Content-Length`` bodies."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port = host, port
        self.auth = f"Authorization: Bearer {token}\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        data = json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self.auth}"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")
        self.writer.write(head.encode() + data)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the gateway closed the connection")
        status = int(status_line.split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        payload = await self.reader.readexactly(length) if length else b""
        return status, json.loads(payload) if payload else None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _worker(conn: _Connection, job: str, name: str, start_at: float, stop_at: float,
                  out: dict[str, Any]) -> None:
    while time.time() < start_at:
        await asyncio.sleep(min(0.05, start_at - time.time()))
    lease_url, body = f"/v1/jobs/{job}/lease", {"worker": name, "n": 1}
    try:
        while time.time() < stop_at:
            t0 = time.perf_counter()
            try:
                status, leases = await conn.post(lease_url, body)
            except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
                out["errors"].append(f"lease: {type(exc).__name__}: {exc}")
                conn.writer = None
                continue
            t1 = time.perf_counter()
            if status != 200:
                out["errors"].append(f"lease: {status} {str(leases)[:200]}")
                continue
            if not leases:
                out["empty"] += 1
                if out["empty"] > 1000:
                    return  # the job ran out of ranges
                continue
            out["lease"].append(t1 - t0)
            index = leases[0]["index"]
            t2 = time.perf_counter()
            try:
                status, answer = await conn.post(f"/v1/jobs/{job}/ranges/{index}/finish", {"worker": name})
            except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
                out["errors"].append(f"finish: {type(exc).__name__}: {exc}")
                conn.writer = None
                continue
            t3 = time.perf_counter()
            if status != 200:
                out["errors"].append(f"finish: {status} {str(answer)[:200]}")
                continue
            out["finish"].append(t3 - t2)
            if time.time() <= stop_at:
                out["cycles"] += 1  # cycles completed inside the window
    finally:
        await conn.close()


async def _run(url: str, token: str, job: str, workers: int, proc_index: int, start_at: float,
               duration: float) -> dict[str, Any]:
    out: dict[str, Any] = {"lease": [], "finish": [], "cycles": 0, "empty": 0, "errors": []}
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    stop_at = start_at + duration
    await asyncio.gather(*(_worker(_Connection(host, port, token), job, f"sim-{proc_index}-{i}", start_at, stop_at, out)
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


async def _open_loop(url: str, token: str, job: str, rate: float, proc_index: int, start_at: float,
                     duration: float, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {"lease": [], "cycle": [], "cycles": 0, "arrivals": 0, "empty": 0, "errors": []}
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    idle: list[_Connection] = []
    opened: list[_Connection] = []
    rng = random.Random(seed)
    tasks: set[asyncio.Task[None]] = set()

    async def cycle(n: int, arrival: float) -> None:
        conn = idle.pop() if idle else _Connection(host, port, token)
        if conn not in opened:
            opened.append(conn)
        name = f"open-{proc_index}-{n}"
        try:
            status, leases = await conn.post(f"/v1/jobs/{job}/lease", {"worker": name, "n": 1})
            leased = time.perf_counter()
            if status != 200:
                out["errors"].append(f"lease: {status} {str(leases)[:200]}")
                return
            if not leases:
                out["empty"] += 1
                return
            out["lease"].append(leased - arrival)
            status, answer = await conn.post(f"/v1/jobs/{job}/ranges/{leases[0]['index']}/finish", {"worker": name})
            if status != 200:
                out["errors"].append(f"finish: {status} {str(answer)[:200]}")
                return
            out["cycle"].append(time.perf_counter() - arrival)
            out["cycles"] += 1
        except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
            out["errors"].append(f"{type(exc).__name__}: {exc}")
            conn.writer = None
        finally:
            idle.append(conn)

    while time.time() < start_at:
        await asyncio.sleep(min(0.05, start_at - time.time()))
    t0 = time.perf_counter()
    next_at = t0
    while next_at < t0 + duration:
        next_at += rng.expovariate(rate)
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(cycle(out["arrivals"], next_at))  # latency counted from the arrival
        out["arrivals"] += 1
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=60)
    for conn in opened:
        await conn.close()
    out["connections"] = len(opened)
    out["errors"] = out["errors"][:20] + ([f"... {len(out['errors'])} errors"] if len(out["errors"]) > 20 else [])
    return out


def run_open_loop(url: str, token: str, job: str, rate: float, proc_index: int, start_at: float,
                  duration: float) -> dict[str, Any]:
    """One open-loop load process: lease -> finish cycles arriving as a Poisson process of
    ``rate`` per second from ``start_at`` for ``duration`` s (a new keep-alive connection when
    every open one is busy). Latencies (s) count from each arrival."""
    cpu0 = time.process_time()
    out = asyncio.run(_open_loop(url, token, job, rate, proc_index, start_at, duration, seed=proc_index))
    out["cpu_s"] = time.process_time() - cpu0
    return out
