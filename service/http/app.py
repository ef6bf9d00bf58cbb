"""``create_app(settings, core)``: the FastAPI app, built on call (nothing at import time).

With a ``core`` the app serves it and leaves its life to the caller (tests inject a started
one). Without, the app's lifespan builds the core from the settings, starts it (Ray) and
closes it on shutdown (``ray.shutdown`` if it started Ray).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from fastapi import FastAPI

from service.http.deps import InFlight
from service.http.error_map import install_error_handlers
from service.http.metrics import Metrics
from service.http.middleware import BodyLimit, RequestContext
from service.http.routes import ROUTERS
from service.http.schemas import ErrorOut
from service.settings import Settings
from vdata import __version__
from service.core.core import Core, CoreConfig
from vdata.data.remote import RemoteOptions

__all__ = ["build_core", "core_config", "create_app"]

log = logging.getLogger("service")

DESCRIPTION = """Event ranges of ROOT datasets and virtual data, on demand, as Arrow, Parquet or ROOT.

Authenticate with `Authorization: Bearer <token>`. Roles: reader < worker < scientist < admin.
Errors are JSON `{"error": code, "detail": message}`."""


@contextmanager
def _keep_signal_handlers() -> Iterator[None]:
    """Restore SIGINT/SIGTERM handlers after the block: starting Ray installs its own SIGTERM
    handler (print a stack, die), which would cut uvicorn's graceful shutdown short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                signal.signal(sig, handler)


def core_config(settings: Settings) -> CoreConfig:
    """The core's configuration from the gateway's settings."""
    engine = settings.engine.model_copy(update={"data_dir": str(settings.data_dir)})
    remote_cache = settings.remote_cache_dir or settings.data_dir / "remote-cache"
    remote = RemoteOptions(connect_timeout=settings.remote_connect_timeout_seconds,
                           read_timeout=settings.remote_read_timeout_seconds,
                           cache_dir=str(Path(remote_cache).resolve()), cache_bytes=settings.remote_cache_bytes,
                           cache_fresh_seconds=settings.remote_cache_fresh_seconds)
    return CoreConfig(data_dir=settings.data_dir, engine=engine, cache_budget_bytes=settings.cache_budget_bytes,
                      database_url=settings.database_url, remote=remote, cache_dir=settings.cache_dir,
                      cache_debris_seconds=settings.cache_debris_seconds, claim_seconds=settings.claim_seconds,
                      outputs_merge_bytes=settings.outputs_merge_bytes,
                      outputs_retention_seconds=settings.outputs_retention_seconds)


def build_core(settings: Settings) -> Core:
    """The core the settings describe, not started (``core.start()`` starts Ray)."""
    return Core(core_config(settings))


def create_app(settings: Settings | None = None, core: Core | None = None) -> FastAPI:
    """The gateway app. ``core=None``: the lifespan builds, starts and closes one."""
    settings = settings if settings is not None else Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if app.state.core is not None:
            yield
            return
        # In the event loop's thread on purpose: Ray starts and stops in the main thread
        # under ``run``, and nothing is served before startup ends or after shutdown begins.
        owned = build_core(settings)
        try:
            with _keep_signal_handlers():
                owned.start()
        except BaseException:
            owned.close()  # the database and the cache folder's lock
            raise
        app.state.core = owned
        log.info("core started: data in %s", settings.data_dir)
        try:
            yield
        finally:
            app.state.core = None
            owned.close()
            log.info("core closed")

    # No OpenTelemetry here (metrics are Prometheus, at /metrics): FastAPI's native telemetry
    # otherwise asks OpenTelemetry for a configured provider on every request (~5% of a lease).
    app = FastAPI(title="vdata", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.settings = settings
    app.state.core = core
    app.state.inflight = InFlight(settings.max_inflight_per_token)
    app.state.metrics = Metrics(lambda: app.state.core, app.state.inflight.total)
    install_error_handlers(app)
    for router in ROUTERS:  # "default": the error shape, instead of FastAPI's own 422 body
        app.include_router(router, responses={"default": {"model": ErrorOut, "description": "An error"}})
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)  # output uploads: their route's max_output_bytes
    app.add_middleware(RequestContext, metrics=app.state.metrics)  # outermost: sees the 413s too
    return app
