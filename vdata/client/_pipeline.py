"""The client's background pipeline: an ordered, bounded prefetch over a thread pool, range
bodies decoded into Arrow, and atomic writes of range files (with a resume manifest).

Hand-written because ``ThreadPoolExecutor.map`` submits every item at once (memory is not
bounded) and cannot be stopped part-way; this keeps ``window`` items in flight, in order.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from vdata.checksum import adler32, file_adler32
from vdata.checksum import adler32_hex as _hex
from vdata.formats import read_arrow, read_table

__all__ = ["EXTENSIONS", "Manifest", "decode_table", "ordered_prefetch", "write_file"]

T = TypeVar("T")
R = TypeVar("R")
EXTENSIONS = {"arrow": "arrow", "parquet": "parquet", "root": "root"}
MANIFEST = ".vdata-fetch.jsonl"


def ordered_prefetch(fn: Callable[[T], R], items: Iterable[T], window: int, stop: threading.Event,
                     name: str = "vdata-prefetch", ramp: bool = True) -> Generator[R, None, None]:
    """``fn(item)`` for each item, in order, computed up to ``window`` items ahead in threads.

    At most ``window`` results wait besides the one the caller holds. With ``ramp`` the window
    opens like TCP's slow start: the first item alone, then one more in flight per item done.
    On a link of limited rate, ``window`` parallel downloads would share it and the first
    would arrive ``window`` times later; ramped, it comes at the link's full speed and the
    window is full by the time the caller has worked through it. Closing the iterator (or
    dropping it) sets ``stop``, cancels what has not started and joins the threads; a call
    already running finishes its current request first. ``window=0``: no threads.
    """
    if window <= 0:
        for item in items:
            yield fn(item)
        return
    pending: deque[Future[R]] = deque()
    todo = iter(items)
    executor = ThreadPoolExecutor(max_workers=window, thread_name_prefix=name)
    limit = 1 if ramp else window
    try:
        for item in itertools.islice(todo, limit):
            pending.append(executor.submit(fn, item))
        while pending:
            result = pending.popleft().result()
            limit = min(window, limit + 1)
            for item in itertools.islice(todo, limit - len(pending)):  # refill up to the limit
                pending.append(executor.submit(fn, item))
            yield result
    finally:
        stop.set()
        for future in pending:
            future.cancel()
        executor.shutdown(wait=True, cancel_futures=True)


def decode_table(body: bytes | pa.Buffer, format: str) -> pa.Table:
    """A range body as a table: Arrow IPC (stream or file), Parquet, or ROOT (through a temporary file).

    Uncompressed Arrow is read without a copy: the table's columns point into ``body``.
    """
    if format == "arrow":
        return read_arrow(body)
    if format == "parquet":
        return pq.read_table(pa.BufferReader(body))
    # uproot reads files, not buffers: a temporary file, removed at once
    with tempfile.TemporaryDirectory(prefix="vdata-client-") as tmp:
        path = Path(tmp) / "range.root"
        path.write_bytes(memoryview(body))
        return read_table(path, "root")


def write_file(path: Path, data: bytes | pa.Buffer) -> None:
    """Write ``data`` to ``path`` atomically (a hidden temporary name beside it, then rename),
    with the mode any file the user creates gets (``0o666`` less the umask: 0644 by default).

    Not :func:`transforms.atomic.write_atomic`, whose ``mkstemp`` files are private (0600), as
    a token's must be; a range file is data the user shares like any other.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies the umask
    try:
        with open(fd, "wb") as f:
            f.write(memoryview(data))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def adler32_hex(data: bytes | pa.Buffer) -> str:
    """The adler32 of ``data`` as 8 hex digits."""
    return _hex(adler32(memoryview(data)))


def file_adler32_hex(path: Path) -> str:
    """The adler32 of a file as 8 hex digits."""
    return _hex(file_adler32(path)[1])


class Manifest:
    """``<out_dir>/.vdata-fetch.jsonl``: one line per range file written, with the adler32 of
    the file (for Arrow the IPC file the body became, not the body).

    A later fetch of the same recipe, format and compression skips files whose bytes still
    match. Appends only (a torn last line from a crash is ignored); lines of other recipes are kept.
    """

    def __init__(self, out_dir: Path, recipe_id: str, format: str, compression: str = "none") -> None:
        self.path = out_dir / MANIFEST
        self.key = (recipe_id, format, compression)
        self.known: dict[str, str] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    if (entry["recipe"], entry["format"], _compression(entry)) == self.key:
                        self.known[entry["file"]] = entry["adler32"]
                except (ValueError, KeyError, TypeError):
                    continue

    def complete(self, path: Path) -> bool:
        """Whether ``path`` was written by a fetch of this recipe and format and is intact."""
        expected = self.known.get(path.name)
        return expected is not None and path.is_file() and file_adler32_hex(path) == expected

    def add(self, path: Path, adler32: str, events: int | None) -> None:
        entry = {"recipe": self.key[0], "format": self.key[1], "compression": self.key[2], "file": path.name,
                 "adler32": adler32, "events": events}
        with open(self.path, "a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
        self.known[path.name] = adler32


def _compression(entry: dict[str, object]) -> object:
    """An entry's compression; lines written before there was one hold ``"none"``, except Arrow
    ones, which hold IPC streams (fetched again as files: None matches no key)."""
    if "compression" in entry:
        return entry["compression"]
    return None if entry["format"] == "arrow" else "none"
