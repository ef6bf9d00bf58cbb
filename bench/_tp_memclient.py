"""The streaming client of the memory benchmark, run as its own process so its RSS is its own.

    python bench/_tp_memclient.py URL TOKEN RECIPE_ID MARK[,MARK...] PREFETCH

Streams the recipe's ranges (vdata.Client.stream, arrow), counting events; at each mark (events
seen) prints ``MARK <events> <VmHWM kB> <VmRSS kB> <seconds> <arrow kB> <arrow max kB> <objects>``
and at the end ``DONE ...``: the Arrow columns are what the client's Arrow memory pool holds now
and at most so far (the range bodies live there), ``objects`` what the garbage collector tracks,
so that a growth of RSS can be told apart from a growth of what the client keeps.
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa  # noqa: E402

from vdata.client import Client  # noqa: E402


def _status() -> tuple[int, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            fields[line.split(":")[0]] = int(line.split()[1])
    return fields["VmHWM"], fields["VmRSS"]


def _line(kind: str, events: int, t0: float) -> str:
    hwm, rss = _status()
    pool = pa.default_memory_pool()
    return (f"{kind} {events} {hwm} {rss} {time.perf_counter() - t0:.3f} {pool.bytes_allocated() // 1024} "
            f"{pool.max_memory() // 1024} {len(gc.get_objects())}")


def main() -> None:
    url, token, rid, marks_s, prefetch = sys.argv[1:6]
    marks = sorted(int(m) for m in marks_s.split(","))
    events, t0 = 0, time.perf_counter()
    print(_line("START", 0, t0), flush=True)
    with Client(url, token, timeout=600) as client:
        for batch in client.stream(rid, format="arrow", prefetch=int(prefetch)):
            events += batch.num_rows
            while marks and events >= marks[0]:
                print(_line("MARK", marks.pop(0), t0), flush=True)
    print(_line("DONE", events, t0), flush=True)


if __name__ == "__main__":
    main()
