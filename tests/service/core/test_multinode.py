"""The engine on a multi-node Ray cluster, on this one machine (``ray.cluster_utils.Cluster``:
a head with 0 CPUs and two 1-CPU worker nodes, 80 MB object stores, on 127.0.0.1).

Ranges run on both worker nodes and are byte-identical to a local materialization; a worker
node killed mid-job costs the stall until Ray declares it dead (bounded by the setting
``node_failure_seconds``, here given to the head as an operator gives it to ``ray start
--head --system-config``), and vdata logs one WARNING per range it took with it.

Not the ``embedded_ray`` fixture: the engine joins this cluster by its address (``ray_address``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import vdata
from service.core.cache import CacheKey, RangeCache
from service.core.db import Database
from service.core.engine import _KV_PREFIX, Engine, EngineConfig
from vdata import Catalog, Recipe
from vdata.data.plans import plan
from vdata.formats import encode_table
from vdata.provenance import describe
from vdata.testing import wait_until

pytestmark = pytest.mark.slow

MB = 1024**2
NODE_FAILURE_SECONDS = 2.0
SETTINGS = EngineConfig(node_failure_seconds=NODE_FAILURE_SECONDS)  # the head's health checks come from here


def zmumu(events: int, seed: int, range_events: int) -> Recipe:
    return Recipe.from_dict({
        "source": {"generator": "zmumu", "events": events, "seed": seed},
        "steps": [{"transform": {"name": "leading_pair_mass_ptetaphim",
                                 "inputs": {"pt": "Muon_pt", "eta": "Muon_eta", "phi": "Muon_phi", "m": "Muon_mass"},
                                 "outputs": {"mass": "mMuMu"}}}],
        "columns": ["mMuMu", "Muon_pt"],
        "range_events": range_events,
    })


class Slow:
    """A fault hook that makes each task take ``seconds`` (so that a node dies with work on it)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, recipe_json: str, index: int) -> None:
        time.sleep(self.seconds)


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    from ray import cloudpickle
    from ray.cluster_utils import Cluster

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the hooks travel to the nodes by value
    ray_cluster = Cluster(initialize_head=False)
    try:
        ray_cluster.add_node(num_cpus=0, object_store_memory=80 * MB, node_ip_address="127.0.0.1",
                             _system_config=SETTINGS.ray_system_config)
        for _ in range(2):
            ray_cluster.add_node(num_cpus=1, object_store_memory=80 * MB, node_ip_address="127.0.0.1")
        ray_cluster.wait_for_nodes()
        yield ray_cluster
    finally:
        import ray

        ray.shutdown()
        ray_cluster.shutdown()


@pytest.fixture(scope="module")
def engine(cluster: object, tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[Engine]:
    root = tmp_path_factory.mktemp("multinode")
    db = Database(f"sqlite:///{root}/v.db")
    catalog = Catalog()
    catalog.add_dataset("opendata:hzz", shared_data / "uproot-HZZ.root", "events")
    cache = RangeCache(root / "cache", db, 256 * MB)
    config = EngineConfig(address=cluster.address, max_in_flight=4, lookahead=0, max_retries=3)  # type: ignore[attr-defined]
    eng = Engine(catalog, cache, config)
    try:
        yield eng.start()
    finally:
        eng.shutdown()
        cache.close()
        db.close()


def _all(engine: Engine, recipe: Recipe, fmt: str = "arrow") -> list[bytes]:
    count = len(engine.plan(recipe).ranges)
    futures = [engine.request(recipe, i, fmt) for i in range(count)]
    return [f.result(timeout=300).path.read_bytes() for f in futures]


def test_ranges_run_on_both_worker_nodes_and_match_a_local_run(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    engine.fault_hook = Slow(0.3)  # no node can take every range before the other asks
    try:
        with caplog.at_level(logging.DEBUG, logger="service.core.engine"):
            recipe = zmumu(events=80_000, seed=12, range_events=10_000)
            made = _all(engine, recipe)
            hzz = Recipe.from_dict({"source": {"dataset": "opendata:hzz"}, "steps": [{"filter": "NMuon >= 1"}],
                                    "columns": ["NMuon", "Muon_Px"], "range_events": 300}, engine.catalog)
            made_hzz = _all(engine, hzz, "parquet")
    finally:
        engine.fault_hook = None
    nodes = {r.node_id for r in caplog.records if hasattr(r, "node_id")}  # type: ignore[attr-defined]
    workers = {n["NodeID"] for n in __import__("ray").nodes() if n["Alive"] and n["Resources"].get("CPU")}
    print(f"\nranges per node: {engine.made_on}")
    assert len(nodes) == 2 and nodes == workers, (nodes, workers)
    assert engine.shipped == 0  # the worker nodes see the cache folder (one machine): they wrote the files
    assert made == [encode_table(vdata.materialize(recipe, i, Catalog()), "arrow") for i in range(len(made))]
    the_plan = plan(hzz, engine.catalog, dry_run=False)  # parquet carries the provenance id (vdata/provenance.py)
    assert made_hzz == [encode_table(vdata.materialize(hzz, i, engine.catalog), "parquet",
                                     provenance=describe(the_plan, i, engine.catalog)["id"])
                        for i in range(len(made_hzz))]


def test_a_node_killed_mid_job_costs_a_bounded_stall_and_each_range_is_made_once(
        engine: Engine, cluster: object, caplog: pytest.LogCaptureFixture) -> None:
    import ray

    recipe = zmumu(events=60_000, seed=13, range_events=5_000)
    count = len(engine.plan(recipe).ranges)
    submitted = engine.submitted
    engine.fault_hook = Slow(1.5)
    victim_id = ""
    try:
        with caplog.at_level(logging.INFO, logger="service.core.engine"):
            futures = [engine.request(recipe, i, "arrow") for i in range(count)]
            # Kill a worker node (SIGKILL, no goodbye to the head) while it runs a range: wait until
            # both nodes made one, so the next ones are running on both.
            wait_until(lambda: len(engine.made_on) >= 2 and sum(f.done() for f in futures) >= 2, timeout=180,
                       message="ranges made on both nodes")
            node = next(n for n in cluster.worker_nodes)  # type: ignore[attr-defined]
            victim_id = node.node_id
            # and until a range runs there now (its task's note in Ray's key-value store), or on a
            # loaded machine the node may be between ranges when it dies: no range to lose
            wait_until(lambda: _running_on(victim_id), timeout=60, interval=0.05, message="a range running on the victim")
            killed = time.monotonic()
            cluster.remove_node(node, allow_graceful=False)  # type: ignore[attr-defined]
            warned = wait_until(lambda: _warnings(caplog), timeout=120,
                                message="a WARNING about the lost node")
            stall = time.monotonic() - killed
            entries = [f.result(timeout=300) for f in futures]
    finally:
        engine.fault_hook = None
        cluster.add_node(num_cpus=1, object_store_memory=80 * MB, node_ip_address="127.0.0.1")  # type: ignore[attr-defined]
    print(f"\nnode killed -> Ray declared it dead and vdata logged it after {stall:.1f} s "
          f"(node_failure_seconds={NODE_FAILURE_SECONDS:g}); ranges per node: {engine.made_on}")
    warnings = _warnings(caplog)
    assert warnings and all(victim_id in w and "(retry 1 of 3" in w and f"of {recipe.id}" in w for w in warnings), warnings
    lost = {int(w.split()[1]) for w in warnings}
    assert len(lost) == len(warnings)  # one WARNING per range the node took with it
    assert engine.submitted == submitted + count  # Ray retried inside the task: vdata submitted each range once
    for i, entry in enumerate(entries):
        assert entry.path.read_bytes() == encode_table(vdata.materialize(recipe, i, Catalog()), "arrow")
    rows = [engine.cache.get(CacheKey(recipe.id, i, "arrow")) for i in range(count)]
    assert all(row is not None for row in rows) and len({row.path for row in rows if row}) == count
    assert stall < NODE_FAILURE_SECONDS * 3 + 30  # bounded by the setting (generous: two shared cores)
    assert warned


def _running_on(node_id: str) -> bool:
    """Whether a range task runs on ``node_id`` now: the engine's note of it in Ray's key-value store."""
    from ray.experimental import internal_kv

    keys = internal_kv._internal_kv_list(_KV_PREFIX)
    return any((k.decode() if isinstance(k, bytes) else k).endswith(f"/{node_id}") for k in keys)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "service.core.engine"]


def test_a_node_that_does_not_see_the_cache_folder_sends_the_bytes(engine: Engine) -> None:
    """As on a cluster without a shared file system: the probe file does not read back, so the
    worker nodes return the bytes through Ray's object store; the ranges are the same."""
    assert engine._folder_probe is not None
    probe, token = engine._folder_probe
    Path(probe).write_text("another folder")
    try:
        before = engine.shipped
        recipe = zmumu(events=30_000, seed=13, range_events=10_000)
        made = _all(engine, recipe)
    finally:
        Path(probe).write_text(token)
    assert engine.shipped - before == len(made) == 3
    assert made == [encode_table(vdata.materialize(recipe, i, Catalog()), "arrow") for i in range(len(made))]
