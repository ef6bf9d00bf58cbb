"""Where the real ROOT test files are, and what each holds (../shared/data/README.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT.parent / "shared" / "data"

# Every event tree of every file in ../shared/data (see its README), with the number of entries.
EVENT_TREES = [
    ("nanoAOD_2015_CMS_Open_Data_ttbar.root", "Events", 200),
    ("uproot-HZZ.root", "events", 2421),
    ("uproot-HZZ-lz4.root", "events", 2421),
    ("uproot-HZZ-zstd.root", "events", 2421),
    ("uproot-Zmumu.root", "events", 2304),
    ("uproot-issue412.root", "test", 1_000_000),
    ("uproot-nesteddirs.root", "one/two/tree", 100),
    ("uproot-nesteddirs.root", "one/tree", 4),
    ("uproot-nesteddirs.root", "three/tree", 100),
    ("uproot-physlite-rntuple_v1-0-0-0.root", "EventData", 100),
    ("uproot-physlite-rntuple_v1-0-0-0.root", "EventTag", 100),
]

# One tree of each kind of file (codecs, NanoAOD, nested folders, RNTuple): what the remote
# exactness tests (http and root://) read through a server and compare with local reads.
REMOTE_CASES = [
    ("uproot-HZZ.root", "events"),
    ("uproot-HZZ-zstd.root", "events"),
    ("nanoAOD_2015_CMS_Open_Data_ttbar.root", "Events"),
    ("uproot-nesteddirs.root", "one/two/tree"),
    ("uproot-physlite-rntuple_v1-0-0-0.root", "EventTag"),
]

# A big file (1,000,000 entries in many baskets: a read fetches only its own) that a test's own
# XRootD server serves through a link (tests/conftest.py, xrootd_root).
XROOTD_BIG = "uproot-issue412.root"


def require(path: Path = SHARED_DATA / "uproot-HZZ.root") -> Path:
    """``path`` (a file of ../shared/data); if it is missing, fail under CI=true, else skip."""
    if not path.is_file():
        message = f"real ROOT test data missing: {path}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path
