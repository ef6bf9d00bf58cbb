"""The pure half of :mod:`service.core.outputs`: the output modes, the rows, and the decisions
over them (STYLE 8): whether an upload is stored, kept or refused (:func:`upload_verdict`), and
how a job's outputs are cut into merged files (:func:`plan_parts`). Nothing here touches the
database, the disk or the clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from service.core._job_rows import FINISHED, RUNNING, RangeRow
from service.errors import JobError, LeaseError, OutputConflict

# the job option ``outputs``: finish needs an output / may have one / uploads are refused
REQUIRED, OPTIONAL, NONE = "required", "optional", "none"
OUTPUT_MODES = (REQUIRED, OPTIONAL, NONE)
# where a job's merge stands (table job_merges): open until the job is done, then merging, then merged
OPEN, MERGING, MERGED, MERGE_FAILED = "open", "merging", "merged", "merge_failed"
# what GET /v1/jobs/{id} says of the job as a whole
JOB_RUNNING, JOB_DONE = "running", "done"  # (and MERGING, MERGED, MERGE_FAILED while it has outputs)
STORE, SAME = "store", "same"


@dataclass(frozen=True, slots=True)
class OutputRow:
    """The stored output of one range of a job: a file of the outputs folder (``path``, relative
    to it), named by its content. ``provenance_id``: the input range's provenance id when it was
    uploaded (:meth:`service.core.core.Core.commit_output`; None if the range was not cached)."""

    job_id: str
    index: int
    path: str
    format: str
    size: int
    adler32: int
    sha256: str
    events: int
    worker: str
    created: float
    provenance_id: str | None = None


@dataclass(frozen=True, slots=True)
class MergedRow:
    """One merged file of a job: ranges ``first_range .. last_range`` (their outputs, in range
    order) written as one file ``name`` of the job's merged folder."""

    job_id: str
    part: int
    name: str
    format: str
    first_range: int
    last_range: int
    events: int
    size: int
    adler32: int
    created: float


@dataclass(frozen=True, slots=True)
class Part:
    """A merged file to make: the outputs of ``ranges`` (in order) from ``inputs`` (path relative
    to the outputs folder, format), ``size`` bytes of them."""

    index: int
    ranges: tuple[int, ...]
    inputs: tuple[tuple[str, str], ...]
    size: int


def check_mode(outputs: object) -> str:
    if outputs not in OUTPUT_MODES:
        raise JobError(f"outputs must be one of {', '.join(OUTPUT_MODES)}, got {outputs!r}")
    return str(outputs)


def upload_verdict(row: RangeRow, worker: str, stored: OutputRow | None, sha256: str) -> str:
    """Whether ``worker``'s upload (of content ``sha256``) for the range is stored (:data:`STORE`)
    or is the one already stored (:data:`SAME`: a repeated upload is idempotent).

    The lease holder may upload while the range runs; a later upload replaces an earlier one
    (also one of a previous holder whose lease expired: the output belongs to the attempt that
    finishes the range). Once the range is finished its output is fixed: the same bytes again
    are :data:`SAME`, other bytes :class:`OutputConflict`.
    """
    if stored is not None and stored.sha256 == sha256 and (row.state == FINISHED or row.worker == worker):
        return SAME
    if row.state == FINISHED:
        had = f"output {stored.sha256[:12]}" if stored is not None else "no output"
        raise OutputConflict(f"range {row.index} of job {row.job_id!r} is finished with {had}; "
                             f"other bytes ({sha256[:12]}) cannot replace it")
    if row.state != RUNNING:
        raise LeaseError(row, worker, "upload an output for", f"it is {row.state}, not leased")
    if row.worker != worker:
        raise LeaseError(row, worker, "upload an output for", f"it is leased to worker {row.worker!r}")
    return STORE


def plan_parts(outputs: Sequence[OutputRow], target_bytes: int) -> list[Part]:
    """The merged files of a job: its outputs in range order, cut into parts of at most
    ``target_bytes`` of input (a part has at least one range, so one larger output is a part of
    its own). Deterministic: a merge resumed after a restart plans the same parts."""
    parts: list[Part] = []
    ranges: list[int] = []
    inputs: list[tuple[str, str]] = []
    size = 0
    for out in sorted(outputs, key=lambda o: o.index):
        if ranges and size + out.size > target_bytes:
            parts.append(Part(len(parts), tuple(ranges), tuple(inputs), size))
            ranges, inputs, size = [], [], 0
        ranges.append(out.index)
        inputs.append((out.path, out.format))
        size += out.size
    if ranges:
        parts.append(Part(len(parts), tuple(ranges), tuple(inputs), size))
    return parts


def job_state(done: bool, outputs: str, merge: str | None) -> str:
    """The job's state for people: running, then done (no outputs) or merging/merged/merge_failed."""
    if not done:
        return JOB_RUNNING
    if outputs == NONE or merge is None:
        return JOB_DONE
    return MERGING if merge == OPEN else merge
