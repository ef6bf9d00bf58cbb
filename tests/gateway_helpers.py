"""Helpers of the gateway tests: a synchronous client over the ASGI app (httpx's
``ASGITransport`` driven through an anyio portal: Starlette's TestClient warns about httpx),
an environment of a core, settings and a token per role, and the test dataset's recipe."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
from fastapi import FastAPI

from service.http.app import create_app
from service.settings import Settings
from service.core.core import Core, CoreConfig
from service.core.engine import EngineConfig
from service.core.tokens import ROLES, TokenStore

ENGINE = EngineConfig(max_in_flight=4, lookahead=0)  # Ray itself: the embedded_ray fixture
HZZ = "uproot-HZZ.root"
SCALE = {"name": "scale", "source": "def scale(x):\n    return 2.0 * x\n", "inputs": {"x": "flat"},
         "outputs": {"y": "float64"}, "kind": "element"}
RECIPE = {
    "source": {"dataset": "opendata:hzz"},
    "steps": [{"transform": {"name": "scale", "inputs": {"x": "MET_px"}, "outputs": {"y": "met_px2"}}}],
    "columns": ["met_px2", "NMuon", "Muon_Px"],
    "range_events": 400,
}


class Client:
    """Synchronous requests to an ASGI app, with a default bearer token."""

    def __init__(self, app: FastAPI, portal: anyio.from_thread.BlockingPortal, token: str | None = None) -> None:
        self.app = app
        self.portal = portal
        self.token = token
        self._http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")

    def as_(self, token: str | None) -> Client:
        """The same app with another token (None: no Authorization header)."""
        other = Client.__new__(Client)
        other.app, other.portal, other.token, other._http = self.app, self.portal, token, self._http
        return other

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        if self.token is not None:
            headers.setdefault("Authorization", f"Bearer {self.token}")
        return self.portal.call(partial(self._http.request, method, url, headers=headers, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def close(self) -> None:
        self.portal.call(self._http.aclose)


@dataclass
class Env:
    """A core, its settings, a token per role and a client factory."""

    core: Core
    settings: Settings
    tokens: dict[str, str]
    portal: anyio.from_thread.BlockingPortal
    data_dir: Path

    def client(self, role: str | None = "admin", settings: Settings | None = None) -> Client:
        app = create_app(settings or self.settings, self.core)
        return Client(app, self.portal, self.tokens[role] if role else None)

    def settings_with(self, **changes: Any) -> Settings:
        return self.settings.model_copy(update=changes)


def make_settings(data_dir: Path, shared_data: Path, **kwargs: Any) -> Settings:
    return Settings(data_dir=data_dir, allowed_roots=[data_dir, shared_data], num_cpus=2,
                    object_store_bytes=100 * 1024**2, lookahead=0, readahead=0, **kwargs)


@contextmanager
def environment(tmp: Path, shared_data: Path, start: bool, **settings: Any) -> Iterator[Env]:
    """A core on ``tmp/data`` (``start``: its engine started, joining the module's Ray: see the
    ``embedded_ray`` fixture), closed at the end, also after a failure."""
    data_dir = tmp / "data"
    config = CoreConfig(data_dir=data_dir, engine=ENGINE, cache_budget_bytes=64 * 1024**2)
    core = Core(config)
    try:
        if start:
            core.start()
        tokens = {role: TokenStore(core.db).create(role, note=f"test {role}") for role in ROLES}
        with anyio.from_thread.start_blocking_portal() as portal:
            yield Env(core, make_settings(data_dir, shared_data, **settings), tokens, portal, data_dir)
    finally:
        core.close()


def error_of(response: httpx.Response, status: int, code: str | None = None) -> str:
    """The detail of a JSON error response of ``status`` (and ``code``)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    if code is not None:
        assert body["error"] == code, body
    assert body["detail"]
    return str(body["detail"])
