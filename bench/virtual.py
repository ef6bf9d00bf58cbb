"""Virtual-data throughput: the Z->mumu generator, and compiled expressions against
vectorised awkward-array code and a pure Python loop.

What it measures
----------------
(a) ``transforms.generators`` "zmumu": events/s on one core (``generate(seed, 0, N)`` in this
    process) and on all cores (one spawned process per core, each generating a disjoint part
    of [0, N); the workers return a checksum, not the arrays, as a Ray task would write its
    range to the cache rather than send it back). Target: >= 4M events/s per core.
(b) One expression at a time over NanoAOD-like events drawn with NumPy (Poisson(1.3) muons
    and Poisson(4.5) jets per event, exponential pT, Gaussian eta, uniform phi, float32 as in
    NanoAOD), three ways, with the results cross-checked:
    - our kernel: ``compile_expression(text, types)(columns, n)``, wrapper included;
    - the same in vectorised awkward-array code on the same buffers (zero-copy ak.Array);
    - pure Python on the first ``--python-events`` events (scaled per event), in three forms:
      "NumPy buffers" runs the kernel's algorithm (loop over events, then over the event's slice
      of the values) in CPython over the same NumPy values/offsets, i.e. the kernel without
      Numba; "list buffers" does the same after converting both buffers to Python lists
      (untimed); "event lists" loops over one Python list per event (built untimed), the
      fastest plain-Python form we found.
    Targets: kernel >= 2x awkward and >= 50x pure Python.

Every figure is the median of ``--repeats`` (default 3) timed runs after an untimed first call;
the first call is reported separately: for kernels it is compile + run with an empty kernel
cache (a fresh temporary ``VDATA_KERNEL_CACHE``), and "new process" is the first call in a
fresh interpreter that finds the kernel in that disk cache (mostly Numba's one-time start-up
in that process, ~0.3 s here; further cached kernels load in a few ms).

How to run
----------
    .venv/bin/python bench/virtual.py                     # 1M events, about 20 s
    .venv/bin/python bench/virtual.py --events 200000 --zmumu-events 1000000   # quick

It prints a table and writes ``bench/results/virtual.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import awkward as ak
import numba  # noqa: F401 - imported up front: first-call figures exclude Numba's own import
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from transforms.columns import Column, ColumnType  # noqa: E402
from transforms.expressions import compile_expression  # noqa: E402

DEFAULT_OUTPUT = ROOT / "bench" / "results" / "virtual.json"
SEED = 20261125
TARGETS = {"zmumu_per_core": 4e6, "vs_awkward": 2.0, "vs_python": 50.0}


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """(first call s, median of ``repeats`` later calls s, last result)."""
    t0 = time.perf_counter()
    result = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), result


def timed_together(runs: Mapping[str, Callable[..., Any]], repeats: int) -> dict[str, tuple[float, float, Any]]:
    """Like :func:`timed` for each of ``runs``, taking turns, so that all see the same machine load."""
    first: dict[str, float] = {}
    results: dict[str, Any] = {}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(repeats + 1):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            results[name] = fn()
            elapsed = time.perf_counter() - t0
            if rep == 0:
                first[name] = elapsed
            else:
                times[name].append(elapsed)
    return {name: (first[name], statistics.median(times[name]), results[name]) for name in runs}


# ---------------------------------------------------------------- (a) zmumu generator


def _zmumu(first: int, stop: int) -> float:
    from transforms.generators import get_generator

    g = get_generator("zmumu")
    cols = g.generate(SEED, first, stop, g.validate({}))
    return float(cols["Muon_pt"].values[::997].sum())


def _warm_worker() -> None:
    _zmumu(0, 1000)


def bench_zmumu(events: int, workers: int, repeats: int) -> dict[str, Any]:
    first, median, _ = timed(lambda: _zmumu(0, events), repeats)
    out: dict[str, Any] = {"events": events, "first_call_s": first, "one_core_s": median,
                           "one_core_events_per_s": events / median}  # fmt: skip
    bounds = np.linspace(0, events, workers + 1).astype(int)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_warm_worker) as pool:
        list(pool.map(_zmumu, [0] * workers, [1000] * workers))  # every worker started and warm
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(_zmumu, bounds[:-1].tolist(), bounds[1:].tolist()))
            times.append(time.perf_counter() - t0)
    wall = statistics.median(times)
    out |= {"workers": workers, "all_cores_s": wall, "all_cores_events_per_s": events / wall,
            "all_cores_events_per_s_per_core": events / wall / workers}  # fmt: skip
    return out


# ---------------------------------------------------------------- (b) expressions


def nanoaod_like(n: int) -> tuple[dict[str, Column], dict[str, ak.Array]]:
    rng = np.random.default_rng(SEED)
    columns: dict[str, Column] = {}
    arrays: dict[str, ak.Array] = {}
    for name, mean in (("Muon", 1.3), ("Jet", 4.5)):
        counts = rng.poisson(mean, n)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        total = int(offsets[-1])
        draws = {"pt": (rng.exponential(25.0, total) + 5.0), "eta": rng.normal(0.0, 1.4, total),
                 "phi": rng.uniform(-math.pi, math.pi, total)}  # fmt: skip
        for field, values in draws.items():
            values = values.astype(np.float32)
            columns[f"{name}_{field}"] = Column(values, offsets)
            layout = ak.contents.ListOffsetArray(ak.index.Index64(offsets), ak.contents.NumpyArray(values))
            arrays[f"{name}_{field}"] = ak.Array(layout)
    return columns, arrays


def _lists(column: Column, n: int) -> list[list[float]]:
    values, offsets = column.values.tolist(), column.offsets.tolist()  # type: ignore[union-attr]
    return [values[offsets[i] : offsets[i + 1]] for i in range(n)]


# Pure Python forms (see the module docstring): the "buffers" functions take values and offsets
# as NumPy arrays or as Python lists; the "lists" functions take one Python list per event.
Buffers = dict[str, tuple[Any, Any]]
Lists = dict[str, list[list[float]]]


def _buffers_masked_sum(b: Buffers, n: int, name: str, cut: float) -> list[float]:
    values, offsets = b[name]
    out = [0.0] * n
    for i in range(n):
        total = 0.0
        for j in range(offsets[i], offsets[i + 1]):
            v = values[j]
            if v > cut:
                total += v
        out[i] = total
    return out


def _lists_masked_sum(d: Lists, n: int, name: str, cut: float) -> list[float]:
    out = []
    for values in d[name]:
        total = 0.0
        for v in values:
            if v > cut:
                total += v
        out.append(total)
    return out


def _mass(pt0: float, pt1: float, deta: float, dphi: float) -> float:
    return math.sqrt(2 * pt0 * pt1 * (math.cosh(deta) - math.cos(dphi)))


def _buffers_dimuon(b: Buffers, n: int) -> list[float]:
    (pt, offsets), eta, phi = b["Muon_pt"], b["Muon_eta"][0], b["Muon_phi"][0]
    out = [math.nan] * n
    for i in range(n):
        s = offsets[i]
        if offsets[i + 1] - s >= 2:
            out[i] = _mass(pt[s], pt[s + 1], eta[s] - eta[s + 1], phi[s] - phi[s + 1])
    return out


def _lists_dimuon(d: Lists, n: int) -> list[float]:
    out = []
    for pt, eta, phi in zip(d["Muon_pt"], d["Muon_eta"], d["Muon_phi"], strict=True):
        out.append(_mass(pt[0], pt[1], eta[0] - eta[1], phi[0] - phi[1]) if len(pt) >= 2 else math.nan)
    return out


def _buffers_central_jets(b: Buffers, n: int) -> tuple[list[float], list[int]]:
    (pt, offsets), eta = b["Jet_pt"], b["Jet_eta"][0]
    values, out_offsets = [], [0]
    for i in range(n):
        for j in range(offsets[i], offsets[i + 1]):
            if abs(eta[j]) < 2.4:
                values.append(pt[j])
        out_offsets.append(len(values))
    return values, out_offsets


def _lists_central_jets(d: Lists, n: int) -> list[list[float]]:
    out = []
    for pt, eta in zip(d["Jet_pt"], d["Jet_eta"], strict=True):
        out.append([p for p, e in zip(pt, eta, strict=True) if abs(e) < 2.4])
    return out


def _ak_dimuon(a: dict[str, ak.Array]) -> np.ndarray:
    def lead(x: ak.Array, k: int) -> ak.Array:
        return ak.fill_none(ak.pad_none(x, 2, clip=True)[:, k], np.nan)

    pt0, pt1 = lead(a["Muon_pt"], 0), lead(a["Muon_pt"], 1)
    deta = lead(a["Muon_eta"], 0) - lead(a["Muon_eta"], 1)
    dphi = lead(a["Muon_phi"], 0) - lead(a["Muon_phi"], 1)
    return ak.to_numpy(np.sqrt(2 * pt0 * pt1 * (np.cosh(deta) - np.cos(dphi))))


def _ak_masked_sum(name: str, cut: float) -> Callable[[dict[str, ak.Array]], np.ndarray]:
    return lambda a: ak.to_numpy(ak.sum(a[name][a[name] > cut], axis=1))


# label, expression, awkward, pure Python over buffers, pure Python over lists
EXPRESSIONS: list[tuple[str, str, Callable[..., Any], Callable[..., Any], Callable[..., Any]]] = [
    ("masked jagged sum (muons)", "sum(Muon_pt[Muon_pt > 20])", _ak_masked_sum("Muon_pt", 20.0),
     partial(_buffers_masked_sum, name="Muon_pt", cut=20.0), partial(_lists_masked_sum, name="Muon_pt", cut=20.0)),
    ("masked jagged sum (jets, HT)", "sum(Jet_pt[Jet_pt > 30])", _ak_masked_sum("Jet_pt", 30.0),
     partial(_buffers_masked_sum, name="Jet_pt", cut=30.0), partial(_lists_masked_sum, name="Jet_pt", cut=30.0)),
    ("leading dimuon mass", "sqrt(2 * Muon_pt[0] * Muon_pt[1] * (cosh(Muon_eta[0] - Muon_eta[1]) - cos(Muon_phi[0] - Muon_phi[1])))",
     _ak_dimuon, _buffers_dimuon, _lists_dimuon),
    ("jagged mask (central jets)", "Jet_pt[abs(Jet_eta) < 2.4]",
     lambda a: a["Jet_pt"][abs(a["Jet_eta"]) < 2.4], _buffers_central_jets, _lists_central_jets),
]  # fmt: skip


def _flat(result: Any) -> np.ndarray:
    if isinstance(result, Column):
        return result.values
    if isinstance(result, ak.Array):
        return ak.to_numpy(ak.flatten(result)) if result.ndim > 1 else ak.to_numpy(result)
    if isinstance(result, tuple):  # (values, offsets)
        return np.asarray(result[0], dtype=float)
    if isinstance(result, list) and result and isinstance(result[0], list):
        return np.array([v for lst in result for v in lst], dtype=float)
    return np.asarray(result, dtype=float)


def _new_process_first_call(text: str, types: dict[str, ColumnType]) -> float:
    """First call of ``text`` in a fresh interpreter that finds it in the disk cache."""
    snippet = f"""
import sys, time, numpy as np, numba
sys.path.insert(0, {str(ROOT)!r})
from transforms.columns import Column, ColumnType
from transforms.expressions import compile_expression
types = {{k: ColumnType(d, j) for k, (d, j) in {({k: (t.dtype, t.jagged) for k, t in types.items()})!r}.items()}}
offsets = np.array([0, 2, 3], dtype=np.int64)
columns = {{k: Column(np.ones(3, dtype=np.float32), offsets) for k in types}}
t0 = time.perf_counter()
compile_expression({text!r}, types)(columns, 2)
print(time.perf_counter() - t0)
"""
    done = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, check=True, env=os.environ)
    return float(done.stdout.strip().splitlines()[-1])


def bench_expressions(events: int, python_events: int, repeats: int) -> list[dict[str, Any]]:
    columns, arrays = nanoaod_like(events)
    types = {name: col.type for name, col in columns.items()}
    small = min(python_events, events)
    subset = {name: Column(c.values[: c.offsets[small]], c.offsets[: small + 1]) for name, c in columns.items()}  # type: ignore[index]
    arrays_np = {name: (c.values, c.offsets) for name, c in subset.items()}
    buffers = {name: (c.values.tolist(), c.offsets.tolist()) for name, c in subset.items()}  # type: ignore[union-attr]
    lists = {name: _lists(col, small) for name, col in subset.items()}
    rows = []
    for label, text, ak_fn, buffers_fn, lists_fn in EXPRESSIONS:
        expression = compile_expression(text, types)
        runs = {"kernel": lambda e=expression: e(columns, events), "awkward": lambda f=ak_fn: f(arrays),
                "python_numpy": lambda f=buffers_fn: f(arrays_np, small),
                "python_buffers": lambda f=buffers_fn: f(buffers, small),
                "python_lists": lambda f=lists_fn: f(lists, small)}  # fmt: skip
        timing = timed_together(runs, repeats)
        kernel_small = _flat(expression(subset, small))
        agree = np.allclose(_flat(timing["kernel"][2]), _flat(timing["awkward"][2]), rtol=1e-5, equal_nan=True) and all(
            np.allclose(kernel_small, _flat(timing[f][2]), rtol=1e-5, equal_nan=True) for f in ("python_numpy", "python_buffers", "python_lists")
        )  # fmt: skip
        eps = {name: (small if name.startswith("python") else events) / t[1] for name, t in timing.items()}
        rows.append({
            "label": label, "expression": text, "events": events, "python_events": small,
            "kernel_first_call_s": timing["kernel"][0],
            "kernel_first_call_new_process_s": _new_process_first_call(text, types),
            "seconds_per_million_events": {name: 1e6 / e for name, e in eps.items()},
            "events_per_s": eps,
            "kernel_speedup": {name: eps["kernel"] / e for name, e in eps.items() if name != "kernel"},
            "results_agree": bool(agree),
        })  # fmt: skip
    return rows


# ---------------------------------------------------------------- report


def _verdict(value: float, target: float) -> str:
    return "ok" if value >= target else f"MISSED (target {target:g})"


def report(zmumu: dict[str, Any] | None, rows: list[dict[str, Any]]) -> None:
    if zmumu is not None:
        print(f"\n(a) zmumu generator, {zmumu['events']:,} events (first call {zmumu['first_call_s']:.2f} s)")
        print(f"  {'':24s} {'wall s':>8s} {'M events/s':>11s} {'M ev/s/core':>12s}")
        print(f"  {'one core':24s} {zmumu['one_core_s']:8.3f} {zmumu['one_core_events_per_s'] / 1e6:11.2f} "
              f"{zmumu['one_core_events_per_s'] / 1e6:12.2f}  {_verdict(zmumu['one_core_events_per_s'], TARGETS['zmumu_per_core'])}")
        print(f"  {'all cores (' + str(zmumu['workers']) + ' processes)':24s} {zmumu['all_cores_s']:8.3f} "
              f"{zmumu['all_cores_events_per_s'] / 1e6:11.2f} {zmumu['all_cores_events_per_s_per_core'] / 1e6:12.2f}  "
              f"{_verdict(zmumu['all_cores_events_per_s_per_core'], TARGETS['zmumu_per_core'])}")  # fmt: skip
    names = {"kernel": "kernel", "awkward": "awkward (vectorised)", "python_numpy": "Python, NumPy buffers",
             "python_buffers": "Python, list buffers", "python_lists": "Python, event lists"}  # fmt: skip
    for r in rows:
        print(f"\n(b) {r['label']}: {r['expression']}")
        print(f"  {r['events']:,} events (pure Python on {r['python_events']:,}, scaled per event); kernel first call "
              f"{r['kernel_first_call_s']:.3f} s (compile), {r['kernel_first_call_new_process_s']:.3f} s (new process, "
              f"disk cache, with Numba's start-up); results agree: {r['results_agree']}")  # fmt: skip
        print(f"  {'':22s} {'ms/1M ev':>10s} {'M events/s':>11s} {'kernel is':>10s}")
        for key, name in names.items():
            line = f"  {name:22s} {r['seconds_per_million_events'][key] * 1e3:10.1f} {r['events_per_s'][key] / 1e6:11.2f}"
            if key != "kernel":
                ratio = r["kernel_speedup"][key]
                target = TARGETS["vs_awkward" if key == "awkward" else "vs_python"]
                line += f" {ratio:9.1f}x  {_verdict(ratio, target)}"
            print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events per expression (default 1,000,000)")
    parser.add_argument("--python-events", type=int, default=50_000, help="events for the pure Python loop")
    parser.add_argument("--zmumu-events", type=int, default=4_000_000, help="generated zmumu events (0: skip)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="processes for 'all cores'")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    # A fresh kernel cache: the kernels' first call includes their compilation.
    with tempfile.TemporaryDirectory(prefix="vdata-kernels-") as cache:
        os.environ["VDATA_KERNEL_CACHE"] = cache
        os.environ.pop("NUMBA_CACHE_DIR", None)
        rows = bench_expressions(args.events, args.python_events, args.repeats)
    zmumu = bench_zmumu(args.zmumu_events, args.workers, args.repeats) if args.zmumu_events else None
    report(zmumu, rows)
    result = {
        "machine": {"cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                    "python": sys.version.split()[0], "processor": platform.processor()},
        "versions": {m: sys.modules[m].__version__ for m in ("numpy", "awkward", "numba") if m in sys.modules},
        "repeats": args.repeats, "targets": TARGETS, "zmumu": zmumu, "expressions": rows,
    }  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
