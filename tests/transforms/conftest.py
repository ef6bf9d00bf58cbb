"""Fixtures of the transforms tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module", autouse=True)
def kernel_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Generated kernels go to pytest's cache folder (kept between runs), not the user's."""
    cache = getattr(request.config, "cache", None)
    path = cache.mkdir("vdata-kernels") if cache is not None else tmp_path_factory.mktemp("kernels")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VDATA_KERNEL_CACHE", str(path))
        yield path
