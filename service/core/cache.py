"""The cache: materialized ranges on disk, keyed by (recipe id, range index, format).

The format is the stored one (``arrow``, ``arrow+lz4``, ``arrow+zstd``, ``parquet``, ``root``):
Arrow's IPC compression makes other bytes, so another entry. Files lie at
``<root>/<recipe id>/<index:08d>.<format>``; the database table ``cache_entries``
records each one's size, adler32, event count and last use, and ``range_provenance`` how it
was made (:mod:`service.core.provenance_store`: written and dropped with the entry). The rules:

- A file is written under a temporary name in its folder (by :meth:`RangeCache.put`, or by
  another process that hands it over with :meth:`RangeCache.put_file`), fsynced, renamed into
  place, and the folder fsynced. Every change to a final file (rename, unlink) happens inside
  the database transaction that changes its row, so the folder and the index agree between
  threads (and processes, which SQLite serializes). A crash leaves at worst a temporary file
  or a file without a row; both are removed by a later start once nobody can be writing them
  (:func:`~service.core._cache_keys._remove_debris`).
- :meth:`RangeCache.get` and :meth:`RangeCache.read` read the whole file and check its size and
  adler32 against the row. A mismatch is never served: the entry is dropped, counted
  (``corrupt_count`` and the ``on_corrupt`` callback) and reported as a miss, so the caller
  regenerates it.
- :meth:`RangeCache.opened` is for a server that checks the adler32 while it sends: it checks
  only the size before the first byte; the server withholds the last bytes of a body whose
  checksum does not match and hands the key to :meth:`RangeCache.drop_if_damaged`.
- After a put, entries are evicted least recently used first until the total size fits the
  budget. A pinned entry (one being read) is never evicted; the entry just written goes only
  when nothing else can (it is larger than the budget, or the rest is pinned).

Lock order (the deadlock an outside check found: a cache writer evicting held the cache lock
and waited for the database, while the job thread held the database and waited for the cache
lock). There are two locks, always taken in this order and never the other way round:

1. the database's write lock (:meth:`Database.transaction`, held for a whole transaction), then
2. ``RangeCache._lock``, the innermost lock: it guards the pins, ``_over_budget`` and
   ``corrupt_count``; while it is held the code takes no other lock, opens no transaction and
   waits for nothing but the unlinks of the files being evicted.

So eviction, :meth:`RangeCache.remove` and the clean-up at start open their transaction first
and take the cache lock inside it, and a pin (taken under the cache lock alone) never waits for
the database. The engine's lock (:mod:`service.core.engine`) is a leaf too: nothing is called while it
is held.

Several caches share a folder and a database: the gateways of one deployment (processes on
one machine, or machines that mount one directory). Nothing is exclusive to one of them:

- Temporary names carry their writer's host and process id
  (``.<index>.<format>.<host>-<pid>.<random>.tmp``); the clean-up at start removes only
  temporary files whose writer on this machine is gone, and other leftovers (temporary or final
  files without a row) older than ``debris_seconds`` (longer than any task runs). It never
  deletes rows: a row whose file is missing or of the wrong size is dropped when it is read,
  as a damaged one is, so a gateway started on the wrong folder takes nothing from the others.
- Pins live in memory: a cache does not see another's. An eviction or removal by one may
  unlink a file another is sending. On a local (POSIX) file system the open file stays
  readable after the unlink, so the response completes (the server opens the file before
  the first byte, :meth:`RangeCache.opened`); a reader that had not opened it yet sees a
  miss and the engine makes the range again. (On NFS a file unlinked by another client can
  fail with ESTALE in the middle: the response is then cut short of its ``Content-Length``
  and the client asks again, as for a damaged file. Give the shared folder a budget that keeps
  the ranges being read.)
- The budget is the whole folder's: eviction sums every gateway's rows.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from service.core._cache_keys import (
    _KEY_WHERE,
    _TEMP_NAME,
    CacheEntry,
    STORED_FORMATS,
    CacheKey,
    _check_events,
    _choose_victims,
    _fsync_dir,
    _key,
    _pid_alive,
    host_tag,
    _remove_debris,
    _select,
    split_stored,
    stored_format,
)
from service.errors import CacheBusy, CacheError
from vdata.checksum import adler32, adler32_hex
from service.core.db import Database
from service.core import provenance_store
from transforms.atomic import write_atomic

__all__ = ["STORED_FORMATS", "CacheEntry", "CacheKey", "RangeCache", "adler32", "adler32_hex", "split_stored",
           "stored_format"]

log = logging.getLogger(__name__)

class RangeCache:
    """Materialized ranges under ``root``, indexed in ``db``, at most ``budget_bytes`` in all.

    ``clock`` gives the times recorded as created and last used. ``on_corrupt(key, reason)`` is
    called (besides ``corrupt_count`` going up) for each entry dropped because its file was
    missing or did not match its size or adler32. Thread-safe; other caches (in other
    processes) may use the same folder and database at the same time (see the module
    docstring). ``debris_seconds``: leftovers older than this are removed at start.
    """

    def __init__(
        self,
        root: Path | str,
        db: Database,
        budget_bytes: int,
        clock: Callable[[], float] = time.time,
        on_corrupt: Callable[[CacheKey, str], None] | None = None,
        debris_seconds: float = 3600.0,
    ) -> None:
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes < 0:
            raise CacheError(f"cache budget_bytes must be an integer >= 0, got {budget_bytes!r}")
        self.root = Path(root).resolve()
        self.budget_bytes = budget_bytes
        self.corrupt_count = 0
        self._db = db
        self._clock = clock
        self._on_corrupt = on_corrupt
        self._lock = threading.Lock()  # innermost: taken inside a transaction, never around one
        self._pins: Counter[CacheKey] = Counter()
        self._over_budget = False  # pins kept the last eviction from reaching the budget
        self._writer = f"{host_tag()}-{os.getpid()}"  # in temporary names: whose they are
        self.debris_seconds = debris_seconds
        self.root.mkdir(parents=True, exist_ok=True)
        self._recover()
        self.evict()

    def write_probe(self) -> tuple[str, str]:
        """A file in the folder holding a fresh random token, and the token: a process on another
        machine that reads the same token there sees this very folder (a shared file system), so
        it can write a range's temporary file itself instead of sending the bytes. Probes of
        writers of this machine that are gone are removed here; :meth:`remove_probe` removes it."""
        host = host_tag()
        for old in self.root.glob(f".probe.{host}-*"):
            pid = old.name.rpartition("-")[2]
            if pid.isdigit() and not _pid_alive(int(pid)):
                old.unlink(missing_ok=True)
        path = self.root / f".probe.{self._writer}"
        token = uuid.uuid4().hex
        write_atomic(path, token.encode())
        return str(path), token

    def remove_probe(self) -> None:
        (self.root / f".probe.{self._writer}").unlink(missing_ok=True)

    def close(self) -> None:
        """Nothing to release (the folder is shared; the database belongs to the caller)."""

    def __enter__(self) -> RangeCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------

    def put(self, key: CacheKey, data: bytes | bytearray | memoryview, events: int,
            provenance: str | None = None) -> CacheEntry:
        """Store ``data`` (the range in ``key.format``) atomically, then evict down to the budget;
        ``provenance`` (JSON, :mod:`vdata.provenance`) is kept with the entry.

        If the data cannot fit (it is larger than the budget, or the rest is pinned), it is
        evicted at once: the entry is returned, but ``get`` misses.
        """
        _check_events(key, events)
        view = memoryview(data).cast("B")
        temp = self.temp_path(key)
        try:
            with open(temp, "xb") as f:
                f.write(view)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return self._commit(key, temp, view.nbytes, adler32(view), events, provenance)

    def temp_path(self, key: CacheKey) -> Path:
        """A new temporary name next to ``key``'s file (its folder made), for :meth:`put_file`.

        The name is unique and says which process of which machine chose it, so a writer that
        dies before the commit leaves only debris that a later start cleans up, and no start
        takes a live writer's file (:meth:`_recover`).
        """
        folder = (self.root / key.relpath).parent
        if not folder.is_dir():
            folder.mkdir(exist_ok=True)
            _fsync_dir(self.root)
        return folder / f".{Path(key.relpath).name}.{self._writer}.{uuid.uuid4().hex}.tmp"

    def put_file(self, key: CacheKey, temp: Path | str, size: int, adler32: int, events: int,
                 provenance: str | None = None) -> CacheEntry:
        """Commit a file another process wrote at ``temp`` (from :meth:`temp_path`) as ``key``
        (``provenance`` as for :meth:`put`).

        ``size`` and ``adler32`` are what the writer computed while writing; the size is
        checked against the file (cheap), the checksum is trusted (it is checked at each read).
        The temporary file is gone afterwards, committed or, on any error, deleted (a path
        that is not a temporary name of this key is refused and left alone).
        """
        temp, final = Path(temp), self.root / key.relpath
        ours = _TEMP_NAME.fullmatch(temp.name) and temp.name.startswith(f".{final.name}.")
        if temp.parent != final.parent or not ours:
            raise CacheError(f"cache entry {key}: {temp} is not a temporary name for {final}")
        try:
            _check_events(key, events)
            found = temp.stat().st_size
            if found != size:
                raise CacheError(f"cache entry {key}: temporary file {temp} has {found} bytes, the writer said {size}")
            if isinstance(adler32, bool) or not isinstance(adler32, int) or not 0 <= adler32 < 1 << 32:
                raise CacheError(f"cache entry {key}: adler32 must be an integer in [0, 2**32), got {adler32!r}")
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return self._commit(key, temp, size, adler32, events, provenance)

    def _commit(self, key: CacheKey, temp: Path, size: int, checksum: int, events: int,
                provenance: str | None = None) -> CacheEntry:
        """The one commit path: fsync ``temp``, then record the row and rename in one transaction,
        fsync the folder, evict. ``temp`` is deleted if it is not moved into place."""
        path = self.root / key.relpath
        moved = False
        try:
            fd = os.open(temp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            now = self._clock()
            with self._db.transaction() as conn:
                conn.execute(
                    "INSERT INTO cache_entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (recipe_id, range_index, format) DO UPDATE SET path = excluded.path, "
                    "size = excluded.size, adler32 = excluded.adler32, events = excluded.events, "
                    "created = excluded.created, last_used = excluded.last_used",
                    (key.recipe_id, key.range_index, key.format, key.relpath, size, checksum, events, now, now),
                )
                provenance_store.record(conn, key, provenance, now)
                os.replace(temp, path)
                moved = True
                _fsync_dir(path.parent)
        finally:
            if not moved:
                temp.unlink(missing_ok=True)
        self._evict(keep=key)
        return CacheEntry(key, path, size, checksum, events)

    def remove(self, key: CacheKey) -> bool:
        """Drop an entry and its file; False if there was none. Raises CacheBusy if it is pinned."""
        with self._db.transaction() as conn, self._lock:  # the lock order: database, then cache
            if self._pins[key]:
                raise CacheBusy(f"cache entry {key} ({self.root / key.relpath}) is being read; not removed")
            if _select(conn, key) is None:
                return False
            self._delete(conn, key)
        return True

    def evict(self) -> int:
        """Evict least recently used, unpinned entries until the total fits; the bytes freed."""
        return self._evict(keep=None)

    # -- reading ---------------------------------------------------------------------------

    def get(self, key: CacheKey) -> CacheEntry | None:
        """The entry after checking its file's size and adler32, or None (miss or dropped)."""
        with self.pinned(key) as entry:
            return entry

    def read(self, key: CacheKey) -> tuple[CacheEntry, bytes] | None:
        """The entry and its verified bytes, or None (miss or dropped)."""
        self._pin(key)
        try:
            return self._verified(key)
        finally:
            self._unpin(key)

    @contextmanager
    def pinned(self, key: CacheKey) -> Iterator[CacheEntry | None]:
        """The verified entry (or None), whose file is not evicted or removed until exit.

        A ``put`` of the same key may still replace the file, atomically, with a new version.
        """
        self._pin(key)
        try:
            found = self._verified(key)
            yield None if found is None else found[0]
        finally:
            self._unpin(key)

    @contextmanager
    def opened(self, key: CacheKey) -> Iterator[tuple[CacheEntry, BinaryIO] | None]:
        """The entry (or None) with its file open, pinned until exit; only the size is checked.

        For a server that checksums the bytes as it sends them, so the first byte goes out
        without reading the whole file first: a missing or truncated file is a miss (dropped and
        reported here); a wrong adler32 is the caller's to find, who must then not complete the
        response and call :meth:`drop_if_damaged`.
        """
        self._pin(key)
        try:
            found = self._open_sized(key)
            if found is None:
                yield None
            else:
                with found[1]:
                    yield found
        finally:
            self._unpin(key)

    def drop_if_damaged(self, key: CacheKey) -> bool:
        """Check the entry's file in full and drop it if it is damaged; True if it is gone now.

        For a reader of :meth:`opened` that saw a wrong checksum. The check is done again under
        the write lock: a put may have replaced the file since, and a good file is kept.
        """
        return self._recheck(key) is None

    def contains(self, key: CacheKey) -> bool:
        """Whether the index holds the key (not verified, last use unchanged): for look-ahead."""
        return _select(self._db.read(), key) is not None

    def total_bytes(self) -> int:
        total: int = self._db.read().execute("SELECT COALESCE(SUM(size), 0) FROM cache_entries").fetchone()[0]
        return total

    def entries(self) -> list[CacheEntry]:
        """Every entry, least recently used first (not verified)."""
        rows = self._db.read().execute(
            "SELECT * FROM cache_entries ORDER BY last_used, created, recipe_id, range_index, format"
        ).fetchall()
        return [self._entry(row) for row in rows]

    # -- internals -------------------------------------------------------------------------

    def _entry(self, row: sqlite3.Row) -> CacheEntry:
        key = _key(row)
        return CacheEntry(key, self.root / key.relpath, row["size"], row["adler32"], row["events"])

    def _pin(self, key: CacheKey) -> None:
        with self._lock:
            self._pins[key] += 1

    def _unpin(self, key: CacheKey) -> None:
        with self._lock:
            self._pins[key] -= 1
            if self._pins[key] <= 0:
                del self._pins[key]
            again = self._over_budget and key not in self._pins
        if again:
            self._evict(keep=None)

    def _check(self, row: sqlite3.Row) -> tuple[str | None, bytes]:
        """(what is wrong with the row's file or None, its bytes)."""
        try:
            data = (self.root / _key(row).relpath).read_bytes()
        except FileNotFoundError:
            return "the file is missing", b""
        if len(data) != row["size"]:
            return f"the file has {len(data)} bytes, {row['size']} recorded", data
        value = adler32(data)
        if value != row["adler32"]:
            return f"the file's adler32 is {adler32_hex(value)}, {adler32_hex(row['adler32'])} recorded", data
        return None, data

    def _verified(self, key: CacheKey) -> tuple[CacheEntry, bytes] | None:
        row = _select(self._db.read(), key)
        if row is None:
            return None
        problem, data = self._check(row)
        if problem is not None:
            found = self._recheck(key)
            if found is None:
                return None
            row, data = found
        with self._db.transaction() as conn:
            conn.execute(
                f"UPDATE cache_entries SET last_used = ? WHERE {_KEY_WHERE}",
                (self._clock(), key.recipe_id, key.range_index, key.format),
            )
        return self._entry(row), data

    def _open_sized(self, key: CacheKey) -> tuple[CacheEntry, BinaryIO] | None:
        """The row and its file opened in one write transaction (a put cannot come between them),
        the size checked by fstat and the last use recorded; a missing or short file is dropped."""
        with self._db.transaction() as conn:
            row = _select(conn, key)
            if row is None:
                return None
            try:
                file = open(self.root / key.relpath, "rb")  # noqa: SIM115 - closed by opened()
            except FileNotFoundError:
                problem = "the file is missing"
            else:
                size = os.fstat(file.fileno()).st_size
                if size == row["size"]:
                    try:
                        conn.execute(f"UPDATE cache_entries SET last_used = ? WHERE {_KEY_WHERE}",
                                     (self._clock(), key.recipe_id, key.range_index, key.format))
                    except BaseException:
                        file.close()
                        raise
                    return self._entry(row), file
                file.close()
                problem = f"the file has {size} bytes, {row['size']} recorded"
            self._delete(conn, key)
        self._report(key, problem)
        return None

    def _recheck(self, key: CacheKey) -> tuple[sqlite3.Row, bytes] | None:
        """Check again inside a write transaction, and drop the entry if it is still wrong.

        A put or an eviction may have changed the row and the file between the unlocked reads
        of ``_verified``; only a mismatch that holds under the lock is damage.
        """
        with self._db.transaction() as conn:
            row = _select(conn, key)
            if row is None:
                return None
            problem, data = self._check(row)
            if problem is None:
                return row, data
            self._delete(conn, key)
        self._report(key, problem)
        return None

    def _delete(self, conn: sqlite3.Connection, key: CacheKey) -> None:
        """Drop the row and the file; call inside a transaction (see the module docstring)."""
        conn.execute(f"DELETE FROM cache_entries WHERE {_KEY_WHERE}", (key.recipe_id, key.range_index, key.format))
        provenance_store.delete(conn, key)
        (self.root / key.relpath).unlink(missing_ok=True)

    def _report(self, key: CacheKey, reason: str) -> None:
        with self._lock:
            self.corrupt_count += 1
        log.warning("cache entry %s dropped (%s): %s", key, self.root / key.relpath, reason)
        if self._on_corrupt is not None:
            self._on_corrupt(key, reason)

    def _evict(self, keep: CacheKey | None) -> int:
        with self._db.transaction() as conn, self._lock:  # the lock order: database, then cache
            total: int = conn.execute("SELECT COALESCE(SUM(size), 0) FROM cache_entries").fetchone()[0]
            if total <= self.budget_bytes:
                self._over_budget = False
                return 0
            rows = [
                (_key(row), row["size"])
                for row in conn.execute(
                    "SELECT recipe_id, range_index, format, size FROM cache_entries "
                    "ORDER BY last_used, created, recipe_id, range_index, format"
                )
            ]
            sizes = dict(rows)
            victims = _choose_victims(rows, self.budget_bytes, self._pins, keep)
            for key in victims:
                self._delete(conn, key)
            freed = sum(sizes[key] for key in victims)
            self._over_budget = total - freed > self.budget_bytes
            return freed

    def _recover(self) -> None:
        """Remove what crashed writers left (never a row: see the module docstring)."""
        known = {row["path"] for row in self._db.read().execute("SELECT path FROM cache_entries").fetchall()}
        removed = _remove_debris(self.root, known, self.debris_seconds)
        if removed:
            log.info("cache %s: removed %d files left by writers that are gone", self.root, removed)
