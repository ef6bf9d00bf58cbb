"""Job outputs on the client side: upload a range's output (a table or a file, with its
adler32), download a job's merged files or range outputs (checked, written atomically)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from vdata.checksum import adler32, adler32_hex, file_adler32
from vdata.client._http import ServiceError, Transport, checked_body
from vdata.client._pipeline import write_file
from vdata.formats import arrow_file_bytes, check_format, encode_table

__all__ = ["fetch_outputs", "upload_output"]

ADLER_HEADER = "X-Vdata-Adler32"
PIECE = 1 << 20  # bytes per piece of a file streamed to the service
_BY_SUFFIX = {".arrow": "arrow", ".feather": "arrow", ".parquet": "parquet", ".root": "root"}


def output_format(path: Path, given: str | None) -> str:
    """``given``, else the format a file's extension says (ValueError naming it otherwise)."""
    if given is not None:
        return check_format(given)
    fmt = _BY_SUFFIX.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: cannot tell its format from the extension {path.suffix!r}; "
                         f"pass format= (arrow, parquet or root)")
    return fmt


def _pieces(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while piece := f.read(PIECE):
            yield piece


def upload_output(http: Transport, job_id: str, index: int, output: pa.Table | str | os.PathLike[str], *,
                  worker: str, format: str | None = None) -> dict[str, Any]:
    """See :meth:`vdata.Client.upload_output`."""
    if isinstance(output, pa.Table):
        fmt = check_format(format or "parquet")
        data = encode_table(output, fmt)
        adler = adler32_hex(adler32(data))
        content: Any = lambda: data  # noqa: E731 - the same bytes for each attempt
    else:
        path = Path(output)
        fmt = output_format(path, format)
        adler = adler32_hex(file_adler32(path)[1])
        content = lambda: _pieces(path)  # noqa: E731 - read anew for each attempt
    response = http.request("PUT", f"/v1/jobs/{job_id}/ranges/{index}/output", params={"worker": worker, "format": fmt},
                            content=content, headers={ADLER_HEADER: adler})
    return dict(response.json())


def fetch_outputs(http: Transport, job_id: str, out_dir: str | os.PathLike[str], *, ranges: bool = False) -> list[Path]:
    """See :meth:`vdata.Client.fetch_outputs`."""
    listing = http.json("GET", f"/v1/jobs/{job_id}/outputs")
    if not ranges and listing["state"] != "merged":
        raise ServiceError(409, "not_merged", f"job {job_id} is {listing['state']}, not merged "
                           f"({listing.get('message') or 'its merge comes when every range is done'})",
                           "GET", f"/v1/jobs/{job_id}/outputs")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if ranges:
        wanted = [(f"range-{r['index']:05d}.{r['format']}", r["url"]) for r in listing["ranges"]]
    else:
        wanted = [(f["name"], f["url"]) for f in listing["files"]]
    paths = []
    for name, url in wanted:
        body = http.request("GET", url, check=lambda response, name=name: checked_body(response, name))
        # an Arrow output may have been uploaded as a stream: written as an IPC file, which every
        # reader opens (as Client.fetch does); files get the user's umask, like every fetched file
        write_file(out / name, arrow_file_bytes(body) if name.endswith(".arrow") else body)
        paths.append(out / name)
    return paths
