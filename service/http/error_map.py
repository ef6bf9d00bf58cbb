"""The one mapping from errors to HTTP responses.

Every error body is JSON ``{"error": <short code>, "detail": <message naming the culprit>}``.
:func:`status_of` maps each :class:`~vdata.errors.VdataError` subclass (the trees of
``vdata/errors.py`` and ``service/errors.py``) to a status, most specific class first;
anything not listed falls back to 400, so no VdataError becomes a 500. Errors of the array
layer that reach the gateway untranslated (``transforms.errors.TransformsError``: an unknown
transform name) are mapped here as well. A remote source that fails (``RemoteReadError``:
refused connection, timeout, HTTP error, truncated body, a redirect, no range support) is a
bad gateway, 502, naming the URL.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import (
    BadPath,
    BodyTooLarge,
    CacheBusy,
    CacheError,
    DatabaseUnavailable,
    EngineError,
    Forbidden,
    JobError,
    JobNotFound,
    LeaseError,
    LimitExceeded,
    NotMaterialized,
    OutputConflict,
    OutputError,
    PathNotAllowed,
    RangeUnavailable,
    RayUnavailable,
    RecipeNotFound,
    StorageFull,
    TokenError,
    TooManyInFlight,
    Unauthenticated,
)
from transforms.errors import TransformsError, UnknownName
from vdata.errors import (
    DatasetNotFound,
    FormatError,
    RangeOutOfBounds,
    RecipeError,
    RemoteFileNotFound,
    RemoteReadError,
    SourceError,
    TaskLimitExceeded,
    TransformError,
    TransformRejected,
    VdataError,
)

__all__ = [
    "error_response",
    "install_error_handlers",
    "status_of",
]

log = logging.getLogger("service")


# (class, status, code); the first class that matches wins, so subclasses come first.
STATUS: list[tuple[type[BaseException], int, str | None]] = [
    (Unauthenticated, 401, "unauthenticated"),
    (Forbidden, 403, "forbidden"),
    (PathNotAllowed, 403, "path_not_allowed"),
    (BadPath, 400, "bad_path"),
    (BodyTooLarge, 413, "body_too_large"),
    (LimitExceeded, 400, "limit_exceeded"),
    (TooManyInFlight, 429, "too_many_in_flight"),
    (RangeUnavailable, 503, "range_unavailable"),
    (RangeOutOfBounds, 416, "range_out_of_bounds"),
    (JobNotFound, 404, None),  # and RangeNotFound, its subclass
    (RecipeNotFound, 404, "recipe_not_found"),
    (NotMaterialized, 404, "not_materialized"),
    (DatasetNotFound, 404, "dataset_not_found"),
    (LeaseError, 409, "lease_conflict"),
    (CacheBusy, 409, "cache_busy"),
    (OutputConflict, 409, "output_conflict"),
    (OutputError, 400, "bad_output"),
    (JobError, 400, "bad_job_request"),
    (RecipeError, 400, "bad_recipe"),
    (FormatError, 400, "bad_format"),
    (CacheError, 400, "bad_range_key"),
    (TokenError, 400, "bad_token_request"),
    (TaskLimitExceeded, 422, "task_limit_exceeded"),
    (TransformError, 422, "transform_failed"),
    (StorageFull, 507, "insufficient_storage"),
    (TransformRejected, 400, "transform_refused"),
    (RayUnavailable, 503, "ray_unavailable"),
    (EngineError, 503, "engine_unavailable"),
    (DatabaseUnavailable, 503, "database_unavailable"),
    (RemoteFileNotFound, 400, "source_file_not_found"),  # the URL names no file: the client's mistake
    (RemoteReadError, 502, "remote_read_error"),  # the source failed us, not the client
    (SourceError, 400, None),  # SourceFileNotFound, TreeNotFound, ...: the class name says which
    (UnknownName, 404, "unknown_name"),
    (TransformsError, 400, "transform_refused"),
    (VdataError, 400, None),
]


def status_of(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and the ``error`` code for a VdataError (or TransformsError)."""
    for cls, status, code in STATUS:
        if isinstance(exc, cls):
            return status, code or _snake(type(exc).__name__)
    raise TypeError(f"no HTTP status for {type(exc).__name__}")  # only VdataError/TransformsError get here


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(name))


def error_response(status: int, error: str, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def _request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "-"))


async def vdata_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """The one mapping from library errors to 4xx responses."""
    status, code = status_of(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, (RangeUnavailable, RayUnavailable)):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, TooManyInFlight):
        headers["Retry-After"] = "1"
    log.info("[%s] %s %s -> %d %s: %s", _request_id(request), request.method, request.url.path, status, code, exc)
    return error_response(status, code, str(exc), headers or None)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Pydantic validation errors: 422 in the same shape, every problem with where it is."""
    problems = []
    for error in cast(RequestValidationError, exc).errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    detail = "; ".join(problems) or "invalid request"
    log.info("[%s] %s %s -> 422: %s", _request_id(request), request.method, request.url.path, detail)
    return error_response(422, "validation_error", detail)


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (404 no such route, 405 method not allowed) in the same shape."""
    http = cast(StarletteHTTPException, exc)
    code = _snake("".join(w.capitalize() for w in _phrase(http.status_code).split()))
    return error_response(http.status_code, code, http.detail, dict(http.headers) if http.headers else None)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


def install_error_handlers(app: FastAPI) -> None:
    """The handlers above on ``app``: library errors, validation errors, Starlette's own."""
    app.add_exception_handler(VdataError, vdata_error_handler)
    app.add_exception_handler(TransformsError, vdata_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
