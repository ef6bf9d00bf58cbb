"""Running the gateway: for the CLI (:func:`run`) and for tests and scripts
(:class:`BackgroundServer`, a real uvicorn server in a thread on a loopback port).

The first start of a data folder creates an admin token (:func:`first_admin_token`); it is
shown once, and only its hash is kept.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType

import uvicorn
import uvicorn.config
from fastapi import FastAPI

from service.http.app import build_core, core_config, create_app
from service.http.middleware import RequestIdFilter
from service.settings import Settings
from service.core.core import Core
from service.core.db import Database
from service.core.ray_local import dashboard_help, token_file
from service.core.tokens import TokenStore

__all__ = ["BackgroundServer", "build_core", "core_config", "first_admin_token", "main", "run"]

log = logging.getLogger("service")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def first_admin_token(settings: Settings) -> str | None:
    """On the first start of a data folder: a new admin token (show it once). Else None."""
    config = core_config(settings)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    with Database(config.db_url) as db:
        return TokenStore(db).ensure_admin()


def _configure_logging(level: str) -> None:
    """Log lines of ``service`` and ``vdata`` with the request id, once per process."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    for name in ("service", "vdata"):
        logger = logging.getLogger(name)
        logger.setLevel(level.upper())
        if not any(isinstance(f, RequestIdFilter) for h in logger.handlers for f in h.filters):
            logger.addHandler(handler)
        logger.propagate = False


def _uvicorn_config(settings: Settings, app: FastAPI, configure_logging: bool = True) -> uvicorn.Config:
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(), ws="none",
        lifespan="on", proxy_headers=False, server_header=False, timeout_graceful_shutdown=10, access_log=False,
        log_config=uvicorn.config.LOGGING_CONFIG if configure_logging else None,
    )
    return config


def run(settings: Settings, announce: Callable[[str], None] | None = print) -> str | None:
    """Serve until interrupted (Ctrl-C / SIGTERM). The core starts in the app's lifespan and is
    closed on shutdown. On a first start the admin token is passed to ``announce`` before
    serving (and returned when the server stops); so are, with an embedded Ray's dashboard, its
    address and how to get its token (the engine logs them again once Ray runs)."""
    _configure_logging(settings.log_level)
    token = first_admin_token(settings)
    if token is not None and announce is not None:
        announce(f"admin token (shown once, keep it): {token}")
    engine = settings.engine
    if engine.include_dashboard and not engine.address and announce is not None:
        for line in dashboard_help(f"http://127.0.0.1:{engine.dashboard_port}", token_file(settings.data_dir)):
            announce(line)
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: the gateway is reachable from other machines", settings.host)
    try:
        uvicorn.Server(_uvicorn_config(settings, create_app(settings))).run()
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it handled, after a graceful shutdown
        pass
    return token


def main() -> None:
    """``python -m service``: serve with settings from ``VDATA_*`` and ``VDATA_CONFIG``."""
    run(Settings())


class BackgroundServer:
    """A real uvicorn server in a thread, on ``settings.host`` and a free port (or ``settings.port``
    if not 0). ``core``: serve that started core (the caller closes it); None: the app's lifespan
    builds, starts and closes one. Stops on ``stop()`` / leaving the ``with`` block, also after
    an error. ``url`` is the base URL; ``admin_token`` is set on the first start of a data folder.
    """

    def __init__(self, settings: Settings, core: Core | None = None, startup_timeout: float = 120.0) -> None:
        self.settings = settings
        self.admin_token = first_admin_token(settings)
        self.app = create_app(settings, core)
        self._socket = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((settings.host, 0 if settings.port == 0 else settings.port))
        self.port: int = self._socket.getsockname()[1]
        self._server = uvicorn.Server(_uvicorn_config(settings, self.app, configure_logging=False))
        self._thread = threading.Thread(target=self._serve, name=f"vdata-gateway-{self.port}", daemon=True)
        self._timeout = startup_timeout
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        host = f"[{self.settings.host}]" if ":" in self.settings.host else self.settings.host
        return f"http://{host}:{self.port}"

    def _serve(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except BaseException as exc:  # noqa: BLE001 - reported by start() in the caller's thread
            self._error = exc

    def start(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + self._timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the gateway did not start on {self.url}") from self._error
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
