"""The client's ordered prefetch: results in order, a bounded window, and the ramp that lets
the first item have the link to itself."""

from __future__ import annotations

import threading
import time

import pytest

from vdata.client._pipeline import ordered_prefetch


class Recorder:
    """``fn`` for ordered_prefetch: sleeps, and records when each item ran and the peak of
    items running at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.spans: dict[int, tuple[float, float]] = {}

    def __call__(self, item: int) -> int:
        start = time.monotonic()
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
            self.spans[item] = (start, time.monotonic())
        return item * 10


@pytest.mark.parametrize("ramp", [True, False])
def test_results_come_in_order_within_the_window(ramp: bool) -> None:
    fn = Recorder(0.02)
    out = list(ordered_prefetch(fn, range(12), 3, threading.Event(), ramp=ramp))
    assert out == [i * 10 for i in range(12)]
    assert fn.peak == 3  # the window fills, never more


def test_the_ramp_starts_the_first_item_alone() -> None:
    fn = Recorder(0.05)
    list(ordered_prefetch(fn, range(8), 4, threading.Event(), ramp=True))
    first_end = fn.spans[0][1]
    assert all(fn.spans[i][0] >= first_end for i in range(1, 8))  # nothing shared the first fetch
    assert fn.peak == 4


def test_without_the_ramp_the_window_starts_full() -> None:
    fn = Recorder(0.05)
    list(ordered_prefetch(fn, range(8), 4, threading.Event(), ramp=False))
    assert all(fn.spans[i][0] < fn.spans[0][1] for i in range(1, 4))
