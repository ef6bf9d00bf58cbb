"""Latency experiment: payload CPU efficiency when the data sit at a "remote site".

Set-up (everything on 127.0.0.1)
--------------------------------
* **Remote site**: ``vdata.testing.RangeFileServer`` serving a generated NanoAOD-like ROOT file
  (TTree ``Events``, >= 500k events, zlib, one cluster per 50k events), behind a shaped TCP proxy
  (``bench/_shaping.py``): ``RTT/2`` delay each way, rate capped (default 200 Mbit/s per direction).
* **vdata service**: ``service.http.server.BackgroundServer`` (uvicorn gateway + core + embedded Ray),
  registering the dataset *by URL through the site proxy*, behind its own shaped proxy with the
  same RTT and rate: the payload's link to the service is as far away as the site.
* Site, proxies and service run in a separate process (``bench/_lat_remote.py``), started once
  per delay (``--remote-nice N`` runs it ``nice``d; 0 by default). The payload runs in the main
  process.
* **Payload**: a Numba busy loop (``nogil``) calibrated to ``--payloads`` microseconds of CPU per
  event, run on every batch of the 4 columns ``nMuon, Muon_pt, Muon_eta, Jet_pt``; it also sums
  ``nMuon`` and counts events, checked against the file in every run.

Modes
-----
* ``local``  -- uproot ``iterate`` over the local file (the limit: the payload never waits);
* ``direct`` -- the same over HTTP from the remote site (through the site proxy);
* ``direct-xrootd`` -- the same over XRootD (``root://``; uproot's fsspec-xrootd source) from a real
  XRootD server (Debian's ``xrootd-server``, ``vdata.testing.XRootDServer``) serving the same file
  behind its own shaped proxy (same RTT and rate);
* ``stream`` -- ``Client.stream(recipe, prefetch=P)``: the service reads the site, the payload
  gets Arrow record batches over its own shaped link;
* ``file``   -- ``Client.fetch(recipe, dir, format="root")`` in a background thread writes one
  small ROOT file per range ahead of the payload, which reads each with uproot as it appears.
* ``stream+warm`` -- ``stream`` over a recipe an earlier reader had made whole (every range
  cached at the service: the CDN case); that reading is outside the payload's clock.
* ``stream+stage``, ``file+stage`` -- the same, with delivery starting when the work is
  assigned (the recipe submitted) instead of when the payload starts: ``Client.stage`` asks the
  service for the first ``--prefetch`` ranges, and the pilot opens the stream (or starts the
  fetch) on the payload's link; the payload starts ``--setup-seconds`` later (a pilot's set-up:
  environment, software, conditions; minutes in production, 2 s here). The payload's clock
  starts then; a first batch not yet there by then is waited for inside it. This is the
  event-streaming idea itself: deliver the input ahead of need.

Each vdata run is **cold**: it registers the file under a name the site serves it by only for
that run (a hard link) and a new dataset name, so the recipe id and every cache key are new,
neither the node's remote byte cache nor a worker's open file has seen it, and the service
reads the site again as for a file it never met; the Ray
workers are warm (a warm-up recipe runs first after each service start), as in a running service.
With ``--cold-workers`` no warm-up recipe runs: the workers are only those of the engine's warm pool
(started and imported at the service's start, no file opened; ``--no-warm-pool``: fresh workers).

Cases of issue 15: ``--cluster-events`` larger than ``--range-events`` (several ranges per ROOT
cluster), ``--events 1000000``, ``--site xrootd`` (the vdata modes register the site's ``root://``
URL instead of its HTTP one; ``direct-xrootd`` is the direct mode over it), and ``--pin`` (the
payload on CPU 1, the remote side -- site, service, Ray and its workers -- on CPU 0, with
``taskset``, as a deployment puts the service and the payload on separate cores). The table's
``goal 1st`` is the issue's goal for the first batch: 3 RTT + the transfer of one range over the
payload's link.
The payload's wall clock starts when it asks for data (the uproot open, or the ``stream``/``fetch``
calls that list the ranges) and stops after its last batch; service start-up, dataset
registration, recipe submission and (for ``+stage``) the set-up time are outside it; in the
other vdata modes nothing is read from the site before the payload asks.

Measured per run: **efficiency** = payload CPU seconds (``time.thread_time`` around the busy
loop) / wall seconds; ``busy`` = wall seconds inside the busy loop / wall seconds (insensitive to
the payload being pre-empted); time to first batch; ``eff_ss`` = CPU / (wall - time to first
batch), the steady state; bytes through the site proxy and the payload's link (both directions).
Medians over ``--repeats``.

Outputs: a table on stdout, ``bench/results/latency.json`` and ``bench/results/latency.png``
(efficiency against RTT, one line per mode, one panel per payload).

How to run
----------
    .venv/bin/python bench/latency.py               # full grid: 500k events, RTT 0/20/50/100 ms, 5 and 20 us,
                                                    # median of 3 (about 20 min)
    .venv/bin/python bench/latency.py --quick       # 100k events, RTT 0 and 50 ms, one repeat
    .venv/bin/python bench/latency.py --events 200000 --cluster-events 100000 --range-events 50000 \
        --modes local direct stream stream+stage --payloads 20 --pin --cold-workers --num-cpus 2
                                                    # issue 15's cold first batch, service and payload pinned
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _lat_remote import Remote, unseen  # after the path set-up

TREE = "Events"
COLUMNS = ["nMuon", "Muon_pt", "Muon_eta", "Jet_pt"]
VDATA_MODES = ["stream", "file", "stream+stage", "file+stage", "stream+warm"]
DIRECT_MODES = {"direct": "file_url", "direct-xrootd": "xrootd_url"}  # mode -> the URL it reads
MODES = ["local", *DIRECT_MODES, *VDATA_MODES]
TARGET = 0.97
OUTPUT_JSON = ROOT / "bench" / "results" / "latency.json"
OUTPUT_PNG = ROOT / "bench" / "results" / "latency.png"
INPUT_DIR = ROOT / "bench" / "results" / "input"


# ==================================================================================================
# The payload
# ==================================================================================================

_spin = None


def _compile_spin() -> Any:
    global _spin
    if _spin is None:
        import numba

        @numba.njit(nogil=True, cache=False)
        def spin(n: int) -> float:
            x = 0.0
            for _ in range(n):
                x = x * 0.9999999 + 1.0  # a dependency chain: neither vectorized nor removed
            return x

        spin(10)
        _spin = spin
    return _spin


def calibrate() -> float:
    """Busy-loop iterations per CPU second (best of 5, CPU time: robust to a shared machine)."""
    spin = _compile_spin()
    n = 20_000_000
    best = float("inf")
    for _ in range(5):
        c0 = time.thread_time()
        spin(n)
        best = min(best, time.thread_time() - c0)
    return n / best


@dataclass
class Payload:
    us_per_event: float
    iters_per_s: float
    t0: float = 0.0
    cpu: float = 0.0
    busy: float = 0.0
    events: int = 0
    nmuon: int = 0
    first_batch: float | None = None
    first_bytes: int | None = None  # Arrow bytes of the first batch (the stream modes)

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def process(self, n: int, nmuon: int, nbytes: int | None = None) -> None:
        w0 = time.perf_counter()
        if self.first_batch is None:
            self.first_batch = w0 - self.t0
            self.first_bytes = nbytes
        c0 = time.thread_time()
        _spin(int(n * self.us_per_event * 1e-6 * self.iters_per_s))  # type: ignore[misc]
        self.cpu += time.thread_time() - c0
        self.busy += time.perf_counter() - w0
        self.events += n
        self.nmuon += nmuon


def run_uproot(source: str, payload: Payload, step: int) -> None:
    import numpy as np
    import uproot

    payload.start()
    with uproot.open(source) as f:
        for arrays in f[TREE].iterate(COLUMNS, step_size=step):
            payload.process(len(arrays), int(np.sum(np.asarray(arrays["nMuon"]))))


def run_stream(client: Any, rid: str, payload: Payload, prefetch: int, setup_s: float | None = None) -> None:
    """The payload over ``Client.stream``. With ``setup_s`` (+stage) the stream opens when the
    work is assigned and starts filling its window; the payload starts ``setup_s`` later."""
    import pyarrow.compute as pc

    if setup_s is None:
        payload.start()
    batches = client.stream(rid, format="arrow", prefetch=prefetch)
    if setup_s is not None:
        first: list[Any] = []
        primer = threading.Thread(target=lambda: first.extend(itertools.islice(batches, 1)), daemon=True)
        primer.start()  # the first next() starts the prefetch threads
        time.sleep(setup_s)
        payload.start()
        primer.join()  # inside the payload's clock: a late first batch counts
        batches = itertools.chain(first, batches)
    for batch in batches:
        payload.process(batch.num_rows, int(pc.sum(batch.column("nMuon")).as_py() or 0), batch.nbytes)


def run_file(client: Any, rid: str, out_dir: Path, payload: Payload, prefetch: int,
             setup_s: float | None = None) -> None:
    """The payload over ROOT files that ``Client.fetch`` writes. With ``setup_s`` (+stage) the
    fetch starts when the work is assigned; the payload starts ``setup_s`` later."""
    import numpy as np
    import uproot

    if setup_s is None:
        payload.start()
    ranges = client.ranges(rid)
    outcome: dict[str, Any] = {}

    def fetch() -> None:
        try:
            outcome["paths"] = client.fetch(rid, out_dir, format="root", prefetch=prefetch, progress=False)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the payload thread
            outcome["error"] = exc

    thread = threading.Thread(target=fetch, name="vdata-fetch", daemon=True)
    thread.start()
    if setup_s is not None:
        time.sleep(setup_s)
        payload.start()
    try:
        for r in ranges:
            path = out_dir / f"range-{r.index:05d}.root"
            while not path.exists():
                if "error" in outcome:
                    raise RuntimeError("fetch failed") from outcome["error"]
                if not thread.is_alive() and not path.exists():
                    raise RuntimeError(f"fetch ended without writing {path}")
                time.sleep(0.002)
            with uproot.open(path) as f:
                arrays = f[TREE].arrays(COLUMNS)
            payload.process(len(arrays), int(np.sum(np.asarray(arrays["nMuon"]))))
    except BaseException:
        client.close()  # makes a fetch still running fail fast
        raise
    finally:
        thread.join(timeout=120)
    if "error" in outcome:
        raise RuntimeError("fetch failed") from outcome["error"]


# ==================================================================================================
# The experiment
# ==================================================================================================

@dataclass
class Run:
    mode: str
    rtt_ms: float
    us_per_event: float
    repeat: int
    wall: float
    cpu: float
    busy: float
    first_batch: float
    events: int
    site_bytes: int
    link_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def eff(self) -> float:
        return self.cpu / self.wall

    @property
    def eff_busy(self) -> float:
        return self.busy / self.wall

    @property
    def eff_ss(self) -> float:
        return self.cpu / max(1e-9, self.wall - self.first_batch)


def first_batch_goal(row: dict[str, Any], rate_mbit: float) -> float:
    """Issue 15's goal for the cold first batch: 3 RTT + the transfer of the first batch at the
    link's rate (its Arrow bytes where the payload saw them, else one range: the payload's link
    bytes over the number of ranges)."""
    first_mb = row.get("first_mb") or row["link_mb"] / max(row["ranges"], 1)
    return 3 * row["rtt_ms"] / 1000 + first_mb * 8 / rate_mbit


def ensure_input(events: int, chunk: int) -> tuple[Path, int]:
    """The generated file (reused when present) and its total nMuon (the payload's check)."""
    import numpy as np
    import uproot

    from vdata.data.synthetic import write_nanoaod_like

    INPUT_DIR.mkdir(parents=True, exist_ok=True)
    path = INPUT_DIR / f"latency_{events}ev_chunk{chunk}_zlib.root"
    total = None
    if path.exists():
        try:
            with uproot.open(path) as f:
                t = f[TREE]
                if t.num_entries == events:
                    total = int(np.sum(t["nMuon"].array(library="np")))
        except (OSError, ValueError, KeyError):  # missing, truncated or foreign: regenerate
            total = None
    if total is None:
        write_nanoaod_like(path, events, chunk_events=chunk)
        with uproot.open(path) as f:
            total = int(np.sum(f[TREE]["nMuon"].array(library="np")))
    return path, total


def one_run(mode: str, rtt: float, us: float, rep: int, remote: Remote, file: Path, iters_per_s: float,
            range_events: int, prefetch: int, work: Path, nonce: str, setup_s: float, site: str = "http") -> Run:
    from vdata.client import Client

    payload = Payload(us, iters_per_s)
    extra: dict[str, Any] = {}
    admin = None
    links = ExitStack()  # the file's name for this run (vdata modes), removed once it is over
    base = mode.split("+")[0]
    if mode in VDATA_MODES:  # registration and submission: outside the payload's clock, unshaped
        admin = Client(remote.info["gateway_direct"], remote.info["token"])
        name = f"latency:{nonce}:{mode.replace('+', '-')}:{rtt:g}:{us:g}:{rep}"
        url = remote.info["xrootd_url" if site == "xrootd" else "file_url"]
        alias = links.enter_context(unseen(file, f"{nonce}-{mode.replace('+', '-')}-{rtt:g}-{us:g}-{rep}"))
        admin.add_dataset(name, [url.removesuffix(file.name) + alias.name], TREE)
        info = admin.submit({"source": {"dataset": name}, "columns": COLUMNS, "range_events": range_events})
        extra.update(recipe=info.id, ranges=info.num_ranges)
        if mode.endswith("+stage"):  # the workload system stages the first ranges when it assigns the work
            admin.stage(info.id, prefetch, format="arrow" if base == "stream" else "root")
        if mode.endswith("+warm"):  # an earlier reader had the whole recipe made: every range cached
            for _ in admin.stream(info.id, prefetch=prefetch):
                pass
    before = remote.stats()
    if mode == "local":
        run_uproot(str(file), payload, range_events)
    elif mode in DIRECT_MODES:
        run_uproot(remote.info[DIRECT_MODES[mode]], payload, range_events)
    else:
        with Client(remote.info["gateway"], remote.info["token"]) as client:
            staged = setup_s if mode.endswith("+stage") else None
            if base == "stream":
                run_stream(client, extra["recipe"], payload, prefetch, staged)
            else:
                out = work / f"fetch-{nonce}-{rtt:g}-{us:g}-{rep}"
                try:
                    run_file(client, extra["recipe"], out, payload, prefetch, staged)
                finally:
                    shutil.rmtree(out, ignore_errors=True)
    wall = time.perf_counter() - payload.t0
    after = remote.stats()
    if admin is not None:
        admin.close()
        links.close()
    prefix = "xsite" if mode == "direct-xrootd" or (mode in VDATA_MODES and site == "xrootd") else "site"
    site = (after[f"{prefix}_up"] - before[f"{prefix}_up"]) + (after[f"{prefix}_down"] - before[f"{prefix}_down"])
    link = (after["gw_up"] - before["gw_up"]) + (after["gw_down"] - before["gw_down"])
    if mode in DIRECT_MODES:
        link = site
    extra["site_connections"] = after[f"{prefix}_conns"] - before[f"{prefix}_conns"]
    if prefix == "site":  # the XRootD server counts no requests
        extra["site_requests"] = after["file_requests"] - before["file_requests"]
    extra["nmuon"] = payload.nmuon
    if payload.first_bytes is not None:
        extra["first_bytes"] = payload.first_bytes
    return Run(mode, rtt, us, rep, wall, payload.cpu, payload.busy, payload.first_batch or 0.0,
               payload.events, site, link, extra)


def med(runs: list[Run], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in runs)


def summarize(runs: list[Run], rtts: list[float], payloads: list[float], modes: list[str]) -> list[dict[str, Any]]:
    rows = []
    for us in payloads:
        for rtt in rtts:
            group = {m: [r for r in runs if r.mode == m and r.rtt_ms == rtt and r.us_per_event == us] for m in modes}
            local_eff = med(group["local"], "eff") if group.get("local") else None
            direct_wall = med(group["direct"], "wall") if group.get("direct") else None
            for m in modes:
                g = group[m]
                if not g:
                    continue
                row = {"us_per_event": us, "rtt_ms": rtt, "mode": m, "repeats": len(g),
                       "eff": med(g, "eff"), "eff_busy": med(g, "eff_busy"), "eff_ss": med(g, "eff_ss"),
                       "wall_s": med(g, "wall"), "first_batch_s": med(g, "first_batch"),
                       "site_mb": med(g, "site_bytes") / 1e6, "link_mb": med(g, "link_bytes") / 1e6,
                       "eff_min": min(r.eff for r in g), "eff_max": max(r.eff for r in g),
                       "ranges": g[0].extra.get("ranges", 0)}
                if all("first_bytes" in r.extra for r in g):
                    row["first_mb"] = statistics.median(r.extra["first_bytes"] for r in g) / 1e6
                if m in VDATA_MODES:
                    row["direct_over_vdata_wall"] = direct_wall / row["wall_s"] if direct_wall else None
                    row["meets_target"] = row["eff"] >= TARGET and (local_eff is None or row["eff"] >= local_eff - 0.02)
                    row["meets_target_steady"] = row["eff_ss"] >= TARGET
                    # issue 15 part 4: cold >= direct and within 0.03 of local; warm and staged within 0.01
                    direct_runs = group.get("direct") or group.get("direct-xrootd")  # what the vdata modes read
                    direct_eff = med(direct_runs, "eff") if direct_runs else None
                    cold = m in ("stream", "file")
                    margin = 0.03 if cold else 0.01
                    row["part4_goal"] = None if local_eff is None else bool(
                        row["eff"] >= local_eff - margin and (not cold or direct_eff is None or row["eff"] >= direct_eff))
                rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'payload':>8} {'RTT':>5} {'mode':>13} {'eff':>6} {'busy':>6} {'eff_ss':>6} {'wall s':>7} "
            f"{'1st s':>6} {'goal 1st':>8} {'site MB':>8} {'link MB':>8} {'dir/vd':>7} {'target':>7} {'goal 15':>7}")
    print(head)
    print("-" * len(head))
    last = None
    for r in rows:
        key = (r["us_per_event"], r["rtt_ms"])
        if last is not None and key != last:
            print()
        last = key
        ratio = r.get("direct_over_vdata_wall")
        target = "" if "meets_target" not in r else ("met" if r["meets_target"] else "MISSED")
        part4 = "" if r.get("part4_goal") is None else ("met" if r["part4_goal"] else "MISSED")
        goal = f"{r['first_batch_goal_s']:.2f}" if "first_batch_goal_s" in r else ""
        print(f"{r['us_per_event']:>6g}us {r['rtt_ms']:>3g}ms {r['mode']:>13} {r['eff']:>6.3f} {r['eff_busy']:>6.3f} "
              f"{r['eff_ss']:>6.3f} {r['wall_s']:>7.2f} {r['first_batch_s']:>6.2f} {goal:>8} {r['site_mb']:>8.1f} "
              f"{r['link_mb']:>8.1f} {'' if ratio is None else f'{ratio:.2f}':>7} {target:>7} {part4:>7}")


def plot(rows: list[dict[str, Any]], payloads: list[float], modes: list[str], path: Path, title: str) -> None:
    os.environ.setdefault("MPLCONFIGDIR", tempfile.gettempdir())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(payloads), figsize=(5.5 * len(payloads), 4.2), sharey=True, squeeze=False)
    styles = {"local": "k--", "direct": "o-", "direct-xrootd": "D-", "stream": "s-", "file": "^-",
              "stream+stage": "s:", "file+stage": "^:", "stream+warm": "x-."}
    for ax, us in zip(axes[0], payloads):
        for m in modes:
            pts = sorted((r["rtt_ms"], r["eff"]) for r in rows if r["mode"] == m and r["us_per_event"] == us)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], styles.get(m, "o-"), label=m)
        ax.axhline(TARGET, color="grey", lw=0.8, ls=":", label=f"target {TARGET}")
        ax.set_title(f"payload {us:g} µs/event")
        ax.set_xlabel("round-trip delay (ms)")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("payload CPU efficiency (CPU s / wall s)")
    axes[0][-1].legend(loc="lower left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=500_000)
    p.add_argument("--rtts", type=float, nargs="+", default=[0, 20, 50, 100], help="round-trip delays, ms")
    p.add_argument("--payloads", type=float, nargs="+", default=[5, 20], help="payload CPU, us per event")
    p.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    p.add_argument("--rate-mbit", type=float, default=200.0)
    p.add_argument("--range-events", type=int, default=50_000)
    p.add_argument("--cluster-events", type=int, default=None,
                   help="events per ROOT cluster of the generated file (default: --range-events); larger than the "
                        "ranges: several ranges per cluster")
    p.add_argument("--site", choices=["http", "xrootd"], default="http",
                   help="what the vdata modes register: the site's HTTP URL or its XRootD URL (root://)")
    p.add_argument("--pin", action="store_true",
                   help="taskset: the payload on CPU 1, the remote side (site, service, Ray and its workers) on CPU 0, "
                        "as a deployment has them on separate cores")
    p.add_argument("--cold-workers", action="store_true",
                   help="no warm-up recipe after each service start: only the engine's warm pool is ready (workers "
                        "have opened no file)")
    p.add_argument("--no-warm-pool", action="store_true", help="the engine's warm pool off (with --cold-workers: "
                                                               "the first range meets fresh Ray workers)")
    p.add_argument("--prefetch", type=int, default=4)
    p.add_argument("--num-cpus", type=int, default=4, help="CPUs of the service's embedded Ray")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--setup-seconds", type=float, default=2.0,
                   help="+stage modes: time between staging and the payload's start (the pilot's set-up)")
    p.add_argument("--remote-nice", type=int, default=0, help="niceness of the remote side's process (site, service)")
    p.add_argument("--quick", action="store_true", help="100k events, RTT 0 and 50 ms, 1 repeat")
    p.add_argument("--output", type=Path, default=OUTPUT_JSON)
    p.add_argument("--plot", type=Path, default=OUTPUT_PNG)
    a = p.parse_args(argv)
    if a.quick:
        a.events, a.rtts, a.repeats, a.range_events = 100_000, [0, 50], 1, 20_000
    cluster = a.cluster_events or a.range_events
    if "local" not in a.modes:
        a.modes = ["local", *a.modes]
    t_start = time.perf_counter()

    file, nmuon_total = ensure_input(a.events, cluster)
    if a.pin:  # the remote side is started under `taskset -c 0` (see Remote)
        os.sched_setaffinity(0, {1})
    iters = calibrate()
    print(f"input {file.name} ({file.stat().st_size / 1e6:.1f} MB, {a.events:,} events); busy loop "
          f"{iters / 1e6:.0f}M iterations per CPU second; load average {os.getloadavg()[0]:.2f} (shared machine)",
          flush=True)
    runs: list[Run] = []
    work = Path(tempfile.mkdtemp(prefix="vlat-", dir="/tmp"))
    nonce = f"{os.getpid()}-{int(time.time())}"
    try:
        for rtt in a.rtts:
            t0 = time.perf_counter()
            with Remote(file, work / f"svc-{rtt:g}", rtt, a.rate_mbit, a.num_cpus, work / "remote.log",
                        a.remote_nice, "0" if a.pin else None, not a.no_warm_pool) as remote:
                if not a.cold_workers:
                    warm_up(remote, a.range_events, nonce, rtt)
                print(f"RTT {rtt:g} ms: remote side up in {time.perf_counter() - t0:.1f} s (warm pool: "
                      f"{remote.info.get('warmed', 0)} workers{'' if a.cold_workers else '; warm-up recipe run'})",
                      flush=True)
                for rep in range(a.repeats):
                    for us in a.payloads:
                        order = a.modes[rep % len(a.modes):] + a.modes[:rep % len(a.modes)]
                        for mode in order:
                            run = one_run(mode, rtt, us, rep, remote, file, iters, a.range_events, a.prefetch,
                                          work, nonce, a.setup_seconds, a.site)
                            if run.events != a.events or run.extra["nmuon"] != nmuon_total:
                                raise AssertionError(f"{mode} RTT {rtt} {us} us: {run.events} events, nMuon "
                                                     f"{run.extra['nmuon']}; expected {a.events}, {nmuon_total}")
                            runs.append(run)
                            print(f"  {us:g} us {mode:>13}: eff {run.eff:.3f} (busy {run.eff_busy:.3f}, steady "
                                  f"{run.eff_ss:.3f}) wall {run.wall:.2f} s first batch {run.first_batch:.2f} s "
                                  f"site {run.site_bytes / 1e6:.1f} MB link {run.link_bytes / 1e6:.1f} MB", flush=True)
    finally:
        log = work / "remote.log"
        if log.exists() and log.stat().st_size:
            shutil.copy(log, Path(tempfile.gettempdir()) / "vlat-remote-last.log")
        shutil.rmtree(work, ignore_errors=True)

    rows = summarize(runs, a.rtts, a.payloads, a.modes)
    for row in rows:
        if row["mode"] in VDATA_MODES:
            row["first_batch_goal_s"] = first_batch_goal(row, a.rate_mbit)
    elapsed = time.perf_counter() - t_start
    print()
    print(f"Payload CPU efficiency, {a.events:,} events, 4 columns, {a.range_events:,}-event ranges, "
          f"{cluster:,}-event clusters, vdata reading the site over {a.site}, "
          f"{'payload on CPU 1 and service on CPU 0 (taskset), ' if a.pin else ''}"
          f"{'cold workers, ' if a.cold_workers else ''}{'no warm pool, ' if a.no_warm_pool else ''}"
          f"{a.rate_mbit:g} Mbit/s, prefetch {a.prefetch}, median of {a.repeats}; vdata runs cache-cold.")
    print("eff = payload CPU s / wall s; busy = s in busy loop / wall s; eff_ss = CPU / (wall - time to 1st batch);")
    print("1st s = time to first batch; goal 1st = 3 RTT + the transfer of one range at the link's rate (issue 15);")
    print("dir/vd = wall direct / wall vdata; target: eff >= 0.97 and >= local - 0.02; goal 15 (issue 15 part 4): "
          "cold (stream, file) >= direct and >= local - 0.03, warm and staged >= local - 0.01.")
    print(f"Machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at the end.")
    print()
    print_table(rows)
    vd = [r for r in rows if r["mode"] in VDATA_MODES]
    print()
    print(f"target met in {sum(r['meets_target'] for r in vd)}/{len(vd)} vdata configurations "
          f"(steady state: {sum(r['meets_target_steady'] for r in vd)}/{len(vd)}); run time {elapsed:.0f} s")
    result = {
        "benchmark": "latency", "target": TARGET,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
        "input": {"file": file.name, "bytes": file.stat().st_size, "events": a.events, "columns": COLUMNS},
        "busy_loop_iters_per_cpu_s": iters,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average_end": os.getloadavg()},
        "run_time_s": elapsed,
        "summary": rows,
        "runs": [{**asdict(r), "eff": r.eff, "eff_busy": r.eff_busy, "eff_ss": r.eff_ss} for r in runs],
    }
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text(json.dumps(result, indent=1, default=str) + "\n")
    plot(rows, a.payloads, a.modes, a.plot,
         f"{a.events:,} events, {a.rate_mbit:g} Mbit/s, vdata cache-cold, median of {a.repeats}; "
         f"{os.cpu_count()}-core machine")
    print(f"wrote {a.output.relative_to(ROOT) if a.output.is_relative_to(ROOT) else a.output} and "
          f"{a.plot.relative_to(ROOT) if a.plot.is_relative_to(ROOT) else a.plot}")
    return 0


def warm_up(remote: Remote, range_events: int, nonce: str, rtt: float) -> None:
    """Start the service's Ray workers (imports, first tasks) on a throw-away recipe, untimed."""
    from vdata.client import Client

    with Client(remote.info["gateway_direct"], remote.info["token"]) as admin:
        name = f"latency-warmup:{nonce}:{rtt:g}"
        admin.add_dataset(name, [remote.info["file_url"]], TREE)
        rid = admin.submit({"source": {"dataset": name}, "columns": COLUMNS, "range_events": range_events}).id
        for i, _ in enumerate(admin.stream(rid, prefetch=4)):
            if i >= 5:
                break


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
