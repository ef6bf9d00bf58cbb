"""Fixtures of the gateway tests. Each test module that needs Ray starts ONE core for the
module (``started_env``) on the module's Ray (``embedded_ray``, tests/conftest.py), closed in
teardown; the others use a core that never starts Ray (``idle_env``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_helpers import Env, environment

from service.http.server import BackgroundServer


@pytest.fixture(scope="module")
def started_env(embedded_ray: None, tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[Env]:
    """A core with Ray started (one per test module)."""
    with environment(tmp_path_factory.mktemp("started"), shared_data, start=True) as env:
        yield env


@pytest.fixture(scope="module")
def idle_env(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[Env]:
    """A core whose engine never starts: everything but materialization works."""
    with environment(tmp_path_factory.mktemp("idle"), shared_data, start=False) as env:
        yield env


@pytest.fixture(scope="module")
def server(started_env: Env) -> Iterator[BackgroundServer]:
    """A real uvicorn server on a loopback port over the module's core."""
    with BackgroundServer(started_env.settings_with(port=0), started_env.core) as running:
        yield running


@pytest.fixture(scope="module")
def http(server: BackgroundServer, started_env: Env) -> Iterator[httpx.Client]:
    """An admin's HTTP client of :func:`server`."""
    headers = {"Authorization": f"Bearer {started_env.tokens['admin']}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=120) as client:
        yield client
