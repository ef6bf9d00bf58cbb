"""The client's ordered prefetch: results in order, a bounded window, and the ramp that lets
the first item have the link to itself.

Each item runs until the test releases it, so which items run at once is decided by the
pipeline alone, never by how fast threads happen to be scheduled.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from vdata.client._pipeline import ordered_prefetch
from vdata.testing import wait_until


class Gated:
    """``fn`` for ordered_prefetch: item i runs until the test releases it (or opens the gate
    for everything); records which items started."""

    def __init__(self, n: int) -> None:
        self.started = [threading.Event() for _ in range(n)]
        self.released = [threading.Event() for _ in range(n)]

    def __call__(self, item: int) -> int:
        self.started[item].set()
        assert self.released[item].wait(60), f"item {item} was never released"
        return item * 10

    def running(self) -> set[int]:
        return {i for i, e in enumerate(self.started) if e.is_set() and not self.released[i].is_set()}

    def open(self) -> None:
        for e in self.released:
            e.set()


@contextmanager
def consumed(fn: Gated, n: int, window: int, ramp: bool) -> Iterator[list[int]]:
    """Consume ``ordered_prefetch(fn, range(n), ...)`` in a thread; its results, once the block ends."""
    out: list[int] = []
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            out.extend(ordered_prefetch(fn, range(n), window, threading.Event(), ramp=ramp))
        except BaseException as exc:  # reported by the test's thread
            errors.append(exc)

    thread = threading.Thread(target=consume)
    thread.start()
    try:
        yield out
    finally:
        fn.open()
        thread.join(timeout=60)
    assert not thread.is_alive() and not errors, errors


def check_steps(ramp: bool, steps: list[set[int]], window: int = 3) -> None:
    """Release the items one by one, oldest first; before each release exactly ``steps[k]`` run.
    Nothing is submitted before the consumer takes a result, and it takes none before the oldest
    item is released: once the expected items run, no other can start until the next release."""
    n = len(steps)
    fn = Gated(n)
    with consumed(fn, n, window, ramp) as out:
        for oldest, expected in enumerate(steps):
            try:
                wait_until(lambda: fn.running() == expected, timeout=30, message=f"items {sorted(expected)} running")
            except AssertionError as exc:
                raise AssertionError(f"{exc}; running: {sorted(fn.running())}") from None
            assert not any(e.is_set() for e in fn.started[max(expected) + 1:]), "an item beyond the window started"
            fn.released[oldest].set()
    assert out == [i * 10 for i in range(n)]


def test_results_come_in_order_although_items_finish_out_of_order() -> None:
    fn = Gated(12)
    with consumed(fn, 12, 3, ramp=False) as out:
        wait_until(lambda: fn.running() == {0, 1, 2}, timeout=30, message="items 0-2 to run")
        fn.released[2].set()
        fn.released[1].set()
        assert out == []  # 1 and 2 are done, but 0 comes first
    assert out == [i * 10 for i in range(12)]


def test_the_ramp_starts_the_first_item_alone_then_fills_the_window() -> None:
    check_steps(True, [{0}, {1, 2}, {2, 3, 4}, {3, 4, 5}, {4, 5, 6}, {5, 6, 7}, {6, 7}, {7}])


def test_without_the_ramp_the_window_starts_full() -> None:
    check_steps(False, [{0, 1, 2}, {1, 2, 3}, {2, 3, 4}, {3, 4, 5}, {4, 5, 6}, {5, 6, 7}, {6, 7}, {7}])
