"""Bearer-token authentication and role checks, as FastAPI dependencies.

``Reader``, ``Worker``, ``Scientist`` and ``Admin`` are ``Annotated`` aliases a route takes
as a parameter; each resolves to the caller's :class:`Principal` or raises
:class:`~service.errors.Unauthenticated` (401) / :class:`~service.errors.Forbidden` (403).
Tests override :func:`authenticate` to act as any role without tokens.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.deps import TokensDep
from service.errors import Forbidden, Unauthenticated
from vdata.tokens import ROLES, hash_token, role_allows

__all__ = ["Admin", "Principal", "Reader", "Scientist", "Worker", "authenticate", "require"]

bearer = HTTPBearer(auto_error=False, description="A token from `POST /v1/tokens` or the first-start admin token.")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's role, and a key (the token's hash) for per-token limits."""

    role: str
    key: str


async def authenticate(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)], tokens: TokensDep
) -> Principal:
    """The caller of a request with ``Authorization: Bearer <token>``."""
    if credentials is None:
        raise Unauthenticated("no bearer token: send the header 'Authorization: Bearer <token>'")
    role = tokens.role_of(credentials.credentials)
    if role is None:
        raise Unauthenticated("the bearer token is not known to this service (mistyped or revoked?)")
    return Principal(role, hash_token(credentials.credentials))


def require(role: str) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that lets through tokens of ``role`` or a higher one."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")

    async def dependency(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if not role_allows(principal.role, role):
            raise Forbidden(f"this needs a token of role {role!r} or higher; yours has role {principal.role!r}")
        return principal

    dependency.__name__ = f"require_{role}"
    return dependency


require_reader = require("reader")
require_worker = require("worker")
require_scientist = require("scientist")
require_admin = require("admin")

Reader = Annotated[Principal, Depends(require_reader)]
Worker = Annotated[Principal, Depends(require_worker)]
Scientist = Annotated[Principal, Depends(require_scientist)]
Admin = Annotated[Principal, Depends(require_admin)]
