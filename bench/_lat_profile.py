"""Where the first batch's seconds go (issue 15 part 3): one cold range, timed along its path.

For each round-trip delay, a remote site (``RangeFileServer`` behind a shaped proxy: RTT/2 each
way, 200 Mbit/s) serves the latency benchmark's generated file; a vdata service (``Core`` + the
gateway, in this process, so that the engine's :attr:`~service.core.engine.Engine.timings` can be
read) has the dataset registered by URL through that proxy, under a new name per run (cold cache);
the payload's side asks through a second shaped proxy of the same delay, with plain ``httpx``:

    list      GET /v1/recipes/{id}/ranges                  (what ``Client.stream`` does first)
    gateway   GET range 0 sent -> the engine submits its task
    queued    submit -> a Ray worker starts it (a fresh worker: its start and imports)
    plan      the worker's catalog (unpickled once per revision) and plan
    read      open the remote file in the worker (a new dataset: several round trips) and read
              the range's baskets, decompress, to Arrow
    write     encode / write the cache file
    commit    the engine's loop sees it, the driver commits the cache entry
    to byte   commit -> the first byte of the response at the payload
    transfer  first byte -> the whole first range at the payload (= its first batch)

``--client`` times only the first batch of ``Client.stream`` (a new client, as a payload has:
its listing and range 0 asked together). Each run reads a file the service never met (the
file under a new name at the site: no remote byte cache, no open file in a worker). ``--fresh`` starts a service for each run without the engine's warm pool (``warm_workers=False``,
no task run before): the first range meets fresh Ray workers. Otherwise one service per delay,
its warm pool ready, runs ``--repeats`` cold ranges. Also timed: ``uproot.open`` of the file
through the site proxy from this process (the open the worker repeats).

    .venv/bin/python bench/_lat_profile.py --rtts 0 20 50 100
    .venv/bin/python bench/_lat_profile.py --rtts 0 100 --fresh --repeats 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

COLUMNS = ["nMuon", "Muon_pt", "Muon_eta", "Jet_pt"]
STEPS = ["list", "gateway", "queued", "plan", "read", "write", "commit", "to_byte", "transfer"]


def first_batch(gateway_url: str, token: str, rid: str) -> float:
    """Seconds to the first batch of ``Client.stream`` (prefetch 4), a new client as a payload has."""
    from vdata.client import Client

    t0 = time.time()
    with Client(gateway_url, token) as client:
        batches = client.stream(rid, prefetch=4)
        next(batches)
        seconds = time.time() - t0
        batches.close()
    return seconds


def one_range(core: Any, server: Any, gateway_url: str, site_url: str, name: str,
              range_events: int, client: bool = False) -> dict[str, float]:
    import httpx

    from service.core.cache import CacheKey

    headers = {"Authorization": f"Bearer {server.admin_token}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=120) as admin:  # untimed, unshaped
        admin.post("/v1/datasets", json={"name": name, "paths": [site_url], "tree": "Events"}).raise_for_status()
        rid = admin.post("/v1/recipes", json={"source": {"dataset": name}, "columns": COLUMNS,
                                              "range_events": range_events}).json()["id"]
    if client:
        return {"total": first_batch(gateway_url, server.admin_token, rid)}
    with httpx.Client(base_url=gateway_url, headers=headers, timeout=120) as payload:
        t0 = time.time()
        payload.get(f"/v1/recipes/{rid}/ranges").raise_for_status()
        t1 = time.time()
        with payload.stream("GET", f"/v1/recipes/{rid}/ranges/0", params={"format": "arrow"}) as response:
            response.raise_for_status()
            t2 = time.time()
            size = sum(len(chunk) for chunk in response.iter_raw())
        t3 = time.time()
    key = CacheKey(rid, 0, "arrow")
    timing = next(t for t in reversed(core.engine.timings) if t.key == key)
    committed = timing.submitted + timing.queued + timing.plan + timing.make + timing.write + timing.collect \
        + timing.commit
    return {"list": t1 - t0, "gateway": timing.submitted - t1, "queued": timing.queued, "plan": timing.plan,
            "read": timing.make, "write": timing.write, "commit": timing.collect + timing.commit,
            "to_byte": t2 - committed, "transfer": t3 - t2, "total": t3 - t0, "fresh": float(timing.fresh),
            "imports": timing.imports, "mb": size / 1e6}


def open_seconds(url: str) -> float:
    import uproot

    t = time.perf_counter()
    with uproot.open(url) as f:
        f["Events"].num_entries  # noqa: B018 - the tree's metadata read, as a worker's open does
    return time.perf_counter() - t


def profile_rtt(file: Path, rtt_ms: float, args: argparse.Namespace, work: Path) -> list[dict[str, float]]:
    from _lat_remote import unseen
    from _shaping import ShapedProxy
    from service.http.app import build_core
    from service.http.server import BackgroundServer
    from service.settings import Settings
    from vdata.testing import RangeFileServer

    rows = []
    rtt, rate = rtt_ms / 1000.0, args.rate_mbit * 1e6
    starts = args.repeats if args.fresh else 1
    with RangeFileServer(file.parent) as files, ShapedProxy("127.0.0.1", int(files.url.rsplit(":", 1)[1]), rtt, rate,
                                                            "site") as site:
        site_url = f"{site.url}/{file.name}"
        opened = open_seconds(site_url)
        for start in range(starts):
            data = work / f"svc-{rtt_ms:g}-{start}"
            settings = Settings(data_dir=data, port=0, num_cpus=args.num_cpus, object_store_bytes=300 * 1024**2,
                                allowed_url_prefixes=[site.url], log_level="warning", ray_temp_dir=data / "ray",
                                engine={"warm_workers": not args.fresh})
            core = build_core(settings).start()
            try:
                warmed = core.engine.warmed.result(timeout=120)
                with BackgroundServer(settings, core) as server, \
                        ShapedProxy("127.0.0.1", server.port, rtt, rate, "gateway") as gateway:
                    for rep in range(1 if args.fresh else args.repeats):
                        with unseen(file, f"profile-{rtt_ms:g}-{start}-{rep}") as alias:
                            row = one_range(core, server, gateway.url, f"{site.url}/{alias.name}",
                                            f"profile:{rtt_ms:g}:{start}:{rep}", args.range_events, args.client)
                        row.update(rtt_ms=rtt_ms, warmed=warmed, open=opened)
                        rows.append(row)
                        if args.client:
                            print(f"RTT {rtt_ms:>3g} ms: Client.stream's first batch {row['total']:.3f} s", flush=True)
                            continue
                        print(f"RTT {rtt_ms:>3g} ms{' fresh' if args.fresh else ''}: " + ", ".join(
                            f"{k} {row[k]:.3f}" for k in [*STEPS, "total"]) + f" s (imports {row['imports']:.3f} s, "
                            f"open alone {opened:.3f} s, {row['mb']:.1f} MB)", flush=True)
            finally:
                core.close()
    return rows


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--cluster-events", type=int, default=50_000)
    p.add_argument("--range-events", type=int, default=50_000)
    p.add_argument("--rtts", type=float, nargs="+", default=[0, 20, 50, 100])
    p.add_argument("--rate-mbit", type=float, default=200.0)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--fresh", action="store_true", help="a service per run, without the warm pool")
    p.add_argument("--client", action="store_true",
                   help="time only the first batch of vdata's Client.stream (its listing and range 0 asked together)")
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "latency_profile.json")
    a = p.parse_args(argv)
    from latency import ensure_input

    file, _ = ensure_input(a.events, a.cluster_events)
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="vlat-prof-", dir="/tmp") as work:
        for rtt in a.rtts:
            rows += profile_rtt(file, rtt, a, Path(work))
    if a.client:
        for rtt in a.rtts:
            print(f"RTT {rtt:g} ms: Client.stream's first batch, median "
                  f"{statistics.median(r['total'] for r in rows if r['rtt_ms'] == rtt):.3f} s")
        return 0
    print("\nmedians (s):")
    print(f"{'RTT':>5} " + " ".join(f"{s:>8}" for s in [*STEPS, "total"]) + f" {'3RTT+xfer':>9}")
    for rtt in a.rtts:
        group = [r for r in rows if r["rtt_ms"] == rtt]
        med = {k: statistics.median(r[k] for r in group) for k in [*STEPS, "total"]}
        goal = 3 * rtt / 1000 + med["transfer"]
        print(f"{rtt:>3g}ms " + " ".join(f"{med[k]:>8.3f}" for k in [*STEPS, "total"]) + f" {goal:>9.3f}")
    out = a.output.with_name(a.output.stem + ("_fresh" if a.fresh else "") + a.output.suffix)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": {k: str(v) for k, v in vars(a).items()}, "runs": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
