"""A node's cache of remote files' bytes, beneath uproot: each remote byte range is read once.

Ranges of a dataset are made by separate tasks (Ray workers), and a range smaller than a ROOT
cluster needs the same compressed baskets as its siblings; registration and the recipe check's
dry run read the file's metadata (and the dry run the first baskets) that the tasks read again.
Here every byte range uproot asks a remote file for (its header, directory, streamers, TTree
metadata, baskets) is kept in a folder on the node, so whoever asks next on that node — a
sibling task, another worker, the gateway itself — gets it from the disk (XCache's idea,
inside the reader). Sibling ranges stay independent tasks: the cache needs no scheduling, and
covers registration, the dry run and every worker's open as well.

- **Keys**: the URL, the file's identity and the exact ``(start, stop)`` uproot asks for.
  uproot asks for a basket's byte range whatever entry window needs it (it coalesces neighbours
  into one network request *after* this layer), so sibling ranges ask for the same keys; fixed
  aligned blocks would also fetch neighbouring baskets of columns nobody asked for.
- **Identity**: the first 403 bytes of the file (the ROOT file header: the file's end, its seek
  pointers and the UUID every ROOT writer gives a new file), read from the server at an open
  (uproot reads them first anyway). A rewritten file has another header, so it never meets the
  old file's bytes. A header read on this node less than ``fresh_seconds`` ago (kept in the
  cache with the time it was read) is trusted without asking again, as an HTTP cache trusts a
  response within its max-age: the workers' opens right after a registration, a submission's
  first range, cost no round trip. A file rewritten in place within that window may be read
  as the old one until it passes (HEP files are written once; 0 asks at every open). (A remote file's adler32 is not known at registration: computing it would
  cost the very bytes the cache saves.)
- **Entries**: in :mod:`diskcache` (SQLite index plus files, safe across processes; atomic: a
  value is visible only once written), least-recently-used eviction under a byte budget. Each
  value carries its length and adler32: a damaged entry is dropped and read again.
- **Single flight**: a :class:`filelock.FileLock` per stripe of keys (4096 stripes) across the
  processes of the node: two workers asking for the same basket at once fetch it once. A reader
  first takes the stripes it can without waiting and fetches those ranges in one request; then
  it waits for the rest in one order (so no two readers wait for each other) and reads them from
  the cache, or fetches what is still missing. A wait is bounded (``lock_timeout``): after it
  the reader fetches the range itself.
- A cache that cannot be written (disk full, an index locked past its timeout) makes reads
  slower, never wrong: the bytes still come from the server.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import queue
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import uproot.source.chunk
import uproot.source.coalesce
import uproot.source.futures

from vdata.checksum import adler32

__all__ = ["ByteCache", "CachedSource", "byte_cache"]

log = logging.getLogger(__name__)

HEADER_BYTES = 403  # uproot's first read of a file (begin_chunk_size): the ROOT file header
STRIPES = 4096
_TRAILER = struct.Struct("<QI")  # length, adler32 of the bytes before it
_READ_AT = struct.Struct("<d")  # when a header kept in the cache was read from the server


class ByteCache:
    """Byte ranges by key in ``directory`` (``store/``: the entries, ``locks/``: the stripes' lock
    files), at most ``budget`` bytes, least recently used first out."""

    def __init__(self, directory: str | Path, budget: int, lock_timeout: float) -> None:
        self.directory = Path(directory)
        self.budget = budget
        self.lock_timeout = lock_timeout
        (self.directory / "locks").mkdir(parents=True, exist_ok=True)
        # here: only a node that caches remote bytes needs them (and SQLite, under diskcache)
        import diskcache
        import filelock

        self._filelock = filelock

        # what a full disk or an index locked past its timeout raise
        self._errors: tuple[type[BaseException], ...] = (OSError, diskcache.Timeout)
        self._store = diskcache.Cache(str(self.directory / "store"), size_limit=budget,
                                      eviction_policy="least-recently-used")

    @property
    def volume(self) -> int:
        """Bytes the cache holds on disk (its index included)."""
        return int(self._store.volume())

    def get(self, key: str) -> bytes | None:
        try:
            value = self._store.get(key)
        except self._errors as exc:
            log.warning("remote cache %s: cannot read an entry (%s)", self.directory, exc)
            return None
        if value is None:
            return None
        data = _unwrap(value)
        if data is None:  # damaged: read it again
            self._store.delete(key)
        return data

    def put(self, key: str, data: bytes) -> None:
        try:
            self._store.set(key, data + _TRAILER.pack(len(data), adler32(data)))
        except self._errors as exc:
            log.warning("remote cache %s: cannot keep %d bytes (%s)", self.directory, len(data), exc)

    def _lock(self, stripe: int) -> Any:
        return self._filelock.FileLock(self.directory / "locks" / f"{stripe:03x}.lock", thread_local=False)

    def try_locks(self, stripes: set[int], stack: ExitStack) -> set[int]:
        """Take the stripes that are free now (released by ``stack``); the ones taken."""
        taken = set()
        for stripe in sorted(stripes):
            lock = self._lock(stripe)
            try:
                lock.acquire(timeout=0)
            except self._filelock.Timeout:
                continue
            stack.callback(lock.release)
            taken.add(stripe)
        return taken

    @contextmanager
    def locks(self, stripes: set[int]) -> Iterator[None]:
        """Hold ``stripes``, taken in one order; one that stays busy past ``lock_timeout`` is skipped."""
        with ExitStack() as stack:
            for stripe in sorted(stripes):
                lock = self._lock(stripe)
                try:
                    lock.acquire(timeout=self.lock_timeout)
                except self._filelock.Timeout:
                    continue
                stack.callback(lock.release)
            yield


def _unwrap(value: Any) -> bytes | None:
    if not isinstance(value, bytes) or len(value) < _TRAILER.size:
        return None
    data = value[: -_TRAILER.size]
    length, checksum = _TRAILER.unpack(value[-_TRAILER.size:])
    return data if length == len(data) and checksum == adler32(data) else None


def stripe_of(key: str) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:3], 16) % STRIPES


_caches: dict[tuple[str, int, float], ByteCache] = {}
_caches_lock = threading.Lock()  # a leaf: guards the dict above only


def byte_cache(directory: str, budget: int, lock_timeout: float) -> ByteCache:
    """The process's :class:`ByteCache` of ``directory`` (one SQLite connection set per process)."""
    spec = (str(Path(directory).resolve()), budget, lock_timeout)
    with _caches_lock:
        if spec not in _caches:
            _caches[spec] = ByteCache(*spec)
        return _caches[spec]


_fetchers: concurrent.futures.ThreadPoolExecutor | None = None


def _fetcher_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The threads that wait for other readers' fetches and for the server (made on first use)."""
    global _fetchers
    with _caches_lock:
        if _fetchers is None:
            _fetchers = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="vdata-remote-cache")
        return _fetchers


class CachedSource:
    """Mixin over an uproot fsspec source (vdata/data/remote.py's): ranges come from the node's
    :class:`ByteCache` where they are, from the server (and into the cache) where they are not.

    ``vdata_cache``: (folder, budget in bytes, lock timeout in seconds, seconds a header read on
    the node is trusted), an option of ``uproot.open``."""

    def __init__(self, file_path: str, *, vdata_cache: tuple[str, int, float, float], **options: Any) -> None:
        self._cache_spec = vdata_cache
        self._byte_cache = byte_cache(*vdata_cache[:3])
        super().__init__(file_path, **options)  # type: ignore[call-arg]
        # the header identifies the file (module docstring): from the server unless read lately
        self._header = self._recent_header(file_path, vdata_cache[3])
        self._identity = hashlib.sha256(file_path.encode() + b"\0" + self._header).hexdigest()[:32]

    def _recent_header(self, file_path: str, fresh_seconds: float) -> bytes:
        key = "header:" + hashlib.sha256(file_path.encode()).hexdigest()[:32]
        record = self._byte_cache.get(key) if fresh_seconds > 0 else None
        if record is not None and len(record) > _READ_AT.size:
            (read_at,) = _READ_AT.unpack_from(record)
            if 0 <= time.time() - read_at < fresh_seconds:
                return record[_READ_AT.size:]
        header = bytes(super().chunk(0, HEADER_BYTES).future.result())  # type: ignore[misc]
        self._byte_cache.put(key, _READ_AT.pack(time.time()) + header)
        return header

    # uproot's fsspec sources pickle without their connections; this one without its cache
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()  # type: ignore[misc]
        state.pop("_byte_cache", None)
        return dict(state)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]  (it replaces __dict__, then reopens)
        self._byte_cache = byte_cache(*state["_cache_spec"][:3])

    def _key(self, start: int, stop: int) -> str:
        return f"{self._identity}:{start}:{stop}"

    def chunk(self, start: int, stop: int) -> uproot.source.chunk.Chunk:
        if start == 0 and stop <= len(self._header):
            data = self._header[:stop]
        else:
            data = self._cached([(start, stop)])[0]
        return uproot.source.chunk.Chunk(self, start, stop, uproot.source.futures.TrivialFuture(data))

    def chunks(self, ranges: list[tuple[int, int]],
               notifications: queue.Queue[Any]) -> list[uproot.source.chunk.Chunk]:
        found = [self._byte_cache.get(self._key(start, stop)) for start, stop in ranges]
        missing = [r for r, data in zip(ranges, found) if data is None]
        fetched = _fetcher_pool().submit(self._cached, missing) if missing else None
        out, position = [], 0
        for (start, stop), data in zip(ranges, found):
            if data is not None:
                future: Any = uproot.source.futures.TrivialFuture(data)
            else:
                future = uproot.source.coalesce.SliceFuture(fetched, position)
                position += 1
            chunk = uproot.source.chunk.Chunk(self, start, stop, future)
            future.add_done_callback(uproot.source.chunk.notifier(chunk, notifications))
            out.append(chunk)
        return out

    def _cached(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of ``ranges``, from the cache or, once per node, from the server."""
        keys = [self._key(start, stop) for start, stop in ranges]
        unique = list(dict.fromkeys(keys))
        got: dict[str, bytes] = {}
        with ExitStack() as stack:  # first the stripes nobody holds: fetched together
            taken = self._byte_cache.try_locks({stripe_of(k) for k in unique}, stack)
            self._fill([k for k in unique if stripe_of(k) in taken], ranges, keys, got)
        rest = [k for k in unique if k not in got]
        if rest:  # then those another reader holds: most are in the cache once it lets go
            with self._byte_cache.locks({stripe_of(k) for k in rest}):
                self._fill(rest, ranges, keys, got)
        return [got[k] for k in keys]

    def _fill(self, wanted: list[str], ranges: Sequence[tuple[int, int]], keys: list[str],
              got: dict[str, bytes]) -> None:
        """Put the bytes of the ``wanted`` keys into ``got``: the cache's, else the server's (kept)."""
        fetch = []
        for key in wanted:
            data = self._byte_cache.get(key)
            if data is None:
                fetch.append(key)
            else:
                got[key] = data
        if not fetch:
            return
        where = dict(zip(keys, ranges))
        chunks = super().chunks([where[k] for k in fetch], queue.Queue())  # type: ignore[misc]
        for key, chunk in zip(fetch, chunks):
            data = bytes(chunk.future.result())
            self._byte_cache.put(key, data)
            got[key] = data
