"""A full disk is the operator's problem to fix, said plainly: 507, not "retry later".

As an outside check met it: with the cache's disk full, the gateway answered 503
``engine_unavailable`` ("retry later", which cannot succeed) with a raw Ray traceback carrying
ANSI colour codes, a worker PID and the node's address. Here the cache folder is a real, small
tmpfs (mounted by the test: it runs as root here and in CI), so the worker's write really fails
with ENOSPC.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import httpx
import pytest

from service.http.server import BackgroundServer
from service.settings import Settings
from service.core.core import Core, CoreConfig
from service.core.engine import EngineConfig
from service.core.tokens import TokenStore

BIG = {"source": {"generator": "zmumu", "events": 50_000, "seed": 4}, "columns": ["Muon_pt", "Muon_eta", "Muon_phi"],
       "range_events": 50_000}
SMALL = {"source": {"generator": "zmumu", "events": 1000, "seed": 4}, "columns": ["nMuon"], "range_events": 1000}


@pytest.fixture(scope="module")
def http(embedded_ray: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    data_dir = tmp_path_factory.mktemp("diskfull") / "data"
    cache = data_dir / "cache"
    cache.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(cache)],
                             capture_output=True, text=True)
    assert mounted.returncode == 0, f"cannot mount a small tmpfs for the cache (root needed): {mounted.stderr}"
    try:
        engine = EngineConfig(max_in_flight=2, lookahead=0)
        core = Core(CoreConfig(data_dir=data_dir, engine=engine, cache_budget_bytes=64 * 1024**2))
        try:
            core.start()
            token = TokenStore(core.db).create("reader", note="disk full test")
            settings = Settings(data_dir=data_dir, port=0, readahead=0, lookahead=0)
            with BackgroundServer(settings, core) as server, \
                    httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
                yield c
        finally:
            core.close()
    finally:
        subprocess.run(["umount", "-l", str(cache)], check=False)


@pytest.mark.parametrize("fmt", ["arrow", "parquet"])
def test_a_full_cache_disk_answers_507_without_internals(http: httpx.Client, fmt: str) -> None:
    recipe = http.post("/v1/recipes", json=BIG).json()["id"]
    answer = http.get(f"/v1/recipes/{recipe}/ranges/0", params={"format": fmt})
    assert answer.status_code == 507, answer.text
    body = answer.json()
    assert body["error"] == "insufficient_storage"
    detail = body["detail"]
    assert "no space left" in detail and "range 0" in detail and "cache_budget_bytes" in detail
    for internal in ("\x1b[", "Traceback", "pid", "PID", "192.", "ray::"):
        assert internal not in detail, detail
    assert "Retry-After" not in answer.headers
    # the service goes on: what fits is still made and served
    small = http.post("/v1/recipes", json=SMALL).json()["id"]
    assert http.get(f"/v1/recipes/{small}/ranges/0", params={"format": fmt}).status_code == 200
    assert http.get("/healthz").status_code == 200
