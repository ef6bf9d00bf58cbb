"""The main job behind ``make run`` (for now): make a NanoAOD-like file, cut it into ranges,
write each range as Arrow, Parquet and ROOT, check that each reads back equal, and summarise."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from vdata.formats import FORMATS, read_table, write_table
from vdata.sources import open_dataset
from vdata.synthetic import TREE, write_nanoaod_like
from vdata.testing import tables_equal

__all__ = ["DemoReport", "run_demo"]


@dataclass
class DemoReport:
    source: Path
    events: int
    columns: int
    ranges: int
    bytes_by_format: dict[str, int] = field(default_factory=dict)
    seconds_by_format: dict[str, float] = field(default_factory=dict)
    read_seconds: float = 0.0
    all_equal: bool = True


def run_demo(data_dir: Path, events: int = 200_000, range_events: int = 50_000) -> DemoReport:
    """Generate, open, cut, write and verify; every file goes under ``data_dir``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    source = data_dir / "nanoaod-demo.root"
    if not source.exists():
        write_nanoaod_like(source, events, chunk_events=max(1, range_events // 2))
    out = data_dir / "ranges"
    out.mkdir(exist_ok=True)
    with open_dataset(source, TREE) as ds:
        ranges = ds.ranges(range_events)
        report = DemoReport(source, ds.num_events, len(ds.columns), len(ranges))
        report.bytes_by_format = dict.fromkeys(FORMATS, 0)
        report.seconds_by_format = dict.fromkeys(FORMATS, 0.0)
        for r in ranges:
            start = time.perf_counter()
            table = ds.read(r)
            report.read_seconds += time.perf_counter() - start
            for fmt in FORMATS:
                start = time.perf_counter()
                path = write_table(table, out / f"range-{r.index:05d}.{fmt}", fmt)
                report.seconds_by_format[fmt] += time.perf_counter() - start
                report.bytes_by_format[fmt] += path.stat().st_size
                report.all_equal &= tables_equal(read_table(path, fmt), table)
    return report
