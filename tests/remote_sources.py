"""A real gateway (uvicorn on a loopback port, its own core built from its settings like
``vdata serve``, on the module's Ray: the ``embedded_ray`` fixture) in front of misbehaving
loopback HTTP sources: the shared helper of tests/security/test_hostile_sources.py,
tests/reliability/test_remote_failures.py and tests/reliability/test_xrootd_sources.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from service.http.server import BackgroundServer
from service.settings import Settings
from vdata.testing import HostileFileServer, RangeFileServer, free_port

HZZ = "uproot-HZZ.root"
READ_TIMEOUT = 3.0  # remote_read_timeout_seconds of the gateway under test
CONNECT_TIMEOUT = 3.0
# What "answered within the timeout" allows on 2 shared, busy cores: a stall costs one read
# timeout per request that stalls (measured here: 3 s to register, 5 s to materialize), plus
# Ray and the gateway. Below the 30 s default read timeout, so the setting is what answers;
# without any timeout a stall took 300 s (aiohttp's default total).
SLACK = 20.0


@dataclass
class Gateway:
    """The gateway, an admin's client, and the loopback servers around it."""

    server: BackgroundServer
    http: httpx.Client
    hostile: HostileFileServer  # under the allowed prefixes; switch ``hostile.mode``
    internal: RangeFileServer  # NOT under the allowed prefixes: counts what reaches it
    gone_url: str  # under the allowed prefixes, nothing listens there
    closable: RangeFileServer  # under the allowed prefixes; a test may stop it

    def register(self, name: str, url: str, tree: str = "events") -> httpx.Response:
        return self.http.post("/v1/datasets", json={"name": name, "paths": [url], "tree": tree})

    def recipe(self, dataset: str, columns: list[str], range_events: int = 1000) -> str:
        r = self.http.post("/v1/recipes", json={"source": {"dataset": dataset}, "columns": columns,
                                                "range_events": range_events})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def timed(self, method: str, url: str, **kwargs: Any) -> tuple[httpx.Response, float]:
        start = time.monotonic()
        r = self.http.request(method, url, **kwargs)
        return r, time.monotonic() - start


@contextmanager
def gateway(tmp: Path, shared_data: Path, url_prefixes: Sequence[str] = ()) -> Iterator[Gateway]:
    """Servers first (the allowed prefixes name their ports; ``url_prefixes`` adds more), then
    the gateway (its core joins the caller's ``embedded_ray``); all stopped on exit, also after a failure."""
    with ExitStack() as stack:
        hostile = stack.enter_context(HostileFileServer(shared_data))
        internal = stack.enter_context(RangeFileServer(shared_data))
        closable = stack.enter_context(RangeFileServer(shared_data))
        gone_url = f"http://127.0.0.1:{free_port()}"
        settings = Settings(
            data_dir=tmp / "data", allowed_roots=[tmp / "data"], port=0,
            allowed_url_prefixes=[f"{hostile.url}/", f"{gone_url}/", f"{closable.url}/", *url_prefixes],
            remote_connect_timeout_seconds=CONNECT_TIMEOUT, remote_read_timeout_seconds=READ_TIMEOUT,
            max_in_flight=2, lookahead=0, readahead=0,
            log_level="warning",
        )
        server = stack.enter_context(BackgroundServer(settings))
        assert server.admin_token is not None
        http = stack.enter_context(httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {server.admin_token}"}, timeout=400))
        yield Gateway(server, http, hostile, internal, gone_url, closable)


def remote_error(r: httpx.Response, url: str) -> str:
    """The detail of a 502 ``remote_read_error`` that names ``url``."""
    assert r.status_code == 502, f"{r.status_code}: {r.text}"
    body = r.json()
    assert body["error"] == "remote_read_error", body
    assert url in body["detail"], body
    return str(body["detail"])
