"""The files of job outputs (no database, no Ray): where they live, what an upload must read
as, committing a file (fsync, then rename), and the merge task's body (:func:`merge_part`,
which the engine runs as a Ray task).

Layout of the outputs folder (``<cache folder>/outputs``, shared by the gateways as the
cache folder is)::

    <job id>/<range index>-<sha256>.<ext>     a range's output, named by its content
    <job id>/merged/part-00000.<ext>          the merged files, in range order
    <job id>/.<anything>.tmp                  uploads and merges under way (or left by a crash)
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from service.errors import OutputError
from vdata.checksum import file_adler32
from vdata.formats import read_table, write_table

__all__ = ["EXTENSIONS", "commit_file", "inspect_output", "merge_part", "merged_name", "output_name", "read_output", "temp_path"]

EXTENSIONS = {"arrow": "arrow", "parquet": "parquet", "root": "root"}
MERGED = "merged"


def output_name(job_id: str, index: int, sha256: str, fmt: str) -> str:
    """A range output's path relative to the outputs folder: by job, range and content."""
    return f"{job_id}/{index:05d}-{sha256}.{EXTENSIONS[fmt]}"


def merged_name(part: int, fmt: str) -> str:
    return f"part-{part:05d}.{EXTENSIONS[fmt]}"


def temp_path(folder: Path, what: str) -> Path:
    """A new temporary file name in ``folder`` (made if missing), unique to this writer."""
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f".{what}.{os.getpid()}.{uuid.uuid4().hex}.tmp"


def commit_file(temp: Path, final: Path) -> None:
    """``temp`` (written and closed) made durable under ``final``: fsync, rename, fsync the folder."""
    with open(temp, "rb+") as f:
        os.fsync(f.fileno())
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(temp, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_output(path: str | os.PathLike[str], fmt: str) -> pa.Table:
    """An output file as a table. Arrow is accepted as an IPC file or an IPC stream (files on
    disk are written as IPC files, HTTP bodies are streams)."""
    if fmt == "arrow":
        with pa.memory_map(str(path)) as source:
            try:
                return pa.ipc.open_file(source).read_all()
            except pa.ArrowInvalid:
                source.seek(0)
                return pa.ipc.open_stream(source).read_all()
    if fmt == "parquet":
        with open(path, "rb") as f:  # a plain open: no file system layer guesses at the path
            return pq.read_table(f)
    return read_table(path, fmt)


def inspect_output(path: Path, fmt: str, what: str) -> int:
    """The number of events of an uploaded file, or :class:`OutputError` if it does not read as ``fmt``."""
    try:
        return read_output(path, fmt).num_rows
    except Exception as exc:  # noqa: BLE001 - pyarrow's and uproot's many errors: the bytes are not that format
        raise OutputError(f"{what} does not read as {fmt}: {type(exc).__name__}: {str(exc)[:300]}") from exc


def merge_part(root: str, inputs: Sequence[tuple[str, str]], fmt: str, temp: str) -> tuple[int, int, int]:
    """The merge task's body: the tables of ``inputs`` (paths relative to ``root``, formats)
    concatenated in order and written to ``temp`` as ``fmt``. Arrow and Parquet are written
    table by table (one record batch or row group per range output: memory holds one at a
    time); ROOT needs the whole table at once. Returns (size, adler32, events) of the file."""
    tables = (read_output(Path(root) / path, f) for path, f in inputs)
    events = 0
    if fmt == "root":
        whole = _concat([*tables], inputs)
        write_table(whole, temp, "root")
        events = whole.num_rows
    else:
        first = next(tables)
        writer = _writer(temp, first.schema, fmt)
        try:
            for i, table in enumerate(itertools.chain([first], tables)):
                if not table.schema.equals(first.schema):
                    raise OutputError(f"range output {inputs[i][0]} has schema {table.schema}, unlike the first "
                                      f"output of the part ({inputs[0][0]}): {first.schema}")
                writer.write_table(table)
                events += table.num_rows
        finally:
            writer.close()
    size, adler = file_adler32(temp)
    return size, adler, events


def _writer(temp: str, schema: pa.Schema, fmt: str) -> pa.ipc.RecordBatchFileWriter | pq.ParquetWriter:
    if fmt == "arrow":
        return pa.ipc.new_file(temp, schema)
    return pq.ParquetWriter(temp, schema, use_compliant_nested_type=False)


def _concat(tables: list[pa.Table], inputs: Sequence[tuple[str, str]]) -> pa.Table:
    try:
        return pa.concat_tables(tables)
    except pa.ArrowInvalid as exc:
        raise OutputError(f"the outputs {inputs[0][0]} .. {inputs[-1][0]} do not share one schema: {exc}") from exc
