"""The gateway's token cache: verified tokens are trusted for a short time, revocation still
takes effect after it, unknown tokens are never remembered."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.http.auth import Principal, TokenCache
from service.core.db import Database
from service.core.tokens import TokenStore, hash_token


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class CountingStore:
    """A real token store that counts the lookups that reach the database."""

    def __init__(self, store: TokenStore) -> None:
        self.store = store
        self.lookups = 0

    def role_of(self, token: str) -> str | None:
        self.lookups += 1
        return self.store.role_of(token)


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[TokenStore]:
    with Database(f"sqlite:///{tmp_path / 'vdata.db'}") as db:
        yield TokenStore(db)


def test_a_revoked_token_stops_working_after_the_ttl(store: TokenStore) -> None:
    clock = FakeClock()
    cache = TokenCache(store.role_of, ttl=5.0, clock=clock)
    token = store.create("worker")
    assert cache.principal(token) == Principal("worker", hash_token(token))
    store.revoke(token)
    clock.now += 4.9
    assert cache.principal(token) == Principal("worker", hash_token(token))  # still trusted
    clock.now += 0.2
    assert cache.principal(token) is None
    clock.now += 100
    assert cache.principal(token) is None


def test_verified_tokens_are_looked_up_once_per_ttl(store: TokenStore) -> None:
    clock = FakeClock()
    counting = CountingStore(store)
    cache = TokenCache(counting.role_of, ttl=5.0, clock=clock)
    token = store.create("reader")
    for _ in range(50):
        assert cache.principal(token) is not None
    assert counting.lookups == 1
    clock.now += 6
    assert cache.principal(token) is not None and counting.lookups == 2


def test_unknown_tokens_are_not_remembered(store: TokenStore) -> None:
    counting = CountingStore(store)
    cache = TokenCache(counting.role_of, clock=FakeClock())
    assert cache.principal("vdt_nobody") is None
    assert cache.principal("vdt_nobody") is None
    assert counting.lookups == 2  # each asks the database: a new token must work at once
    token = store.create("admin")
    assert cache.principal(token) == Principal("admin", hash_token(token))


def test_the_cache_is_bounded(store: TokenStore) -> None:
    counting = CountingStore(store)
    cache = TokenCache(counting.role_of, clock=FakeClock(), max_entries=3)
    tokens = [store.create("reader") for _ in range(4)]
    for token in tokens:
        assert cache.principal(token) is not None
    assert counting.lookups == 4
    assert cache.principal(tokens[0]) is not None  # dropped when the fourth came in
    assert counting.lookups == 5
