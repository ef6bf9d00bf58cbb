"""``/v1/jobs``: hand a recipe's ranges to workers (worker): create a job, lease ranges,
heartbeat, finish or fail them, and see how the job stands."""

from __future__ import annotations

from fastapi import APIRouter

from service.auth import Worker
from service.deps import CoreDep, SettingsDep
from service.limits import check_plan
from service.schemas import (
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
    return JobCreated(id=core.create_job(body.recipe_id, body.max_attempts, body.lease_seconds))


@router.get("/{job_id}", response_model=JobStatusOut)
async def job_status(job_id: str, core: CoreDep, _: Worker) -> JobStatusOut:
    """Ranges per state, events finished, and whether the job is done."""
    s = await core.in_job_thread(core.status, job_id)
    return JobStatusOut(id=s.job_id, recipe_id=s.recipe_id, counts=s.counts, ranges_total=s.ranges_total,
                        events_total=s.events_total, events_finished=s.events_finished, done=s.done,
                        max_attempts=s.max_attempts, lease_seconds=s.lease_seconds)


@router.post("/{job_id}/lease", response_model=list[LeaseOut])
async def lease(job_id: str, body: LeaseIn, core: CoreDep, _: Worker) -> list[LeaseOut]:
    """Up to ``n`` ready ranges leased to ``worker`` (an empty list when none is ready)."""
    leases = await core.in_job_thread(core.lease, job_id, body.worker, body.n)
    recipe_id = core.jobs.recipe_id(job_id) if leases else ""
    return [LeaseOut(index=x.index, first=x.first, stop=x.stop, lease_deadline=x.deadline,
                     url=f"/v1/recipes/{recipe_id}/ranges/{x.index}?format=arrow") for x in leases]


@router.post("/{job_id}/ranges/{index}/heartbeat", response_model=HeartbeatOut)
async def heartbeat(job_id: str, index: int, body: ReportIn, core: CoreDep, _: Worker) -> HeartbeatOut:
    """Extend the worker's lease on a range."""
    deadline = await core.in_job_thread(core.heartbeat, job_id, index, body.worker)
    return HeartbeatOut(index=index, lease_deadline=deadline)


@router.post("/{job_id}/ranges/{index}/finish", response_model=ReportOut)
async def finish(job_id: str, index: int, body: ReportIn, core: CoreDep, _: Worker) -> ReportOut:
    """The worker is done with the range (again by the same worker: no-op)."""
    await core.in_job_thread(core.finish, job_id, index, body.worker)
    return ReportOut(index=index)


@router.post("/{job_id}/ranges/{index}/fail", response_model=ReportOut)
async def fail(job_id: str, index: int, body: ReportIn, core: CoreDep, _: Worker) -> ReportOut:
    """The worker failed on the range: it is retried later, or never if ``fatal``."""
    await core.in_job_thread(core.fail, job_id, index, body.worker, body.message, body.fatal)
    return ReportOut(index=index)
