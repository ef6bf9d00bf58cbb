"""The one place that talks to uproot and translates its errors into :mod:`vdata.errors`.

Opening a file, finding a tree, listing the columns that read, reading entry windows as
Arrow. Everything here is about one file; :mod:`vdata.data.sources` puts files together.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import awkward as ak
import pyarrow as pa
import uproot

from vdata.checksum import file_adler32
from vdata.errors import (
    ColumnNotFound,
    NotARootFile,
    RemoteReadError,
    SourceError,
    RemoteFileNotFound,
    SourceFileNotFound,
    TreeNotFound,
    UninterpretableColumn,
)
from vdata.data.remote import NETWORK_ERRORS, RemoteOptions, is_not_found, network_error

REMOTE_SCHEMES = ("http://", "https://", "root://")
TREE_CLASSES = ("TTree", "ROOT::RNTuple")
_GLOB_CHARS = set("*?[")

# What uproot raises when it cannot turn a column's bytes into arrays (unknown streamers,
# memberwise serialization, missing members, ...). Not OSError: that is an I/O failure.
INTERPRETATION_ERRORS: tuple[type[BaseException], ...] = (
    uproot.interpretation.identify.UnknownInterpretation,
    uproot.deserialization.DeserializationError,
    NotImplementedError,
    KeyError,
    ValueError,
    TypeError,
    IndexError,
    AttributeError,
)


def is_remote(path: str) -> bool:
    return path.startswith(REMOTE_SCHEMES)


def to_arrow(arrays: ak.Array) -> pa.Table:
    """The Arrow form of uproot's arrays: plain Arrow types, no awkward extension types."""
    return ak.to_arrow_table(arrays, extensionarray=False)


def file_checksum(path: str) -> tuple[int, int]:
    """(size in bytes, adler32) of a local file."""
    return file_adler32(path)


def open_file(path: str, remote: RemoteOptions | None = None) -> Any:
    """``uproot.open`` with errors that name the path; http(s) and root:// URLs with ``remote``'s
    options (no redirects, timeouts: :mod:`vdata.data.remote`)."""
    if not is_remote(path) and not os.path.isfile(path):
        reason = "is a directory, not a file" if os.path.isdir(path) else "no such file"
        raise SourceFileNotFound(path, reason)
    options = (remote or RemoteOptions()).uproot_options(path)  # may say how to install XRootD
    try:
        return uproot.open(path, array_cache=None, **options)
    except Exception as exc:
        error = _open_error(path, exc)
        if error is exc:
            raise
        raise error from exc


def _open_error(path: str, exc: Exception) -> Exception:
    """The vdata error for what ``uproot.open`` raised (``exc`` itself if none fits)."""
    if is_remote(path) and (network := network_error(path, exc)) is not None:
        return network
    if is_not_found(exc):
        return RemoteFileNotFound(path) if is_remote(path) else SourceFileNotFound(path, "no such file")
    # uproot's words for bytes it cannot parse as ROOT
    if isinstance(exc, (ValueError, uproot.deserialization.DeserializationError)):
        return NotARootFile(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if isinstance(exc, OSError):
        return SourceError(f"{path}: cannot be read: {exc.strerror or exc}")
    return exc


def _remote_error(path: str, exc: BaseException, doing: str = "") -> RemoteReadError:
    return network_error(path, exc, doing) or RemoteReadError(f"{path}: {doing + ': ' if doing else ''}{exc}")


def tree_names(file: Any) -> list[str]:
    """Names (paths, without cycle numbers) of the TTrees and RNTuples in an open file."""
    names = []
    for key, cls in file.classnames().items():
        if cls in TREE_CLASSES:
            name = key.rsplit(";", 1)[0]
            if name not in names:
                names.append(name)
    return names


def open_tree(file: Any, path: str, tree: str) -> Any:
    """The TTree or RNTuple ``tree`` (a path such as ``"one/two/tree"``) of an open file."""
    available = tree_names(file)
    if tree.rsplit(";", 1)[0] not in available:
        raise TreeNotFound(path, tree, available)
    return file[tree]


def is_rntuple(tree: Any) -> bool:
    return getattr(tree, "classname", "") == "ROOT::RNTuple"


def cluster_boundaries(tree: Any) -> list[int]:
    """Entry numbers where clusters start, plus the number of entries at the end."""
    if is_rntuple(tree):
        bounds = [0]
        for summary in tree.cluster_summaries:
            bounds.append(summary.num_first_entry + summary.num_entries)
        return bounds
    return [int(b) for b in tree.common_entry_offsets()]


def root_type(tree: Any, column: str) -> str:
    """The ROOT type name of a column, for error messages."""
    try:
        return str(tree[column].typename)
    except INTERPRETATION_ERRORS:
        return "unknown"


@dataclass(slots=True)
class ColumnSurvey:
    """What one tree offers: the columns that read, and those that do not."""

    columns: list[str]
    schema: pa.Schema
    unreadable: dict[str, str]  # column -> ROOT type
    groups: list[str]  # TTree branches that hold sub-branches; readable only by name
    aliases: dict[str, str] = field(default_factory=dict)  # uproot's full path -> column name


def aliases(tree: Any) -> dict[str, str]:
    """uproot's full paths of split sub-branches, as ``tree.keys()`` lists them (``evt/Beg``,
    ``evt/P3/P3.Px``), -> the name ``arrays()`` gives their field (``Beg``, ``P3.Px``). Only
    paths that differ from the name; none for RNTuples (their top-level field names are the columns)."""
    if is_rntuple(tree):
        return {}
    return {
        path: branch.name
        for path, branch in tree.iteritems(recursive=True, full_paths=True)
        if path != branch.name
    }


def _candidates(tree: Any) -> tuple[list[str], list[str]]:
    """Column names as uproot's ``arrays()`` names its fields, and the parent branches."""
    if is_rntuple(tree):
        return list(tree.keys(recursive=False)), []
    leaves, groups = [], []
    for branch in tree.itervalues(recursive=True):
        try:
            interp = branch.interpretation
        except INTERPRETATION_ERRORS:
            leaves.append(branch.name)  # the survey records it as unreadable
            continue
        if isinstance(interp, uproot.interpretation.grouped.AsGrouped):
            groups.append(branch.name)
        else:
            leaves.append(branch.name)
    return leaves, groups


def _read(tree: Any, names: list[str], start: int | None, stop: int | None) -> ak.Array:
    wanted = set(names)
    return tree.arrays(filter_name=wanted.__contains__, entry_start=start, entry_stop=stop, library="ak")


def survey(tree: Any, path: str) -> ColumnSurvey:
    """Find which columns of a tree read, and their Arrow types.

    A TTree column of numbers, jagged numbers or strings (:func:`_is_plain`) gets its type from
    its interpretation: no basket is read, which for a remote file is most of what registering it
    would otherwise fetch (the first basket of every column). Other columns (objects, and RNTuple
    fields) are read empty, which fetches their first basket: some fail only then."""
    candidates, groups = _candidates(tree)
    plain = set() if is_rntuple(tree) else {name for name in candidates if _is_plain(tree, name)}
    readable, unreadable = _read_empty(tree, path, [c for c in candidates if c not in plain])
    schema = {**_arrow_fields(_empty_of(tree, [c for c in candidates if c in plain])), **_arrow_fields(readable)}
    columns = [c for c in candidates if c in schema]
    named = set(columns) | set(unreadable) | set(groups)
    paths = {a: c for a, c in aliases(tree).items() if c in named and a not in named}
    return ColumnSurvey(columns, pa.schema([schema[c] for c in columns]), unreadable, groups, paths)


_PLAIN = (uproot.interpretation.numerical.AsDtype, uproot.interpretation.jagged.AsJagged,
          uproot.interpretation.strings.AsStrings)


def _is_plain(tree: Any, name: str) -> bool:
    """A column whose bytes are numbers (offsets and numbers, strings): nothing in them can fail to read."""
    try:
        return isinstance(tree[name].interpretation, _PLAIN)
    except INTERPRETATION_ERRORS:
        return False


def _empty_of(tree: Any, names: list[str]) -> ak.Array:
    """What reading no entries of ``names`` gives, from their interpretations alone."""
    forms = [tree[name].interpretation.awkward_form(tree.file) for name in names]
    return ak.Array(ak.forms.RecordForm(forms, names).length_zero_array())


def _arrow_fields(arrays: ak.Array) -> dict[str, pa.Field]:
    if not arrays.fields:
        return {}
    return {field.name: field for field in to_arrow(arrays).schema}


def _read_empty(tree: Any, path: str, candidates: list[str]) -> tuple[ak.Array, dict[str, str]]:
    """An empty read of ``candidates`` (their first baskets are fetched), and the columns that fail."""
    unreadable: dict[str, str] = {}
    if not candidates:
        return ak.Array(ak.forms.RecordForm([], []).length_zero_array()), unreadable
    try:
        return _read(tree, candidates, 0, 0), unreadable
    except NETWORK_ERRORS as exc:
        raise _remote_error(path, exc) from exc
    except INTERPRETATION_ERRORS:
        pass
    # isolate the columns uproot cannot interpret, one by one
    good = []
    for name in candidates:
        try:
            _read(tree, [name], 0, 0)
            good.append(name)
        except NETWORK_ERRORS as exc:
            raise _remote_error(path, exc) from exc
        except INTERPRETATION_ERRORS:
            unreadable[name] = root_type(tree, name)
    return _read(tree, good, 0, 0), unreadable


def read_window(
    tree: Any, path: str, names: list[str], start: int, stop: int, paths: Mapping[str, str] | None = None
) -> pa.Table:
    """Entries ``[start, stop)`` of the named columns of one tree, as Arrow, in ``names`` order.

    A name in ``paths`` (uproot's full path of a sub-branch, see :func:`aliases`) reads the
    column it denotes and keeps the name asked for; a column asked twice is read once."""
    paths = paths or {}
    try:
        arrays = _read(tree, [paths.get(n, n) for n in names], start, stop)
    except NETWORK_ERRORS as exc:
        raise _remote_error(path, exc, f"reading entries [{start}, {stop})") from exc
    except INTERPRETATION_ERRORS as exc:
        # find the culprit column and name it
        for name in names:
            try:
                _read(tree, [paths.get(name, name)], start, min(stop, start + 1))
            except NETWORK_ERRORS as inner:
                raise _remote_error(path, inner, f"reading column {name!r}") from exc
            except INTERPRETATION_ERRORS as inner:
                raise UninterpretableColumn(name, root_type(tree, name), path, _one_line(inner)) from inner
        raise
    table = to_arrow(arrays)
    for name in names:
        if paths.get(name, name) not in table.column_names:  # e.g. a base-class branch without data
            reason = "uproot's arrays() gives no field for it"
            raise UninterpretableColumn(name, root_type(tree, paths.get(name, name)), path, reason)
    fields = [table.schema.field(paths.get(n, n)).with_name(n) for n in names]
    return pa.Table.from_arrays([table[paths.get(n, n)] for n in names], schema=pa.schema(fields))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def resolve_columns(
    requested: str | list[str] | None,
    columns: list[str],
    also_known: set[str],
    where: str,
    paths: Mapping[str, str] | None = None,
) -> list[str]:
    """Turn requested names and glob patterns into column names, in a stable order.

    ``None`` means every readable column. An exact name wins over a pattern reading of it
    (``ArrayI16[10]`` is a column name, not a character class). Names in ``also_known``
    (unreadable columns, parent branches) are passed through so that reading them can say
    why they fail. uproot's full paths (``paths``: ``evt/Beg`` -> ``Beg``) are accepted as
    they are asked and kept (:func:`read_window` reads the column they denote); a pattern
    with a ``/`` matches full paths, any other pattern matches column names. A name or
    pattern that matches nothing raises :class:`ColumnNotFound`.
    """
    if requested is None:
        return list(columns)
    if isinstance(requested, str):
        requested = [requested]
    paths = paths or {}
    known = set(columns)
    out: list[str] = []
    for item in requested:
        if not isinstance(item, str):
            raise ColumnNotFound(repr(item), where, [])
        if item in known or item in also_known or item in paths:
            matches = [item]
        elif _GLOB_CHARS & set(item):
            pool = list(paths) if "/" in item else columns
            matches = [c for c in pool if fnmatch.fnmatchcase(c, item)]
        else:
            matches = []
        if not matches:
            close = difflib.get_close_matches(item, columns + sorted(also_known) + list(paths), n=5, cutoff=0.6)
            raise ColumnNotFound(item, where, close)
        out.extend(m for m in matches if m not in out)
    return out
