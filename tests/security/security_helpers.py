"""Helpers of the attack suites: a real gateway (uvicorn on a loopback port) over one core,
a token per role, and the HZZ test file registered as ``opendata:hzz``.

The core is small on purpose (two tasks in flight; Ray itself is the module's ``embedded_ray``,
tests/conftest.py: two CPUs, an 80 MB object store): the suites run beside other work on a
two-core machine. Everything started here is stopped when the block ends, also on failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from service.http.server import BackgroundServer
from service.settings import Settings
from service.core.core import Core, CoreConfig
from service.core.engine import EngineConfig
from service.core.tokens import ROLES, TokenStore

__all__ = ["HZZ", "Gateway", "gateway"]

HZZ = "uproot-HZZ.root"
MiB = 1024**2


@dataclass
class Gateway:
    """A running gateway: its base URL, its core, a token per role and its data folder."""

    url: str
    core: Core
    settings: Settings
    tokens: dict[str, str]
    data_dir: Path

    def client(self, role: str | None = "admin", timeout: float = 120.0) -> httpx.Client:
        """An HTTP client of the gateway with ``role``'s token (None: no token)."""
        headers = {} if role is None else {"Authorization": f"Bearer {self.tokens[role]}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)


@contextmanager
def gateway(tmp: Path, shared_data: Path, *, start: bool) -> Iterator[Gateway]:
    """A gateway on a free loopback port; ``start``: with Ray (the caller holds ``embedded_ray``),
    else planning only."""
    data_dir = tmp / "data"
    engine = EngineConfig(max_in_flight=2, lookahead=0)
    core = Core(CoreConfig(data_dir=data_dir, engine=engine, cache_budget_bytes=64 * MiB))
    try:
        if start:
            core.start()
        tokens = {role: TokenStore(core.db).create(role, note=f"security {role}") for role in ROLES}
        settings = Settings(data_dir=data_dir, allowed_roots=[data_dir, shared_data], num_cpus=1,
                            object_store_bytes=80 * MiB, lookahead=0, readahead=0, port=0)
        with BackgroundServer(settings, core) as server:
            gw = Gateway(server.url, core, settings, tokens, data_dir)
            with gw.client("admin") as admin:
                r = admin.post("/v1/datasets", json={"name": "opendata:hzz", "paths": [str(shared_data / HZZ)],
                                                     "tree": "events"})
                assert r.status_code == 201, r.text
            yield gw
    finally:
        core.close()
