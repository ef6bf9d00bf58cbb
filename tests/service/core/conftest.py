"""Fixtures of the core's tests: a fresh SQLite database per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.core.db import Database


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """The URL of the test's database file: a test that restarts opens it again with it."""
    return f"sqlite:///{tmp_path}/v.db"


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """The test's database, open, closed at the end."""
    with Database(db_url) as database:
        yield database
