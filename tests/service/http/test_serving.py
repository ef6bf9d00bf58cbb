"""Serving cached ranges through a real uvicorn server on loopback: the checksum is checked while
the bytes go out, and a damaged cache file never arrives as a complete response. Behind a real
nginx (X-Accel-Redirect; skipped where nginx is not installed) nginx sends the file."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_helpers import HZZ, RECIPE, SCALE, Env

from service.http import range_responses as serving
from service.http.server import BackgroundServer
from service.core.cache import CacheKey
from vdata.formats import MEDIA_TYPES
from vdata.testing import NGINX_BINARY, Nginx, wait_until


@pytest.fixture(scope="module")
def recipe_id(http: httpx.Client, shared_data: Path) -> str:
    r = http.post("/v1/datasets", json={"name": "opendata:hzz", "paths": [str(shared_data / HZZ)], "tree": "events"})
    assert r.status_code == 201, r.text
    assert http.post("/v1/transforms", json=SCALE).status_code == 201
    r = http.post("/v1/recipes", json=RECIPE)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def cached(http: httpx.Client, recipe_id: str, index: int, env: Env) -> tuple[bytes, Path]:
    """The range's bytes (served once, so cached) and its cache file."""
    r = http.get(f"/v1/recipes/{recipe_id}/ranges/{index}")
    assert r.status_code == 200, r.text
    assert r.headers["x-vdata-adler32"] == f"{zlib.adler32(r.content):08x}"
    path = env.core.cache.root / CacheKey(recipe_id, index, "arrow").relpath
    assert path.read_bytes() == r.content
    return r.content, path


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def test_a_range_spanning_many_chunks_arrives_whole(http: httpx.Client, recipe_id: str, started_env: Env,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    good, _ = cached(http, recipe_id, 0, started_env)
    monkeypatch.setattr(serving, "CHUNK_BYTES", 1000)
    assert len(good) > 5 * 1000
    again = http.get(f"/v1/recipes/{recipe_id}/ranges/0")
    assert again.status_code == 200 and again.content == good


@pytest.mark.parametrize("chunk", [1000, serving.CHUNK_BYTES])
def test_a_flipped_byte_cuts_the_body_and_the_next_get_is_correct(
    http: httpx.Client, recipe_id: str, started_env: Env, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    index = 1 if chunk == 1000 else 2
    good, path = cached(http, recipe_id, index, started_env)
    flip_middle_byte(path)
    monkeypatch.setattr(serving, "CHUNK_BYTES", chunk)
    corrupt_before = started_env.core.cache.corrupt_count
    received = bytearray()
    with pytest.raises(httpx.RemoteProtocolError), http.stream("GET", f"/v1/recipes/{recipe_id}/ranges/{index}") as r:
        assert r.status_code == 200 and int(r.headers["content-length"]) == len(good)
        for part in r.iter_raw():
            received += part
    assert len(received) < len(good)  # the held-back last chunk never went out
    assert started_env.core.cache.corrupt_count == corrupt_before + 1
    assert not path.exists()  # dropped

    again = http.get(f"/v1/recipes/{recipe_id}/ranges/{index}")  # materialized again
    assert again.status_code == 200 and again.content == good
    assert path.read_bytes() == good


def test_a_truncated_file_is_a_miss_before_the_first_byte(http: httpx.Client, recipe_id: str, started_env: Env) -> None:
    good, path = cached(http, recipe_id, 3, started_env)
    path.write_bytes(good[: len(good) // 2])
    corrupt_before = started_env.core.cache.corrupt_count
    r = http.get(f"/v1/recipes/{recipe_id}/ranges/3")
    assert r.status_code == 200 and r.content == good
    assert started_env.core.cache.corrupt_count == corrupt_before + 1


# -- behind nginx, with X-Accel-Redirect ---------------------------------------------------------

ACCEL_PREFIX = "/_vdata_cache"


@pytest.fixture(scope="module")
def accel_server(started_env: Env) -> Iterator[BackgroundServer]:
    settings = started_env.settings_with(port=0, accel_redirect_prefix=ACCEL_PREFIX)
    with BackgroundServer(settings, started_env.core) as running:
        yield running


@pytest.fixture(scope="module")
def nginx(accel_server: BackgroundServer, started_env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """nginx on a loopback port in front of the accel gateway (skipped where nginx is not installed:
    an optional front, not part of the service)."""
    if not Path(NGINX_BINARY).exists():
        pytest.skip(f"nginx is not installed ({NGINX_BINARY})")
    with Nginx(tmp_path_factory.mktemp("nginx"), upstream_port=accel_server.port,
               cache_root=started_env.core.cache.root, accel_prefix=ACCEL_PREFIX) as running:
        yield running.url


def test_the_accel_gateway_answers_with_the_file_to_send(accel_server: BackgroundServer, http: httpx.Client,
                                                        recipe_id: str, started_env: Env) -> None:
    good, path = cached(http, recipe_id, 4, started_env)
    r = httpx.get(f"{accel_server.url}/v1/recipes/{recipe_id}/ranges/4", headers=http.headers)
    assert r.status_code == 200 and r.content == b""
    assert r.headers["x-accel-redirect"] == f"{ACCEL_PREFIX}/{recipe_id}/00000004.arrow"
    assert r.headers["x-vdata-adler32"] == f"{zlib.adler32(good):08x}"


def test_nginx_sends_the_range_the_gateway_names(nginx: str, http: httpx.Client, recipe_id: str, started_env: Env) -> None:
    good, _ = cached(http, recipe_id, 5, started_env)
    r = httpx.get(f"{nginx}/v1/recipes/{recipe_id}/ranges/5", headers=http.headers)
    assert r.status_code == 200 and r.content == good
    assert r.headers["x-vdata-adler32"] == f"{zlib.adler32(good):08x}"
    assert r.headers["x-vdata-events"] == http.get(f"/v1/recipes/{recipe_id}/ranges/5").headers["x-vdata-events"]
    assert r.headers["content-type"] == MEDIA_TYPES["arrow"]
    assert httpx.get(f"{nginx}{ACCEL_PREFIX}/{recipe_id}/00000005.arrow").status_code == 404  # internal only
    assert httpx.get(f"{nginx}/v1/recipes/{recipe_id}/ranges/5").status_code == 401  # the gateway still authenticates


def test_behind_nginx_a_flipped_byte_is_seen_by_the_checksum_and_dropped(
    nginx: str, http: httpx.Client, recipe_id: str, started_env: Env
) -> None:
    good, path = cached(http, recipe_id, 6, started_env)
    flip_middle_byte(path)
    r = httpx.get(f"{nginx}/v1/recipes/{recipe_id}/ranges/6", headers=http.headers)
    assert r.status_code == 200 and r.headers["x-vdata-adler32"] == f"{zlib.adler32(good):08x}"
    assert zlib.adler32(r.content) != zlib.adler32(good)  # what a client's check rejects
    # the gateway checks the file after answering, and drops it
    wait_until(lambda: not path.exists(), timeout=30, message=f"the damaged cache file {path.name} to be dropped")
    again = httpx.get(f"{nginx}/v1/recipes/{recipe_id}/ranges/6", headers=http.headers)
    assert again.status_code == 200 and again.content == good
