"""Job outputs (worker): a range's output uploaded by its lease holder, the job's merged files
and the range outputs listed and downloaded. What is stored and merged, and why, is
:mod:`service.core.outputs`.

The upload's body is never held in memory: the body-size middleware lets it through unread,
and this route writes it to a temporary file piece by piece (in the thread pool, a MiB at a
time) under ``max_output_bytes``, then has the core check and store the file.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from service.core._output_rows import MergedRow, OutputRow
from service.core.core import Core
from service.errors import BodyTooLarge, JobNotFound, OutputError
from service.http.auth import Worker
from service.http.deps import CoreDep, SettingsDep
from service.http.schemas import MergedFileOut, OutputOut, OutputsOut
from vdata.checksum import adler32_hex
from vdata.formats import FORMATS, MEDIA_TYPES

__all__ = ["router"]

router = APIRouter(prefix="/v1/jobs", tags=["outputs"])

ADLER_HEADER = "X-Vdata-Adler32"
WRITE_BYTES = 1 << 20  # received pieces are written to disk this many bytes at a time
_HEX8 = re.compile(r"[0-9a-fA-F]{8}")
_FORMAT_OF = {media: fmt for fmt, media in MEDIA_TYPES.items()}


def _format(given: str | None, content_type: str | None, job_id: str, index: int) -> str:
    """The declared format: ``?format=``, else the Content-Type's."""
    fmt = given or _FORMAT_OF.get((content_type or "").split(";")[0].strip().lower())
    if fmt not in FORMATS:
        raise OutputError(f"the output of range {index} of job {job_id!r}: declare its format ({', '.join(FORMATS)}) "
                          f"with ?format= or a Content-Type of {', '.join(MEDIA_TYPES.values())}; got "
                          f"{given or content_type!r}")
    return fmt


def _adler32(header: str | None, job_id: str, index: int) -> int:
    if header is None or not _HEX8.fullmatch(header.strip()):
        raise OutputError(f"the output of range {index} of job {job_id!r} needs an {ADLER_HEADER} header of 8 hex "
                          f"digits (its adler32), got {header!r}")
    return int(header.strip(), 16)


def _output_out(out: OutputRow, stored: bool) -> OutputOut:
    return OutputOut(job_id=out.job_id, index=out.index, format=out.format, events=out.events, size=out.size,
                     adler32=adler32_hex(out.adler32), worker=out.worker, stored=stored,
                     url=f"/v1/jobs/{out.job_id}/ranges/{out.index}/output")


def _merged_out(m: MergedRow) -> MergedFileOut:
    return MergedFileOut(name=m.name, part=m.part, first_range=m.first_range, last_range=m.last_range,
                         events=m.events, size=m.size, adler32=adler32_hex(m.adler32),
                         url=f"/v1/jobs/{m.job_id}/outputs/{m.name}")


@router.put("/{job_id}/ranges/{index}/output", response_model=OutputOut)
async def upload_output(
    job_id: str, index: int, request: Request, core: CoreDep, settings: SettingsDep, _: Worker,
    worker: Annotated[str, Query(min_length=1, max_length=200, description="The lease holder")],
    format: Annotated[str | None, Query(description="arrow, parquet or root (else from Content-Type)")] = None,
    adler32: Annotated[str | None, Header(alias=ADLER_HEADER)] = None,
) -> OutputOut:
    """Store the output of a range the worker holds (body: Arrow IPC, Parquet or ROOT, with its
    adler32 in X-Vdata-Adler32). The same bytes again are a no-op (``stored: false``), also once
    the range is finished; other bytes for a finished range are refused (409)."""
    fmt = _format(format, request.headers.get("content-type"), job_id, index)
    expected = _adler32(adler32, job_id, index)
    limit = settings.max_output_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the output of range {index} of job {job_id!r} is {declared} bytes, more than "
                           f"{limit} (setting max_output_bytes)")
    upload = await run_in_threadpool(core.begin_output, job_id, index, worker, fmt)
    try:
        pieces: list[bytes] = []
        held = 0
        async for piece in request.stream():
            if upload.size + held + len(piece) > limit:
                raise BodyTooLarge(f"the output of range {index} of job {job_id!r} is more than {limit} bytes "
                                   "(setting max_output_bytes)")
            pieces.append(piece)
            held += len(piece)
            if held >= WRITE_BYTES:
                await run_in_threadpool(upload.write, b"".join(pieces))
                pieces, held = [], 0
        if pieces:
            await run_in_threadpool(upload.write, b"".join(pieces))
    except BaseException:
        upload.discard()
        raise
    out, stored = await run_in_threadpool(core.commit_output, upload, job_id, index, worker, fmt, expected)
    return _output_out(out, stored)


@router.get("/{job_id}/outputs", response_model=OutputsOut)
def list_outputs(job_id: str, core: CoreDep, _: Worker) -> OutputsOut:
    """The job's merged files (once merged: each with events, size and adler32) and the range
    outputs still stored."""
    state, message, released = core.outputs.merge_state(job_id)
    _, fmt = core.jobs.options(job_id)
    return OutputsOut(job_id=job_id, state=state, format=fmt, message=message, released=released,
                      files=[_merged_out(m) for m in core.outputs.merged(job_id)],
                      ranges=[_output_out(o, True) for o in core.outputs.range_outputs(job_id)])


def _file(core: Core, path: str, adler32: int, fmt: str, what: str) -> Response:
    full = core.outputs.root / path
    if not full.is_file():
        raise JobNotFound("", f"{what} is gone from the outputs folder")
    return FileResponse(full, media_type=MEDIA_TYPES[fmt], headers={ADLER_HEADER: adler32_hex(adler32)})


@router.get("/{job_id}/outputs/{name}", response_class=FileResponse,
            responses={200: {"content": {m: {} for m in MEDIA_TYPES.values()}}})
def merged_file(job_id: str, name: str, core: CoreDep, _: Worker) -> Response:
    """One merged file of the job (X-Vdata-Adler32: its adler32)."""
    for m in core.outputs.merged(job_id):
        if m.name == name:
            return _file(core, f"{job_id}/merged/{m.name}", m.adler32, m.format, f"merged file {name} of job {job_id!r}")
    core.outputs.merge_state(job_id)  # JobNotFound, or a job without outputs
    raise JobNotFound(job_id, f"job {job_id!r} has no merged file {name!r}")


@router.get("/{job_id}/ranges/{index}/output", response_class=FileResponse,
            responses={200: {"content": {m: {} for m in MEDIA_TYPES.values()}}})
def range_output(job_id: str, index: int, core: CoreDep, _: Worker) -> Response:
    """A range's stored output (X-Vdata-Adler32: its adler32); 404 when it has none (any more)."""
    out = core.outputs.range_output(job_id, index)
    if out is None:
        raise JobNotFound(job_id, f"range {index} of job {job_id!r} has no stored output")
    return _file(core, out.path, out.adler32, out.format, f"the output of range {index} of job {job_id!r}")
