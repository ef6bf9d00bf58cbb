"""Named work on Ray's dashboard: every task of the engine says what it makes and why.

Read back the way the dashboard reads them, through Ray's state API
(``ray.util.state.list_tasks``), which in Ray 2.60 is served by the dashboard: without it the
call fails ("Failed to connect to API server"). So this module runs its own Core with the
dashboard on (a free loopback port) instead of the shared ``embedded_ray``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import ray
from ray.util.state import list_tasks
from serve_process import short_dir

from service.core.cache import CacheKey
from service.core.core import Core, CoreConfig
from service.core.engine import EngineConfig
from service.core.task_names import check_task_name, range_task_name, source_label
from vdata.testing import free_port, wait_until

MiB = 1024**2


def zmumu(seed: int) -> dict[str, Any]:
    """A small generated recipe with a transform (so its check has a dry run)."""
    return {
        "source": {"generator": "zmumu", "events": 4000, "seed": seed},
        "steps": [{"transform": {"name": "leading_pair_mass_ptetaphim",
                                 "inputs": {"pt": "Muon_pt", "eta": "Muon_eta", "phi": "Muon_phi", "m": "Muon_mass"},
                                 "outputs": {"mass": "mMuMu"}}}],
        "columns": ["mMuMu"],
        "range_events": 1000,
    }


def test_names_read_why_recipe_range_format_then_source() -> None:
    key = CacheKey("vds-" + "ab12" * 6, 7, "parquet")
    dataset = json.dumps({"source": {"dataset": "opendata:hzz", "fingerprint": "x"}, "steps": []})
    assert range_task_name(key, dataset, "stage") == "vdata:stage:vds-ab12ab12:r7:parquet:dataset=opendata:hzz"
    assert check_task_name(key.recipe_id, dataset) == "vdata:check:vds-ab12ab12:dataset=opendata:hzz"
    assert source_label({"generator": "zmumu", "events": 5}) == "generator=zmumu"
    assert range_task_name(key, "not json", "wait").endswith(":source=?")


@pytest.fixture(scope="module")
def core() -> Iterator[Core]:
    root = short_dir("vdn-")
    engine = EngineConfig(num_cpus=2, object_store_bytes=80 * MiB, include_dashboard=True,
                          dashboard_port=free_port(), lookahead=2)
    owner = Core(CoreConfig(data_dir=root / "data", engine=engine))
    try:
        owner.start()
        yield owner
    finally:
        try:
            owner.close()
        finally:
            ray.shutdown()
            subprocess.run(["rm", "-rf", str(root)], check=False)


def tasks(core: Core, **filters: str) -> list[Any]:
    """The tasks Ray's state API lists, asked of this core's dashboard by its address (other
    Ray instances may run on the machine)."""
    return list_tasks(address=core.engine.dashboard_url, filters=[(k, "=", v) for k, v in filters.items()],
                      limit=10_000, timeout=60, raise_on_missing_output=False)


def finished_names(core: Core, prefix: str) -> set[str]:
    """Names of the finished tasks whose name starts with ``prefix`` (Ray's task events reach
    the state API a moment after the task ends)."""
    return {t.name for t in tasks(core, state="FINISHED") if t.name.startswith(prefix)}


def test_tasks_name_recipe_range_format_source_and_why(core: Core) -> None:
    assert core.engine.dashboard_url is not None and core.engine.dashboard_url.startswith("http://127.0.0.1:")
    waited = core.submit(zmumu(seed=11))  # its check's dry run runs as a Ray task
    core.range(waited.id, 0, "arrow", timeout=300)  # a client waits for range 0
    core.stage(waited.id, 1, 1, "parquet")  # pre-staged
    core.stage(waited.id, 2, 1, "arrow", why="readahead")  # the gateway's read-ahead
    ahead = core.submit(zmumu(seed=12))
    core.create_job(ahead.id)  # look-ahead: the job's first two ready ranges
    made = [CacheKey(waited.id, 1, "parquet"), CacheKey(waited.id, 2, "arrow"),
            CacheKey(ahead.id, 0, "arrow"), CacheKey(ahead.id, 1, "arrow")]
    wait_until(lambda: all(core.cache.contains(key) for key in made), timeout=300,
               message="the staged, read-ahead and look-ahead ranges in the cache")

    w, a = waited.id[:12], ahead.id[:12]
    expected = {
        f"vdata:check:{w}:generator=zmumu",
        f"vdata:wait:{w}:r0:arrow:generator=zmumu",
        f"vdata:stage:{w}:r1:parquet:generator=zmumu",
        f"vdata:readahead:{w}:r2:arrow:generator=zmumu",
        f"vdata:check:{a}:generator=zmumu",
        f"vdata:lookahead:{a}:r0:arrow:generator=zmumu",
        f"vdata:lookahead:{a}:r1:arrow:generator=zmumu",
    }
    wait_until(lambda: expected <= finished_names(core, "vdata:"), timeout=120, interval=1.0,
               message="the named tasks in Ray's state API")
    assert finished_names(core, "vdata:") == expected  # nothing else was made


def test_no_task_of_the_engine_goes_unnamed(core: Core) -> None:
    core.range(core.submit(zmumu(seed=13)).id, 3, "arrow", timeout=300)
    ours = [t for t in tasks(core)
            if t.func_or_class_name.endswith(("_materialize_task", "_dry_run_task"))]
    assert ours and all(t.name.startswith("vdata:") for t in ours), [(t.func_or_class_name, t.name) for t in ours]
