"""Every error vdata raises on purpose.

One hierarchy, so callers (and the HTTP gateway) can catch what they mean::

    VdataError
     ├── SourceError                      reading a source dataset
     │    ├── SourceFileNotFound          (FileNotFoundError) no such file or URL
     │    ├── NotARootFile                (ValueError) the bytes are not a ROOT file
     │    ├── TreeNotFound                (KeyError) lists the trees in the file
     │    ├── ColumnNotFound              (KeyError) lists close matches
     │    ├── UninterpretableColumn       (TypeError) names the column and its ROOT type
     │    ├── SchemaMismatch              (ValueError) files of one dataset disagree
     │    └── RemoteReadError             (OSError) a remote read failed
     ├── RangeOutOfBounds                 (IndexError) a range outside the dataset
     ├── FormatError                      (ValueError) unknown format, or a table the
     │                                    format cannot hold (names the column)
     ├── DatasetNotFound                  (KeyError) no dataset of that name in the catalog
     ├── BadDatasetName                   (ValueError) a name outside DATASET_NAME
     ├── RecipeError                      (ValueError) a recipe is malformed or does not fit
     │                                    the catalog: every problem at once, in .problems
     ├── TransformError                   (RuntimeError) a scientist's transform or
     │    │                               expression failed on a range: names both
     │    └── TaskLimitExceeded           it ran past the time or memory limit of a task
     ├── TransformRejected                (ValueError) a submitted transform was refused
     │                                    (line and reason) or does not compile
     ├── ServiceError                     the service answered 4xx/5xx: .status, .error, .detail
     ├── ChecksumMismatch                 (OSError) a range's bytes did not match their
     │                                    adler32, on every attempt
     └── ServiceUnreachable               (ConnectionError) no answer after every attempt

The service's own errors (engine, cache, jobs, gateway) are in the same tree, drawn in
``service/errors.py``. The array layer's errors (``transforms.errors``) are translated into
these where vdata calls into it: :func:`array_error`, the one place.

Messages name the file, tree, column or range at fault. Errors from uproot and the
operating system are translated in :mod:`vdata.data._uproot` with ``raise ... from exc``.
"""

from __future__ import annotations

from typing import Any

from transforms.errors import ExpressionError, KernelError, TransformsError

__all__ = [
    "array_error",
    "BadDatasetName",
    "ChecksumMismatch",
    "ServiceError",
    "ServiceUnreachable",
    "ColumnNotFound",
    "DatasetNotFound",
    "FormatError",
    "NotARootFile",
    "RangeOutOfBounds",
    "RecipeError",
    "RemoteFileNotFound",
    "RemoteReadError",
    "SchemaMismatch",
    "SourceError",
    "SourceFileNotFound",
    "TaskLimitExceeded",
    "TransformError",
    "TransformRejected",
    "TreeNotFound",
    "UninterpretableColumn",
    "VdataError",
]


class VdataError(Exception):
    """Base of every error vdata raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        # KeyError would otherwise print the repr of the message, quotes and all.
        return self.message


class SourceError(VdataError):
    """A source dataset could not be opened or read."""


class SourceFileNotFound(SourceError, FileNotFoundError):
    """A file or URL of a dataset does not exist."""

    def __init__(self, path: str, reason: str = "no such file") -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path


class NotARootFile(SourceError, ValueError):
    """The bytes at a path are not a ROOT file."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path} is not a ROOT file: {reason}")
        self.path = path


class TreeNotFound(SourceError, KeyError):
    """The file has no TTree or RNTuple of the requested name."""

    def __init__(self, path: str, tree: str, available: list[str]) -> None:
        listed = ", ".join(repr(t) for t in available) if available else "none"
        super().__init__(f"{path} has no tree {tree!r}; trees in the file: {listed}")
        self.path = path
        self.tree = tree
        self.available = available


class ColumnNotFound(SourceError, KeyError):
    """A requested column (or glob pattern) matches no column of the dataset."""

    def __init__(self, column: str, where: str, close: list[str]) -> None:
        hint = f"; close matches: {', '.join(repr(c) for c in close)}" if close else ""
        super().__init__(f"no column {column!r} in {where}{hint}")
        self.column = column
        self.close_matches = close


class UninterpretableColumn(SourceError, TypeError):
    """uproot cannot turn a column's bytes into arrays; the other columns still read."""

    def __init__(self, column: str, root_type: str, path: str, reason: str) -> None:
        super().__init__(
            f"column {column!r} (ROOT type {root_type!r}) in {path} cannot be read by uproot: {reason}"
        )
        self.column = column
        self.root_type = root_type
        self.path = path


class SchemaMismatch(SourceError, ValueError):
    """The files of one dataset do not have the same columns and types."""


class RemoteReadError(SourceError, OSError):
    """Reading a remote file failed (connection, HTTP status, range support)."""


class RemoteFileNotFound(RemoteReadError, SourceFileNotFound):
    """A remote URL (http(s):// 404, root:// ``kXR_NotFound``) names no file: a
    :class:`RemoteReadError` naming the URL, and a :class:`SourceFileNotFound` (the gateway answers
    400 ``source_file_not_found``, as for a missing local file: the client named it)."""

    def __init__(self, path: str, reason: str = "not found on the server") -> None:
        SourceFileNotFound.__init__(self, path, reason)


class RangeOutOfBounds(VdataError, IndexError):
    """An event range lies (partly) outside the dataset, or spans two files."""


class FormatError(VdataError, ValueError):
    """An unknown output format, or a table that the format cannot hold."""


class DatasetNotFound(VdataError, KeyError):
    """The catalog has no dataset of that name."""

    def __init__(self, name: str, known: list[str]) -> None:
        listed = ", ".join(repr(k) for k in known) if known else "none"
        super().__init__(f"no dataset {name!r}; registered datasets: {listed}")
        self.name = name


class RecipeError(VdataError, ValueError):
    """A recipe is malformed or does not fit the catalog. ``problems`` lists every one."""

    def __init__(self, problems: list[str]) -> None:
        count = f"{len(problems)} problems" if len(problems) > 1 else "1 problem"
        super().__init__(f"invalid recipe ({count}): " + "; ".join(problems))
        self.problems = problems


class TransformError(VdataError, RuntimeError):
    """User code (a transform or an expression) failed while materializing a range.

    The message names the transform or expression and the range, without our internal frames.
    """

    def __init__(self, what: str, where: str, reason: str) -> None:
        super().__init__(f"{what} failed on {where}: {reason}")
        self.what = what
        self.where = where


class TaskLimitExceeded(TransformError):
    """A transform or expression (or the whole task) ran past a task's wall-time or memory limit;
    the task was stopped (its worker killed if it had to be)."""


class TransformRejected(VdataError, ValueError):
    """A scientist's transform was refused by the checks or did not compile."""


class ServiceError(VdataError):
    """The service answered with an error status. ``status`` is the HTTP status, ``error``
    and ``detail`` the fields of the gateway's JSON error body."""

    def __init__(self, status: int, error: str, detail: Any, method: str, url: str) -> None:
        text = detail if isinstance(detail, str) else repr(detail)
        super().__init__(f"{method} {url} -> {status} {error}: {text}")
        self.status = status
        self.error = error
        self.detail = detail


class ChecksumMismatch(VdataError, OSError):
    """A range's bytes did not match their ``X-Vdata-Adler32`` header, on every attempt."""

    def __init__(self, what: str, expected: str, got: str, attempts: int) -> None:
        super().__init__(f"{what}: adler32 of the body is {got}, the header says {expected} "
                         f"({attempts} attempt{'s' if attempts != 1 else ''})")
        self.what = what
        self.expected = expected
        self.got = got


class ServiceUnreachable(VdataError, ConnectionError):
    """The request failed on the connection (refused, reset, timed out) on every attempt."""


class BadDatasetName(VdataError, ValueError):
    """A dataset name outside :data:`vdata.data.catalog.DATASET_NAME` (names the field and the name)."""


def array_error(exc: BaseException, what: str | None = None, where: str | None = None) -> VdataError:
    """The vdata error for an error of the array layer (``transforms``): the one translation.

    With ``what`` and ``where`` (a step and the range it ran on), a failure while running:
    running out of memory is :class:`TaskLimitExceeded`, a kernel's or an expression's runtime
    error :class:`TransformError`. Without them, a refusal at submission or compile time:
    :class:`TransformRejected` with the array layer's message (line and reason).
    """
    if what is not None and where is not None:
        if isinstance(exc, MemoryError):
            return TaskLimitExceeded(what, where, "out of memory")
        if isinstance(exc.__cause__, MemoryError):  # a kernel's allocation failed
            return TaskLimitExceeded(what, where, f"out of memory ({exc.__cause__})")
        if isinstance(exc, (ExpressionError, KernelError)):
            return TransformError(what, where, str(exc))
    if isinstance(exc, TransformsError):
        return TransformRejected(str(exc))
    raise TypeError(f"not an error of the array layer: {type(exc).__name__}: {exc}") from exc
