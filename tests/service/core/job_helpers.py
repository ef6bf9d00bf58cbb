"""What the job tests share: a clock they move by hand and contiguous ranges of given sizes."""

from __future__ import annotations

from vdata.ranges import EventRange

LEASE = 60.0


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_ranges(sizes: list[int]) -> list[EventRange]:
    """Ranges 0, 1, ... of these sizes, each starting where the previous one stopped."""
    ranges, first = [], 0
    for i, size in enumerate(sizes):
        ranges.append(EventRange(i, first, first + size))
        first += size
    return ranges
