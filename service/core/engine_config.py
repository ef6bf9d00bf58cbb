"""How the engine runs Ray: :class:`EngineConfig`, without importing Ray (the settings nest it)."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.core.task_limits import Limits

__all__ = ["EngineConfig"]

MiB = 1024**2


class EngineConfig(BaseModel):
    """How to run Ray. ``address=None`` starts an embedded local Ray bound to loopback.

    The defaults and bounds are defined here only: the gateway's settings nest this model
    (``engine:`` in a settings file, ``VDATA_ENGINE__<FIELD>`` in the environment; the flat
    names, e.g. ``VDATA_NUM_CPUS``, work too: :mod:`service.settings`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    address: str | None = Field(default=None, description="Join this Ray cluster; None starts an embedded one.")
    num_cpus: int = Field(default=2, ge=1, description="CPUs of the embedded Ray.")
    object_store_bytes: int = Field(default=200 * MiB, ge=75 * MiB, description="Object store of the embedded Ray.")
    max_in_flight: int = Field(default=8, ge=1, description="Materialization tasks in flight on Ray.")
    lookahead: int = Field(default=4, ge=0, description="Ranges of a job materialized ahead of the leases.")
    max_retries: int = Field(default=3, ge=0, description="Retries of a task whose worker or node died.")
    include_dashboard: bool = Field(
        default=False, description="Start Ray's dashboard (on loopback). `vdata serve` and `make run` turn it on unless "
                                   "told otherwise (--no-dashboard); off here so that tests and scripts starting many "
                                   "engines do not contend for one port.")
    dashboard_port: int = Field(default=8265, ge=1, le=65535, description="Port of Ray's dashboard.")
    temp_dir: str | None = Field(
        default=None, description="Embedded Ray's folder (logs, sockets); default <data_dir>/ray, or a private "
                                  "temporary folder (removed at shutdown) when that path is too long for Unix sockets.")
    data_dir: str | None = Field(default=None, description="Embedded Ray's folder and token go here (the gateway sets its "
                                                           "data folder); None: a private temporary folder.")
    warm_workers: bool = Field(
        default=True, description="At start, ready one Ray worker per CPU (at most max_in_flight) with Numba, uproot and "
                                  "awkward imported, so that the first range does not wait for a worker's start.")
    stage_on_submit: int = Field(
        default=1, ge=0, description="Ranges at the start of a recipe that reads a remote file (http(s)://, root://) "
                                     "made as Arrow when the recipe is submitted, before anyone asks: the first batch "
                                     "of a stream then does not wait for the round trips to the site (0: off).")
    worker_writes: bool = Field(default=True, description="Tasks on the driver's node write the cache file; False: bytes always.")
    task_seconds: float | None = Field(
        default=300.0, gt=0, description="Wall seconds one materialization task may run on a Ray worker before it is "
                                         "stopped (422; None: no limit).")
    dry_run_seconds: float | None = Field(
        default=60.0, gt=0, description="Wall seconds a recipe check's dry run (on a Ray worker, compiling included) "
                                        "may run (422 above; None: no limit).")
    task_memory_bytes: int | None = Field(default=2 * 1024**3, gt=0,
                                          description="Memory one task may add to its Ray worker (422 above; None: no limit).")
    max_plans: int = Field(default=256, ge=1, description="Plans kept in memory (least recently used dropped).")
    node_failure_seconds: float = Field(
        default=3.0, gt=0, description="How long a silent Ray node may go unnoticed before Ray declares it dead and "
                                       "retries its tasks elsewhere: the embedded head's health checks (every third of "
                                       "it, 3 misses); pass ray_system_config to `ray start --head --system-config` for "
                                       "an outside cluster.")
    ray_retry_seconds: float = Field(
        default=2.0, gt=0, description="After Ray's head (GCS) went away: the gateway answers 503 and tries to "
                                       "reconnect at most this often (on the next request that needs Ray).")

    @field_validator("temp_dir", "data_dir", mode="before")
    @classmethod
    def _path_text(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @property
    def task_limits(self) -> Limits:
        return Limits(self.task_seconds, self.task_memory_bytes)

    @property
    def dry_run_limits(self) -> Limits:
        return Limits(self.dry_run_seconds, self.task_memory_bytes)

    @property
    def ray_system_config(self) -> dict[str, int]:
        """Ray's health-check settings that make a dead node known within ``node_failure_seconds``:
        the GCS probes each raylet every third of it and declares the node dead after three
        misses (each probe waits at most one period). Ray reads them on the head only."""
        period_ms = max(100, int(self.node_failure_seconds * 1000 / 3))
        return {"health_check_initial_delay_ms": period_ms, "health_check_period_ms": period_ms,
                "health_check_timeout_ms": period_ms, "health_check_failure_threshold": 3}
