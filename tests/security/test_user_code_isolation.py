"""A scientist's code never runs in the gateway process, and never runs unbounded.

As an outside check met it: an endless ``while`` in a transform froze the gateway for everyone
(the recipe check's dry run ran the kernel in the gateway, holding the GIL); a loop that only
triggers past the dry run's events spun two Ray workers for minutes; ``np.empty(10**11)`` was
accepted. Here, through a real gateway on loopback: each is stopped at its limit with a 422
naming the transform, the range and the limit, while ``/healthz`` and another recipe's ranges
keep answering.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.http.server import BackgroundServer
from service.settings import Settings
from service.core.core import Core, CoreConfig
from service.core.engine import EngineConfig
from service.core.tokens import TokenStore

TASK_SECONDS = 6.0
DRY_RUN_SECONDS = 8.0
MEMORY = 1024**3
ANSWER_WITHIN = 15.0  # a gateway that runs user code in-process never answers at all

SPIN = "def spin(x):\n    y = x\n    while y == y:\n        y = y + 1.0\n    return y\n"
LATE = "def late(x):\n    y = x\n    if x > 94.0:\n        while y == y:\n            y = y + 1.0\n    return y\n"
HUGE = "def huge(x):\n    a = np.empty(10**11)\n    a[0] = x\n    return a[0]\n"
ONES = "def ones(x):\n    a = np.ones(400000000)\n    return x + a[-1]\n"
TRANSFORMS = {name: source for name, source in
              (("spin", SPIN), ("late", LATE), ("huge", HUGE), ("ones", ONES))}

OTHER = {"source": {"generator": "zmumu", "events": 40_000, "seed": 99}, "columns": ["Muon_pt"],
         "range_events": 2000}


@pytest.fixture(scope="module")
def gateway(embedded_ray: None, tmp_path_factory: pytest.TempPathFactory,
            shared_data: Path) -> Iterator[tuple[str, dict[str, str]]]:
    data_dir = tmp_path_factory.mktemp("usercode") / "data"
    engine = EngineConfig(max_in_flight=4, lookahead=0,
                          task_seconds=TASK_SECONDS, dry_run_seconds=DRY_RUN_SECONDS, task_memory_bytes=MEMORY)
    core = Core(CoreConfig(data_dir=data_dir, engine=engine, cache_budget_bytes=64 * 1024**2))
    try:
        core.start()
        token = TokenStore(core.db).create("admin", note="isolation test")
        settings = Settings(data_dir=data_dir, port=0, allowed_roots=[data_dir, shared_data], readahead=0,
                            lookahead=0, num_cpus=2, object_store_bytes=80 * 1024**2)
        with BackgroundServer(settings, core) as server:
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=server.url, headers=headers, timeout=120) as http:
                added = http.post("/v1/datasets", json={"name": "opendata:hzz", "tree": "events",
                                                        "paths": [str(shared_data / "uproot-HZZ.root")]})
                assert added.status_code == 201, added.text
                for name, source in TRANSFORMS.items():
                    answer = http.post("/v1/transforms", json={"name": name, "source": source, "inputs": {"x": "flat"},
                                                               "outputs": {"out": "float64"}, "kind": "element"})
                    assert answer.status_code == 201, answer.text
            yield server.url, headers
    finally:
        core.close()


def _recipe(transform: str, source: dict[str, Any], column: str, range_events: int) -> dict[str, Any]:
    return {"source": source, "range_events": range_events, "columns": ["y"],
            "steps": [{"transform": {"name": transform, "inputs": {"x": column}, "outputs": {"out": "y"}}}]}


def _while_running(url: str, headers: dict[str, str], slow: Callable[[httpx.Client], httpx.Response]) -> httpx.Response:
    """Run ``slow`` in a thread; until it answers, everyone else must be served as usual."""
    with httpx.Client(base_url=url, headers=headers, timeout=300) as http, \
            httpx.Client(base_url=url, headers=headers, timeout=ANSWER_WITHIN) as other, \
            ThreadPoolExecutor(max_workers=1) as pool:
        other_id = other.post("/v1/recipes", json=OTHER).json()["id"]
        assert other.get(f"/v1/recipes/{other_id}/ranges/0").status_code == 200  # cached from now on
        future: Future[httpx.Response] = pool.submit(slow, http)
        served, index = 0, 1
        # Pacing, not synchronisation: a head start for the slow work, then a probe every 0.5 s for
        # as long as it runs (>= its time limit); no product signal says "user code is running in a
        # worker" for a dry run, and no assertion depends on these lengths being enough.
        time.sleep(1.0)
        while not future.done():
            started = time.monotonic()
            assert other.get("/healthz").status_code == 200
            assert other.get(f"/v1/recipes/{other_id}/ranges/0").status_code == 200
            if index < 20:  # an uncached range of another recipe: made on the other CPU
                assert other.get(f"/v1/recipes/{other_id}/ranges/{index}").status_code == 200
                index += 1
            assert time.monotonic() - started < ANSWER_WITHIN
            served += 1
            time.sleep(0.5)  # the probes' pace (see above)
        assert served >= 1, "the slow request ended before anyone else was served"
        return future.result()


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code, body
    return str(body["detail"])


def test_an_endless_transform_in_the_dry_run_is_stopped_and_freezes_nobody(gateway: tuple[str, dict[str, str]]) -> None:
    url, headers = gateway
    recipe = _recipe("spin", {"generator": "zmumu", "events": 4000, "seed": 1}, "nMuon", 1000)
    answer = _while_running(url, headers, lambda http: http.post("/v1/recipes", json=recipe))
    detail = _error(answer, 422, "task_limit_exceeded")
    assert "'spin'" in detail and "dry run" in detail
    assert f"time limit of {DRY_RUN_SECONDS:g} s" in detail and "dry_run_seconds_limit" in detail
    with httpx.Client(base_url=url, headers=headers, timeout=120) as http:  # the service goes on
        assert http.post("/v1/recipes", json=OTHER).status_code == 201


def test_a_loop_past_the_dry_run_is_stopped_at_the_time_limit(
    gateway: tuple[str, dict[str, str]], shared_data: Path,
) -> None:
    url, headers = gateway
    recipe = _recipe("late", {"dataset": "opendata:hzz"}, "MET_py", 500)
    with httpx.Client(base_url=url, headers=headers, timeout=120) as http:
        submitted = http.post("/v1/recipes", json=recipe)  # the first range has no MET_py > 94
        assert submitted.status_code == 201, submitted.text
        recipe_id = submitted.json()["id"]
        ranges = http.get(f"/v1/recipes/{recipe_id}/ranges").json()
    # the first event with MET_py > 94 is event 800 of the HZZ file
    spinning = next(r["index"] for r in ranges if r["first"] <= 800 < r["stop"])
    assert spinning > 0
    answer = _while_running(url, headers, lambda http: http.get(f"/v1/recipes/{recipe_id}/ranges/{spinning}"))
    detail = _error(answer, 422, "task_limit_exceeded")
    assert "'late'" in detail and f"range {spinning} " in detail and recipe_id in detail
    assert f"time limit of {TASK_SECONDS:g} s" in detail and "task_seconds_limit" in detail
    # ranges without the loop still work (generous: on a loaded machine the killed workers are
    # replaced, importing Numba and uproot, before this range's task starts)
    with httpx.Client(base_url=url, headers=headers, timeout=300) as http:
        assert http.get(f"/v1/recipes/{recipe_id}/ranges/0").status_code == 200


@pytest.mark.parametrize("transform", ["huge", "ones"])
def test_a_huge_allocation_is_refused_at_the_memory_limit(gateway: tuple[str, dict[str, str]], transform: str) -> None:
    url, headers = gateway
    recipe = _recipe(transform, {"generator": "zmumu", "events": 4000, "seed": 2}, "nMuon", 1000)
    with httpx.Client(base_url=url, headers=headers, timeout=120) as http:
        detail = _error(http.post("/v1/recipes", json=recipe), 422, "task_limit_exceeded")
        assert f"'{transform}'" in detail and "out of memory" in detail
        assert f"memory limit is {MEMORY / 2**20:g} MiB" in detail and "task_memory_bytes_limit" in detail
        assert http.get("/healthz").status_code == 200
