"""The streaming client of the memory benchmark, run as its own process so its RSS is its own.

    python bench/_tp_memclient.py URL TOKEN RECIPE_ID MARK[,MARK...] PREFETCH

Streams the recipe's ranges (vdata.Client.stream, arrow), counting events; at each mark (events
seen) prints ``MARK <events> <VmHWM kB> <VmRSS kB> <seconds>`` and at the end ``DONE ...``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vdata.client import Client  # noqa: E402


def _status() -> tuple[int, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            fields[line.split(":")[0]] = int(line.split()[1])
    return fields["VmHWM"], fields["VmRSS"]


def main() -> None:
    url, token, rid, marks_s, prefetch = sys.argv[1:6]
    marks = sorted(int(m) for m in marks_s.split(","))
    events, t0 = 0, time.perf_counter()
    hwm, rss = _status()
    print(f"START 0 {hwm} {rss} 0", flush=True)
    with Client(url, token, timeout=600) as client:
        for batch in client.stream(rid, format="arrow", prefetch=int(prefetch)):
            events += batch.num_rows
            while marks and events >= marks[0]:
                hwm, rss = _status()
                print(f"MARK {marks.pop(0)} {hwm} {rss} {time.perf_counter() - t0:.3f}", flush=True)
    hwm, rss = _status()
    print(f"DONE {events} {hwm} {rss} {time.perf_counter() - t0:.3f}", flush=True)


if __name__ == "__main__":
    main()
