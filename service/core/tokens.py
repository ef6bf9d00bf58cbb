"""Bearer tokens and their roles, stored hashed in the ``tokens`` table.

Roles are ordered ``reader < worker < scientist < admin``; each may do what the lower ones
may. A token is a random secret (``vdt_`` and 43 URL-safe characters, 256 bits), shown once
when it is created; the database keeps only its sha256. A plain hash (no salt, no slow KDF)
is enough because the secret is high-entropy: nobody can guess it from the hash.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable

from service.errors import TokenError
from service.core.db import Database

__all__ = ["ROLES", "TOKEN_PREFIX", "TokenError", "TokenStore", "hash_token", "role_allows", "role_rank"]

ROLES = ("reader", "worker", "scientist", "admin")
TOKEN_PREFIX = "vdt_"
MAX_NOTE = 200


def role_rank(role: str) -> int:
    """The role's position in :data:`ROLES` (reader is 0); TokenError for an unknown role."""
    try:
        return ROLES.index(role)
    except ValueError:
        raise TokenError(f"unknown role {role!r}; roles: {', '.join(ROLES)}") from None


def role_allows(have: str, need: str) -> bool:
    """Whether a token of role ``have`` may do what role ``need`` may."""
    return role_rank(have) >= role_rank(need)


def hash_token(token: str) -> str:
    """The stored form of a token: the sha256 of its text, as hex."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class TokenStore:
    """Create tokens and look up their role; every call is one transaction."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self._clock = clock

    def create(self, role: str, note: str = "") -> str:
        """A new token of ``role``; returns the secret, which is not stored anywhere."""
        role_rank(role)
        if not isinstance(note, str) or len(note) > MAX_NOTE:
            raise TokenError(f"note must be a string of at most {MAX_NOTE} characters")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.db.transaction() as conn:
            conn.execute("INSERT INTO tokens (hash, role, note, created) VALUES (?, ?, ?, ?)",
                         (hash_token(token), role, note, self._clock()))
        return token

    def role_of(self, token: str) -> str | None:
        """The role of a token, or None if it is unknown (or revoked)."""
        if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX):
            return None
        row = self.db.read().execute("SELECT role FROM tokens WHERE hash = ?", (hash_token(token),)).fetchone()
        return None if row is None else str(row[0])

    def revoke(self, token: str) -> bool:
        """Forget a token; False if it was not known."""
        with self.db.transaction() as conn:
            return conn.execute("DELETE FROM tokens WHERE hash = ?", (hash_token(token),)).rowcount > 0

    def count(self, role: str | None = None) -> int:
        """How many tokens there are (of ``role``, if given)."""
        if role is None:
            return int(self.db.read().execute("SELECT COUNT(*) FROM tokens").fetchone()[0])
        role_rank(role)
        return int(self.db.read().execute("SELECT COUNT(*) FROM tokens WHERE role = ?", (role,)).fetchone()[0])

    def ensure_admin(self) -> str | None:
        """Create the first admin token if there is no admin token yet, and return it; else None.

        Atomic: of two processes starting at once, only one creates (and shows) a token.
        """
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.db.transaction() as conn:
            self.db.serialize(conn, "tokens.ensure_admin")  # no row to lock yet (PostgreSQL)
            if conn.execute("SELECT 1 FROM tokens WHERE role = 'admin' LIMIT 1").fetchone() is not None:
                return None
            conn.execute("INSERT INTO tokens (hash, role, note, created) VALUES (?, 'admin', ?, ?)",
                         (hash_token(token), "first admin token, created on first start", self._clock()))
        return token
