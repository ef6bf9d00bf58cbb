"""Cold replication and warm delivery on a 3-node Ray cluster against a single node
(bench/throughput.py part ``cluster``; issue 12, deliverable 5).

The same 2 CPUs both ways, on this one machine, everything on 127.0.0.1:

single   the engine's embedded Ray with 2 CPUs (as the ``cold`` part's 2-worker pass);
cluster  ``ray.cluster_utils.Cluster``: a head with 0 CPUs (the driver's node: the engine
         joins it by its address, as a gateway with ``VDATA_RAY_ADDRESS`` does) and two worker
         nodes with 1 CPU each. Every task runs on a node other than the driver's, so it
         returns the encoded bytes (through Ray's object stores) and the engine writes the
         cache file; on the single node the worker writes the file itself (``Target``).
bytes    (``--cluster-bytes-row``) the single node again with ``worker_writes=False``: the
         tasks return their bytes as on the cluster, but nothing crosses a node. It splits
         the cluster's extra time into "bytes back to the driver" and "between nodes".

Cold job: every range of the input (the ``cold`` part's file, recipe and ranges) materialized
from an empty cache, from submitting all ranges to all cached; the cache entries are removed
after each pass. Each configuration's engine (a ``Core``) runs in its own process, all of them
up at once, so that their passes alternate: one untimed warm-up pass each, then ``repeats``
rounds of one pass each, the order reversed every round; the median per configuration. (The
machine is shared: a load that changes slowly weighs on every side alike.) Every pass's files
are checked by adler32 against the single node's. The ranges each node made are counted from
the engine's ``made_on`` over the timed passes; the CPU seconds per pass of each side's
processes are summed by kind (its engine process, the Ray workers, the raylets, the GCS and
the rest), which says where the cluster's extra time goes; ``--profile`` adds py-spy on each
engine process's ``Engine._finish`` (``ray.get`` of the result, the cache write).

Warm delivery: a gateway (``python -m service``) with its embedded 2-CPU Ray and a gateway
joined to the cluster, both up at once; one range of ``warm_events`` events is made cold
through each, then curl GETs of the cached range alternate between them (as the ``warm``
part). Serving a cached range does not touch Ray: the ratio should be ~1.

Every process started here (the cluster's nodes, the gateways, the embedded Rays) is stopped
on the way out, also after an error.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench._tp_parts import DATASET, _alternate, _py_spy, _py_spy_finish, curl_get, med
from bench._tp_procs import Gateway, descendants, kill_pids

Log = Callable[[str], None]
MiB = 1024**2
TARGET = 1.2  # cluster cold time <= 1.2x the single node's, the same CPUs


# -- the cluster ---------------------------------------------------------------------------------

@contextmanager
def ray_cluster(object_store_bytes: int, log: Log) -> Iterator[Any]:
    """A head of 0 CPUs and two 1-CPU worker nodes on 127.0.0.1 (Ray's ``Cluster``); its
    processes (and any they left) are stopped on the way out."""
    from ray.cluster_utils import Cluster

    before = set(descendants(os.getpid()))
    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=False, shutdown_at_exit=False)
    try:
        cluster.add_node(num_cpus=0, object_store_memory=object_store_bytes, node_ip_address="127.0.0.1",
                         include_dashboard=False)
        for _ in range(2):
            cluster.add_node(num_cpus=1, object_store_memory=object_store_bytes, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        log(f"  cluster up at {cluster.address} in {time.perf_counter() - t0:.1f} s (head 0 CPUs, 2 x 1 CPU)")
        yield cluster
    finally:
        ours = set(descendants(os.getpid())) - before
        try:
            cluster.shutdown()
        finally:
            time.sleep(0.5)
            kill_pids(sorted(ours))  # what the nodes left behind (by pid, only theirs)


def _node_names(cluster: Any) -> dict[str, str]:
    """Node id -> "head" / "worker1" / "worker2"."""
    names = {cluster.head_node.node_id: "head"}
    for i, node in enumerate(sorted(cluster.worker_nodes, key=lambda n: n.node_id), 1):
        names[node.node_id] = f"worker{i}"
    return names


# -- cold -----------------------------------------------------------------------------------------

def _kind(proc: Any) -> str:
    """What a Ray process is, by its command line: the workers (``ray::...``: the tasks), the
    raylets (which move objects between the nodes' stores), the GCS, or the rest (agents)."""
    try:
        cmd = proc.cmdline()
    except Exception:  # noqa: BLE001 - gone
        return "other"
    first = cmd[0] if cmd else ""
    if first.startswith("ray::"):
        return "workers"
    for kind in ("raylet", "gcs_server"):
        if first.endswith(kind):
            return kind
    return "other"


def _tree(pid: int) -> list[Any]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _cpu(procs: list[Any], driver: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of ``procs`` by kind; ``driver`` is the engine's
    process (its ``ray.get`` of the results, its cache writes)."""
    import psutil

    out: dict[str, float] = {}
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        kind = "driver" if proc.pid == driver else _kind(proc)
        out[kind] = out.get(kind, 0.0) + t.user + t.system
    return out


def _pass(core: Any, rid: str, n_ranges: int) -> tuple[float, list[int]]:
    """Seconds from submitting every range to every range cached, and the adler32 of each
    cache file; the entries are removed after (a cold cache for the next pass)."""
    from service.core.cache import CacheKey

    t0 = time.perf_counter()
    futures = [core.request(rid, i, "arrow") for i in range(n_ranges)]
    wait_futures(futures)
    elapsed = time.perf_counter() - t0
    sums = [zlib.adler32(f.result().path.read_bytes()) for f in futures]  # result() raises a failure
    for i in range(n_ranges):
        core.cache.remove(CacheKey(rid, i, "arrow"))
    return elapsed, sums


def _serve(conn: Any, work: Path, name: str, root_file: Path, range_events: int, address: str | None,
           worker_writes: bool, object_store_bytes: int, node_names: dict[str, str]) -> None:
    """A configuration's engine, in its own process (so that the configurations' cold passes
    can alternate): a Core on its embedded 2-CPU Ray, or joined to the cluster at ``address``;
    it makes a cold pass on each "pass" it is sent, until "stop"."""
    from service.core.core import Core, CoreConfig
    from service.core.engine import EngineConfig

    if address is not None:
        engine = EngineConfig(address=address, lookahead=0, max_in_flight=8)
    else:
        # node_failure_seconds: Ray's default health checks, not the engine's 3 s: several Rays
        # start here at once on 2 shared cores, and a starved raylet must not be declared dead
        engine = EngineConfig(num_cpus=2, lookahead=0, max_in_flight=8, object_store_bytes=object_store_bytes,
                              temp_dir=str(work / f"ray-{name}"), worker_writes=worker_writes,
                              node_failure_seconds=30.0)
    config = CoreConfig(data_dir=work / f"{name}-data", cache_budget_bytes=8 * 1024**3, engine=engine)
    try:
        t0 = time.perf_counter()
        with Core(config) as core:
            started = time.perf_counter() - t0
            if address is None:
                import ray

                node_names = {ray.get_runtime_context().get_node_id(): "head"}
            core.add_dataset(DATASET, [str(root_file)], "Events")
            plan = core.submit({"source": {"dataset": DATASET}, "range_events": range_events})
            conn.send(("ready", started, len(plan.ranges), plan.num_events))
            while conn.recv() == "pass":
                before = dict(core.engine.made_on)
                secs, sums = _pass(core, plan.id, len(plan.ranges))
                made = {node_names.get(node, node): count - before.get(node, 0)
                        for node, count in core.engine.made_on.items() if count > before.get(node, 0)}
                conn.send(("pass", secs, sums, made))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise


class Side:
    """One configuration of the cold job: its engine process (:func:`_serve`), the passes it
    made, and the CPU its processes spent in them."""

    def __init__(self, work: Path, name: str, root_file: Path, range_events: int, *, address: str | None = None,
                 worker_writes: bool = True, object_store_bytes: int = 300 * MiB,
                 node_names: dict[str, str] | None = None, cluster_pids: Callable[[], list[Any]] | None = None) -> None:
        import multiprocessing

        self.name = name
        self.worker_writes = worker_writes and address is None
        self._cluster_pids = cluster_pids
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, name=f"vdata-bench-{name}", daemon=False,
                                args=(child, work, name, root_file, range_events, address, worker_writes,
                                      object_store_bytes, node_names or {}))
        self.seconds: list[float] = []
        self.sums: list[int] | None = None
        self.made: dict[str, int] = {}
        self.cpu: dict[str, float] = {}
        self.warmup = 0.0

    def start(self) -> Side:
        self.proc.start()
        _, self.ray_start, self.ranges, self.events = self._answer(600)
        return self

    def _answer(self, timeout: float) -> tuple[Any, ...]:
        if not self._conn.poll(timeout):
            raise RuntimeError(f"{self.name}: no answer from its engine process in {timeout:.0f} s")
        msg = self._conn.recv()
        if msg[0] == "error":
            raise RuntimeError(f"{self.name}: {msg[1]}")
        return msg

    def procs(self) -> list[Any]:
        """This side's processes: its engine process and what it started, and the cluster's nodes."""
        return _tree(self.proc.pid) + (self._cluster_pids() if self._cluster_pids else [])

    def one_pass(self, timed: bool) -> float:
        procs = self.procs()
        cpu0 = _cpu(procs, self.proc.pid)
        self._conn.send("pass")
        _, secs, sums, made = self._answer(900)
        if self.sums is None:
            self.sums = sums
        elif sums != self.sums:
            raise RuntimeError(f"{self.name}: a pass made different bytes than the first one")
        if timed:
            cpu1 = _cpu(procs, self.proc.pid)
            for kind, value in cpu1.items():
                self.cpu[kind] = self.cpu.get(kind, 0.0) + value - cpu0.get(kind, 0.0)
            for node, count in made.items():
                self.made[node] = self.made.get(node, 0) + count
            self.seconds.append(secs)
        else:
            self.warmup = secs
        return float(secs)

    def stop(self) -> None:
        """Ask the engine to stop (it shuts its Ray down), then end what is left by pid."""
        if self.proc.pid is None:  # never started
            return
        leftovers = [p.pid for p in _tree(self.proc.pid)]
        if self.proc.is_alive():
            try:
                self._conn.send("stop")
            except OSError:
                pass
            self.proc.join(timeout=60)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=10)
        time.sleep(0.2)
        kill_pids(leftovers)
        self._conn.close()

    def result(self) -> dict[str, Any]:
        repeats = len(self.seconds)
        return {"events": self.events, "ranges": self.ranges, "ray_start_s": self.ray_start, "warmup_s": self.warmup,
                "seconds": self.seconds, "median_s": med(self.seconds), "events_per_s": self.events / med(self.seconds),
                "made_on": self.made, "adler32": self.sums, "worker_writes": self.worker_writes,
                "cpu_s_per_pass": {k: v / repeats for k, v in self.cpu.items()}}


def cold(sides: list[Side], repeats: int, log: Log) -> None:
    """One untimed warm-up pass each, then ``repeats`` rounds of one timed pass each, the order
    of the sides reversed every round (ABBA), so that a load that changes slowly (the machine
    is shared) weighs on every side alike."""
    for side in sides:
        log(f"  {side.name}: engine up in {side.ray_start:.1f} s, warm-up pass {side.one_pass(False):.2f} s")
    for r in range(repeats):
        order = sides if r % 2 == 0 else sides[::-1]
        log(f"  round {r + 1}: " + ", ".join(f"{side.name} {side.one_pass(True):.2f} s" for side in order))
    for side in sides:
        log(f"  {side.name}: ranges per node {side.made}; CPU s per pass: "
            + ", ".join(f"{k} {v / repeats:.2f}" for k, v in sorted(side.cpu.items())))


def profile(work: Path, side: Side, seconds: float = 8.0) -> list[str] | None:
    """py-spy on a side's engine process (all threads: the collector, the writers' ``ray.get``
    and cache writes) during untimed passes for about ``seconds``."""
    spy = _py_spy(side.proc.pid, work / f"{side.name}-profile.txt", time.time() - 1.0, seconds)
    if spy is None:
        return None
    end = time.time() + seconds + 1
    while time.time() < end:
        side.one_pass(False)
    return _py_spy_finish(spy, must="_finish (")


# -- warm -----------------------------------------------------------------------------------------

def warm(work: Path, root_file: Path, address: str, range_events: int, repeats: int, log: Log) -> dict[str, Any]:
    """GETs of one cached range from a single-node gateway and from a gateway on the cluster."""
    from vdata.client import Client

    single = Gateway(work, "single-gw", num_cpus=2, lookahead=0, allowed_roots=[root_file.parent])
    joined = Gateway(work, "joined-gw", num_cpus=2, lookahead=0, allowed_roots=[root_file.parent])
    joined.env["VDATA_RAY_ADDRESS"] = address
    out: dict[str, Any] = {"range_events": range_events}
    with single, joined:
        sides: dict[str, tuple[str, str | None, list[int]]] = {}
        files = {}
        for side, gw in (("single", single), ("cluster", joined)):
            with Client(gw.url, gw.token, timeout=600) as client:
                client.add_dataset(DATASET, [str(root_file)], "Events")
                info = client.submit({"source": {"dataset": DATASET}, "range_events": range_events})
            url = f"{gw.url}/v1/recipes/{info.id}/ranges/0?format=arrow"
            t0 = time.perf_counter()
            size, _, status = curl_get(url, gw.token)  # made cold, then cached
            if status != 200:
                raise RuntimeError(f"GET {url}: HTTP {status}")
            out[f"{side}_cold_range_s"] = time.perf_counter() - t0
            files[side] = gw.data_dir / "cache" / info.id / "00000000.arrow"
            out["bytes"] = size
            sides[side] = (url, gw.token, [gw.pid])
        blobs = {side: path.read_bytes() for side, path in files.items()}
        if len(blobs["single"]) != len(blobs["cluster"]):
            raise RuntimeError(f"the cached range has {len(blobs['single'])} bytes on the single node, "
                               f"{len(blobs['cluster'])} on the cluster")
        out["identical"] = zlib.adler32(blobs["single"]) == zlib.adler32(blobs["cluster"]) and \
            blobs["single"] == blobs["cluster"]
        del blobs
        log(f"  range 0 ({range_events:,} events, {out['bytes'] / 1e6:.1f} MB) made cold through the gateway in "
            f"{out['single_cold_range_s']:.1f} s (single) / {out['cluster_cold_range_s']:.1f} s (cluster)")
        runs, cpu = _alternate(sides, out["bytes"], repeats)
    s, c = med(runs["single"]), med(runs["cluster"])
    out.update({"repeats": repeats, "client": "curl -o /dev/null", "single_Bps": s, "cluster_Bps": c, "ratio": c / s,
                "single_runs_Bps": runs["single"], "cluster_runs_Bps": runs["cluster"],
                "gateway_cpu_s": cpu})
    log(f"  warm GETs: single {s / 1e9:.2f} GB/s, cluster {c / 1e9:.2f} GB/s")
    return out


# -- the part -------------------------------------------------------------------------------------

def cluster_part(work: Path, root_file: Path, range_events: int, warm_events: int, repeats: int,
                 warm_repeats: int, object_store_bytes: int, bytes_row: bool, log: Log,
                 profile_sides: bool = False) -> dict[str, Any]:
    """The cold job on every side at once (each side's engine in its own process, the passes
    alternating), then warm delivery through two gateways."""
    import psutil

    out: dict[str, Any] = {"input": str(root_file), "range_events": range_events,
                           "layout": "single: 1 node, 2 CPUs; cluster: head 0 CPUs + 2 worker nodes x 1 CPU, "
                                     f"{object_store_bytes // MiB} MiB object stores, 127.0.0.1",
                           "target": TARGET}
    sides: list[Side] = []

    def cluster_procs() -> list[Any]:  # the cluster's nodes (and their workers): this process's other children
        theirs = {p.pid for side in sides for p in _tree(side.proc.pid)}
        return [p for p in psutil.Process().children(recursive=True) if p.pid not in theirs]

    try:
        log("  single node: an engine on its embedded Ray with 2 CPUs")
        sides.append(Side(work, "single", root_file, range_events))
        sides[-1].start()
        if bytes_row:
            log("  single node, tasks return their bytes (worker_writes=False)")
            sides.append(Side(work, "single_bytes", root_file, range_events, worker_writes=False))
            sides[-1].start()
        with ray_cluster(object_store_bytes, log) as cl:
            log("  cluster: an engine joined to it by its address")
            sides.append(Side(work, "cluster", root_file, range_events, address=cl.address,
                              node_names=_node_names(cl), cluster_pids=cluster_procs))
            sides[-1].start()
            try:
                cold(sides, repeats, log)
                for side in sides:
                    out[side.name] = side.result()
                if profile_sides:
                    for side in sides:
                        log(f"  py-spy on the {side.name} engine (its threads finishing ranges) during cold passes")
                        out[side.name]["profile_top"] = profile(work, side)
            finally:
                for side in sides:  # before the cluster they use goes
                    side.stop()
            log("  warm delivery: a single-node gateway and a gateway on the cluster")
            out["warm"] = warm(work, root_file, cl.address, warm_events, warm_repeats, log)
    finally:
        for side in sides:
            side.stop()
    single, on_cluster = out["single"], out["cluster"]
    out["ratio"] = on_cluster["median_s"] / single["median_s"]
    out["met"] = out["ratio"] <= TARGET
    out["identical"] = all(out[side.name]["adler32"] == single["adler32"] for side in sides)
    return out


def table_rows(c: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    def rate(x: float) -> str:
        return f"{x / 1e9:.2f} GB/s"

    s, cl = c["single"], c["cluster"]
    rows = [("cluster", f"cold job, single node 2 CPUs ({s['ranges']} ranges, {s['events']:,} ev)",
             f"{s['median_s']:.2f} s", f"{s['events_per_s'] / 1e6:.2f} Mev/s")]
    if "single_bytes" in c:
        b = c["single_bytes"]
        rows.append(("cluster", "cold job, single node, bytes returned (no worker write)", f"{b['median_s']:.2f} s",
                     f"{b['median_s'] / s['median_s']:.2f}x single"))
    rows += [("cluster", "cold job, 3 nodes (head 0 CPU + 2 x 1 CPU)", f"{cl['median_s']:.2f} s",
              f"{cl['events_per_s'] / 1e6:.2f} Mev/s"),
             ("cluster", "ratio cluster / single (cold)", f"{c['ratio']:.2f}x",
              f"<= {TARGET}: {'met' if c['met'] else 'MISSED'}"),
             ("cluster", "ranges made per node (timed passes)",
              " / ".join(f"{k} {v}" for k, v in sorted(cl["made_on"].items())), ""),
             ("cluster", "bytes identical to single node (adler32/range)", "yes" if c["identical"] else "NO", "")]
    for name in ("single", "single_bytes", "cluster"):
        if name in c:
            cpu = c[name]["cpu_s_per_pass"]
            rows.append(("cluster", f"CPU s per cold pass, {name}: workers / raylets / driver / gcs+other",
                         f"{cpu.get('workers', 0):.2f} / {cpu.get('raylet', 0):.2f} / {cpu.get('driver', 0):.2f} / "
                         f"{cpu.get('gcs_server', 0) + cpu.get('other', 0):.2f}", ""))
    if "warm" in c:
        w = c["warm"]
        rows += [("cluster", f"warm GET, single-node gateway, {w['bytes'] / 1e6:.1f} MB", rate(w["single_Bps"]), ""),
                 ("cluster", "warm GET, gateway on the cluster", rate(w["cluster_Bps"]),
                  "same bytes" if w["identical"] else "BYTES DIFFER"),
                 ("cluster", "ratio cluster / single (warm)", f"{w['ratio']:.2f}x", "")]
    return rows
