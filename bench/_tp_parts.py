"""The parts of the throughput benchmark (see bench/throughput.py for what each measures)."""

from __future__ import annotations

import multiprocessing
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import wait as wait_futures
from pathlib import Path
from typing import Any

import numpy as np

from bench._tp_procs import (
    PYTHON,
    ROOT,
    Gateway,
    Nginx,
    curl_get,
    nginx_pids,
    proc_status,
)

Log = Callable[[str], None]
DATASET = "bench:nanoaod"


def med(xs: list[float]) -> float:
    return float(statistics.median(xs))


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


# -- 2. warm delivery ------------------------------------------------------------------------

def warm(work: Path, root_file: Path, range_events: int, repeats: int, log: Log, profile: bool = False) -> dict[str, Any]:
    """Phase 1: the gateway alone (uvicorn sends the bytes) against plain nginx. Phase 2: the same
    data folder under a gateway in X-Accel-Redirect mode behind nginx, against plain nginx."""
    from vdata.client import Client

    # The gateway's default read-ahead is on, as deployed: every range is made before the timed
    # GETs, so each GET pays for the read-ahead's cache look-ups, not for materializations.
    with Gateway(work, "warm", num_cpus=1, lookahead=0, readahead=4, allowed_roots=[root_file.parent]) as gw:
        with Client(gw.url, gw.token, timeout=600) as client:
            client.add_dataset(DATASET, [str(root_file)], "Events")
            info = client.submit({"source": {"dataset": DATASET}, "range_events": range_events})
        path = f"/v1/recipes/{info.id}/ranges/0?format=arrow"
        t0 = time.perf_counter()
        size, _, status = curl_get(gw.url + path, gw.token)  # materializes and caches range 0
        log(f"  range 0 ({range_events:,} events): {size / 1e6:.1f} MB arrow, made in {time.perf_counter() - t0:.1f} s")
        if status != 200:
            raise RuntimeError(f"GET {gw.url + path}: HTTP {status}")
        for i in range(1, info.num_ranges):
            curl_get(f"{gw.url}/v1/recipes/{info.id}/ranges/{i}?format=arrow", gw.token)
        cache_root = gw.data_dir / "cache"
        file = f"{info.id}/00000000.arrow"
        if (cache_root / file).stat().st_size != size:
            raise RuntimeError(f"cache file {cache_root / file} has {(cache_root / file).stat().st_size} bytes, "
                               f"the gateway sent {size}")
        with Nginx(work / "nginx", root=cache_root) as nx:
            sides = {"gateway": (gw.url + path, gw.token, [gw.pid]), "nginx": (f"{nx.url}/{file}", None, nginx_pids(nx))}
            runs, cpu = _alternate(sides, size, repeats)
            profile_top = _profile_warm(work, gw, gw.url + path) if profile else None
    log("  gateway in X-Accel-Redirect mode behind nginx")
    accel = Gateway(work, "warm", num_cpus=1, lookahead=0, readahead=4, allowed_roots=[root_file.parent])
    accel.env["VDATA_ACCEL_REDIRECT_PREFIX"] = ACCEL_PREFIX
    accel.token = gw.token  # the same data folder: the admin token is announced only on its first start
    with accel, Nginx(work / "nginx-accel", root=cache_root, upstream_port=accel.port, cache_root=cache_root,
                      accel_prefix=ACCEL_PREFIX) as nx:
        sides = {"accel": (nx.url + path, accel.token, [accel.pid, *nginx_pids(nx)]),
                 "nginx2": (f"{nx.url}/{file}", None, nginx_pids(nx))}
        runs2, cpu2 = _alternate(sides, size, repeats)
    g, n, a, n2 = (med(r) for r in (runs["gateway"], runs["nginx"], runs2["accel"], runs2["nginx2"]))
    return {"range_events": range_events, "bytes": size, "repeats": repeats, "client": "curl -o /dev/null",
            "gateway_Bps": g, "nginx_Bps": n, "ratio": g / n, "gateway_runs_Bps": runs["gateway"],
            "nginx_runs_Bps": runs["nginx"], "gets_per_sample": GETS_PER_SAMPLE,
            "gateway_cpu_s_per_get": cpu["gateway"] / (repeats * GETS_PER_SAMPLE),
            "nginx_cpu_s_per_get": cpu["nginx"] / (repeats * GETS_PER_SAMPLE),
            "accel_Bps": a, "nginx2_Bps": n2, "accel_ratio": a / n2, "accel_runs_Bps": runs2["accel"],
            "nginx2_runs_Bps": runs2["nginx2"], "accel_cpu_s_per_get": cpu2["accel"] / (repeats * GETS_PER_SAMPLE),
            "target": 0.8, "met": g / n >= 0.8, "accel_met": a / n2 >= 0.8, "profile_top": profile_top}


ACCEL_PREFIX = "/_vdata_cache"


GETS_PER_SAMPLE = 8  # one sample: 8 GETs on one connection (~0.2 s; a single 51 MB GET lasts ~20 ms)


def _alternate(sides: dict[str, tuple[str, str | None, list[int]]], size: int,
               repeats: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Bytes/s of each sample (GETS_PER_SAMPLE GETs) and the servers' CPU seconds per GET
    (/proc counts 10 ms ticks), the sides alternating, after one untimed sample each. A side is
    (url, token, server pids)."""
    for url, token, _ in sides.values():
        curl_get(url, token, GETS_PER_SAMPLE)
    runs: dict[str, list[float]] = {name: [] for name in sides}
    cpu = dict.fromkeys(sides, 0.0)
    for _ in range(repeats):
        for name, (url, token, pids) in sides.items():
            c0 = sum(_cpu_s(pid) for pid in pids)
            n, secs, status = curl_get(url, token, GETS_PER_SAMPLE)
            if status != 200 or n != size * GETS_PER_SAMPLE:
                raise RuntimeError(f"GET {url}: HTTP {status}, {n} bytes in {GETS_PER_SAMPLE} GETs "
                                   f"(expected {size} each)")
            runs[name].append(n / secs)
            cpu[name] += sum(_cpu_s(pid) for pid in pids) - c0
    return runs, cpu


def _profile_warm(work: Path, gw: Gateway, url: str) -> list[str] | None:
    """py-spy on the gateway during 8 s of back-to-back GETs."""
    spy = _py_spy(gw.pid, work / "warm-profile.txt", time.time() - 1.0, 10)
    end = time.time() + 10
    while time.time() < end:
        curl_get(url, gw.token)
    return _py_spy_finish(spy) if spy else None


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- 3 + 6. cold replication and generation through the engine ---------------------------------

def _engine_pass(core: Any, rid: str, n_ranges: int) -> float:
    """Seconds from submitting every range to every range cached; the entries are removed after."""
    from service.core.cache import CacheKey

    t0 = time.perf_counter()
    futures = [core.request(rid, i, "arrow") for i in range(n_ranges)]
    wait_futures(futures)
    elapsed = time.perf_counter() - t0
    for f in futures:
        f.result()  # raise a failure
    for i in range(n_ranges):  # a fresh cache for the next pass
        core.cache.remove(CacheKey(rid, i, "arrow"))
    return elapsed


def engine(work: Path, num_cpus: int, parts: list[str], root_file: Path, cold_range_events: int,
           gen_events: int, gen_range_events: int, repeats: int, log: Log, profile: bool = False) -> dict[str, Any]:
    """One Core with ``num_cpus`` Ray workers: cold ROOT->Arrow and/or zmumu generation passes,
    each after one untimed warm-up pass (worker start-up, imports, Numba)."""
    from service.core.core import Core, CoreConfig
    from service.core.engine import EngineConfig

    out: dict[str, Any] = {}
    config = CoreConfig(data_dir=work / f"engine{num_cpus}-data", cache_budget_bytes=8 * 1024**3,
                        engine=EngineConfig(num_cpus=num_cpus, lookahead=0, max_in_flight=8,
                                            object_store_bytes=400 * 1024**2, temp_dir=str(work / f"re{num_cpus}")))
    with Core(config) as core:
        if "cold" in parts:
            core.add_dataset(DATASET, [str(root_file)], "Events")
            plan = core.submit({"source": {"dataset": DATASET}, "range_events": cold_range_events})
            n = len(plan.ranges)
            warmup = _engine_pass(core, plan.id, n)
            times = [_engine_pass(core, plan.id, n) for _ in range(repeats)]
            if profile:  # one extra, untimed pass under py-spy: where the engine's collector thread spends its time
                import os

                spy = _py_spy(os.getpid(), work / f"cold{num_cpus}-profile.txt", time.time() - 1.0, 6)
                t_end = time.time() + 7
                while time.time() < t_end:
                    _engine_pass(core, plan.id, n)
                out["cold_profile_top"] = _py_spy_finish(spy, must="_collect") if spy else None
            log(f"  cold, {num_cpus} worker(s): warm-up {warmup:.2f} s, passes " + ", ".join(f"{t:.2f}" for t in times))
            out["cold"] = {"events": plan.num_events, "ranges": n, "seconds": times, "median_s": med(times),
                           "events_per_s": plan.num_events / med(times)}
        if "generation" in parts:
            plan = core.submit({"source": {"generator": "zmumu", "events": gen_events, "seed": 7},
                                "range_events": gen_range_events})
            n = len(plan.ranges)
            warmup = _engine_pass(core, plan.id, n)
            times = [_engine_pass(core, plan.id, n) for _ in range(repeats)]
            log(f"  generation, {num_cpus} worker(s): warm-up {warmup:.2f} s, passes " + ", ".join(f"{t:.2f}" for t in times))
            out["generation"] = {"events": gen_events, "ranges": n, "seconds": times, "median_s": med(times),
                                 "events_per_s": gen_events / med(times)}
    return out


def uproot_baseline(root_file: Path, range_events: int, repeats: int, log: Log) -> dict[str, Any]:
    """Bare uproot in this process over the same entries as the engine's ranges: arrays +
    ak.to_arrow_table(extensionarray=False) + Arrow IPC stream encode."""
    import awkward as ak
    import pyarrow as pa
    import uproot

    from vdata import open_dataset

    ranges = open_dataset([str(root_file)], "Events").ranges(range_events)

    def one_pass() -> tuple[float, int]:
        t0, nbytes = time.perf_counter(), 0
        with uproot.open(root_file, array_cache=None) as f:
            tree = f["Events"]
            for r in ranges:
                table = ak.to_arrow_table(tree.arrays(entry_start=r.first, entry_stop=r.stop), extensionarray=False)
                sink = pa.BufferOutputStream()
                with pa.ipc.new_stream(sink, table.schema) as writer:
                    writer.write_table(table)
                nbytes += len(sink.getvalue().to_pybytes())
        return time.perf_counter() - t0, nbytes

    one_pass()  # warm-up (page cache, imports), as the engine gets one
    times, nbytes = zip(*(one_pass() for _ in range(repeats)))
    events = ranges[-1].stop - ranges[0].first
    log("  uproot, 1 process: passes " + ", ".join(f"{t:.2f}" for t in times))
    return {"events": events, "ranges": len(ranges), "seconds": list(times), "median_s": med(list(times)),
            "events_per_s": events / med(list(times)), "arrow_bytes": nbytes[0]}


def generator_baseline(gen_events: int, gen_range_events: int, repeats: int, log: Log) -> dict[str, Any]:
    """zmumu ``generate()`` alone in this process over the same events, range by range; and the
    whole local pipeline without Ray (materialize + Arrow IPC encode) for reference."""
    from transforms.generators import get_generator
    from vdata import Catalog
    from vdata.formats import encode_table
    from vdata.data.plans import materialize
    from vdata.data.plans import plan as make_plan
    from vdata.data.recipes import Recipe

    gen = get_generator("zmumu")
    bounds = [(a, min(a + gen_range_events, gen_events)) for a in range(0, gen_events, gen_range_events)]

    def gen_pass() -> float:
        t0 = time.perf_counter()
        for a, b in bounds:
            gen.generate(7, a, b, {})
        return time.perf_counter() - t0

    catalog = Catalog()
    recipe = Recipe.from_dict({"source": {"generator": "zmumu", "events": gen_events, "seed": 7},
                               "range_events": gen_range_events}, catalog)
    n = len(make_plan(recipe, catalog).ranges)

    def local_pass() -> float:
        t0 = time.perf_counter()
        for i in range(n):
            encode_table(materialize(recipe, i, catalog), "arrow")
        return time.perf_counter() - t0

    gen_pass(), local_pass()  # warm-up (Numba)
    g = [gen_pass() for _ in range(repeats)]
    loc = [local_pass() for _ in range(repeats)]
    log("  generate() alone: " + ", ".join(f"{t:.2f}" for t in g) + "; materialize+encode in-process: "
        + ", ".join(f"{t:.2f}" for t in loc))
    return {"generate_seconds": g, "generate_events_per_s": gen_events / med(g),
            "local_pipeline_seconds": loc, "local_pipeline_events_per_s": gen_events / med(loc)}


# -- 4. dispatch -----------------------------------------------------------------------------

def dispatch(work: Path, workers: int, procs: int, seconds: float, ranges: int, log: Log,
             profile: bool) -> dict[str, Any]:
    from bench._tp_dispatch import run_load
    from vdata.client import Client

    gateway = Gateway(work, "dispatch", num_cpus=1, lookahead=0, allowed_roots=[])
    gateway.env["VDATA_MIN_RANGE_EVENTS"] = "1"  # one-event ranges: dispatch cost only
    gateway.env["VDATA_MAX_RANGES"] = str(max(ranges, 100_000))
    with gateway as gw:
        with Client(gw.url, gw.token, timeout=600) as client:
            info = client.submit({"source": {"generator": "zmumu", "events": ranges, "seed": 3}, "range_events": 1})
            t0 = time.perf_counter()
            job = client.create_job(info.id, lease_seconds=3600)
            log(f"  job of {info.num_ranges:,} ranges created in {time.perf_counter() - t0:.1f} s")
        ctx = multiprocessing.get_context("spawn")
        per = [workers // procs + (1 if i < workers % procs else 0) for i in range(procs)]
        start_at = time.time() + 3.0 + procs  # time for the load processes to start and import
        cpu0 = _cpu_s(gw.pid)
        spy = _py_spy(gw.pid, work / "dispatch-profile.txt", start_at, seconds) if profile else None
        with ctx.Pool(procs) as pool:
            jobs = [pool.apply_async(run_load, (gw.url, gw.token, job, per[i], i, start_at, seconds))
                    for i in range(procs)]
            results = [j.get(timeout=seconds + 300) for j in jobs]
        gw_cpu = _cpu_s(gw.pid) - cpu0
        profile_text = _py_spy_finish(spy) if spy else None
    lease = [x for r in results for x in r["lease"]]
    finish = [x for r in results for x in r["finish"]]
    cycles = sum(r["cycles"] for r in results)
    errors = [e for r in results for e in r["errors"]]
    out = {"workers": workers, "load_processes": procs, "seconds": seconds, "ranges": ranges, "cycles": cycles,
           "cycles_per_s": cycles / seconds, "lease_p50_ms": pct(lease, 50) * 1e3, "lease_p99_ms": pct(lease, 99) * 1e3,
           "finish_p50_ms": pct(finish, 50) * 1e3, "finish_p99_ms": pct(finish, 99) * 1e3,
           "gateway_cpu_s": gw_cpu, "load_cpu_s": sum(r["cpu_s"] for r in results),
           "gateway_cpu_ms_per_request": gw_cpu / max(len(lease) + len(finish), 1) * 1e3,
           "empty_leases": sum(r["empty"] for r in results), "errors": errors[:20], "n_errors": len(errors)}
    out["met"] = out["cycles_per_s"] >= 2000 and max(out["lease_p99_ms"], out["finish_p99_ms"]) < 50
    if profile_text:
        out["profile_top"] = profile_text
    return out


def _py_spy(pid: int, out: Path, start_at: float, seconds: float) -> tuple[subprocess.Popen[str], Path] | None:
    """py-spy sampling the gateway during the measured window (if py-spy is installed)."""
    spy = Path(PYTHON).parent / "py-spy"
    if not spy.exists():
        return None
    delay = max(0.0, start_at - time.time()) + 1.0
    dur = max(1, int(seconds - 2))
    raw = out.with_suffix(".raw")
    cmd = f"sleep {delay:.2f}; exec {spy} record --pid {pid} --duration {dur} --rate 100 --idle --format raw --nonblocking -o {raw}"
    return subprocess.Popen(["bash", "-c", cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            text=True), raw


def _py_spy_finish(spy: tuple[subprocess.Popen[str], Path], must: str | None = None) -> list[str] | None:
    proc, raw = spy
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return summarize_collapsed(raw, must=must) if raw.exists() else None


def summarize_collapsed(raw: Path, top: int = 18, must: str | None = None) -> list[str]:
    """Top project / web-stack / sqlite frames by inclusive samples (all threads, idle included)
    from py-spy's collapsed stacks; threads parked in the thread pool's queue are left out."""
    incl: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        if "Queue.get" in stack or "select (selectors.py" in stack or (must and must not in stack):
            continue  # an idle pool thread / the event loop waiting for I/O
        total += n
        for frame in set(stack.split(";")):
            incl[frame] = incl.get(frame, 0) + n
    rows = sorted(incl.items(), key=lambda kv: -kv[1])
    wanted = ("service/", "vdata/", "ray/_private/worker.py", "posix.fsync", "zlib", "sqlite", "starlette/", "fastapi/", "uvicorn/protocols", "h11", "httptools",
              "pydantic", "anyio/to_thread", "anyio/_backends")
    skip = ("service/http/server.py", "<module>", "_bootstrap", "WorkerThread.run")
    keep = [(f, c) for f, c in rows if any(w in f for w in wanted) and not any(s in f for s in skip)]
    return [f"{100 * c / max(total, 1):5.1f}%  {f}" for f, c in keep[:top]] + [f"({total} busy samples)"]


# -- 5. memory -------------------------------------------------------------------------------

def _rss_kinds(pid: int) -> dict[str, int]:
    """RssAnon / RssFile / RssShmem (kB) of a process: heap, mapped libraries, shared memory
    (the pages of Ray's object store the gateway has touched count here); {} if it is gone."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
                out[line.split(":")[0]] = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return out


def _mark_row(line: str, gw_pid: int, sampled_peak: int) -> dict[str, Any]:
    """One line of bench/_tp_memclient.py, with the gateway's memory read now."""
    kind, n, hwm, rss, secs, arrow, arrow_max, objects = line.split()
    g = proc_status(gw_pid)
    kinds = _rss_kinds(gw_pid)
    return {"kind": kind, "events": int(n), "client_hwm_kb": int(hwm), "client_rss_kb": int(rss),
            "client_arrow_kb": int(arrow), "client_arrow_max_kb": int(arrow_max), "client_gc_objects": int(objects),
            "seconds": float(secs), "gateway_hwm_kb": g.get("VmHWM", 0), "gateway_rss_kb": g.get("VmRSS", 0),
            "gateway_sampled_peak_kb": sampled_peak, "gateway_anon_kb": kinds.get("RssAnon", 0),
            "gateway_file_kb": kinds.get("RssFile", 0), "gateway_shmem_kb": kinds.get("RssShmem", 0)}


def memory(work: Path, events: int, range_events: int, marks: list[int], prefetch: int, log: Log) -> dict[str, Any]:
    """Peak RSS of the gateway and of a streaming client at each mark, with what makes it up:
    the client's Arrow pool (its range bodies) and object count, the gateway's RSS split into
    heap, libraries and shared memory (Ray's object store)."""
    from vdata.client import Client

    columns = ["nMuon", "Muon_pt", "Muon_eta", "Muon_phi"]
    with Gateway(work, "memory", num_cpus=1, lookahead=0, allowed_roots=[]) as gw:
        with Client(gw.url, gw.token, timeout=600) as client:
            info = client.submit({"source": {"generator": "zmumu", "events": events, "seed": 11},
                                  "columns": columns, "range_events": range_events})
        gw_start = proc_status(gw.pid)
        peak = {"rss": 0}
        stop = threading.Event()

        def sample() -> None:  # the gateway's RSS every 50 ms (VmHWM is read at each mark too)
            while not stop.is_set():
                peak["rss"] = max(peak["rss"], proc_status(gw.pid).get("VmRSS", 0))
                stop.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cmd = [PYTHON, str(ROOT / "bench" / "_tp_memclient.py"), gw.url, gw.token or "", info.id,
               ",".join(map(str, marks)), str(prefetch)]
        client_proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        rows = []
        try:
            assert client_proc.stdout is not None
            for line in client_proc.stdout:
                r = _mark_row(line, gw.pid, peak["rss"])
                rows.append(r)
                log(f"  {r['kind']} {r['events']:>10,} events at {r['seconds']:6.1f} s: client peak "
                    f"{r['client_hwm_kb'] / 1024:.0f} MiB (arrow {r['client_arrow_kb'] / 1024:.0f}, max "
                    f"{r['client_arrow_max_kb'] / 1024:.0f} MiB; {r['client_gc_objects']:,} objects), gateway peak "
                    f"{r['gateway_hwm_kb'] / 1024:.0f} MiB (rss now {r['gateway_rss_kb'] / 1024:.0f} MiB: heap "
                    f"{r['gateway_anon_kb'] / 1024:.0f}, libraries {r['gateway_file_kb'] / 1024:.0f}, shared "
                    f"{r['gateway_shmem_kb'] / 1024:.0f})")
            if client_proc.wait(timeout=600) != 0:
                raise RuntimeError(f"the streaming client exited {client_proc.returncode}")
        finally:
            if client_proc.poll() is None:
                client_proc.kill()
                client_proc.wait()
            stop.set()
            sampler.join()
    at = {r["events"]: r for r in rows if r["kind"] == "MARK"}
    lo, hi = at[marks[0]], at[marks[-1]]
    out = {"events": events, "range_events": range_events, "columns": columns, "prefetch": prefetch,
           "gateway_start_kb": gw_start, "marks": rows,
           "client_growth": hi["client_hwm_kb"] / lo["client_hwm_kb"],
           "gateway_growth": hi["gateway_hwm_kb"] / lo["gateway_hwm_kb"],
           # where the growth between the first and the last mark went, kB
           "client_growth_kb": {"peak": hi["client_hwm_kb"] - lo["client_hwm_kb"],
                                "arrow_max": hi["client_arrow_max_kb"] - lo["client_arrow_max_kb"]},
           "gateway_growth_kb": {k: hi[f"gateway_{k}_kb"] - lo[f"gateway_{k}_kb"]
                                 for k in ("hwm", "rss", "anon", "file", "shmem")}}
    out["met"] = out["client_growth"] <= 1.10 and out["gateway_growth"] <= 1.10
    return out
