"""Every counter of /metrics after a known sequence of range requests through a real uvicorn
gateway on loopback: k misses, m hits, one damaged cache file (a flipped byte, found while the
body goes out) and one truncated one (found before the first byte). One definition of a cache
hit (service/http/range_responses.py): a request answered from a cache file without waiting for
a materialization; a miss needed a task (or joined one in flight); a damaged file is counted in
``vdata_cache_corrupt_total`` and its request as a miss."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from gateway_helpers import HZZ, RECIPE, SCALE, Env
from prometheus_client.parser import text_string_to_metric_families

from service.core.cache import CacheKey
from service.http.server import BackgroundServer
from vdata.testing import wait_until


def samples(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the gateway's /metrics, by (name, sorted labels)."""
    r = http.get("/metrics")
    assert r.status_code == 200, r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def recipe_id(http: httpx.Client, shared_data: Path) -> str:
    r = http.post("/v1/datasets", json={"name": "opendata:hzz", "paths": [str(shared_data / HZZ)], "tree": "events"})
    assert r.status_code == 201, r.text
    assert http.post("/v1/transforms", json=SCALE).status_code == 201
    r = http.post("/v1/recipes", json=RECIPE)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_every_counter_agrees_after_misses_hits_and_a_damaged_file(
    http: httpx.Client, recipe_id: str, started_env: Env
) -> None:
    url = f"/v1/recipes/{recipe_id}/ranges/{{}}"
    before = samples(http)
    sizes: dict[int, int] = {}
    for index in (0, 1, 2):  # k = 3 misses: each range made once
        r = http.get(url.format(index))
        assert r.status_code == 200, r.text
        sizes[index] = len(r.content)
    for index in (0, 1, 2, 0):  # m = 4 hits
        assert http.get(url.format(index)).status_code == 200
    path = started_env.core.cache.root / CacheKey(recipe_id, 1, "arrow").relpath
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40  # a flipped byte: found by the checksum as the body goes out
    path.write_bytes(bytes(data))
    received = 0
    with pytest.raises(httpx.RemoteProtocolError), http.stream("GET", url.format(1)) as r:
        for part in r.iter_raw():
            received += len(part)
    assert received < sizes[1]
    assert http.get(url.format(1)).status_code == 200  # a miss: made again
    path = started_env.core.cache.root / CacheKey(recipe_id, 2, "arrow").relpath
    path.write_bytes(path.read_bytes()[:100])  # truncated: found before the first byte, then made again
    assert http.get(url.format(2)).status_code == 200

    after = samples(http)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("vdata_cache_lookups_total", result="hit") == 4
    assert delta("vdata_cache_lookups_total", result="miss") == 3 + 1 + 1 + 1  # k, the cut one, its retry, truncated
    assert delta("vdata_cache_corrupt_total") == 2
    assert delta("vdata_ranges_materialized_total", format="arrow") == 3 + 1 + 1
    assert delta("vdata_ranges_served_total", format="arrow") == 3 + 4 + 1 + 1  # the cut response is not served
    assert delta("vdata_bytes_served_total", format="arrow") == 2 * (sizes[0] + sizes[1] + sizes[2]) + sizes[0] \
        + received + sizes[1] + sizes[2]
    assert delta("vdata_bytes_materialized_total", format="arrow") == sum(sizes.values()) + sizes[1] + sizes[2]
    assert not any(name.startswith("vdata_gateway_cache") for name, _ in after)  # one counter of lookups, not two


def test_behind_nginx_a_hit_and_a_damaged_file_count_alike(
    http: httpx.Client, recipe_id: str, started_env: Env
) -> None:
    """The X-Accel-Redirect gateway (nginx sends the bytes) follows the same definition: its
    adler32 check after the answer turns a damaged file into corrupt + miss, not a hit."""
    settings = started_env.settings_with(port=0, accel_redirect_prefix="/_vdata_cache")
    url = f"/v1/recipes/{recipe_id}/ranges/5"
    size = len(http.get(url).content)  # cached now (a miss of the module's gateway)
    with BackgroundServer(settings, started_env.core) as accel, \
            httpx.Client(base_url=accel.url, headers=http.headers, timeout=120) as client:
        before = samples(client)
        assert client.get(url).status_code == 200
        # counted once the gateway has read the file through (after the answer): wait for it
        wait_until(lambda: value(samples(client), "vdata_cache_lookups_total", result="hit") == 1,
                   timeout=60, message="the accel hit counted")
        path = started_env.core.cache.root / CacheKey(recipe_id, 5, "arrow").relpath
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x40
        path.write_bytes(bytes(data))
        assert client.get(url).status_code == 200  # nginx would send the damaged file once
        wait_until(lambda: value(samples(client), "vdata_cache_lookups_total", result="miss") == 1,
                   timeout=60, message="the damaged file counted as a miss")
        # dropped (and counted corrupt) once nginx's grace is over
        wait_until(lambda: value(samples(client), "vdata_cache_corrupt_total") > value(before, "vdata_cache_corrupt_total"),
                   timeout=60, message="the damaged file dropped")
        after = samples(client)
    assert value(after, "vdata_cache_lookups_total", result="hit") == 1
    assert value(after, "vdata_cache_corrupt_total") - value(before, "vdata_cache_corrupt_total") == 1
    assert value(after, "vdata_ranges_served_total", format="arrow") == 1  # the damaged one is not served
    assert value(after, "vdata_bytes_served_total", format="arrow") == 2 * size  # nginx sent both files
