"""Request and response bodies of the HTTP API (pydantic lives here and in the settings only).

Request bodies refuse unknown fields (422), so a typo is not silently ignored. A recipe body
(:class:`RecipeIn`) is checked here for its shape only, and accepts every recipe that
:mod:`vdata.data.recipes` accepts; what only the recipe parser and the catalog can judge (an
expression, a column, a dataset, a transform) it names there (400).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from transforms.generators import GENERATORS
from vdata.data.catalog import DATASET_NAME, check_dataset_name
from vdata.data.recipes import DEFAULT_RANGE_EVENTS, RECIPE_FORMAT

__all__ = [
    "ColumnOut",
    "DatasetSourceIn",
    "DefineStepIn",
    "ErrorOut",
    "FilterStepIn",
    "GeneratorSourceIn",
    "RecipeIn",
    "TransformRefIn",
    "TransformStepIn",
    "DatasetIn",
    "DatasetOut",
    "FileOut",
    "HeartbeatOut",
    "JobCreated",
    "JobIn",
    "JobStatusOut",
    "MergedFileOut",
    "OutputOut",
    "OutputsOut",
    "LeaseIn",
    "LeaseOut",
    "RangeOut",
    "RecipeOut",
    "ReportIn",
    "ReportOut",
    "TokenIn",
    "TokenOut",
    "StageIn",
    "StageOut",
    "TransformIn",
    "TransformOut",
]


class ErrorOut(BaseModel):
    """Every error response (4xx, and 5xx should one happen): a short code and a message that
    names the culprit (field, dataset, range, limit)."""

    error: str = Field(examples=["bad_recipe"])
    detail: str = Field(examples=["invalid recipe (1 problem): columns: no column 'nope' after the steps"])


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetIn(_In):
    """A dataset to register. The name follows ``vdata.data.catalog.DATASET_NAME`` (no '..' either);
    paths are absolute, distinct, and at most ``max_dataset_paths`` (checked by the route)."""

    name: str = Field(min_length=1, max_length=128, pattern=DATASET_NAME, examples=["opendata:hzz"])
    paths: list[str] = Field(min_length=1, max_length=10_000, examples=[["/data/uproot-HZZ.root"]])
    tree: str = Field(min_length=1, max_length=1000, examples=["events"])

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return check_dataset_name(name)  # what the pattern cannot say: no '..'


class FileOut(BaseModel):
    path: str
    entries: int
    size: int | None
    adler32: str | None = Field(description="8 hex digits; null for remote files")


class DatasetOut(BaseModel):
    name: str
    tree: str
    num_events: int
    columns: list[str]
    files: list[FileOut]


class TransformIn(_In):
    name: str = Field(min_length=1, max_length=200, examples=["scale"])
    source: str = Field(min_length=1, examples=["def scale(x):\n    return 2.0 * x\n"])
    inputs: dict[str, str] = Field(examples=[{"x": "flat"}])
    outputs: dict[str, str] = Field(examples=[{"y": "float64"}])
    kind: str = Field(default="event", examples=["event", "element", "event_list"])
    max_size: str | int | None = None


class TransformOut(BaseModel):
    id: str = Field(description="The transform's code hash")
    name: str
    kind: str
    inputs: dict[str, str]
    outputs: dict[str, str]


class ColumnOut(BaseModel):
    name: str
    type: str


class DatasetSourceIn(_In):
    """Events of a registered dataset."""

    dataset: str = Field(min_length=1, examples=["opendata:hzz"])
    fingerprint: str | None = Field(default=None, description="Ignored on submission: the service binds the "
                                                              "dataset's current fingerprint")  # fmt: skip


GeneratorName = Literal[tuple(sorted(GENERATORS))]  # type: ignore[valid-type]


class GeneratorSourceIn(_In):
    """Generated events: event i depends only on (seed, i)."""

    generator: GeneratorName = Field(examples=["zmumu"])
    events: int = Field(ge=1, lt=2**63, examples=[100_000])
    seed: int = Field(ge=0, lt=2**63, examples=[7])
    params: dict[str, float | int | bool] | None = Field(
        default=None, description="The generator's parameters; missing ones get their defaults", examples=[{}])
    version: str | None = Field(default=None, description="Ignored on submission: the service binds its version")


class FilterStepIn(_In):
    filter: str = Field(description="An expression giving one boolean per event", examples=["NMuon >= 2"])


class DefineStepIn(_In):
    define: dict[str, str] = Field(min_length=1, description="New column name -> expression",
                                   examples=[{"px2": "MET_px ** 2"}])


class TransformRefIn(_In):
    name: str = Field(examples=["scale"])
    inputs: dict[str, str] = Field(default_factory=dict, description="Kernel parameter -> column")
    outputs: dict[str, str] = Field(default_factory=dict, description="Kernel output -> new column")
    code: str | None = Field(default=None, description="The transform's code hash, if pinned")


class TransformStepIn(_In):
    transform: TransformRefIn


class RecipeIn(_In):
    """A recipe: a source, steps (``filter``, ``define``, ``transform``) and output columns."""

    source: DatasetSourceIn | GeneratorSourceIn
    steps: list[FilterStepIn | DefineStepIn | TransformStepIn] = Field(default_factory=list)
    columns: list[str] | None = Field(default=None, description="Output columns; default: every column")
    range_events: int = Field(default=DEFAULT_RANGE_EVENTS, ge=1, description="Events per range")
    format: Literal[1] = Field(default=RECIPE_FORMAT, description="The recipe format")

    def as_recipe(self) -> dict[str, Any]:
        """The body as :meth:`vdata.data.recipes.Recipe.from_dict` reads it (what was not sent stays out)."""
        return self.model_dump(exclude_unset=True)


class RecipeOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: str
    num_events: int
    num_ranges: int
    schema_: list[ColumnOut] = Field(alias="schema")
    recipe: dict[str, Any] = Field(description="The canonical form the id is the hash of")
    warnings: list[str] = Field(
        default_factory=list,
        description="What does not stop the recipe but may surprise: derived column names that coffea's "
                    "NanoAODSchema would misread (e.g. 'm_mumu' as a collection 'm')")


class RangeOut(BaseModel):
    index: int
    first: int
    stop: int


class StageIn(_In):
    first: int = Field(default=0, ge=0, description="The first range to stage")
    count: int = Field(default=4, ge=1, description="How many ranges, from first (clipped at the last range)")
    format: str = Field(default="arrow", description="The format the payload will ask for")
    compression: str = Field(default="none",
                             description="The compression it will ask for (none, lz4, zstd; arrow only)")


class StageOut(BaseModel):
    recipe_id: str
    format: str
    compression: str
    ranges: list[int] = Field(description="The ranges staged: being materialized, or already cached")


class JobIn(_In):
    recipe_id: str = Field(min_length=1, max_length=200)
    max_attempts: int = Field(default=3, ge=1, le=1000)
    lease_seconds: float = Field(default=60.0, gt=0, le=7 * 86400, allow_inf_nan=False)
    outputs: Literal["required", "optional", "none"] = Field(
        default="none", description="Whether finishing a range needs its uploaded output (PUT "
                                    ".../ranges/{index}/output), may have one, or the job takes none")
    output_format: Literal["arrow", "parquet", "root"] = Field(
        default="parquet", description="Format of the merged files the outputs become when the job is done")


class JobCreated(BaseModel):
    id: str


class JobStatusOut(BaseModel):
    id: str
    recipe_id: str
    counts: dict[str, int]
    ranges_total: int
    events_total: int
    events_finished: int
    done: bool
    max_attempts: int
    lease_seconds: float
    events_failed: int = Field(description="Events of ranges failed or fatal")
    started: float | None = Field(description="The first lease, seconds since the epoch (null before it)")
    elapsed_seconds: float = Field(description="Since the first lease (to the last change once done)")
    events_per_second: float = Field(description="Events finished per second over elapsed_seconds")
    eta_seconds: float | None = Field(description="Events still ready or running at that rate (null when done "
                                                  "or while none has finished)")
    failures_per_worker: dict[str, int] = Field(description="Each worker that leased a range: attempts it spent "
                                                            "(failures reported, fatal ones, expired leases)")
    outputs: str = Field(description="The job's outputs option: required, optional or none")
    output_format: str = Field(description="Format of the merged output files")
    state: str = Field(description="running, then done (no outputs), or merging, merged or merge_failed")


class OutputOut(BaseModel):
    """A range's stored output (the answer to its upload)."""

    job_id: str
    index: int
    format: str
    events: int
    size: int
    adler32: str = Field(description="8 hex digits, as X-Vdata-Adler32")
    worker: str = Field(description="The worker that uploaded it")
    stored: bool = Field(description="False when these bytes were already the range's output (a repeat)")
    url: str = Field(description="Where to download it, relative to the service's root")


class MergedFileOut(BaseModel):
    name: str
    part: int
    first_range: int
    last_range: int
    events: int
    size: int
    adler32: str = Field(description="8 hex digits, as X-Vdata-Adler32")
    url: str = Field(description="Where to download it, relative to the service's root")


class OutputsOut(BaseModel):
    """A job's outputs: the merged files once it is merged, and the range outputs still kept."""

    job_id: str
    state: str = Field(description="open (the job runs), merging, merged or merge_failed")
    format: str = Field(description="Format of the merged files")
    message: str | None = Field(description="Why the merge failed (null otherwise)")
    released: bool = Field(description="True once the range outputs were deleted (outputs_retention_seconds)")
    files: list[MergedFileOut] = Field(description="The merged files, in range order")
    ranges: list[OutputOut] = Field(description="The range outputs still stored, by range")


class LeaseIn(_In):
    worker: str = Field(min_length=1, max_length=200)
    n: int = Field(default=1, ge=1, le=10_000)


class LeaseOut(BaseModel):
    index: int
    first: int
    stop: int
    lease_deadline: float = Field(description="Seconds since the epoch")
    url: str = Field(description="Path of the range's bytes on this service, relative to its root")


class ReportIn(_In):
    worker: str = Field(min_length=1, max_length=200)
    message: str = Field(default="", max_length=100_000)
    fatal: bool = False


class HeartbeatOut(BaseModel):
    index: int
    lease_deadline: float


class ReportOut(BaseModel):
    index: int
    ok: bool = True


class TokenIn(_In):
    role: Literal["reader", "worker", "scientist", "admin"]
    note: str = Field(default="", max_length=200)


class TokenOut(BaseModel):
    token: str = Field(description="The secret; shown once, stored only as a hash")
    role: str
