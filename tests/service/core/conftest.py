"""Fixtures of the core's tests: a fresh database per test, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.core.db import Database


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of the test's database (a file, or a fresh PostgreSQL database of the session's
    server): a test that restarts opens it again with it. Every test using it runs on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/v.db"
    postgres = request.getfixturevalue("postgres")
    return str(postgres.new())


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """The test's database, open, closed at the end."""
    with Database(db_url) as database:
        yield database
