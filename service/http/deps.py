"""What routes depend on, as ``Annotated`` aliases over ``app.state`` (set by ``create_app``
and its lifespan). Tests override the functions with ``app.dependency_overrides``."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, Request

from service.errors import TooManyInFlight
from service.http.metrics import Metrics
from service.settings import Settings
from service.core.core import Core
from service.core.tokens import TokenStore

__all__ = [
    "CoreDep",
    "InFlight",
    "InFlightDep",
    "MetricsDep",
    "SettingsDep",
    "TokensDep",
    "get_core",
    "get_inflight",
    "get_metrics",
    "get_settings",
    "get_tokens",
]


class InFlight:
    """Materializations each token is waiting on; at most ``limit`` per token at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def slot(self, key: str) -> Iterator[None]:
        with self._lock:
            if self._counts[key] >= self.limit:
                raise TooManyInFlight(
                    f"this token already waits on {self._counts[key]} materializations; the limit is "
                    f"{self.limit} (setting max_inflight_per_token): retry when one is served")
            self._counts[key] += 1
        try:
            yield
        finally:
            with self._lock:
                self._counts[key] -= 1
                if self._counts[key] <= 0:
                    del self._counts[key]

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_core(request: Request) -> Core:
    core: Core | None = request.app.state.core
    if core is None:
        raise RuntimeError("the core is not started: the app's lifespan did not run")
    return core


async def get_tokens(core: Annotated[Core, Depends(get_core)]) -> TokenStore:
    return TokenStore(core.db)


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_inflight(request: Request) -> InFlight:
    inflight: InFlight = request.app.state.inflight
    return inflight


SettingsDep = Annotated[Settings, Depends(get_settings)]
CoreDep = Annotated[Core, Depends(get_core)]
TokensDep = Annotated[TokenStore, Depends(get_tokens)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
InFlightDep = Annotated[InFlight, Depends(get_inflight)]
