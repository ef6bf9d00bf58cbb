"""Several gateways on one database, one cache folder and one Ray (issue 12): real gateway
processes (``service.http.server.run``, as ``vdata serve`` runs it) on loopback ports, joined to
one Ray head started here with ``ray start``.

- A gateway that starts keeps the cache of the ones already running and serves it without a
  Ray task of its own.
- A range asked from every gateway at once is materialized once: the claim rows say how often
  a gateway took each range to make it (``takes``), and the gateways' own counters of ranges
  materialized (``/metrics``, counted when a task's result is committed) add up to the ranges.
- 200 simulated workers spread over the gateways lease and finish the ranges of one job while
  gateways are SIGKILLed and restarted: every event ends in exactly one finished range, and
  each range's finish is acknowledged to exactly one worker.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import httpx
import pytest
from serve_process import processes_mentioning, short_dir, stop_all

from service.core.cache import CacheKey
from service.core.claims import Claims
from service.core.db import Database
from service.http.server import first_admin_token
from service.settings import Settings
from vdata.testing import free_port, wait_until

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[2]
RAY_BIN = Path(sys.executable).parent / "ray"
MARK = "VDATA_TEST_GATEWAYS"
GATEWAY = """
import sys
from service.http.server import run
from service.settings import Settings
run(Settings(data_dir=sys.argv[1], port=int(sys.argv[2]), database_url=sys.argv[3], cache_dir=sys.argv[4],
             ray_address=sys.argv[5], claim_seconds=4.0, max_inflight_per_token=1000, log_level="warning"),
    announce=None)
"""


def zmumu(events: int, range_events: int, seed: int) -> dict[str, object]:
    return {"source": {"generator": "zmumu", "events": events, "seed": seed},
            "columns": ["Muon_pt", "Muon_eta"], "range_events": range_events}


class Cluster:
    """One Ray head, and gateway processes that share a database and a cache folder."""

    def __init__(self, root: Path, db_url: str) -> None:
        self.root = root
        self.db_url = db_url
        self.cache_dir = root / "cache"
        self.token_path = root / "ray_token"
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        self.env = dict(os.environ, RAY_TMPDIR=str(root), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
                        RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path),
                        PYTHONPATH=str(PROJECT), PYTHONUNBUFFERED="1", **{MARK: str(root)})
        for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
            self.env.pop(name, None)
        self.address = f"127.0.0.1:{free_port()}"
        self.gateways: dict[int, subprocess.Popen[bytes]] = {}
        self.ports: dict[int, int] = {}
        self.admin = ""

    def start_ray(self) -> None:
        command = [str(RAY_BIN), "start", "--head", f"--port={self.address.rsplit(':', 1)[1]}", "--num-cpus=2",
                   f"--object-store-memory={80 * 1024**2}", "--node-ip-address=127.0.0.1",
                   "--include-dashboard=false", "--disable-usage-stats",
                   f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}"]
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        self.admin = first_admin_token(Settings(data_dir=self.root / "g0", database_url=self.db_url)) or ""
        assert self.admin

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    def start(self, i: int) -> None:
        """Start gateway ``i`` (again on its old port after a kill); returns once it answers."""
        self.ports.setdefault(i, free_port())
        log = open(self.root / f"g{i}.log", "ab")  # noqa: SIM115 - the child holds it
        self.gateways[i] = subprocess.Popen(
            [sys.executable, "-c", GATEWAY, str(self.root / f"g{i}"), str(self.ports[i]), self.db_url,
             str(self.cache_dir), self.address],
            cwd=PROJECT, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()
        child = self.gateways[i]

        def healthy() -> bool:
            assert child.poll() is None, (self.root / f"g{i}.log").read_text()[-3000:]
            try:
                return httpx.get(f"{self.url(i)}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout=180, interval=0.2, message=f"gateway {i} to answer /healthz")

    def ensure(self, n: int) -> None:
        """Gateways 0 .. n-1 running (a test run alone starts those the earlier tests did)."""
        for i in range(n):
            if i not in self.gateways or self.gateways[i].poll() is not None:
                self.start(i)

    def kill(self, i: int) -> None:
        child = self.gateways[i]
        child.send_signal(signal.SIGKILL)
        child.wait()

    def stop(self) -> None:
        for child in self.gateways.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.gateways.values():
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        stop_all(processes_mentioning(str(self.root)))  # Ray's processes carry the mark in their environment

    def materialized(self, i: int) -> int:
        """Ranges gateway ``i`` made on Ray and committed (its /metrics counter)."""
        text = httpx.get(f"{self.url(i)}/metrics", timeout=30).text
        return sum(int(float(v)) for v in re.findall(r'^vdata_ranges_materialized_total\{[^}]*\} (\S+)$', text, re.M))

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin}"}

    def takes(self, recipe_id: str, n: int) -> list[int]:
        with Database(self.db_url) as db:
            claims = Claims(db)
            return [claims.takes(CacheKey(recipe_id, i, "arrow")) for i in range(n)]


@pytest.fixture(scope="module")
def cluster(postgres: Any) -> Iterator[Cluster]:
    """The deployment's shape: the gateways share a PostgreSQL database (one machine here)."""
    root = short_dir("vgw-")
    cluster = Cluster(root, postgres.new())
    try:
        cluster.start_ray()
        cluster.start(0)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def post_recipe(cluster: Cluster, i: int, recipe: dict[str, object]) -> str:
    r = httpx.post(f"{cluster.url(i)}/v1/recipes", json=recipe, headers=cluster.headers(), timeout=120)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def get_range(http: httpx.AsyncClient, url: str, recipe_id: str, index: int) -> httpx.Response:
    r = await http.get(f"{url}/v1/recipes/{recipe_id}/ranges/{index}")
    assert r.status_code == 200, (url, index, r.text)
    return r


def test_a_new_gateway_keeps_and_serves_the_cache_of_the_first(cluster: Cluster) -> None:
    recipe_id = post_recipe(cluster, 0, zmumu(10_000, 100, seed=11))

    async def fill(url: str) -> dict[int, bytes]:
        limit = asyncio.Semaphore(8)
        async with httpx.AsyncClient(headers=cluster.headers(), timeout=300) as http:
            async def one(i: int) -> tuple[int, bytes]:
                async with limit:
                    return i, (await get_range(http, url, recipe_id, i)).content
            return dict(await asyncio.gather(*(one(i) for i in range(100))))

    made = asyncio.run(fill(cluster.url(0)))
    files = sorted(p.name for p in (cluster.cache_dir / recipe_id).glob("*.arrow"))
    assert len(files) == 100
    cluster.start(1)  # a second gateway on the same database and cache folder
    cluster.start(2)
    assert sorted(p.name for p in (cluster.cache_dir / recipe_id).glob("*.arrow")) == files
    with Database(cluster.db_url) as db:
        rows = db.read().execute("SELECT COUNT(*) FROM cache_entries WHERE recipe_id = ?", (recipe_id,)).fetchone()[0]
    assert rows == 100
    served = asyncio.run(fill(cluster.url(1)))
    assert served == made
    assert cluster.materialized(1) == 0 and cluster.materialized(2) == 0  # no Ray task of its own
    assert cluster.takes(recipe_id, 100) == [1] * 100


def test_a_range_asked_from_every_gateway_at_once_is_made_once(cluster: Cluster) -> None:
    cluster.ensure(3)
    recipe_id = post_recipe(cluster, 1, zmumu(40 * 500, 500, seed=12))
    before = sum(cluster.materialized(i) for i in range(3))

    async def ask_all() -> dict[int, set[str]]:
        async with httpx.AsyncClient(headers=cluster.headers(), timeout=300,
                                     limits=httpx.Limits(max_connections=200)) as http:
            answers = await asyncio.gather(*(get_range(http, cluster.url(g), recipe_id, i)
                                             for i in range(40) for g in range(3)))
        checksums: dict[int, set[str]] = defaultdict(set)
        for n, r in enumerate(answers):
            checksums[n // 3].add(r.headers["X-Vdata-Adler32"])
        return checksums

    checksums = asyncio.run(ask_all())
    assert all(len(found) == 1 for found in checksums.values()), checksums  # the same bytes everywhere
    assert cluster.takes(recipe_id, 40) == [1] * 40
    assert sum(cluster.materialized(i) for i in range(3)) - before == 40


WORKERS = 200
RANGES = 200
KILLS = 2


def test_200_workers_over_killed_gateways_finish_every_event_once(cluster: Cluster) -> None:
    cluster.ensure(3)
    recipe_id = post_recipe(cluster, 2, zmumu(RANGES * 100, 100, seed=13))
    r = httpx.post(f"{cluster.url(0)}/v1/jobs", headers=cluster.headers(), timeout=60,
                   json={"recipe_id": recipe_id, "lease_seconds": 10, "max_attempts": 1000})
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    acks: dict[int, list[str]] = defaultdict(list)
    kills = 0
    rng = random.Random(12)

    async def call(http: httpx.AsyncClient, g: int, method: str, path: str, **kw: object) -> httpx.Response | None:
        """One call to gateway ``g``; None if it is down (killed, restarting) or answers 503."""
        try:
            r = await http.request(method, f"{cluster.url(g)}{path}", **kw)  # type: ignore[arg-type]
        except httpx.TransportError:
            return None
        return None if r.status_code == 503 else r

    async def worker(w: int, http: httpx.AsyncClient, done: asyncio.Event) -> None:
        name, g = f"w{w}", w % 3
        while not done.is_set():
            r = await call(http, g, "POST", f"/v1/jobs/{job}/lease", json={"worker": name, "n": 1})
            if r is None:
                g = (g + 1) % 3
                await asyncio.sleep(0.2)
                continue
            assert r.status_code == 200, r.text
            if not r.json():
                await asyncio.sleep(0.3)
                continue
            lease = r.json()[0]
            data = await call(http, g, "GET", lease["url"])
            if data is not None:
                assert data.status_code == 200, data.text
                assert int(data.headers["X-Vdata-Events"]) == lease["stop"] - lease["first"]
            while not done.is_set():  # report on any gateway: the lease is in the database
                r = await call(http, g, "POST", f"/v1/jobs/{job}/ranges/{lease['index']}/finish",
                               json={"worker": name})
                if r is None:
                    g = (g + 1) % 3
                    await asyncio.sleep(0.2)
                    continue
                if r.status_code == 200:
                    acks[lease["index"]].append(name)
                else:  # the lease expired while every gateway we tried was down: another has it
                    assert r.status_code == 409, r.text
                break

    async def killer(done: asyncio.Event) -> None:
        nonlocal kills
        while not done.is_set() and kills < KILLS:
            await asyncio.sleep(3)
            g = rng.randrange(3)
            cluster.kill(g)
            kills += 1
            await asyncio.sleep(1)
            await asyncio.to_thread(cluster.start, g)

    async def watch(done: asyncio.Event, http: httpx.AsyncClient) -> None:
        while True:
            for g in range(3):
                r = await call(http, g, "GET", f"/v1/jobs/{job}")
                if r is not None and r.json()["counts"]["finished"] == RANGES:
                    done.set()
                    return
            await asyncio.sleep(0.5)

    async def main() -> None:
        done = asyncio.Event()
        async with httpx.AsyncClient(headers=cluster.headers(), timeout=60,
                                     limits=httpx.Limits(max_connections=300, max_keepalive_connections=300)) as http:
            tasks = [asyncio.create_task(worker(w, http, done)) for w in range(WORKERS)]
            tasks.append(asyncio.create_task(killer(done)))
            await asyncio.wait_for(watch(done, http), timeout=240)
            await asyncio.gather(*tasks)

    started = time.monotonic()
    asyncio.run(main())
    retaken = sum(1 for n in cluster.takes(recipe_id, RANGES) if n > 1)
    print(f"job of {RANGES} ranges, {WORKERS} workers, {kills} gateway kills: {time.monotonic() - started:.1f} s; "
          f"ranges taken again after their gateway died: {retaken}")
    assert kills >= 1
    assert sorted(acks) == list(range(RANGES)), sorted(set(range(RANGES)) - set(acks))
    assert all(len(names) == 1 for names in acks.values()), {i: n for i, n in acks.items() if len(n) > 1}
    with Database(cluster.db_url) as db:
        rows = db.read().execute("SELECT first, stop, state FROM job_ranges WHERE job_id = ? ORDER BY first",
                                 (job,)).fetchall()
    assert all(row["state"] == "finished" for row in rows)
    edges = [(row["first"], row["stop"]) for row in rows]
    assert edges[0][0] == 0 and edges[-1][1] == RANGES * 100
    assert all(a[1] == b[0] for a, b in zip(edges, edges[1:], strict=False))  # every event in exactly one range
