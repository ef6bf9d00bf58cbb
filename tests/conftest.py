"""Fixtures shared by the whole suite: the real ROOT files in ../shared/data and a loopback
HTTP file server with range support."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from realdata import SHARED_DATA, require

from vdata.testing import RangeFileServer


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
