"""Read throughput of ``vdata`` against bare uproot on local ROOT files.

What it measures
----------------
For each compression (zlib level 1 and LZ4 level 1) the script:

1. generates (or reuses, if cached with the right event count) a ROOT file with a TTree ``Events``
   holding NanoAOD-style columns: flat ``run``/``luminosityBlock``/``event``/``MET_*``/``HLT_*`` and the
   jagged collections ``Muon_*`` (counter ``nMuon``), ``Jet_*`` (``nJet``) and ``Electron_*``
   (``nElectron``); 23 branches, numpy with a fixed seed, written with ``mktree`` + ``extend``;
2. opens it through the library (``vdata.open_dataset([path], "Events")``) and with bare uproot
   (``uproot.open(path)["Events"]``), both outside the timed region, and does one untimed warm-up read
   with each so that first-call costs (imports, interpretation set-up) are excluded;
3. reads every range of ``ds.ranges(--range-events)`` through ``ds.read(r)`` (a ``pyarrow.Table``) and
   the same entries with ``tree.arrays(entry_start=r.first, entry_stop=r.stop)`` followed by
   ``awkward.to_arrow_table(arr, extensionarray=False)`` (the library's own conversion);
4. repeats each full pass ``--repeats`` times, alternating library and uproot (and which of them goes
   first) so that both see the same page-cache state, and reports the medians: events/s, MB/s (MB =
   uncompressed Arrow bytes, ``table.nbytes / 1e6``) and the ratio library/uproot (target >= 0.9).

Results are printed as one table per compression and written to ``bench/results/read.json``.

How to run
----------
    .venv/bin/python bench/read.py                      # 1,000,000 events (first run generates ~1 min)
    .venv/bin/python bench/read.py --events 50000       # quick check, a few seconds

uproot 5.7 writes and reads LZ4 through ``cramjam`` and ``xxhash`` (its own dependencies); a compression
that uproot cannot use here is skipped, and the output says why.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import awkward as ak
import pyarrow as pa
import uproot

import vdata
from vdata.data.synthetic import write_nanoaod_like

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORK_DIR = ROOT / "bench" / "results" / "input"
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "read.json"
TREE = "Events"
SEED = 20261125
TARGET_RATIO = 0.9
GENERATOR_VERSION = 2  # bump when the generated content changes: it is part of the file name


# --------------------------------------------------------------------------------------------------
# Input generation
# --------------------------------------------------------------------------------------------------

def _tree_entries(path: Path) -> int | None:
    """Entries of the TTree ``Events`` in ``path``; None if unreadable, missing or not a TTree."""
    try:
        with uproot.open(path) as f:
            obj = f[TREE]
            if not isinstance(obj, uproot.TTree):
                return None
            return int(obj.num_entries)
    except (OSError, ValueError, KeyError):  # missing, truncated or foreign: regenerate
        return None


def ensure_input(
    work_dir: Path, events: int, compression: str, chunk_events: int, log: Callable[[str], None]
) -> tuple[Path, float | None]:
    """Path of the cached input file (generated if absent/wrong) and the generation time (None: reused)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / f"nanoaod_v{GENERATOR_VERSION}_{events}ev_chunk{chunk_events}_{compression}.root"
    if path.exists() and _tree_entries(path) == events:
        log(f"reusing {path} ({path.stat().st_size / 1e6:.1f} MB)")
        return path, None

    log(f"generating {path.name}: {events:,} events, {compression}, extend() chunks of {chunk_events:,} ...")
    t0 = time.perf_counter()
    write_nanoaod_like(path, events, seed=SEED, compression=compression, level=1, chunk_events=chunk_events)
    elapsed = time.perf_counter() - t0
    if _tree_entries(path) != events:
        raise RuntimeError(f"generated {path} does not hold a TTree {TREE!r} with {events} entries")
    log(f"  done in {elapsed:.1f} s, {path.stat().st_size / 1e6:.1f} MB")
    return path, elapsed


# --------------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------------

@dataclass
class Pass:
    wall_s: float
    cpu_s: float
    events: int
    nbytes: int

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall_s

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / 1e6 / self.wall_s


@dataclass
class CaseResult:
    compression: str
    file: str
    file_mb: float
    events: int
    columns: int
    ranges: int
    range_events: int
    generated_s: float | None
    open_s: dict[str, float] = field(default_factory=dict)
    warmup: dict[str, float] = field(default_factory=dict)
    check: dict[str, Any] = field(default_factory=dict)
    library: list[dict[str, float]] = field(default_factory=list)
    uproot: list[dict[str, float]] = field(default_factory=list)
    median: dict[str, float] = field(default_factory=dict)
    ratio_events_per_s: float = 0.0
    target_met: bool = False


def _timed_pass(read_one: Callable[[Any], pa.Table], ranges: list[Any], before: Callable[[], None]) -> Pass:
    events = 0
    nbytes = 0
    before()
    gc.collect()
    c0 = time.process_time()
    t0 = time.perf_counter()
    for r in ranges:
        table = read_one(r)
        events += table.num_rows
        nbytes += table.nbytes
        del table
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return Pass(wall_s=wall, cpu_s=cpu, events=events, nbytes=nbytes)


def measure(
    path: Path,
    compression: str,
    range_events: int,
    repeats: int,
    generated_s: float | None,
    log: Callable[[str], None],
    warmup_passes: int = 0,
) -> CaseResult:

    # Outside the timed region: the library's dataset and uproot's file handle, each opened once.
    t0 = time.perf_counter()
    ds = vdata.open_dataset([str(path)], TREE)
    open_library_s = time.perf_counter() - t0
    ranges = list(ds.ranges(range_events))
    columns = list(ds.columns)
    t0 = time.perf_counter()
    tree_file = uproot.open(path, array_cache=None)  # as the library opens its files
    tree = tree_file[TREE]
    open_uproot_s = time.perf_counter() - t0
    missing = [c for c in columns if c not in tree.keys()]
    if missing:
        raise RuntimeError(f"library columns not in the tree: {missing}")
    # uproot reads exactly the columns the library reports (all of them, in the library's order).
    expressions = columns if columns != list(tree.keys()) else None

    def lib_read(r: Any) -> pa.Table:
        return ds.read(r)

    def uproot_read(r: Any) -> pa.Table:
        arr = tree.arrays(expressions, entry_start=r.first, entry_stop=r.stop)
        return ak.to_arrow_table(arr, extensionarray=False)

    result = CaseResult(
        compression=compression,
        file=str(path),
        file_mb=path.stat().st_size / 1e6,
        events=int(ds.num_events),
        columns=len(columns),
        ranges=len(ranges),
        range_events=range_events,
        generated_s=generated_s,
    )
    result.open_s = {"library_open_dataset": open_library_s, "uproot_open": open_uproot_s}
    covered = sum(r.stop - r.first for r in ranges)
    if covered != ds.num_events or ds.num_events != tree.num_entries:
        log(f"[warn] ranges cover {covered} entries; dataset {ds.num_events}; tree {tree.num_entries}")

    # Warm-up (untimed in the figures): one read of the first range with each.
    t0 = time.perf_counter()
    lib_table = lib_read(ranges[0])
    result.warmup["library_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    up_table = uproot_read(ranges[0])
    result.warmup["uproot_s"] = time.perf_counter() - t0
    result.check = {
        "same_rows": lib_table.num_rows == up_table.num_rows,
        "same_columns": lib_table.column_names == up_table.column_names,
        "same_schema": lib_table.schema.equals(up_table.schema, check_metadata=False),
        "equal_values": lib_table.select(up_table.column_names).equals(up_table)
        if set(up_table.column_names) <= set(lib_table.column_names)
        else False,
        "library_nbytes": lib_table.nbytes,
        "uproot_nbytes": up_table.nbytes,
    }
    if not all(result.check[k] for k in ("same_rows", "same_columns", "equal_values")):
        log(f"[warn] library and uproot tables differ on range 0: {result.check}")
    del lib_table, up_table

    def clear_caches() -> None:
        # Both readers open their files with array_cache=None (uproot's default cache is keyed by
        # branch and entry window and would serve repeated passes from memory): nothing to clear.
        pass

    # Optional untimed full passes: the first full pass in a process is ~10-50% slower whichever
    # reader does it (memory growth, not the reader); the median of 3 absorbs it, these remove it.
    for _ in range(warmup_passes):
        for fn in (lib_read, uproot_read):
            _timed_pass(fn, ranges, clear_caches)

    lib_passes: list[Pass] = []
    up_passes: list[Pass] = []
    for rep in range(repeats):
        order = [("library", lib_read), ("uproot", uproot_read)]
        if rep % 2:
            order.reverse()
        for name, fn in order:
            p = _timed_pass(fn, ranges, clear_caches)
            (lib_passes if name == "library" else up_passes).append(p)
            log(f"  {compression} rep {rep + 1}/{repeats} {name:7s}: {p.wall_s:6.3f} s "
                f"({p.events_per_s / 1e6:.2f} M ev/s, {p.mb_per_s:.0f} MB/s, cpu {p.cpu_s:.2f} s)")
    tree_file.close()
    ds.close()

    def dump(passes: list[Pass]) -> list[dict[str, float]]:
        return [
            {**asdict(p), "events_per_s": p.events_per_s, "mb_per_s": p.mb_per_s} for p in passes
        ]

    result.library = dump(lib_passes)
    result.uproot = dump(up_passes)
    med = {
        "library_wall_s": statistics.median(p.wall_s for p in lib_passes),
        "uproot_wall_s": statistics.median(p.wall_s for p in up_passes),
        "library_events_per_s": statistics.median(p.events_per_s for p in lib_passes),
        "uproot_events_per_s": statistics.median(p.events_per_s for p in up_passes),
        "library_mb_per_s": statistics.median(p.mb_per_s for p in lib_passes),
        "uproot_mb_per_s": statistics.median(p.mb_per_s for p in up_passes),
        "library_cpu_s": statistics.median(p.cpu_s for p in lib_passes),
        "uproot_cpu_s": statistics.median(p.cpu_s for p in up_passes),
        "library_arrow_mb": lib_passes[0].nbytes / 1e6,
        "uproot_arrow_mb": up_passes[0].nbytes / 1e6,
    }
    result.median = med
    result.ratio_events_per_s = med["library_events_per_s"] / med["uproot_events_per_s"]
    result.target_met = result.ratio_events_per_s >= TARGET_RATIO
    return result


# --------------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------------

def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _relative(path: Path) -> str:
    try:
        return str(path.absolute().relative_to(ROOT))
    except ValueError:
        return str(path)


def machine_info() -> dict[str, Any]:
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {
            name: _version(name) for name in ("vdata", "uproot", "awkward", "pyarrow", "numpy", "cramjam", "xxhash")
        },
    }


def codec_unavailable(compression: str) -> str | None:
    """None if uproot can compress and decompress with ``compression`` here, else the reason.

    uproot 5.7 does LZ4/ZSTD through ``cramjam`` (and LZ4 checksums through ``xxhash``), both
    uproot dependencies; older versions needed the ``lz4`` package.
    """
    codec = {"zlib": uproot.ZLIB(1), "lz4": uproot.LZ4(1)}[compression]
    try:
        payload = bytes(range(256)) * 64
        compressed = uproot.compression.compress(payload, codec)  # imports the backends
        return None if compressed else f"uproot produced no {compression} output"
    except Exception as exc:  # noqa: BLE001 - ImportError or anything a missing backend raises
        return f"{type(exc).__name__}: {exc}"


def print_table(res: CaseResult) -> None:
    m = res.median
    title = f"read throughput, {res.compression}"
    details = (
        f"{res.compression}: {res.events:,} events, {res.columns} columns, {res.ranges} ranges of "
        f"<= {res.range_events:,}, file {res.file_mb:.1f} MB, Arrow {m['library_arrow_mb']:.1f} MB "
        f"(library) / {m['uproot_arrow_mb']:.1f} MB (uproot); untimed: open (library "
        f"{res.open_s['library_open_dataset']:.3f} s, uproot {res.open_s['uproot_open']:.3f} s), warm-up read "
        f"(library {res.warmup['library_s']:.3f} s, uproot {res.warmup['uproot_s']:.3f} s)"
    )
    print(details)
    rows = [
        ("library (vdata)", m["library_wall_s"], m["library_events_per_s"], m["library_mb_per_s"], m["library_cpu_s"]),
        ("uproot + to_arrow", m["uproot_wall_s"], m["uproot_events_per_s"], m["uproot_mb_per_s"], m["uproot_cpu_s"]),
    ]
    verdict = "MET" if res.target_met else "NOT MET"
    footer = f"ratio library/uproot (events/s) = {res.ratio_events_per_s:.3f}  target >= {TARGET_RATIO}: {verdict}"
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, caption=footer)
        for col in ("reader", "median wall s", "events/s", "MB/s (Arrow)", "median CPU s"):
            table.add_column(col, justify="left" if col == "reader" else "right")
        for name, wall, evs, mbs, cpu in rows:
            table.add_row(name, f"{wall:.3f}", f"{evs:,.0f}", f"{mbs:,.1f}", f"{cpu:.3f}")
        Console(width=120).print(table)
    except ImportError:
        print(title)
        print(f"{'reader':20s} {'median wall s':>14s} {'events/s':>14s} {'MB/s (Arrow)':>13s} {'median CPU s':>13s}")
        for name, wall, evs, mbs, cpu in rows:
            print(f"{name:20s} {wall:14.3f} {evs:14,.0f} {mbs:13,.1f} {cpu:13.3f}")
        print(footer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events in each generated file")
    parser.add_argument("--range-events", type=int, default=100_000, help="target events per range")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per reader (median reported)")
    parser.add_argument("--warmup-passes", type=int, default=0,
                        help="extra untimed full passes per reader before timing (default 0: only "
                             "one warm-up read of the first range)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="cache of generated inputs")
    parser.add_argument("--chunk-events", type=int, default=100_000,
                        help="events per tree.extend() call (= per basket/cluster) when generating")
    parser.add_argument("--compression", choices=("zlib", "lz4"), action="append",
                        help="compression(s) to run (default: both)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    parser.add_argument("--generate-only", action="store_true", help="only generate the input files")
    args = parser.parse_args(argv)
    if min(args.events, args.range_events, args.repeats, args.chunk_events) <= 0 or args.warmup_passes < 0:
        parser.error("--events, --range-events, --repeats and --chunk-events must be positive")

    def log(msg: str) -> None:
        print(msg, flush=True)

    info = machine_info()
    log(f"machine: {info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']}, "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v))
    log("timing: datasets/files opened outside the timed loop; one untimed warm-up read per reader "
        f"excludes first-call costs (+{args.warmup_passes} untimed full passes); uproot array caches emptied before each pass; passes alternate "
        f"library/uproot; medians of {args.repeats} passes over all ranges")

    compressions = args.compression or ["zlib", "lz4"]
    out: dict[str, Any] = {
        "benchmark": "read",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([_relative(Path(sys.executable)), *sys.argv]),
        "config": {
            "events": args.events,
            "range_events": args.range_events,
            "repeats": args.repeats,
            "chunk_events": args.chunk_events,
            "seed": SEED,
            "target_ratio": TARGET_RATIO,
            "warmup": "one untimed read of the first range per reader before timing",
            "warmup_passes": args.warmup_passes,
            "caches": "uproot array caches (library's and bare uproot's) emptied before every pass",
        },
        "machine": info,
        "results": {},
        "skipped": {},
    }
    all_met = True
    for comp in compressions:
        if reason := codec_unavailable(comp):
            log(f"[skip] {comp}: {reason}")
            out["skipped"][comp] = reason
            all_met = False
            continue
        path, gen_s = ensure_input(args.work_dir, args.events, comp, args.chunk_events, log)
        if args.generate_only:
            continue
        res = measure(path, comp, args.range_events, args.repeats, gen_s, log, args.warmup_passes)
        print_table(res)
        out["results"][comp] = asdict(res)
        all_met = all_met and res.target_met

    if not args.generate_only:
        out["target_met_all"] = all_met
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(out, indent=2) + "\n")
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
