"""Fixtures shared by the whole suite: the real ROOT files in ../shared/data and a loopback
HTTP file server with range support."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from realdata import SHARED_DATA, require

from vdata.testing import RangeFileServer


# The longest test files, started first: with two xdist workers (make test), a long file left
# for the end would run alone while the other worker idles.
LONGEST_FIRST = ("tests/security/test_schemathesis.py", "tests/reliability/test_ray_private.py",
                 "tests/security/test_user_code_isolation.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within each file and among the others is kept


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data; under CI=true its absence fails the test instead of skipping it."""
    require(SHARED_DATA / "uproot-HZZ.root")
    return SHARED_DATA


@pytest.fixture(scope="session")
def file_server(shared_data: Path) -> Iterator[RangeFileServer]:
    """../shared/data served over HTTP with range requests on a loopback port."""
    with RangeFileServer(shared_data) as server:
        yield server
