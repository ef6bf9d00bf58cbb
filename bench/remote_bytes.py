"""Bytes a remote site sends for a whole cold stream, vdata against direct uproot (issue 15 part 2).

The input is bench/latency.py's NanoAOD-like file (``ensure_input``: 200,000 events in
100,000-event clusters, zlib). It is served by a range-request HTTP server and by a real XRootD
server, each behind a loopback proxy that counts the bytes the site sends (bench/_shaping.py, no
delay, no rate cap). For each protocol and for ranges of 1/1, 1/2 and 1/5 of a cluster:

- **direct**: ``uproot.open(url)`` and ``iterate`` over the same 4 columns in steps of the range size;
- **vdata**: a fresh gateway-side name for the file (a hard link: the node's remote byte cache
  and the range cache are cold), registration, the recipe (the same columns and one define, so
  the recipe check's dry run reads the first range), then ``Client.stream`` of every range,
  through a real gateway (uvicorn, Ray with 2 CPUs) with its default settings.

Registration and submission are counted: they read the site too. The goal is vdata <= 1.1x direct.

    python bench/remote_bytes.py [--events 200000] [--cluster 100000] [--remote-cache-bytes 0]
                                 [--out bench/results/remote_bytes.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _shaping import ShapedProxy  # noqa: E402
from latency import COLUMNS, TREE, ensure_input  # noqa: E402

FRACTIONS = (1, 2, 5)


def direct(url: str, step: int) -> int:
    import uproot

    rows = 0
    with uproot.open(url) as f:
        for arrays in f[TREE].iterate(COLUMNS, step_size=step):
            rows += len(arrays)
    return rows


def through_vdata(gateway: str, token: str, url: str, step: int) -> int:
    from vdata.client import Client

    with Client(gateway, token) as client:
        name = f"bytes:{uuid.uuid4().hex[:8]}"
        client.add_dataset(name, [url], TREE)
        # one define: its recipe check runs a dry run on the first range in a Ray worker
        info = client.submit({"source": {"dataset": name}, "steps": [{"define": {"ptsum": "sum(Muon_pt)"}}],
                              "columns": [*COLUMNS, "ptsum"], "range_events": step})
        return sum(batch.num_rows for batch in client.stream(info.id, format="arrow", prefetch=4))


def counted(proxy: ShapedProxy, run: Any, *args: Any) -> tuple[int, int, float]:
    """(bytes the site sent, rows, seconds) of ``run(*args)``."""
    before, start = proxy.bytes_down, time.perf_counter()
    rows = run(*args)
    return proxy.bytes_down - before, rows, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--cluster", type=int, default=100_000)
    p.add_argument("--remote-cache-bytes", type=int, default=None,
                   help="the gateway's remote_cache_bytes (0: no remote byte cache, to see what it saves)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "remote_bytes.json")
    a = p.parse_args(argv)

    from service.http.server import BackgroundServer
    from service.settings import Settings
    from vdata.testing import RangeFileServer, XRootDServer

    file, _ = ensure_input(a.events, a.cluster)
    file.chmod(file.stat().st_mode | 0o444)  # xrootd runs as nobody under root
    results: list[dict[str, Any]] = []
    links: list[Path] = []
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="vdata-bytes-") as work:
        files = stack.enter_context(RangeFileServer(file.parent))
        http = stack.enter_context(ShapedProxy("127.0.0.1", int(files.url.rsplit(":", 1)[1]), name="http-site"))
        xrootd = stack.enter_context(XRootDServer(file.parent))
        xsite = stack.enter_context(ShapedProxy("127.0.0.1", xrootd.port, name="xrootd-site"))
        xurl = f"root://127.0.0.1:{xsite.port}/"
        settings = Settings(data_dir=Path(work) / "data", port=0, num_cpus=2, object_store_bytes=300 * 1024**2,
                            allowed_url_prefixes=[f"{http.url}/", xurl], log_level="warning",
                            **({} if a.remote_cache_bytes is None else {"remote_cache_bytes": a.remote_cache_bytes}))
        server = stack.enter_context(BackgroundServer(settings))
        assert server.admin_token is not None
        sites = {"http": (http, f"{http.url}/"), "root": (xsite, f"{xurl}/")}  # the server's root is file.parent
        try:
            for proto, (proxy, base) in sites.items():
                for fraction in FRACTIONS:
                    step = a.cluster // fraction
                    link = file.parent / f"bytes-{uuid.uuid4().hex[:8]}.root"
                    os.link(file, link)
                    links.append(link)
                    url = f"{base}{link.name}"
                    d_bytes, d_rows, d_s = counted(proxy, direct, url, step)
                    v_bytes, v_rows, v_s = counted(proxy, through_vdata, server.url, server.admin_token, url, step)
                    if d_rows != a.events or v_rows != a.events:
                        raise RuntimeError(f"{proto} 1/{fraction}: rows direct {d_rows}, vdata {v_rows}, "
                                           f"expected {a.events}")
                    row = {"protocol": proto, "range": f"1/{fraction}", "range_events": step, "direct_bytes": d_bytes,
                           "vdata_bytes": v_bytes, "ratio": round(v_bytes / d_bytes, 3),
                           "direct_s": round(d_s, 2), "vdata_s": round(v_s, 2)}
                    results.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            for link in links:
                link.unlink(missing_ok=True)
    report = {"file": file.name, "file_bytes": file.stat().st_size, "events": a.events, "cluster": a.cluster,
              "columns": COLUMNS, "results": results}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'protocol':8} {'range':6} {'direct MB':>10} {'vdata MB':>10} {'ratio':>6}")
    for r in results:
        mb = r["direct_bytes"] / 1e6, r["vdata_bytes"] / 1e6
        print(f"{r['protocol']:8} {r['range']:6} {mb[0]:10.2f} {mb[1]:10.2f} {r['ratio']:6.2f}")
    return report


if __name__ == "__main__":
    main()
