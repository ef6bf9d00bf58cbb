"""``/v1/recipes``: submit a recipe, show its plan and ranges, pre-stage ranges, serve a
range's bytes and tell how it was made (reader)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response

from service.http.auth import Reader
from service.http.deps import CoreDep, InFlightDep, MetricsDep, SettingsDep
from service.http.limits import check_plan, check_recipe_body
from service.errors import LimitExceeded
from service.http.schemas import ColumnOut, RangeOut, RecipeIn, RecipeOut, StageIn, StageOut
from service.http.range_responses import serve_range
from service.core.cache import stored_format
from vdata.formats import COMPRESSIONS, FORMATS, MEDIA_TYPES
from vdata.data.plans import Plan

__all__ = ["router"]

router = APIRouter(prefix="/v1/recipes", tags=["recipes"])

RECIPE_EXAMPLE = {
    "source": {"dataset": "opendata:hzz"},
    "steps": [{"filter": "NMuon >= 2"}],
    "columns": ["NMuon", "Muon_Px"],
    "range_events": 1000,
}


def recipe_out(plan: Plan) -> RecipeOut:
    schema = [ColumnOut(name=f.name, type=str(f.type)) for f in plan.schema]
    return RecipeOut(id=plan.id, num_events=plan.num_events, num_ranges=len(plan.ranges), schema=schema,
                     recipe=plan.recipe.to_dict(), warnings=plan.warnings)


@router.post("", status_code=201, response_model=RecipeOut)
def submit_recipe(
    recipe: Annotated[RecipeIn, Body(examples=[RECIPE_EXAMPLE])], core: CoreDep, settings: SettingsDep, _: Reader,
) -> RecipeOut:
    """Check a recipe against the catalog and store it; its id names the virtual dataset."""
    body = recipe.as_recipe()
    check_recipe_body(body, settings)
    plan = core.submit(body, limits=lambda plan: check_plan(plan, settings))
    return recipe_out(plan)


@router.get("/{recipe_id}", response_model=RecipeOut)
def get_recipe(recipe_id: str, core: CoreDep, _: Reader) -> RecipeOut:
    return recipe_out(core.plan(recipe_id))


RANGES_PAGE = 1000  # ranges per page by default
RANGES_PAGE_MAX = 10_000


@router.get("/{recipe_id}/ranges", response_model=list[RangeOut])
def list_ranges(
    recipe_id: str, core: CoreDep, _: Reader, response: Response,
    offset: Annotated[int, Query(ge=0, le=2**62, description="Index of the first range listed.")] = 0,
    limit: Annotated[int, Query(ge=1, le=RANGES_PAGE_MAX, description="Most ranges listed.")] = RANGES_PAGE,
) -> list[RangeOut]:
    """The ranges of the recipe from ``offset`` on, at most ``limit``: index and events [first, stop).
    ``X-Total-Count`` gives the number of ranges; a page shorter than ``limit`` is the last."""
    ranges = core.plan(recipe_id).ranges
    response.headers["X-Total-Count"] = str(len(ranges))
    return [RangeOut(index=r.index, first=r.first, stop=r.stop) for r in ranges[offset:offset + limit]]


@router.post("/{recipe_id}/stage", status_code=202, response_model=StageOut)
def stage_ranges(recipe_id: str, body: StageIn, core: CoreDep, settings: SettingsDep, _: Reader) -> StageOut:
    """Pre-stage ranges: materialize them now, ahead of need, so that a payload starting later
    finds them cached. Returns at once (202); the ranges are ready when a GET serves them."""
    if body.count > settings.max_stage_ranges:
        raise LimitExceeded(f"stage count {body.count} is over the limit of {settings.max_stage_ranges} "
                            f"(setting max_stage_ranges): stage fewer ranges per request")
    check_plan(core.plan(recipe_id), settings)
    indices = core.stage(recipe_id, body.first, body.count, stored_format(body.format, body.compression))
    return StageOut(recipe_id=recipe_id, format=body.format, compression=body.compression, ranges=indices)


@router.get("/{recipe_id}/ranges/{index}/provenance", response_model=dict[str, Any])
def range_provenance(
    recipe_id: str, index: int, core: CoreDep, _: Reader,
    format: Annotated[str | None, Query(description=f"One of {', '.join(FORMATS)}; default: the one made last")] = None,
    compression: Annotated[str, Query(description=f"With format arrow: one of {', '.join(COMPRESSIONS)}")] = "none",
) -> dict[str, Any]:
    """How a cached range was made (vdata/provenance.py): recipe, transform code hashes, generator
    or input file and entry window, library versions, node, start time and duration. 404
    ``not_materialized`` if the range is not cached: fetch it first."""
    fmt = None if format is None else stored_format(format, compression)
    return core.provenance(recipe_id, index, fmt)


@router.get(
    "/{recipe_id}/ranges/{index}",
    response_class=Response,
    responses={200: {"content": {media: {} for media in MEDIA_TYPES.values()},
                     "description": "The range's bytes, with headers X-Vdata-Adler32 and X-Vdata-Events"}},
)
async def get_range(
    recipe_id: str, index: int, core: CoreDep, settings: SettingsDep, principal: Reader,
    inflight: InFlightDep, metrics: MetricsDep,
    format: Annotated[str, Query(description=f"One of {', '.join(FORMATS)}")] = "arrow",
    compression: Annotated[str, Query(description=f"Arrow's IPC buffer compression, one of {', '.join(COMPRESSIONS)} "
                                                  "(arrow only: parquet and root compress by themselves)")] = "none",
) -> Response:
    """A range's bytes as stored in the cache (materialized first if need be). Arrow comes as
    an IPC stream, its buffers compressed if ``compression`` says so (every Arrow reader
    decompresses them)."""
    return await serve_range(core, recipe_id, index, format, compression, settings=settings, principal=principal,
                             inflight=inflight, metrics=metrics)
