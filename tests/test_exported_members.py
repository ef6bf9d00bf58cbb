"""The public API lives in one place: ``vdata.__all__``, sorted, every name importable."""

from __future__ import annotations

import vdata


def test_all_is_sorted_and_complete() -> None:
    assert vdata.__all__ == sorted(vdata.__all__)
    for name in vdata.__all__:
        assert hasattr(vdata, name), name
    public = {n for n in dir(vdata) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(vdata, n)).__name__ == "module"}
    assert public - modules == set(vdata.__all__)


def test_issue_contract_names() -> None:
    for name in ("open_dataset", "SourceDataset", "EventRange", "write_table", "VdataError"):
        assert name in vdata.__all__


def test_the_server_is_not_part_of_the_library_api() -> None:
    """A worker's ``import vdata`` offers what a user calls, not the service's parts (issue 11)."""
    for name in ("Core", "CoreConfig", "Database", "Engine", "EngineConfig", "JobStore", "RangeCache", "CacheKey"):
        assert not hasattr(vdata, name), name
