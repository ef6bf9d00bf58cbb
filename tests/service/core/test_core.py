"""The service core: everything durable survives a restart; look-ahead runs ahead of leases."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from service.core.cache import CacheKey
from service.core.core import Core, CoreConfig
from service.core.engine import EngineConfig
from service.core.jobs import FINISHED

ENGINE = EngineConfig(max_in_flight=4, lookahead=2)  # Ray itself: the embedded_ray fixture

RECIPE = {
    "source": {"dataset": "opendata:hzz"},
    "steps": [{"transform": {"name": "scale", "inputs": {"x": "MET_px"}, "outputs": {"y": "met_px2"}}}],
    "columns": ["met_px2", "NMuon"],
    "range_events": 400,
}


# One Ray for the module, outliving each Core: a restarted core joins it as a new process would
# join its own, and the test pays Ray's start-up once.
pytestmark = pytest.mark.usefixtures("embedded_ray")


def test_restart_mid_job_loses_nothing(tmp_path: Path, shared_data: Path) -> None:
    config = CoreConfig(data_dir=tmp_path / "data", engine=ENGINE, cache_budget_bytes=32 * 1024**2)
    with Core(config) as core:
        core.add_dataset("opendata:hzz", [str(shared_data / "uproot-HZZ.root")], "events")
        core.add_transform("scale", "def scale(x):\n    return 2.0 * x\n", {"x": "flat"}, {"y": "float64"}, kind="element")
        plan = core.submit(RECIPE)
        assert plan.num_events == 2421 and len(plan.ranges) == 7
        job = core.create_job(plan.id, max_attempts=2, lease_seconds=60)
        leases = core.lease(job, "w1", 3)
        assert [lease.index for lease in leases] == [0, 1, 2]
        entry = core.range(plan.id, 0, "arrow", timeout=120)
        core.finish(job, 0, "w1")
        core.fail(job, 1, "w1", "payload crashed")
        before = core.status(job)
    with Core(config) as core:  # a new process would see the same: everything is in the database
        assert core.warnings == []
        now = core.status(job)  # the same but for what the clock moves (time since the first lease)
        clock = ("elapsed_seconds", "events_per_second", "eta_seconds")
        assert replace(now, **dict.fromkeys(clock)) == replace(before, **dict.fromkeys(clock))
        assert now.started == before.started and now.elapsed_seconds >= before.elapsed_seconds
        assert before.counts[FINISHED] == 1 and before.counts["running"] == 1 and before.counts["ready"] == 5
        submitted = core.engine.submitted
        again = core.range(plan.id, 0, "arrow", timeout=120)
        assert again.path.read_bytes() == entry.path.read_bytes() and core.engine.submitted == submitted
        core.finish(job, 2, "w1")
        while leases := core.lease(job, "w2", 2):
            for lease in leases:
                core.range(plan.id, lease.index, "arrow", timeout=120)
                core.finish(job, lease.index, "w2")
        status = core.status(job)
        assert status.done and status.counts[FINISHED] == 7 and status.events_finished == 2421
        finished = sorted((r.first, r.stop) for r in core.jobs.ranges(job) if r.state == FINISHED)
        assert finished[0][0] == 0 and finished[-1][1] == 2421
        assert all(a[1] == b[0] for a, b in zip(finished, finished[1:]))


def test_lookahead_runs_ahead_of_leases(tmp_path: Path, shared_data: Path) -> None:
    config = CoreConfig(data_dir=tmp_path / "data", engine=ENGINE)
    with Core(config) as core:
        core.add_dataset("opendata:hzz", [str(shared_data / "uproot-HZZ.root")], "events")
        core.add_transform("scale", "def scale(x):\n    return 2.0 * x\n", {"x": "flat"}, {"y": "float64"}, kind="element")
        plan = core.submit(RECIPE)
        job = core.create_job(plan.id)
        # ranges 0 and 1 are being materialized before anyone leased them
        for index in (0, 1):
            core.request(plan.id, index, "arrow").result(timeout=120)
            assert core.cache.contains(CacheKey(plan.id, index, "arrow"))
        assert not core.cache.contains(CacheKey(plan.id, 2, "arrow"))
        core.lease(job, "w1", 2)  # leasing 0 and 1 looks ahead to 2 and 3
        for index in (2, 3):
            core.request(plan.id, index, "arrow").result(timeout=120)
        assert core.engine.submitted == 4
