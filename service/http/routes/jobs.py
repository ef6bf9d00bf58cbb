"""``/v1/jobs``: hand a recipe's ranges to workers (worker): create a job, lease ranges,
heartbeat, finish or fail them, and see how the job stands.

The lease, heartbeat, finish and fail routes are what a worker fleet calls thousands of times
a second. They answer with JSON built here (:func:`_json`) in the shape of their
``response_model``, which stays for the OpenAPI schema: FastAPI passes a ``Response`` through
as it is, which spares validating and serialising the answer through pydantic each time.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Response

from service.http.auth import Reader, Worker
from service.http.deps import CoreDep, SettingsDep
from service.http.limits import check_plan
from service.http.schemas import (
    HeartbeatOut,
    JobCreated,
    JobIn,
    JobStatusOut,
    LeaseIn,
    LeaseOut,
    ReportIn,
    ReportOut,
)

__all__ = ["router"]

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post("", status_code=201, response_model=JobCreated)
def create_job(body: JobIn, core: CoreDep, settings: SettingsDep, _: Worker) -> JobCreated:
    """A job over every range of a submitted recipe, each range ready to lease."""
    check_plan(core.plan(body.recipe_id), settings)
    return JobCreated(id=core.create_job(body.recipe_id, body.max_attempts, body.lease_seconds, body.outputs,
                                         body.output_format))


@router.get("/{job_id}", response_model=JobStatusOut)
async def job_status(job_id: str, core: CoreDep, _: Worker) -> JobStatusOut:
    """Ranges per state, events finished, whether the job is done, its rate and ETA, and the
    failures of each worker."""
    s = await core.in_job_thread(core.status, job_id)
    return JobStatusOut(id=s.job_id, recipe_id=s.recipe_id, counts=s.counts, ranges_total=s.ranges_total,
                        events_total=s.events_total, events_finished=s.events_finished, done=s.done,
                        max_attempts=s.max_attempts, lease_seconds=s.lease_seconds, events_failed=s.events_failed,
                        started=s.started, elapsed_seconds=s.elapsed_seconds, events_per_second=s.events_per_second,
                        eta_seconds=s.eta_seconds, failures_per_worker=s.failures_per_worker, outputs=s.outputs,
                        output_format=s.output_format, state=s.state)


@router.get("/{job_id}/ranges/{index}/provenance", response_model=dict[str, Any])
def job_range_provenance(job_id: str, index: int, core: CoreDep, _: Reader) -> dict[str, Any]:
    """A job's range: its state, worker and attempts, ``input`` (the recipe range's provenance, as
    ``GET /v1/recipes/{id}/ranges/{index}/provenance``; null if it is not cached) and ``output``
    (who uploaded the range's output, its checksums and ``input_provenance_id``; null if none)."""
    return core.job_provenance(job_id, index)


def _json(content: Any) -> Response:
    """A JSON answer, compact as FastAPI writes it."""
    return Response(json.dumps(content, separators=(",", ":")).encode(), media_type="application/json")


@router.post("/{job_id}/lease", response_model=list[LeaseOut])
async def lease(job_id: str, body: LeaseIn, core: CoreDep, _: Worker) -> Response:
    """Up to ``n`` ready ranges leased to ``worker`` (an empty list when none is ready)."""
    leases = await core.in_job_thread(core.lease, job_id, body.worker, body.n)
    recipe_id = core.jobs.recipe_id(job_id) if leases else ""  # from memory: a job's recipe never changes
    return _json([{"index": x.index, "first": x.first, "stop": x.stop, "lease_deadline": x.deadline,
                   "url": f"/v1/recipes/{recipe_id}/ranges/{x.index}?format=arrow"} for x in leases])


@router.post("/{job_id}/ranges/{index}/heartbeat", response_model=HeartbeatOut)
async def heartbeat(job_id: str, index: int, body: ReportIn, core: CoreDep, _: Worker) -> Response:
    """Extend the worker's lease on a range."""
    deadline = await core.in_job_thread(core.heartbeat, job_id, index, body.worker)
    return _json({"index": index, "lease_deadline": deadline})


@router.post("/{job_id}/ranges/{index}/finish", response_model=ReportOut)
async def finish(job_id: str, index: int, body: ReportIn, core: CoreDep, _: Worker) -> Response:
    """The worker is done with the range (again by the same worker: no-op)."""
    await core.in_job_thread(core.finish, job_id, index, body.worker)
    return _json({"index": index, "ok": True})


@router.post("/{job_id}/ranges/{index}/fail", response_model=ReportOut)
async def fail(job_id: str, index: int, body: ReportIn, core: CoreDep, _: Worker) -> Response:
    """The worker failed on the range: it is retried later, or never if ``fatal``."""
    await core.in_job_thread(core.fail, job_id, index, body.worker, body.message, body.fatal)
    return _json({"index": index, "ok": True})
