"""Source datasets: existing events in ROOT files, read exactly, one range at a time.

A :class:`SourceDataset` is one tree (TTree or RNTuple) across one or more files, local or
remote (http/https with range requests; no redirects, timeouts: :mod:`vdata.data.remote`). It knows entry counts, cluster boundaries, the Arrow
schema and checksums, cuts itself into :class:`~vdata.ranges.EventRange` s, and reads a range
as a ``pyarrow.Table`` equal to ``awkward.to_arrow_table(tree.arrays(...),
extensionarray=False)`` for the same entries.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from vdata.data import _uproot
from vdata.errors import RangeOutOfBounds, RemoteReadError, SchemaMismatch, SourceFileNotFound
from vdata.ranges import EventRange, plan_ranges
from vdata.data.remote import RemoteOptions

__all__ = ["SourceDataset", "SourceFile", "open_dataset"]


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One file of a dataset. ``size`` and ``adler32`` are known for local files only."""

    path: str
    entries: int
    clusters: tuple[int, ...]
    size: int | None = None
    adler32: int | None = None

    @property
    def remote(self) -> bool:
        return _uproot.is_remote(self.path)


class SourceDataset:
    """One tree across files, in the order given. Build it with :func:`open_dataset`."""

    def __init__(
        self,
        tree: str,
        files: list[SourceFile],
        schema: pa.Schema,
        unreadable: dict[str, str],
        groups: list[str],
        remote: RemoteOptions | None = None,
        aliases: dict[str, str] | None = None,
    ) -> None:
        self.tree = tree
        self.remote = remote or RemoteOptions()  # travels with the dataset (Ray workers reopen files)
        self.files = files
        self.schema = schema
        self.unreadable = unreadable
        self._groups = groups
        self.aliases = dict(aliases or {})  # uproot's full path of a split sub-branch -> column name
        self._starts = [0]
        for f in files:
            self._starts.append(self._starts[-1] + f.entries)
        self._handles: dict[int, tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    # -- what the dataset is ---------------------------------------------------------------

    @property
    def num_events(self) -> int:
        return self._starts[-1]

    @property
    def columns(self) -> list[str]:
        """Names of the columns that read (see :attr:`unreadable` for those that do not)."""
        return list(self.schema.names)

    def __repr__(self) -> str:
        return (
            f"SourceDataset(tree={self.tree!r}, files={len(self.files)}, "
            f"num_events={self.num_events}, columns={len(self.schema)})"
        )

    def ranges(self, target_events: int) -> list[EventRange]:
        """Contiguous ranges of at most ``target_events`` events, on cluster boundaries."""
        return plan_ranges([f.entries for f in self.files], [f.clusters for f in self.files], target_events)

    def locate(self, event_range: EventRange) -> tuple[int, int, int]:
        """(file position, entry start, entry stop) of a range; it must lie inside one file."""
        first, stop = event_range.first, event_range.stop
        if stop > self.num_events:
            raise RangeOutOfBounds(
                f"{event_range} is out of bounds: {self.tree!r} has {self.num_events} events"
            )
        position = bisect.bisect_right(self._starts, first) - 1
        base = self._starts[position]
        if stop > self._starts[position + 1]:
            raise RangeOutOfBounds(
                f"{event_range} spans two files: {self.files[position].path} holds events "
                f"[{base}, {self._starts[position + 1]})"
            )
        return position, first - base, stop - base

    # -- reading -----------------------------------------------------------------------------

    def resolve(self, columns: str | Sequence[str] | None) -> list[str]:
        """Column names for requested names and glob patterns (``None``: every column).

        uproot's full paths of split sub-branches (``evt/Beg``, as ``tree.keys()`` lists them;
        see :attr:`aliases`) are accepted and kept as asked."""
        known = set(self.unreadable) | set(self._groups)
        where = f"tree {self.tree!r} of {self.files[0].path}" if self.files else repr(self.tree)
        return _uproot.resolve_columns(
            columns if columns is None or isinstance(columns, str) else list(columns),
            self.columns,
            known,
            where,
            self.aliases,
        )

    def read(self, event_range: EventRange, columns: str | Sequence[str] | None = None) -> pa.Table:
        """Exactly the events of ``event_range``, the requested columns, as Arrow; each column
        named as asked (``evt/Beg`` gives a column ``evt/Beg`` holding the values of ``Beg``)."""
        names = self.resolve(columns)
        position, start, stop = self.locate(event_range)
        path = self.files[position].path
        tree = self._tree(position)
        table = _uproot.read_window(tree, path, names, start, stop, self.aliases)
        if table.num_rows != stop - start:
            raise RangeOutOfBounds(f"{event_range}: {path} gave {table.num_rows} rows, expected {stop - start}")
        return table

    def _tree(self, position: int) -> Any:
        with self._lock:
            if position not in self._handles:
                path = self.files[position].path
                try:
                    file = _uproot.open_file(path, self.remote)
                except SourceFileNotFound as exc:
                    if not self.files[position].remote:
                        raise
                    # registered, then gone from its server: the source failed, not the request
                    raise RemoteReadError(f"{path}: no longer found on the server") from exc
                self._handles[position] = (file, _uproot.open_tree(file, path, self.tree))
            return self._handles[position][1]

    def close(self) -> None:
        """Close the open files (they reopen on the next read)."""
        with self._lock:
            for file, _ in self._handles.values():
                file.close()
            self._handles.clear()

    def __enter__(self) -> SourceDataset:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Open files do not travel: a copy (e.g. in a Ray worker) reopens them on first read.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def open_dataset(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], tree: str, remote: RemoteOptions | None = None
) -> SourceDataset:
    """Open ``tree`` (a TTree or RNTuple; ``"dir/sub/tree"`` for one in a sub-directory)
    in one or more ROOT files, local paths or http(s) URLs, as one dataset in the order given.
    ``remote``: timeouts of http(s) reads (default :class:`~vdata.data.remote.RemoteOptions`);
    redirects are never followed.

    Every file must offer the same columns with the same types as the first.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise SchemaMismatch(f"a dataset needs at least one file (tree {tree!r})")
    files: list[SourceFile] = []
    handles: dict[int, tuple[Any, Any]] = {}
    surveys: list[_uproot.ColumnSurvey] = []
    for position, path in enumerate(paths):
        file = _uproot.open_file(path, remote)
        t = _uproot.open_tree(file, path, tree)
        surveys.append(_uproot.survey(t, path))
        if not surveys[-1].schema.equals(surveys[0].schema):
            raise SchemaMismatch(_describe_mismatch(paths[0], surveys[0].schema, path, surveys[-1].schema, tree))
        size, adler = (None, None) if _uproot.is_remote(path) else _uproot.file_checksum(path)
        files.append(SourceFile(path, int(t.num_entries), tuple(_uproot.cluster_boundaries(t)), size, adler))
        handles[position] = (file, t)
    first = surveys[0]
    dataset = SourceDataset(tree, files, first.schema, first.unreadable, first.groups, remote, first.aliases)
    dataset._handles = handles
    return dataset


def _describe_mismatch(first: str, a: pa.Schema, path: str, b: pa.Schema, tree: str) -> str:
    only_a = [n for n in a.names if n not in b.names]
    only_b = [n for n in b.names if n not in a.names]
    if only_a or only_b:
        return (
            f"tree {tree!r} of {path} has other columns than {first}: "
            f"missing {only_a[:5]}, extra {only_b[:5]}"
        )
    for field in a:
        other = b.field(field.name)
        if not other.equals(field):
            return f"column {field.name!r} is {other.type} in {path} but {field.type} in {first}"
    return f"tree {tree!r} of {path} orders its columns differently from {first}"
