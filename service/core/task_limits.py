"""Time and memory limits of one task in a worker process (a Ray worker; never the gateway).

A scientist's kernel is Numba code: it holds the GIL and checks no signal, so nothing in Python
can interrupt an endless loop in it. The two limits are therefore enforced by the kernel and by
C code, not by Python:

- **memory**: ``RLIMIT_DATA`` (private writable memory: the heap, anonymous mappings, NumPy,
  Numba and Arrow buffers) is lowered to what the process uses now plus the task's allowance;
  an allocation past it fails with ``MemoryError`` and the task reports it. Shared mappings (the
  object store) do not count. The previous soft limit comes back when the task ends.
- **wall time**: :func:`faulthandler.dump_traceback_later` runs a C thread that needs no GIL; at
  the deadline it writes the Python stack into the task's *marker file* and ends the process
  (``_exit(1)``). Ray then sees a dead worker and retries the task; the retry finds the marker
  with a stack in it and answers "time limit exceeded" at once, without running the user's code
  again (:func:`timed_out`). The engine reads the same marker when no retry is left.

The marker is a node-local file named by the engine for one submission (its ``attempt`` id).
Its first :data:`HEADER` bytes say what ran last (:meth:`TaskLimits.note`: "transform 'loop'
on range 3"), so the answer names the transform; the stack follows them. A task that ends
normally removes its marker. A marker left by a worker that died for another reason (no stack
after the header) is not a timeout: the retry runs normally.

Written by hand: no library limits a thread that holds the GIL inside compiled code.
"""

from __future__ import annotations

import faulthandler
import os
import resource
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = ["HEADER", "Limits", "TaskLimits", "marker_path", "timed_out"]

HEADER = 512  # bytes of the marker that say what ran last; the stack dump follows


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-task limits: wall seconds (None: none) and bytes of memory beyond what the worker uses
    when the task starts (None: none)."""

    seconds: float | None = None
    memory_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.seconds is not None and not self.seconds > 0:
            raise ValueError(f"Limits.seconds must be > 0 or None, got {self.seconds!r}")
        if self.memory_bytes is not None and self.memory_bytes <= 0:
            raise ValueError(f"Limits.memory_bytes must be > 0 or None, got {self.memory_bytes!r}")


def marker_path(attempt: str) -> Path:
    """The node-local marker file of a task submission (same path for each of its retries)."""
    if not attempt or not all(c.isalnum() or c in "-_" for c in attempt):
        raise ValueError(f"attempt id must be letters, digits, '-' or '_', got {attempt!r}")
    return Path(tempfile.gettempdir()) / "vdata-task-limits" / attempt


def timed_out(attempt: str) -> str | None:
    """What ran when an earlier run of this submission hit its time limit, or None if none did."""
    try:
        data = marker_path(attempt).read_bytes()
    except FileNotFoundError:
        return None
    if len(data) <= HEADER:
        return None  # the worker died of something else: no stack was written
    return data[:HEADER].rstrip(b"\0 \n").decode("utf-8", "replace") or "the task"


def _data_in_use() -> int | None:
    """Bytes of private writable memory of this process (``VmData``), or None where unknown."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmData:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class TaskLimits:
    """``with TaskLimits(limits, attempt):`` around one task's work; :meth:`note` what runs."""

    def __init__(self, limits: Limits, attempt: str | None) -> None:
        self.limits = limits
        self._path = marker_path(attempt) if attempt and limits.seconds is not None else None
        self._fd: int | None = None
        self._old_data: tuple[int, int] | None = None

    def __enter__(self) -> TaskLimits:
        if self._path is not None and self.limits.seconds is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            self.note("the task")
            os.lseek(self._fd, HEADER, os.SEEK_SET)  # the stack goes after the header
            faulthandler.dump_traceback_later(self.limits.seconds, exit=True, file=self._fd)
        if self.limits.memory_bytes is not None:
            used = _data_in_use()
            if used is not None:
                soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
                want = used + self.limits.memory_bytes
                if hard != resource.RLIM_INFINITY:
                    want = min(want, hard)
                resource.setrlimit(resource.RLIMIT_DATA, (want, hard))
                self._old_data = (soft, hard)
        return self

    def note(self, what: str) -> None:
        """Record what runs now, for the answer if the time limit ends the process."""
        if self._fd is not None:
            os.pwrite(self._fd, what.encode("utf-8", "replace")[:HEADER].ljust(HEADER, b"\0"), 0)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:
            faulthandler.cancel_dump_traceback_later()
            os.close(self._fd)
            self._fd = None
            if self._path is not None:
                self._path.unlink(missing_ok=True)
        if self._old_data is not None:
            resource.setrlimit(resource.RLIMIT_DATA, self._old_data)
            self._old_data = None
