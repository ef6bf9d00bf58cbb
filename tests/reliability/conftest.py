"""Fixtures of the reliability tests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_process import processes_mentioning, short_dir, stop_all


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A fresh data folder with a short path, so Ray's folder can lie inside it; whatever still
    runs from it is stopped, and it is removed, at the end."""
    path = short_dir("vd-")
    try:
        yield path / "data"
    finally:
        stop_all(processes_mentioning(str(path)))
        subprocess.run(["rm", "-rf", str(path)], check=False)
