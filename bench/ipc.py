"""Arrow IPC on the wire and on disk: body sizes with LZ4/ZSTD buffer compression, what the
service spends encoding a range, and what the client spends turning a body (an IPC stream)
into the IPC file it writes, against writing the body as it came (the old stream files).

One generated Z->mumu range (``--events``, default 500k) materialized once; every figure is the
median of ``--runs`` runs (default 5). Size ratio: compressed / plain body; rates in MB of the
table in memory per second. Decoding a plain body is zero-copy (the client decodes every body,
to count its events)::

    python bench/ipc.py --events 500000 --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import sys
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's vdata, run from anywhere
import vdata  # noqa: E402
from vdata.client._pipeline import decode_table  # noqa: E402
from vdata.formats import COMPRESSIONS, arrow_file_bytes, encode_table  # noqa: E402


def median_seconds(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    recipe = vdata.Recipe.from_dict({"source": {"generator": "zmumu", "events": args.events, "seed": 1},
                                     "range_events": args.events})
    table = vdata.materialize(recipe, 0, vdata.Catalog())
    plain = len(encode_table(table, "arrow"))
    print(f"{args.events:,} events, {table.num_columns} columns, {table.nbytes / 1e6:.1f} MB in memory; "
          f"median of {args.runs}")
    print("| compression | body MB | size ratio | encode s | decode s | stream->file s | stream->file MB/s |")
    print("|---|---|---|---|---|---|---|")
    for compression in COMPRESSIONS:
        body = pa.py_buffer(encode_table(table, "arrow", compression))
        encode = median_seconds(lambda: encode_table(table, "arrow", compression), args.runs)
        decode = median_seconds(lambda: decode_table(body, "arrow"), args.runs)
        convert = median_seconds(lambda: arrow_file_bytes(body, compression), args.runs)
        print(f"| {compression} | {body.size / 1e6:.2f} | {body.size / plain:.2f} | {encode:.3f} | {decode:.3f} | "
              f"{convert:.3f} | {table.nbytes / 1e6 / convert:,.0f} |")


if __name__ == "__main__":
    main()
