"""Bearer-token authentication and role checks, as FastAPI dependencies.

``Reader``, ``Worker``, ``Scientist`` and ``Admin`` are ``Annotated`` aliases a route takes
as a parameter; each resolves to the caller's :class:`Principal` or raises
:class:`~service.http.error_map.Unauthenticated` (401) / :class:`~service.http.error_map.Forbidden` (403).
Tests override :func:`authenticate` to act as any role without tokens.

Verified tokens are remembered for :data:`TOKEN_CACHE_SECONDS` (:class:`TokenCache`): a
worker fleet sends thousands of requests a second with a few tokens, and a SQLite read plus
a sha256 per request was a tenth of the gateway's CPU. A revoked token (``TokenStore.revoke``,
from any process) therefore stops working within that time, not at once. Unknown tokens are
never remembered, so a new token works at once and made-up tokens cannot fill the memory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.http.deps import get_core
from service.errors import Forbidden, Unauthenticated
from service.core.tokens import ROLES, TokenStore, hash_token, role_allows

__all__ = ["TOKEN_CACHE_SECONDS", "Admin", "Principal", "Reader", "Scientist", "TokenCache", "Worker",
           "authenticate", "require"]

TOKEN_CACHE_SECONDS = 5.0  # how long a verified token is trusted without asking the database
MAX_CACHED_TOKENS = 10_000  # past this, the cache starts over (tokens are few; this is a guard)

bearer = HTTPBearer(auto_error=False, description="A token from `POST /v1/tokens` or the first-start admin token.")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's role, and a key (the token's hash) for per-token limits."""

    role: str
    key: str


class TokenCache:
    """Token -> :class:`Principal`, each entry trusted for ``ttl`` seconds of ``clock``.

    ``role_of`` is the source of truth (``TokenStore.role_of``); tests pass a fake clock to
    move past the ttl without sleeping.
    """

    def __init__(self, role_of: Callable[[str], str | None], ttl: float = TOKEN_CACHE_SECONDS,
                 clock: Callable[[], float] = time.monotonic, max_entries: int = MAX_CACHED_TOKENS) -> None:
        self._role_of = role_of
        self.ttl = ttl
        self._clock = clock
        self._max = max_entries
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()  # sync routes run in a thread pool, async ones in the loop

    def principal(self, token: str) -> Principal | None:
        """Who holds ``token`` (None: unknown or revoked), from memory while the entry is fresh."""
        now = self._clock()
        found = self._entries.get(token)
        if found is not None and found[0] > now:
            return found[1]
        role = self._role_of(token)
        with self._lock:
            if role is None:
                self._entries.pop(token, None)
                return None
            if len(self._entries) >= self._max:
                self._entries.clear()
            principal = Principal(role, hash_token(token))
            self._entries[token] = (now + self.ttl, principal)
        return principal


async def token_cache(request: Request) -> TokenCache:
    """The app's token cache, made on first use over the core's token table."""
    core = await get_core(request)
    state = request.app.state
    cache: TokenCache | None = getattr(state, "token_cache", None)
    if cache is None or getattr(state, "token_cache_db", None) is not core.db:
        cache = TokenCache(TokenStore(core.db).role_of)
        state.token_cache, state.token_cache_db = cache, core.db
    return cache


async def authenticate(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    """The caller of a request with ``Authorization: Bearer <token>``."""
    if credentials is None:
        raise Unauthenticated("no bearer token: send the header 'Authorization: Bearer <token>'")
    principal = (await token_cache(request)).principal(credentials.credentials)
    if principal is None:
        raise Unauthenticated("the bearer token is not known to this service (mistyped or revoked?)")
    return principal


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
