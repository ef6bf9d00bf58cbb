"""Prometheus metrics of one app, in a registry of its own (never the global one).

The gateway counts what it sees (requests; range requests by cache hit or miss, counted in one
place by the definition in :mod:`service.http.range_responses`; ranges and bytes served); a
collector reads the core's own counters at scrape time (materializations, look-ahead, corrupt
cache entries, lease events, Ray tasks in flight), so nothing is counted twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from service.core.core import Core

__all__ = ["Metrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
JOB_SERIES_MAX = 20  # jobs shown by vdata_job_events (the newest): five series each
JOB_QUIET_SECONDS = 3600.0  # a done job stays on the gauge this long after its last range changed


class _CoreCollector(Collector):
    """The core's counters, read when /metrics is scraped."""

    def __init__(self, core: Callable[[], Core | None], waiting: Callable[[], int]) -> None:
        self._core = core
        self._waiting = waiting

    def collect(self) -> Iterator[Metric]:
        waiting = GaugeMetricFamily("vdata_range_requests_waiting", "Range requests waiting for a materialization")
        waiting.add_metric([], self._waiting())
        yield waiting
        core = self._core()
        if core is None:
            return
        engine = core.engine
        counts = dict(engine.metrics.counts) if engine.metrics is not None else {}
        families = {
            "ranges": CounterMetricFamily("vdata_ranges_materialized", "Ranges materialized on Ray", labels=["format"]),
            "bytes": CounterMetricFamily("vdata_bytes_materialized", "Encoded bytes materialized on Ray", labels=["format"]),
            "lookahead": CounterMetricFamily("vdata_lookahead_ranges", "Ranges queued for materialization ahead "
                                             "of any request (stage, read-ahead, job look-ahead)"),
            "leases": CounterMetricFamily("vdata_lease_events", "Lease events (lease, heartbeat, finish, fail, fatal)", labels=["event"]),
        }
        for key, value in sorted(counts.items()):
            name, _, tag = key.partition(":")
            if name in families:
                families[name].add_metric([tag] if tag else [], value)
        if "lookahead" not in counts:
            families["lookahead"].add_metric([], 0)
        yield from families.values()
        corrupt = CounterMetricFamily("vdata_cache_corrupt", "Cache entries dropped: file missing or checksum mismatch")
        corrupt.add_metric([], core.cache.corrupt_count)
        yield corrupt
        size = GaugeMetricFamily("vdata_cache_bytes", "Bytes in the range cache")
        size.add_metric([], core.cache.total_bytes())
        yield size
        budget = GaugeMetricFamily("vdata_cache_budget_bytes", "Byte budget of the range cache")
        budget.add_metric([], core.cache.budget_bytes)
        yield budget
        tasks = GaugeMetricFamily("vdata_tasks_in_flight", "Materialization tasks running on Ray")
        tasks.add_metric([], engine.in_flight())
        yield tasks
        # label job_id, not job: Prometheus's own target label `job` would rename ours to exported_job
        jobs = GaugeMetricFamily("vdata_job_events", "Events in a job's ranges by state (jobs not done or "
                                 "changed in the last hour, newest first)", labels=["job_id", "state"])
        for job_id, states in sorted(core.jobs.events_by_state(time.time() - JOB_QUIET_SECONDS,
                                                               JOB_SERIES_MAX).items()):
            for state, events in states.items():
                jobs.add_metric([job_id, state], events)
        yield jobs


class Metrics:
    """The app's registry and the gateway's own instruments."""

    def __init__(self, core: Callable[[], Core | None], waiting: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("vdata_http_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("vdata_http_request_seconds", "HTTP request latency (to the last byte)",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.ranges_served = Counter("vdata_ranges_served", "Ranges served", ["format"], registry=self.registry)
        self.bytes_served = Counter("vdata_bytes_served", "Range bytes served", ["format"], registry=self.registry)
        self.cache_lookups = Counter("vdata_cache_lookups", "Range requests answered from a cache file (hit) or "
                                     "that needed a materialization (miss)", ["result"], registry=self.registry)
        for result in ("hit", "miss"):
            self.cache_lookups.labels(result)  # both series from the start (a ratio needs both)
        self.in_progress = Gauge("vdata_http_requests_in_progress", "HTTP requests being handled",
                                 registry=self.registry)
        self.registry.register(_CoreCollector(core, waiting))
