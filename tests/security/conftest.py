"""Fixtures of the attack suites (see :mod:`security_helpers`): one gateway per test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from security_helpers import Gateway, gateway


@pytest.fixture(scope="module")
def planning_gateway(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[Gateway]:
    """A gateway whose engine never starts: submitting and planning work, materializing does not."""
    with gateway(tmp_path_factory.mktemp("planning"), shared_data, start=False) as gw:
        yield gw
