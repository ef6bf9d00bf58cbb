"""Service throughput: warm delivery, cold replication, dispatch, memory, generation at scale.

What it measures (every comparison side by side in the same run; medians of ``--repeats``)
------------------------------------------------------------------------------------------
warm        GET of a cached Arrow range (``--warm-events`` NanoAOD-like events, all columns)
            from the gateway (``python -m service`` in a subprocess, bearer token) vs nginx
            (started here on a loopback port, own config + prefix in a temp folder) serving
            the same cache file. Same client for both: ``curl -s -o /dev/null``, a new
            connection per GET, the two sides alternating. Target: gateway >= 0.8x nginx bytes/s.
            Then, on the same data folder, a gateway with ``VDATA_ACCEL_REDIRECT_PREFIX`` behind
            nginx (nginx sends the file the gateway names) against the plain nginx again.
            Server CPU per GET is summed over the runs (gateway; nginx master + worker).
cold        ROOT -> Arrow through the engine (``Core`` in this process, Ray with 1 and then 2
            workers, a fresh cache for every pass: the entries are removed after each pass)
            vs bare uproot in one process over the same entries (arrays +
            ``ak.to_arrow_table(extensionarray=False)`` + Arrow IPC encode). Time from
            submitting all ranges to all cached. Input: the 1M-event zlib NanoAOD-like file
            of bench/read.py (generated if absent). Each configuration gets one untimed
            warm-up pass (Ray worker start-up, imports, the file in the page cache).
            Targets: 1 worker >= 0.9x uproot; 2 workers >= 1.7x 1 worker.
dispatch    ``--dispatch-workers`` simulated workers (asyncio + httpx.AsyncClient in
            ``--dispatch-procs`` load-generator processes) running lease -> finish for
            ``--dispatch-seconds`` against one gateway (lookahead 0: dispatch only), on a job
            of ``--dispatch-ranges`` one-event zmumu ranges. Cycles/s and p50/p99 of lease and
            finish. Target: >= 2000 cycles/s and p99 < 50 ms.
scaleout    Dispatch scaled out (bench/_tp_scaleout.py): the same lease -> finish load against
            1 gateway on SQLite, 1 on PostgreSQL, 2 gateway processes on one PostgreSQL database
            (``--scaleout-configs``; a temporary PostgreSQL server is started and removed),
            closed loop (saturation: cycles/s, p50/p99, gateway and database CPU ms per cycle),
            then open loop at ``--open-loop`` fractions of that saturation (Poisson arrivals;
            p99 lease latency from the arrival). Target: p99 < 50 ms at 80%.
memory      Peak RSS (VmHWM) of the gateway process and of a streaming client process
            (``Client.stream``, prefetch 4) over a ``--memory-events`` zmumu dataset (4
            columns), read at 1M events and at the end. Target: flat (<= 10% growth).
cluster     Cold replication and warm delivery on a 3-node Ray cluster (``ray.cluster_utils.Cluster``,
            head 0 CPUs + 2 worker nodes x 1 CPU, 127.0.0.1) against a single node with 2 CPUs
            (bench/_tp_cluster.py): the ``cold`` part's file, ranges and recipe, each configuration's
            engine in its own process, their cold passes alternating (median of --repeats; ranges
            per node; CPU per pass by Ray process kind; adler32 of every range equal to the single
            node's), then GETs of a cached range from a single-node gateway and a gateway joined to
            the cluster, alternating. Target: cluster cold time <= 1.2x single.
generation  zmumu end to end (cold, through the engine, every range materialized into the
            cache as Arrow) with 1 and 2 workers, vs ``generate()`` alone in one process over
            the same events (and the in-process materialize + encode without Ray, for reference).

``--profile`` samples the gateway with py-spy during dispatch (and warm) and prints the top
frames. The machine may be shared: the JSON records the load average before and after.

How to run
----------
    .venv/bin/python bench/throughput.py                          # everything, ~4-6 min
    .venv/bin/python bench/throughput.py --only warm,dispatch --dispatch-seconds 10

It prints one table and writes ``bench/results/throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import _tp_parts as parts  # noqa: E402
from bench.read import ensure_input, machine_info  # noqa: E402

PARTS = ("warm", "cold", "dispatch", "scaleout", "memory", "generation", "cluster")
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "throughput.json"


def fmt_rate(x: float, unit: str) -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.1f} {unit}"


def mark(ok: bool) -> str:
    return "met" if ok else "MISSED"


def table(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    if "warm" in res:
        w = res["warm"]
        rows += [("warm", f"gateway GET, {w['range_events']:,} ev, {w['bytes'] / 1e6:.1f} MB arrow", fmt_rate(w["gateway_Bps"], "B/s"), ""),
                 ("warm", "nginx, same cache file", fmt_rate(w["nginx_Bps"], "B/s"), ""),
                 ("warm", "ratio gateway / nginx", f"{w['ratio']:.2f}x", f">= 0.8: {mark(w['met'])}"),
                 ("warm", "server CPU per GET: gateway / nginx",
                  f"{w['gateway_cpu_s_per_get'] * 1e3:.0f} / {w['nginx_cpu_s_per_get'] * 1e3:.0f} ms", ""),
                 ("warm", "gateway (X-Accel-Redirect) behind nginx", fmt_rate(w["accel_Bps"], "B/s"), ""),
                 ("warm", "nginx, same cache file (2nd phase)", fmt_rate(w["nginx2_Bps"], "B/s"), ""),
                 ("warm", "ratio accel / nginx", f"{w['accel_ratio']:.2f}x", f">= 0.8: {mark(w['accel_met'])}"),
                 ("warm", "CPU per GET: gateway + nginx (accel)", f"{w['accel_cpu_s_per_get'] * 1e3:.0f} ms", "")]
    if "cold" in res:
        c = res["cold"]
        rows += [("cold", f"bare uproot, 1 process, {c['uproot']['events']:,} ev", fmt_rate(c["uproot"]["events_per_s"], "ev/s"), ""),
                 ("cold", f"engine, 1 worker ({c['w1']['ranges']} ranges)", fmt_rate(c["w1"]["events_per_s"], "ev/s"), ""),
                 ("cold", "engine, 2 workers", fmt_rate(c["w2"]["events_per_s"], "ev/s"), ""),
                 ("cold", "ratio 1 worker / uproot", f"{c['ratio_1w_uproot']:.2f}x", f">= 0.9: {mark(c['ratio_1w_uproot'] >= 0.9)}"),
                 ("cold", "scaling 2 / 1 workers", f"{c['scaling']:.2f}x", f">= 1.7: {mark(c['scaling'] >= 1.7)}")]
    if "dispatch" in res:
        d = res["dispatch"]
        rows += [("dispatch", f"{d['workers']} workers, {d['load_processes']} load procs, {d['seconds']:.0f} s", f"{d['cycles_per_s']:,.0f} cycles/s", f">= 2000: {mark(d['cycles_per_s'] >= 2000)}"),
                 ("dispatch", "lease p50 / p99", f"{d['lease_p50_ms']:.1f} / {d['lease_p99_ms']:.1f} ms", f"p99 < 50: {mark(d['lease_p99_ms'] < 50)}"),
                 ("dispatch", "finish p50 / p99", f"{d['finish_p50_ms']:.1f} / {d['finish_p99_ms']:.1f} ms", f"p99 < 50: {mark(d['finish_p99_ms'] < 50)}"),
                 ("dispatch", "CPU s: gateway / load generator", f"{d['gateway_cpu_s']:.0f} / {d['load_cpu_s']:.0f} s", f"errors: {d['n_errors']}")]
    if "memory" in res:
        m = res["memory"]
        for r in m["marks"]:
            if r["kind"] == "MARK":
                rows.append(("memory", f"peak RSS at {r['events']:,} ev (client / gateway)",
                             f"{r['client_hwm_kb'] / 1024:.0f} / {r['gateway_hwm_kb'] / 1024:.0f} MiB", ""))
        rows += [("memory", "growth client / gateway", f"{m['client_growth']:.2f}x / {m['gateway_growth']:.2f}x", f"<= 1.10: {mark(m['met'])}")]
    if "generation" in res:
        g = res["generation"]
        rows += [("generation", f"generate() alone, 1 process, {g['w1']['events']:,} ev", fmt_rate(g["baseline"]["generate_events_per_s"], "ev/s"), ""),
                 ("generation", "materialize+encode in-process (no Ray)", fmt_rate(g["baseline"]["local_pipeline_events_per_s"], "ev/s"), ""),
                 ("generation", f"engine, 1 worker ({g['w1']['ranges']} ranges)", fmt_rate(g["w1"]["events_per_s"], "ev/s"), f"{g['ratio_1w_generate']:.2f}x generate()"),
                 ("generation", "engine, 2 workers", fmt_rate(g["w2"]["events_per_s"], "ev/s"), f"{g['ratio_2w_generate']:.2f}x generate()"),
                 ("generation", "scaling 2 / 1 workers", f"{g['scaling']:.2f}x", "")]
    if "scaleout" in res:
        from bench._tp_scaleout import table_rows

        rows += table_rows(res["scaleout"])
    if "cluster" in res:
        from bench._tp_cluster import table_rows as cluster_rows

        rows += cluster_rows(res["cluster"])
    return rows


def print_table(res: dict[str, Any]) -> None:
    rows = [("part", "what", "figure", "target / ratio")] + table(res)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    line = "  ".join("-" * w for w in widths)
    print(line)
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        if i == 0:
            print(line)
    print(line)


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {','.join(PARTS)}")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median); >= 3")
    p.add_argument("--warm-events", type=int, default=200_000)
    p.add_argument("--warm-repeats", type=int, default=7)
    p.add_argument("--cold-events", type=int, default=1_000_000)
    p.add_argument("--cold-range-events", type=int, default=100_000)
    p.add_argument("--dispatch-seconds", type=float, default=30.0)
    p.add_argument("--dispatch-workers", type=int, default=500)
    p.add_argument("--dispatch-procs", type=int, default=1, help="load-generator processes")
    p.add_argument("--dispatch-ranges", type=int, default=200_000)
    p.add_argument("--scaleout-configs", default="sqlite:1,postgresql:1,postgresql:2",
                   help="DATABASE:GATEWAYS,... for the scaleout part")
    p.add_argument("--open-loop", default="0.5,0.8", help="open-loop rates as fractions of the saturation")
    p.add_argument("--memory-events", type=int, default=10_000_000)
    p.add_argument("--memory-range-events", type=int, default=100_000)
    p.add_argument("--gen-events", type=int, default=4_000_000)
    p.add_argument("--gen-range-events", type=int, default=250_000)
    p.add_argument("--cluster-object-store-mb", type=int, default=200, help="object store of each cluster node")
    p.add_argument("--cluster-bytes-row", action="store_true",
                   help="cluster part: also the single node with tasks returning their bytes (worker_writes=False)")
    p.add_argument("--input-dir", type=Path, default=ROOT / "bench" / "results" / "input")
    p.add_argument("--profile", action="store_true", help="py-spy the gateway during dispatch")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = p.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    if bad := [x for x in only if x not in PARTS]:
        p.error(f"unknown part(s) {bad}; choose from {PARTS}")
    if args.repeats < 3:
        p.error("--repeats must be >= 3 (medians of at least 3)")

    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    res: dict[str, Any] = {}
    meta: dict[str, Any] = {"machine": machine_info(), "loadavg_before": loadavg(), "argv": sys.argv[1:],
                            "note": "2-core machine shared with another engineer's benchmark during the run"}
    work = Path(tempfile.mkdtemp(prefix="vtp-", dir="/tmp"))
    try:
        root_file = None
        if "warm" in only or "cold" in only or "cluster" in only:
            root_file, _ = ensure_input(args.input_dir, args.cold_events, "zlib", 100_000, log)
        if "warm" in only:
            log("warm delivery: gateway vs nginx")
            res["warm"] = parts.warm(work, root_file, args.warm_events, args.warm_repeats, log, args.profile)
        if "cold" in only or "generation" in only:
            engine_parts = [x for x in ("cold", "generation") if x in only]
            per_cpus = {}
            for n in (1, 2):
                log(f"engine with {n} worker(s): {', '.join(engine_parts)}")
                per_cpus[n] = parts.engine(work, n, engine_parts, root_file, args.cold_range_events,
                                           args.gen_events, args.gen_range_events, args.repeats, log,
                                           args.profile and n == 2)
            if "cold" in only:
                log("cold: bare uproot baseline")
                up = parts.uproot_baseline(root_file, args.cold_range_events, args.repeats, log)
                w1, w2 = per_cpus[1]["cold"], per_cpus[2]["cold"]
                res["cold"] = {"uproot": up, "w1": w1, "w2": w2,
                               "ratio_1w_uproot": w1["events_per_s"] / up["events_per_s"],
                               "ratio_2w_uproot": w2["events_per_s"] / up["events_per_s"],
                               "scaling": w2["events_per_s"] / w1["events_per_s"], "input": str(root_file),
                               "profile_top": per_cpus[2].get("cold_profile_top")}
            if "generation" in only:
                log("generation: generate() baseline")
                base = parts.generator_baseline(args.gen_events, args.gen_range_events, args.repeats, log)
                w1, w2 = per_cpus[1]["generation"], per_cpus[2]["generation"]
                res["generation"] = {"baseline": base, "w1": w1, "w2": w2,
                                     "ratio_1w_generate": w1["events_per_s"] / base["generate_events_per_s"],
                                     "ratio_2w_generate": w2["events_per_s"] / base["generate_events_per_s"],
                                     "scaling": w2["events_per_s"] / w1["events_per_s"]}
        if "dispatch" in only:
            log(f"dispatch: {args.dispatch_workers} workers for {args.dispatch_seconds:.0f} s")
            res["dispatch"] = parts.dispatch(work, args.dispatch_workers, args.dispatch_procs, args.dispatch_seconds,
                                             args.dispatch_ranges, log, args.profile)
        if "scaleout" in only:
            from bench._tp_scaleout import scaleout

            configs = [(c.split(":")[0], int(c.split(":")[1])) for c in args.scaleout_configs.split(",") if c]
            log(f"scaleout: dispatch on {', '.join(f'{d} x{n}' for d, n in configs)}")
            res["scaleout"] = scaleout(work, configs, args.dispatch_workers, args.dispatch_procs, args.dispatch_seconds,
                                       args.dispatch_ranges, [float(x) for x in args.open_loop.split(",") if x], log)
        if "cluster" in only:
            from bench._tp_cluster import cluster_part

            log("cluster: cold job and warm delivery, 3-node Ray cluster vs single node")
            res["cluster"] = cluster_part(work, root_file, args.cold_range_events, args.warm_events, args.repeats,
                                          args.warm_repeats, args.cluster_object_store_mb * 1024**2,
                                          args.cluster_bytes_row, log, args.profile)
        if "memory" in only:
            log(f"memory: streaming {args.memory_events:,} zmumu events")
            marks = sorted({min(1_000_000, args.memory_events), args.memory_events})
            res["memory"] = parts.memory(work, args.memory_events, args.memory_range_events, marks, 4, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta["loadavg_after"] = loadavg()
    meta["run_seconds"] = time.perf_counter() - t_start
    print()
    print_table(res)
    for part in ("warm", "cold", "dispatch"):
        if res.get(part, {}).get("profile_top"):
            who = "engine collector thread (2 workers)" if part == "cold" else "gateway"
            print(f"\n{who} profile during {part} (py-spy --idle, inclusive):")
            print("\n".join(res[part]["profile_top"]))
    for side, c in res.get("cluster", {}).items():
        if isinstance(c, dict) and c.get("profile_top"):
            print(f"\ncluster part, {side}: engine's threads finishing ranges (Engine._finish: ray.get + cache write) during cold passes (py-spy --idle, inclusive):")
            print("\n".join(c["profile_top"]))
    print(f"\nrun time {meta['run_seconds']:.0f} s; load average before {meta['loadavg_before']}, after "
          f"{meta['loadavg_after']} (machine shared)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"meta": meta, "results": res}, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
