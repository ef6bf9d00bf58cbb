"""Output formats: a ``pyarrow.Table`` as Arrow IPC, Parquet, or a ROOT TTree.

Each format reads back (:func:`read_table`) equal to what was written, types included.

Arrow has two IPC forms. A range travels over HTTP as an IPC *stream*
(``application/vnd.apache.arrow.stream``, :func:`encode_table`, :func:`write_encoded`): it
needs no seeking, and the cache stores it as served. A file a user gets (:func:`write_table`,
the client's ``get`` and ``fetch``) is the IPC *file* format, Feather v2, with the footer that
``pyarrow.ipc.open_file``, ``pyarrow.feather``, polars ``read_ipc``/``scan_ipc`` and DuckDB
need; :func:`arrow_file_bytes` turns a stream body into one. :func:`read_table` reads both.

Arrow's buffers may be compressed (``compression="lz4"`` or ``"zstd"``, Arrow's own IPC
compression; every pyarrow reader decompresses it). It applies to Arrow only: Parquet already
compresses each column (snappy) and ROOT each basket (zlib), so anything but ``"none"`` with
them is a :class:`FormatError`.

Which format a path holds follows its extension (:func:`format_for_path`): ``.arrow``,
``.feather``, ``.ipc`` are Arrow, ``.parquet`` and ``.pq`` Parquet, ``.root`` ROOT. A format
given with a path of another format's extension is an error, not a silent mismatch.

ROOT output keeps NanoAOD naming: jagged columns ``Muon_pt``, ``Muon_eta`` with equal list
lengths share one counter branch ``nMuon`` (or the ``NMuon``-style counter the table already
had). uproot writes counters as ``int32``, so the table's Arrow schema is stored next to the
tree (a ``TObjString`` named :data:`SCHEMA_KEY`) and :func:`read_table` restores the types.

A range the service makes carries its provenance id (:mod:`vdata.provenance`): in a Parquet
file's key-value metadata and, in a ROOT file, as a ``TObjString``, both named
:data:`PROVENANCE_KEY` (``provenance=`` of :func:`encode_table` and :func:`write_encoded`).
Arrow does not carry it: in the schema's metadata it would make the schemas of ranges differ.
"""

from __future__ import annotations

import base64
import datetime
import os
import tempfile
import threading
import types
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vdata.errors import FormatError

__all__ = [
    "COMPRESSIONS",
    "EXTENSIONS",
    "FORMATS",
    "MEDIA_TYPES",
    "PROVENANCE_KEY",
    "arrow_file_bytes",
    "check_compression",
    "check_format",
    "encode_table",
    "format_for_path",
    "read_arrow",
    "read_table",
    "write_encoded",
    "write_table",
]

FORMATS = ("arrow", "parquet", "root")
COMPRESSIONS = ("none", "lz4", "zstd")
MEDIA_TYPES = {
    "arrow": "application/vnd.apache.arrow.stream",
    "parquet": "application/vnd.apache.parquet",
    "root": "application/x-root",
}
EXTENSIONS = {  # file name extension (lower case) -> format
    ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow",
    ".parquet": "parquet", ".pq": "parquet",
    ".root": "root",
}
ARROW_FILE_MAGIC = b"ARROW1"
ROOT_TREE = "Events"
SCHEMA_KEY = "vdata_arrow_schema"
PROVENANCE_KEY = "vdata_provenance"


def check_format(fmt: str) -> str:
    """``fmt`` if it is one of :data:`FORMATS`, else :class:`FormatError` listing them (the one check)."""
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def check_compression(compression: str, format: str = "arrow") -> str:
    """``compression`` if it is one of :data:`COMPRESSIONS` and ``format`` takes it, else
    :class:`FormatError` (the one check)."""
    if compression not in COMPRESSIONS:
        raise FormatError(f"unknown compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}")
    if compression != "none" and format != "arrow":
        raise FormatError(f"compression {compression!r} applies to arrow only; {format} compresses by itself "
                          f"(leave compression at 'none')")
    return compression


def format_for_path(path: str | os.PathLike[str], format: str | None = None) -> str:
    """The format of ``path``: ``format`` if given (checked against the extension), else the
    one its extension names (see :data:`EXTENSIONS`). :class:`FormatError` on a mismatch, or
    on an extension that names no format when none is given."""
    suffix = Path(path).suffix.lower()
    implied = EXTENSIONS.get(suffix)
    if format is None:
        if implied is None:
            known = ", ".join(EXTENSIONS)
            raise FormatError(f"{os.fspath(path)}: cannot tell the format from the extension {suffix or '(none)'!r} "
                              f"(known: {known}); give the format (--format / format=)")
        return implied
    check_format(format)
    if implied is not None and implied != format:
        raise FormatError(f"{os.fspath(path)}: the extension {suffix!r} says {implied}, but the format asked "
                          f"for is {format}; rename the file or change the format")
    return format


BATCH_BYTES = 1 << 20
MIN_BATCH_ROWS = 1024


def batch_rows(table: pa.Table) -> int:
    """Rows per record batch of an Arrow stream the service sends: about :data:`BATCH_BYTES` of
    data, at least :data:`MIN_BATCH_ROWS` rows. A client can hand a range's first batch to its
    payload when that batch has arrived (``Client.stream``), instead of after the whole range:
    on a 200 Mbit/s link 1 MiB is 0.04 s, a 50,000-event NanoAOD-like range 0.14 s."""
    if table.num_rows == 0 or table.nbytes <= BATCH_BYTES:
        return max(table.num_rows, 1)
    return max(MIN_BATCH_ROWS, BATCH_BYTES * table.num_rows // table.nbytes)


def _ipc_options(compression: str) -> pa.ipc.IpcWriteOptions:
    check_compression(compression)
    return pa.ipc.IpcWriteOptions(compression=None if compression == "none" else compression)


def write_table(table: pa.Table, path: str | os.PathLike[str], format: str | None = None,
                compression: str = "none") -> Path:
    """Write ``table`` to ``path`` as ``"arrow"`` (IPC file, Feather v2), ``"parquet"`` or
    ``"root"``; the format follows the extension when not given (:func:`format_for_path`)."""
    format = format_for_path(path, format)
    check_compression(compression, format)
    path = Path(path)
    if format == "arrow":
        with pa.OSFile(str(path), "wb") as sink, \
                pa.ipc.new_file(sink, table.schema, options=_ipc_options(compression)) as writer:
            writer.write_table(table)
    else:
        write_encoded(table, path, format)
    return path


def write_encoded(table: pa.Table, path: str | os.PathLike[str], format: str, compression: str = "none",
                  provenance: str | None = None) -> Path:
    """Write to ``path`` the bytes :func:`encode_table` returns (Arrow as an IPC stream), without
    holding them in memory: how the service writes a range into its cache. ``provenance``: the
    id Parquet and ROOT files carry as :data:`PROVENANCE_KEY`."""
    check_format(format)
    check_compression(compression, format)
    path = Path(path)
    if format == "arrow":
        with pa.OSFile(str(path), "wb") as sink, \
                pa.ipc.new_stream(sink, table.schema, options=_ipc_options(compression)) as writer:
            writer.write_table(table, max_chunksize=batch_rows(table))
    elif format == "parquet":
        _write_parquet(table, str(path), provenance)
    else:
        _write_root(table, path, provenance)
    return path


def encode_table(table: pa.Table, format: str, compression: str = "none", provenance: str | None = None) -> bytes:
    """A range's body as served over HTTP: Arrow as an IPC stream, Parquet, or ROOT (``provenance``:
    as for :func:`write_encoded`)."""
    check_format(format)
    check_compression(compression, format)
    if format == "arrow":
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema, options=_ipc_options(compression)) as writer:
            writer.write_table(table, max_chunksize=batch_rows(table))
        return sink.getvalue().to_pybytes()
    if format == "parquet":
        sink = pa.BufferOutputStream()
        _write_parquet(table, sink, provenance)
        return sink.getvalue().to_pybytes()
    with tempfile.TemporaryDirectory(prefix="vdata-root-") as tmp:
        out = Path(tmp) / "range.root"
        _write_root(table, out, provenance)
        return out.read_bytes()


def arrow_file_bytes(body: bytes | pa.Buffer, compression: str = "none") -> pa.Buffer:
    """An Arrow IPC stream (a range's HTTP body) as IPC file bytes, buffers compressed with
    ``compression``; a body that is a file already comes back as it is."""
    if _is_arrow_file(body):
        return body if isinstance(body, pa.Buffer) else pa.py_buffer(body)
    reader = pa.ipc.open_stream(body)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, reader.schema, options=_ipc_options(compression)) as writer:
        for batch in reader:
            writer.write_batch(batch)
    return sink.getvalue()


def _is_arrow_file(data: bytes | pa.Buffer | memoryview) -> bool:
    return bytes(memoryview(data)[:len(ARROW_FILE_MAGIC)]) == ARROW_FILE_MAGIC


def read_arrow(source: bytes | pa.Buffer) -> pa.Table:
    """Arrow IPC bytes, file or stream (told apart by the file format's leading magic bytes),
    read without a copy: the table's columns point into ``source`` (unless compressed)."""
    if _is_arrow_file(source):
        return pa.ipc.open_file(source).read_all()
    return pa.ipc.open_stream(source).read_all()


def read_table(path: str | os.PathLike[str], format: str | None = None) -> pa.Table:
    """Read back a file written by :func:`write_table` or :func:`write_encoded` (Arrow: either
    IPC form); the format follows the extension when not given."""
    format = format_for_path(path, format)
    path = Path(path)
    if format == "arrow":
        with pa.OSFile(str(path), "rb") as source:
            return read_arrow(source.read_buffer())
    if format == "parquet":
        return pq.read_table(str(path))
    import awkward as ak  # ROOT only: a client that reads Arrow never loads awkward and uproot
    import uproot

    with uproot.open(str(path)) as f:
        if SCHEMA_KEY not in f:
            return ak.to_arrow_table(f[ROOT_TREE].arrays(), extensionarray=False)
        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(str(f[SCHEMA_KEY]))))
        if len(schema) == 0:
            return schema.empty_table()
        wanted = set(schema.names)
        arrays = f[ROOT_TREE].arrays(filter_name=wanted.__contains__)
    # Counters come back as int32: cast on the awkward side, which adds no validity bitmap
    # (an Arrow cast would, and the column would then read as optional).
    for field in schema:
        if pa.types.is_integer(field.type) and str(arrays[field.name].type.content) != str(field.type):
            arrays[field.name] = ak.values_astype(arrays[field.name], field.type.to_pandas_dtype())
    table = ak.to_arrow_table(arrays, extensionarray=False).select(schema.names)
    return table if table.schema.equals(schema) else table.cast(schema)


def _write_parquet(table: pa.Table, where: str | pa.NativeFile, provenance: str | None = None) -> None:
    try:
        # keep Arrow's list item names ("item"), so every format reads back the same schema
        with pq.ParquetWriter(where, table.schema, use_compliant_nested_type=False) as writer:
            writer.write_table(table)
            if provenance is not None:
                writer.add_key_value_metadata({PROVENANCE_KEY: provenance})
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid) as exc:
        # pyarrow's message names the column (e.g. a struct with no fields)
        raise FormatError(f"cannot write this table as parquet: {exc}") from exc


# -- ROOT ------------------------------------------------------------------------------------


def _writable(dtype: pa.DataType) -> bool:
    return pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_boolean(dtype)


def _is_string(dtype: pa.DataType) -> bool:
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype)


def _check_root_types(schema: pa.Schema) -> None:
    for field in schema:
        t = field.type
        if _is_string(t):
            continue
        if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            t = t.value_type
        if not _writable(t):
            raise FormatError(
                f"column {field.name!r} of type {field.type} cannot be written to a ROOT TTree "
                f"(numbers, booleans, strings and lists of numbers or booleans only); write arrow or parquet instead"
            )


def _lengths(column: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(column.combine_chunks().value_lengths().fill_null(0), dtype=np.int64)


def _counter_names(table: pa.Table) -> tuple[Callable[[str], str], set[str]]:
    """How to name each jagged column's counter, and which existing columns are counters.

    ``Muon_pt`` and ``Muon_eta`` of equal lengths share ``nMuon``; if the table already has a
    flat integer column ``nMuon`` or ``NMuon`` equal to those lengths it is that counter (and
    uproot writes it). A jagged column that matches no group gets a counter of its own.
    """
    jagged = [f.name for f in table.schema if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)]
    lengths = {name: _lengths(table[name]) for name in jagged}
    groups: dict[str, list[str]] = {}
    for name in jagged:
        prefix = name.split("_", 1)[0] if "_" in name else name
        groups.setdefault(prefix, []).append(name)
    names: dict[str, str] = {}
    existing: set[str] = set()
    for prefix, members in groups.items():
        shared = all(np.array_equal(lengths[m], lengths[members[0]]) for m in members)
        for name in members:
            names[name] = _counter_for(table, name, prefix, lengths[name], shared)
            if names[name] in table.column_names:
                existing.add(names[name])
    return (lambda counted: names[counted]), existing


def _counter_for(table: pa.Table, name: str, prefix: str, lengths: np.ndarray, shared: bool) -> str:
    """An existing integer column equal to the lengths, else ``n<prefix>`` (shared) or ``n<name>``."""
    candidates = (f"n{prefix}", f"N{prefix}", f"n{name}")
    for candidate in candidates:
        if candidate in table.column_names and pa.types.is_integer(table.schema.field(candidate).type):
            if np.array_equal(np.asarray(table[candidate].to_numpy(), dtype=np.int64), lengths):
                return candidate
    for candidate in (f"n{prefix}", f"n{name}") if shared else (f"n{name}",):
        if candidate not in table.column_names:
            return candidate
    raise FormatError(
        f"column {name!r}: no free name for its counter branch ({' and '.join(candidates)} are "
        f"columns with other values)"
    )


def _has_nulls(column: pa.ChunkedArray) -> bool:
    if column.null_count:
        return True
    dtype = column.type
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_fixed_size_list(dtype):
        return any(chunk.flatten().null_count for chunk in column.chunks)
    return False


def _write_root(table: pa.Table, path: Path, provenance: str | None = None) -> None:
    import awkward as ak
    import uproot

    _check_root_types(table.schema)
    counter_name, counters = _counter_names(table)
    data = {}
    for name in table.column_names:
        if name in counters:
            continue  # uproot writes the counter from the list lengths
        if _has_nulls(table[name]):
            raise FormatError(f"column {name!r} has missing values (nulls), which a ROOT TTree cannot hold: "
                              f"write arrow or parquet, or state a fill value in the recipe, e.g. "
                              f"fill_null(x, -1)")
        # nullable Arrow fields without nulls come back as option types; ROOT has none.
        # (awkward's drop_none handles 64-bit list offsets only: widen 32-bit lists first.)
        arrow_column = table[name]
        if pa.types.is_list(arrow_column.type):
            arrow_column = arrow_column.cast(pa.large_list(arrow_column.type.value_field))
        column = ak.drop_none(ak.from_arrow(arrow_column, highlevel=True), axis=None)
        dtype = table.schema.field(name).type
        if _is_string(dtype) or pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
            data[name] = column
        else:
            data[name] = ak.to_numpy(column)  # flat, or fixed-size lists as 2-d arrays
    # a file object, not the path: uproot would write the (temporary) file name into the file
    with open(path, "w+b") as sink, _reproducible_stamps(), uproot.recreate(sink, uuid_function=_fixed_uuid) as f:
        if data:
            f.mktree(ROOT_TREE, data, counter_name=counter_name)
        f[SCHEMA_KEY] = base64.b64encode(table.schema.serialize().to_pybytes()).decode()
        if provenance is not None:
            f[PROVENANCE_KEY] = provenance


# A range's bytes depend on its content only (a range made again gives the same bytes and adler32,
# as Arrow and Parquet do). uproot stamps a ROOT file with its name (given a file object, it writes
# "dynamic.root"), the time of writing (the file's, each key's and each basket's fDatime) and a
# time-based uuid1: the uuid is an option of
# uproot.recreate, the time is not, so the writing modules see a clock stopped at ROOT_TIMESTAMP
# while vdata writes (a lock: one writer at a time in a process swaps it).
ROOT_TIMESTAMP = datetime.datetime(2000, 1, 1)
_STAMP_LOCK = threading.Lock()


class _StoppedClock(datetime.datetime):
    @classmethod
    def now(cls, tz: datetime.tzinfo | None = None) -> datetime.datetime:  # noqa: ARG003 - a stopped clock
        return ROOT_TIMESTAMP


_STOPPED_DATETIME = types.SimpleNamespace(datetime=_StoppedClock)


def _fixed_uuid() -> uuid.UUID:
    return uuid.UUID(int=0)


@contextmanager
def _reproducible_stamps() -> Iterator[None]:
    import uproot.writing._cascade as cascade
    import uproot.writing._cascadetree as cascadetree

    modules = [m for m in (cascade, cascadetree) if getattr(m, "datetime", None) is datetime]
    with _STAMP_LOCK:
        for module in modules:
            module.datetime = _STOPPED_DATETIME  # type: ignore[attr-defined]
        try:
            yield
        finally:
            for module in modules:
                module.datetime = datetime  # type: ignore[attr-defined]
