"""Event ranges: contiguous, in order, each event exactly once, on cluster boundaries."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vdata
from vdata.ranges import EventRange, plan_ranges


@st.composite
def files_with_clusters(draw: st.DrawFn) -> tuple[list[int], list[list[int]]]:
    entries, clusters = [], []
    for _ in range(draw(st.integers(1, 4))):
        n = draw(st.integers(0, 5000))
        inner = draw(st.lists(st.integers(1, max(1, n - 1)), max_size=8)) if n > 1 else []
        entries.append(n)
        clusters.append(sorted({0, n, *inner}))
    return entries, clusters


def check_plan(ranges: list[EventRange], entries: list[int], clusters: list[list[int]], target: int) -> None:
    starts = [sum(entries[:i]) for i in range(len(entries) + 1)]
    assert [r.index for r in ranges] == list(range(len(ranges)))
    # contiguous and covering: first range starts at 0, each starts where the last stopped
    position = 0
    for r in ranges:
        assert r.first == position
        assert 0 < r.num_events <= target
        position = r.stop
    assert position == sum(entries)
    covered = [0] * sum(entries)
    for r in ranges:
        for event in range(r.first, r.stop):
            covered[event] += 1
    assert set(covered) <= {1}
    for r in ranges:
        # inside one file
        file = max(i for i in range(len(entries)) if starts[i] <= r.first)
        assert r.stop <= starts[file + 1]
        # a boundary off a cluster boundary only inside a cluster larger than the target
        for edge in (r.first - starts[file], r.stop - starts[file]):
            bounds = clusters[file]
            if edge not in bounds:
                lo = max(b for b in bounds if b < edge)
                hi = min(b for b in bounds if b > edge)
                assert hi - lo > target, f"{r} cuts cluster [{lo}, {hi}) smaller than {target}"


@given(files_with_clusters(), st.integers(1, 6000))
@settings(max_examples=300, deadline=None)
def test_plan_covers_every_event_once(files: tuple[list[int], list[list[int]]], target: int) -> None:
    entries, clusters = files
    check_plan(plan_ranges(entries, clusters, target), entries, clusters, target)


def test_whole_clusters_are_grouped() -> None:
    ranges = plan_ranges([100], [[0, 10, 20, 30, 60, 100]], 35)
    assert [(r.first, r.stop) for r in ranges] == [(0, 30), (30, 60), (60, 80), (80, 100)]


def test_oversized_cluster_is_split_evenly() -> None:
    ranges = plan_ranges([10], [[0, 10]], 4)
    assert [(r.first, r.stop) for r in ranges] == [(0, 3), (3, 6), (6, 10)]


def test_numbering_continues_across_files_and_skips_empty_files() -> None:
    ranges = plan_ranges([5, 0, 7], [[0, 5], [0], [0, 7]], 100)
    assert [(r.index, r.first, r.stop) for r in ranges] == [(0, 0, 5), (1, 5, 12)]


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_target_must_be_a_positive_integer(bad: object) -> None:
    with pytest.raises(ValueError, match="target_events"):
        plan_ranges([10], [[0, 10]], bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(("first", "stop"), [(5, 5), (6, 5), (-1, 3)])
def test_event_range_rejects_empty_or_negative(first: int, stop: int) -> None:
    with pytest.raises(ValueError, match="first < stop"):
        EventRange(0, first, stop)


def test_event_range_is_frozen() -> None:
    r = EventRange(2, 10, 20)
    with pytest.raises(AttributeError):
        r.first = 3  # type: ignore[misc]
    assert r.num_events == 10


# -- on real files ---------------------------------------------------------------------------

HZZ_FAMILY = ["uproot-HZZ.root", "uproot-HZZ-lz4.root", "uproot-HZZ-zstd.root"]


@pytest.fixture(scope="module")
def many_clusters(shared_data: Path) -> vdata.SourceDataset:
    return vdata.open_dataset(shared_data / "uproot-issue412.root", "test")


def test_real_cluster_boundaries_are_followed(many_clusters: vdata.SourceDataset) -> None:
    clusters = list(many_clusters.files[0].clusters)
    assert len(clusters) > 50 and clusters[0] == 0 and clusters[-1] == 1_000_000
    ranges = many_clusters.ranges(35_000)
    assert all(r.first in clusters and r.stop in clusters for r in ranges)
    check_plan(ranges, [1_000_000], [clusters], 35_000)


@given(
    st.lists(st.sampled_from(HZZ_FAMILY), min_size=1, max_size=4),
    st.integers(1, 8000),
)
@settings(max_examples=40, deadline=None)
def test_ranges_of_real_file_lists(shared_data: Path, names: list[str], target: int) -> None:
    ds = vdata.open_dataset([shared_data / n for n in names], "events")
    assert ds.num_events == 2421 * len(names)
    entries = [f.entries for f in ds.files]
    check_plan(ds.ranges(target), entries, [list(f.clusters) for f in ds.files], target)
