"""Event ranges: how a dataset is cut into pieces that cover every event exactly once.

Pure functions over entry counts and cluster boundaries; no I/O. Event numbers are global
(numbering continues from file to file); each range maps to one window of one file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["EventRange", "RegularRanges", "plan_ranges"]


@dataclass(frozen=True, slots=True)
class EventRange:
    """Events ``[first, stop)`` (global event numbers) of a dataset, its ``index``-th range."""

    index: int
    first: int
    stop: int

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"range index must be >= 0, got {self.index}")
        if not 0 <= self.first < self.stop:
            raise ValueError(f"range {self.index}: need 0 <= first < stop, got [{self.first}, {self.stop})")

    @property
    def num_events(self) -> int:
        return self.stop - self.first

    def __str__(self) -> str:
        return f"range {self.index} [{self.first}, {self.stop})"


class RegularRanges(Sequence[EventRange]):
    """``events`` events cut into ranges of ``size`` (the last one shorter): computed on demand,
    not listed, so a plan of millions of ranges costs the same memory as one of a single range."""

    __slots__ = ("events", "size")

    def __init__(self, events: int, size: int) -> None:
        if events < 0 or size < 1:
            raise ValueError(f"need events >= 0 and size >= 1, got {events} and {size}")
        self.events = events
        self.size = size

    def __len__(self) -> int:
        return -(-self.events // self.size)

    def __getitem__(self, index):  # type: ignore[no-untyped-def]  # int -> EventRange, slice -> list
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"range {index} of {n}")
        return EventRange(index, index * self.size, min((index + 1) * self.size, self.events))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RegularRanges):
            return (self.events, self.size) == (other.events, other.size)
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # like a list

    def __repr__(self) -> str:
        return f"RegularRanges(events={self.events}, size={self.size})"


def _file_windows(entries: int, clusters: Sequence[int], target: int) -> list[tuple[int, int]]:
    """Cut one file of ``entries`` entries into windows of at most ``target`` entries.

    ``clusters`` are the cluster boundaries (starting at 0, ending at ``entries``).
    Whole clusters are grouped greedily; a cluster larger than the target is split into
    equal parts, the only place a window boundary falls inside a cluster.
    """
    bounds = sorted({b for b in clusters if 0 < b < entries} | {0, entries})
    windows: list[tuple[int, int]] = []
    start = 0  # start of the window being grown
    for lo, hi in zip(bounds, bounds[1:]):
        size = hi - lo
        if size > target:
            if lo > start:
                windows.append((start, lo))
            parts = math.ceil(size / target)
            cuts = [lo + (size * k) // parts for k in range(parts + 1)]
            windows.extend(zip(cuts, cuts[1:]))
            start = hi
        elif hi - start > target:
            windows.append((start, lo))
            start = lo
    if start < entries:
        windows.append((start, entries))
    return windows


def plan_ranges(
    entries: Sequence[int], clusters: Sequence[Sequence[int]], target_events: int
) -> list[EventRange]:
    """The ranges of a dataset whose files hold ``entries`` entries each.

    Every range has at most ``target_events`` events and lies in one file; together they are
    contiguous, in order and cover every event exactly once. Files with no entries get no range.
    """
    if isinstance(target_events, bool) or not isinstance(target_events, int) or target_events < 1:
        raise ValueError(f"target_events must be a positive integer, got {target_events!r}")
    if len(entries) != len(clusters):
        raise ValueError("need one list of cluster boundaries per file")
    ranges: list[EventRange] = []
    offset = 0
    for n, bounds in zip(entries, clusters):
        for lo, hi in _file_windows(n, bounds, target_events):
            ranges.append(EventRange(len(ranges), offset + lo, offset + hi))
        offset += n
    return ranges
