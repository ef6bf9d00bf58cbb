"""Tokens: random secrets, stored only as hashes, with ordered roles."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.core.db import Database
from service.core.tokens import ROLES, TOKEN_PREFIX, TokenStore, hash_token, role_allows, role_rank
from service.errors import TokenError


def test_roles_are_ordered() -> None:
    assert ROLES == ("reader", "worker", "scientist", "admin")
    assert [role_rank(r) for r in ROLES] == [0, 1, 2, 3]
    assert role_allows("admin", "reader") and role_allows("worker", "worker")
    assert not role_allows("scientist", "admin") and not role_allows("reader", "worker")
    with pytest.raises(TokenError, match="'root'"):
        role_allows("root", "reader")


def test_create_and_look_up(db: Database) -> None:
    store = TokenStore(db)
    tokens = {role: store.create(role, note=f"for {role}") for role in ROLES}
    assert len(set(tokens.values())) == 4
    for role, token in tokens.items():
        assert token.startswith(TOKEN_PREFIX) and len(token) >= 40
        assert store.role_of(token) == role
    assert store.role_of("vdt_unknown") is None and store.role_of("") is None
    assert store.role_of(tokens["admin"] + "x") is None
    assert store.count() == 4 and store.count("worker") == 1


def test_only_hashes_are_stored(db: Database, request: pytest.FixtureRequest) -> None:
    token = TokenStore(db).create("worker")
    rows = [tuple(r) for r in db.read().execute("SELECT * FROM tokens")]
    assert rows and all(token not in str(v) for row in rows for v in row)
    assert rows[0][0] == hash_token(token)
    if db.dialect == "sqlite":
        files = [Path(db.path)]
    else:  # every file of the server, written out first
        db.read().execute("CHECKPOINT")
        files = [p for p in request.getfixturevalue("postgres").server.data.rglob("*") if p.is_file()]
    assert files and all(token.encode() not in f.read_bytes() for f in files)


def test_revoke(db: Database) -> None:
    store = TokenStore(db)
    token = store.create("reader")
    assert store.revoke(token) and store.role_of(token) is None and not store.revoke(token)


def test_bad_arguments(db: Database) -> None:
    store = TokenStore(db)
    with pytest.raises(TokenError, match="unknown role 'superuser'"):
        store.create("superuser")
    with pytest.raises(TokenError, match="note"):
        store.create("reader", note="x" * 1000)


def test_ensure_admin_once(db: Database) -> None:
    store = TokenStore(db)
    store.create("reader")
    first = store.ensure_admin()
    assert first is not None and store.role_of(first) == "admin"
    assert store.ensure_admin() is None
    with Database(db.url) as again:  # a restart: still no second admin token
        assert TokenStore(again).ensure_admin() is None
    assert store.count("admin") == 1
