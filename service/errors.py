"""Every error the service raises on purpose, in one tree under :class:`vdata.errors.VdataError`.

The data library's errors (sources, recipes, transforms, formats, the client) are in
:mod:`vdata.errors`; these are the service's own. The gateway maps each to an HTTP status in
:mod:`service.http.error_map` (shown on the right)::

    VdataError                                (vdata.errors)
     ├── the core
     │    ├── EngineError           503       (RuntimeError) the engine stopped, or Ray failed
     │    │    │                              after its retries: try again later
     │    │    └── RayUnavailable   503       Ray's head (GCS) cannot be reached: Retry-After
     │    ├── StorageFull           507       (OSError) no space left for a range
     │    ├── CacheError            400       (ValueError) a bad cache key, budget or argument
     │    ├── CacheBusy             409       (RuntimeError) the entry is being read (pinned)
     │    ├── JobError              400       (ValueError) a bad argument to a job call
     │    ├── JobNotFound           404       (KeyError) no job of that id
     │    │    └── RangeNotFound    404       the job has no range of that index
     │    ├── LeaseError            409       (PermissionError) a worker acted on a range it
     │    │                                   does not hold
     │    ├── OutputError           400       (ValueError) an uploaded output that is not what it
     │    │                                   says (adler32, format), or a job without outputs
     │    ├── OutputConflict        409       other bytes for a finished range's output, or a
     │    │                                   finish without the output the job requires
     │    ├── RecipeNotFound        404       (KeyError) no recipe of that id
     │    ├── NotMaterialized       404       (LookupError) the range is not cached: no provenance
     │    ├── DatabaseError         400       an unsupported URL, or a file that cannot be opened
     │    │    └── DatabaseUnavailable 503  the database server is out of reach (PostgreSQL)
     │    ├── TokenError            400       (ValueError) an unknown role or a bad note
     │    ├── BadPath               400       (ValueError) not a path at all
     │    └── PathNotAllowed        403       (PermissionError) outside the allowed roots/prefixes
     ├── the gateway
     │    ├── Unauthenticated       401       no token, or an unknown one
     │    ├── Forbidden             403       (PermissionError) the token's role is too low
     │    ├── BodyTooLarge          413       the request body is over max_body_bytes
     │    ├── LimitExceeded         400       (ValueError) a recipe over a configured limit
     │    ├── TooManyInFlight       429       a token waits on too many materializations
     │    └── RangeUnavailable      503       (TimeoutError) not ready in time (Retry-After)
     └── the command line
          ├── DemoFolderRefused               (FileExistsError) the demo folder holds other things
          └── PortInUse                       (OSError) a port the command needs is taken

Errors raised in a Ray worker cross back as (class name, message) and are rebuilt here
(:func:`rebuild`), never unpickled.
"""

from __future__ import annotations

from typing import Protocol

import vdata.errors
from vdata.errors import VdataError

__all__ = [
    "BadPath", "BodyTooLarge", "CacheBusy", "CacheError", "DatabaseError", "DatabaseUnavailable",
    "DemoFolderRefused", "EngineError", "Forbidden", "JobError", "JobNotFound", "LeaseError", "LimitExceeded",
    "NotMaterialized", "OutputConflict", "OutputError", "PathNotAllowed", "PortInUse", "RangeNotFound",
    "RangeUnavailable", "RecipeNotFound",
    "RayUnavailable", "StorageFull", "TokenError", "TooManyInFlight", "Unauthenticated", "rebuild",
]  # fmt: skip


class _RangeRow(Protocol):
    job_id: str
    index: int
    state: str


class CacheError(VdataError, ValueError):
    """A cache key, budget or argument is invalid; the message names the field."""


class CacheBusy(VdataError, RuntimeError):
    """The entry is being read (pinned): it is not removed now."""


class JobError(VdataError, ValueError):
    """A bad argument to a job call (names the field and the value)."""


class JobNotFound(VdataError, KeyError):
    """No job of that id."""

    def __init__(self, job_id: str, message: str | None = None) -> None:
        super().__init__(message or f"no job {job_id!r}")
        self.job_id = job_id


class RangeNotFound(JobNotFound):
    """The job exists but has no range of that index."""

    def __init__(self, job_id: str, index: int, count: int) -> None:
        super().__init__(job_id, f"job {job_id!r} has no range {index} (it has ranges 0 to {count - 1})")
        self.index = index


class LeaseError(VdataError, PermissionError):
    """A worker acted on a range it does not hold, or that is not in a state for it."""

    def __init__(self, row: _RangeRow, worker: str, action: str, reason: str) -> None:
        super().__init__(f"worker {worker!r} cannot {action} range {row.index} of job {row.job_id!r}: {reason}")
        self.job_id = row.job_id
        self.index = row.index
        self.worker = worker
        self.state = row.state


class OutputError(VdataError, ValueError):
    """An uploaded range output is refused: its adler32 or format is not what the request says,
    or the job takes no outputs (the message names the job, range and format)."""


class OutputConflict(VdataError):
    """Other bytes for the output of a range already finished, or a finish without the output
    the job requires."""


class RecipeNotFound(VdataError, KeyError):
    """No recipe of that id has been submitted."""


class NotMaterialized(VdataError, LookupError):
    """The range is not in the cache (never made, or evicted), so there is no provenance to tell."""


class DatabaseError(VdataError):
    """The database URL is not supported, or the file cannot be opened."""


class TokenError(VdataError, ValueError):
    """An unknown role, or a note that is not a short string."""


class BadPath(VdataError, ValueError):
    """A path that is not a path at all: empty, not a string, or with a NUL byte."""


class PathNotAllowed(VdataError, PermissionError):
    """A path outside the allowed roots, or a URL outside the allowed prefixes or schemes."""


class Unauthenticated(VdataError):
    """No bearer token, or one the service does not know."""


class Forbidden(VdataError, PermissionError):
    """The token's role does not allow the request."""


class BodyTooLarge(VdataError):
    """The request body is larger than ``max_body_bytes``."""


class LimitExceeded(VdataError, ValueError):
    """A recipe asks for more than a configured limit allows (names the limit and the setting)."""


class TooManyInFlight(VdataError):
    """A token already waits on as many materializations as it may."""


class RangeUnavailable(VdataError, TimeoutError):
    """A range could not be served now (timed out, or evicted as soon as written)."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DemoFolderRefused(VdataError, FileExistsError):
    """The demo's folder holds things the demo did not make (and ``force`` was not given)."""


class PortInUse(VdataError, OSError):
    """A port the command needs is taken (or cannot be bound): names it and the flag to change it."""


class EngineError(VdataError, RuntimeError):
    """The engine could not produce a range for reasons of its own (stopped, Ray failed)."""


class StorageFull(VdataError, OSError):
    """The disk (or quota) holding the cache has no room for a range."""


def rebuild(name: str, message: str) -> VdataError:
    """The error ``name`` (a class of this module or of :mod:`vdata.errors`) with ``message``, as
    raised in another process (a Ray worker sends the class name and the message: no pickled
    exception, no traceback). Unknown names give a plain :class:`VdataError`."""
    cls = globals().get(name) or getattr(vdata.errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, VdataError)):
        cls = VdataError
    error = cls.__new__(cls)
    VdataError.__init__(error, message)
    return error


class DatabaseUnavailable(DatabaseError):
    """The database server cannot be reached now (connection refused or lost, no pooled
    connection in time): the service's fault, not the request's; 503, try again later."""


class RayUnavailable(EngineError):
    """Ray's head (its GCS) cannot be reached: what needs Ray is refused (503, Retry-After)
    until the engine reconnects; cached ranges and jobs are served meanwhile."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after
