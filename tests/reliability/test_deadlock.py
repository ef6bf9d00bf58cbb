"""The lock-order deadlock, as an outside check met it: a gateway that stopped answering mid-job.

The job thread held the database's write lock while look-ahead pinned a cache entry (the cache
lock); a cache writer evicting held the cache lock while it waited for the database. Here many
workers lease and finish ranges through the real HTTP gateway while readers fetch ranges with
read-ahead on, look-ahead is on and the cache budget is so small that every write evicts. With
the old lock order this hangs within seconds; every request now has a deadline, and the test
fails (rather than hangs) if any of them misses it.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from service.http.server import BackgroundServer
from service.settings import Settings
from service.core.core import Core, CoreConfig
from service.core.engine import EngineConfig
from service.core.tokens import TokenStore

RANGES = 120
RECIPE = {
    "source": {"generator": "zmumu", "events": RANGES * 200, "seed": 7},
    "columns": ["Muon_pt", "nMuon"],
    "range_events": 200,
}
DEADLINE = 60.0  # seconds any one request may take on a loaded 2-core machine; a deadlock never answers


@pytest.fixture(scope="module")
def gateway(embedded_ray: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    data_dir = tmp_path_factory.mktemp("deadlock") / "data"
    engine = EngineConfig(max_in_flight=4, lookahead=4)
    # A budget of about eight ranges: every commit of a range evicts another one.
    core = Core(CoreConfig(data_dir=data_dir, engine=engine, cache_budget_bytes=48_000))
    try:
        core.start()
        token = TokenStore(core.db).create("admin", note="deadlock test")
        settings = Settings(data_dir=data_dir, port=0, readahead=4, lookahead=4, num_cpus=2,
                            object_store_bytes=80 * 1024**2, max_inflight_per_token=64)
        with BackgroundServer(settings, core) as server:
            yield server.url, token
    finally:
        core.close()


def test_leases_reads_and_evictions_never_deadlock(gateway: tuple[str, str]) -> None:
    url, token = gateway
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=DEADLINE) as http:
        recipe = http.post("/v1/recipes", json=RECIPE)
        assert recipe.status_code == 201, recipe.text
        recipe_id = recipe.json()["id"]
        job = http.post("/v1/jobs", json={"recipe_id": recipe_id, "lease_seconds": 600})
        assert job.status_code == 201, job.text
        job_id = job.json()["id"]

    finished: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=DEADLINE) as http:
            while True:
                leased = http.post(f"/v1/jobs/{job_id}/lease", json={"worker": name, "n": 2})
                assert leased.status_code == 200, leased.text
                if not leased.json():
                    return
                for lease in leased.json():
                    body = http.get(lease["url"])
                    assert body.status_code == 200, body.text
                    done = http.post(f"/v1/jobs/{job_id}/ranges/{lease['index']}/finish", json={"worker": name})
                    assert done.status_code == 200, done.text
                    with lock:
                        finished.append(lease["index"])

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url, headers=headers, timeout=DEADLINE) as http:
            start = rng.randrange(RANGES - 10)
            for index in range(start, start + 10):  # sequential: the gateway reads ahead
                body = http.get(f"/v1/recipes/{recipe_id}/ranges/{index}", params={"format": "parquet"})
                assert body.status_code == 200, body.text
            assert http.get("/healthz").status_code == 200

    with ThreadPoolExecutor(max_workers=12) as pool:
        futures = [pool.submit(worker, f"w{i}") for i in range(8)] + [pool.submit(reader, i) for i in range(4)]
        for future in futures:
            future.result(timeout=600)  # a request that misses DEADLINE raises in its thread first
    assert sorted(finished) == list(range(RANGES))
