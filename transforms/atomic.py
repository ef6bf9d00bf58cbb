"""Atomic file writes: a hidden temporary name beside the target, then ``os.replace``.

A reader never sees a half-written file, and a writer that dies leaves only a hidden
``.<name>.*.tmp`` behind. It lives in the bottom package (``transforms``) so that every layer
above (the kernel caches here, the client, the data library, the service) uses this one.
Temporary files are created by :func:`tempfile.mkstemp`, so they (and the file they become)
are private to the user (mode 0600) from the first byte: fit for tokens too.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "write_atomic"]


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A new temporary path beside ``path`` to write; renamed to ``path`` when the block ends
    without an error, removed when it raises."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike[str], data: bytes | bytearray | memoryview | str) -> None:
    """Write ``data`` (text is UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
