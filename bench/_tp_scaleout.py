"""Dispatch scaled out (bench/throughput.py part ``scaleout``): lease -> finish cycles against
1 gateway on SQLite, 1 gateway on PostgreSQL and 2 gateway processes on one PostgreSQL
database (each with its own data folder and Ray), the load split evenly over the gateways.

For each configuration: a closed-loop run (the saturation: cycles/s, lease and finish
p50/p99, gateway and database server CPU seconds per cycle), then open-loop runs at fractions
(default 50% and 80%) of that saturation, with p50/p99 lease latency counted from each
Poisson arrival. The PostgreSQL server is a :class:`service.core.pg_server.TemporaryPostgres`
(fsync on, ``synchronous_commit=off``: the promise of SQLite's WAL with ``synchronous=NORMAL``).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil

from bench._tp_procs import Gateway

Log = Callable[[str], None]


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def _tree_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) of the processes and their living children."""
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                times = p.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def _postmaster(server: Any) -> int:
    return int((server.data / "postmaster.pid").read_text().split()[0])


def _load(kind: str, gateways: list[Gateway], job: str, procs: int, workers: int, rate: float,
          seconds: float, db_pids: list[int]) -> dict[str, Any]:
    from bench._tp_dispatch import run_load, run_open_loop

    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 3.0 + procs  # time for the load processes to start and import
    gw_pids = [gw.pid for gw in gateways]
    with ctx.Pool(procs) as pool:
        cpu0, db0 = _tree_cpu(gw_pids), _tree_cpu(db_pids)
        if kind == "closed":
            per = [workers // procs + (1 if i < workers % procs else 0) for i in range(procs)]
            jobs = [pool.apply_async(run_load, (gateways[i % len(gateways)].url, gateways[0].token, job, per[i], i,
                                                start_at, seconds)) for i in range(procs)]
        else:
            jobs = [pool.apply_async(run_open_loop, (gateways[i % len(gateways)].url, gateways[0].token, job,
                                                     rate / procs, i, start_at, seconds)) for i in range(procs)]
        results = [j.get(timeout=seconds + 300) for j in jobs]
        gw_cpu, db_cpu = _tree_cpu(gw_pids) - cpu0, _tree_cpu(db_pids) - db0
    lease = [x for r in results for x in r["lease"]]
    cycles = sum(r["cycles"] for r in results)
    errors = [e for r in results for e in r["errors"]]
    out: dict[str, Any] = {
        "cycles": cycles, "cycles_per_s": cycles / seconds,
        "lease_p50_ms": _pct(lease, 50) * 1e3, "lease_p99_ms": _pct(lease, 99) * 1e3,
        "gateway_cpu_s": gw_cpu, "gateway_cpu_ms_per_cycle": gw_cpu / max(cycles, 1) * 1e3,
        "db_server_cpu_s": db_cpu, "db_server_cpu_ms_per_cycle": db_cpu / max(cycles, 1) * 1e3,
        "load_cpu_s": sum(r["cpu_s"] for r in results), "n_errors": len(errors), "errors": errors[:10],
    }
    if kind == "closed":
        finish = [x for r in results for x in r["finish"]]
        out |= {"finish_p50_ms": _pct(finish, 50) * 1e3, "finish_p99_ms": _pct(finish, 99) * 1e3}
    else:
        cycle = [x for r in results for x in r["cycle"]]
        out |= {"rate_asked": rate, "arrivals": sum(r["arrivals"] for r in results),
                "cycle_p99_ms": _pct(cycle, 99) * 1e3, "connections": sum(r["connections"] for r in results)}
    return out


def configuration(work: Path, database: str, n_gateways: int, workers: int, procs: int, seconds: float,
                  ranges: int, fractions: list[float], log: Log) -> dict[str, Any]:
    """One configuration's closed-loop saturation and open-loop runs at ``fractions`` of it."""
    from service.core.pg_server import TemporaryPostgres
    from vdata.client import Client

    name = f"{database}x{n_gateways}"
    with ExitStack() as stack:
        url, db_pids = None, []
        if database == "postgresql":
            server = stack.enter_context(TemporaryPostgres(durable=True))
            url = server.create_database("vdata")
            db_pids = [_postmaster(server)]
        gateways: list[Gateway] = []
        for i in range(n_gateways):
            gw = Gateway(work, f"{name}-{i}", num_cpus=1, lookahead=0, allowed_roots=[],
                         object_store_bytes=80 * 1024**2, database_url=url)
            gw.env["VDATA_MIN_RANGE_EVENTS"] = "1"  # one-event ranges: dispatch cost only
            gw.env["VDATA_MAX_RANGES"] = str(max(ranges, 100_000))
            if gateways:
                gw.token = gateways[0].token  # the database's admin token, shown to the first only
            gateways.append(stack.enter_context(gw))
        with Client(gateways[0].url, gateways[0].token, timeout=600) as client:
            info = client.submit({"source": {"generator": "zmumu", "events": ranges, "seed": 3}, "range_events": 1})
            t0 = time.perf_counter()
            job = client.create_job(info.id, lease_seconds=3600)
            log(f"  {name}: job of {info.num_ranges:,} ranges created in {time.perf_counter() - t0:.1f} s")
        procs = max(procs, n_gateways)
        closed = _load("closed", gateways, job, procs, workers, 0.0, seconds, db_pids)
        log(f"  {name}: closed loop {closed['cycles_per_s']:,.0f} cycles/s, lease p50/p99 "
            f"{closed['lease_p50_ms']:.1f}/{closed['lease_p99_ms']:.1f} ms, gateway CPU "
            f"{closed['gateway_cpu_ms_per_cycle']:.2f} ms/cycle, errors {closed['n_errors']}")
        result: dict[str, Any] = {"database": database, "gateways": n_gateways, "workers": workers,
                                  "load_processes": procs, "seconds": seconds, "closed": closed, "open": {}}
        for fraction in fractions:
            rate = fraction * closed["cycles_per_s"]
            run = _load("open", gateways, job, procs, workers, rate, seconds, db_pids)
            result["open"][f"{fraction:g}"] = run
            log(f"  {name}: open loop at {fraction:.0%} ({rate:,.0f}/s): {run['cycles_per_s']:,.0f} cycles/s, lease "
                f"p50/p99 {run['lease_p50_ms']:.1f}/{run['lease_p99_ms']:.1f} ms, errors {run['n_errors']}")
    return result


def scaleout(work: Path, configs: list[tuple[str, int]], workers: int, procs: int, seconds: float, ranges: int,
             fractions: list[float], log: Log) -> dict[str, Any]:
    return {f"{db}x{n}": configuration(work, db, n, workers, procs, seconds, ranges, fractions, log)
            for db, n in configs}


def table_rows(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    for name, r in res.items():
        c = r["closed"]
        rows.append(("scaleout", f"{name}: closed, {r['workers']} workers", f"{c['cycles_per_s']:,.0f} cycles/s",
                     f"lease p50/p99 {c['lease_p50_ms']:.1f}/{c['lease_p99_ms']:.1f} ms"))
        rows.append(("scaleout", f"{name}: CPU ms/cycle gateway / db server",
                     f"{c['gateway_cpu_ms_per_cycle']:.2f} / {c['db_server_cpu_ms_per_cycle']:.2f}",
                     f"errors: {c['n_errors']}"))
        for fraction, o in r["open"].items():
            rows.append(("scaleout", f"{name}: open loop {float(fraction):.0%} ({o['rate_asked']:,.0f}/s)",
                         f"lease p99 {o['lease_p99_ms']:.1f} ms",
                         f"p99 < 50: {'yes' if o['lease_p99_ms'] < 50 else 'NO'}; errors {o['n_errors']}"))
    return rows
