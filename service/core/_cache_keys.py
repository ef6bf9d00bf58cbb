"""The cache's vocabulary: keys, entries, errors, and the row and file helpers of
:mod:`service.core.cache` (which re-exports the public names)."""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from service.errors import CacheError
from vdata.formats import COMPRESSIONS, FORMATS, check_compression, check_format

# the formats as the cache stores them: a compressed Arrow body is another entry than a plain one
STORED_FORMATS = FORMATS + tuple(f"arrow+{c}" for c in COMPRESSIONS if c != "none")
_RECIPE_ID = re.compile(r"vds-[0-9a-f]{24}")
_SUFFIX = "(?:" + "|".join(re.escape(f) for f in STORED_FORMATS) + ")"
_FINAL_NAME = re.compile(rf"[0-9]{{8,}}\.{_SUFFIX}")
_TEMP_NAME = re.compile(rf"\.[0-9]{{8,}}\.{_SUFFIX}\..+\.tmp")
# what temp names say since several caches share a folder: ``.<final>.<host>-<pid>.<random>.tmp``
_TEMP_WRITER = re.compile(rf"\.[0-9]{{8,}}\.{_SUFFIX}\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>[0-9]+)\.[0-9a-f]+\.tmp")
_KEY_WHERE = "recipe_id = ? AND range_index = ? AND format = ?"


def stored_format(format: str, compression: str = "none") -> str:
    """How the cache names ``format`` with ``compression`` (both checked): ``"arrow"``,
    ``"arrow+lz4"``, ``"parquet"``, ... (the ``format`` of a :class:`CacheKey`)."""
    check_compression(compression, check_format(format))
    return format if compression == "none" else f"{format}+{compression}"


def split_stored(stored: str) -> tuple[str, str]:
    """``(format, compression)`` of a stored format (the inverse of :func:`stored_format`)."""
    format, _, compression = stored.partition("+")
    return format, compression or "none"


@dataclass(frozen=True, slots=True)
class CacheKey:
    """What a cache file holds: range ``range_index`` of recipe ``recipe_id`` as ``format``, a
    stored format (:func:`stored_format`: the format, with Arrow's compression when not none)."""

    recipe_id: str
    range_index: int
    format: str

    def __post_init__(self) -> None:
        if not isinstance(self.recipe_id, str) or not _RECIPE_ID.fullmatch(self.recipe_id):
            raise CacheError(
                f"cache key: recipe_id must be 'vds-' and 24 lowercase hex digits, got {self.recipe_id!r}"
            )
        if isinstance(self.range_index, bool) or not isinstance(self.range_index, int) or self.range_index < 0:
            raise CacheError(
                f"cache key for {self.recipe_id}: range_index must be an integer >= 0, got {self.range_index!r}"
            )
        if not isinstance(self.format, str) or self.format not in STORED_FORMATS:
            raise CacheError(
                f"cache key for {self.recipe_id} range {self.range_index}: format must be one of "
                f"{', '.join(STORED_FORMATS)}, got {self.format!r}"
            )

    @property
    def base_format(self) -> str:
        """The format without its compression: ``"arrow"`` for ``"arrow+lz4"``."""
        return split_stored(self.format)[0]

    @property
    def compression(self) -> str:
        """Arrow's IPC compression of the entry: ``"none"``, ``"lz4"`` or ``"zstd"``."""
        return split_stored(self.format)[1]

    @property
    def relpath(self) -> str:
        """The file's path under the cache folder, e.g. ``vds-.../00000012.arrow``."""
        return f"{self.recipe_id}/{self.range_index:08d}.{self.format}"

    def __str__(self) -> str:
        return f"{self.recipe_id} range {self.range_index} ({self.format})"


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """A cached range: its file (absolute path), size in bytes, adler32 and number of events."""

    key: CacheKey
    path: Path
    size: int
    adler32: int
    events: int


def _choose_victims(
    rows: list[tuple[CacheKey, int]], budget: int, pinned: Collection[CacheKey], keep: CacheKey | None
) -> list[CacheKey]:
    """The entries to evict, given ``(key, size)`` of every entry, least recently used first.

    Pinned entries stay. ``keep`` (the entry just written) goes only if it cannot fit next to
    the pinned ones; then the others go in order until the total fits ``budget``.
    """
    total = sum(size for _, size in rows)
    sizes = dict(rows)
    victims: list[CacheKey] = []
    if keep in sizes and keep not in pinned:
        if sizes[keep] + sum(size for key, size in rows if key in pinned) > budget:
            victims.append(keep)
            total -= sizes[keep]
    for key, size in rows:
        if total <= budget:
            break
        if key != keep and key not in pinned:
            victims.append(key)
            total -= size
    return victims


def _key(row: sqlite3.Row) -> CacheKey:
    return CacheKey(row["recipe_id"], row["range_index"], row["format"])


def _select(conn: sqlite3.Connection, key: CacheKey) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        f"SELECT * FROM cache_entries WHERE {_KEY_WHERE}", (key.recipe_id, key.range_index, key.format)
    ).fetchone()
    return row


def _check_events(key: CacheKey, events: int) -> None:
    if isinstance(events, bool) or not isinstance(events, int) or events < 0:
        raise CacheError(f"cache entry {key}: events must be an integer >= 0, got {events!r}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def host_tag() -> str:
    """This machine's name as it may appear in a temporary file's name (no dots)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _is_debris(path: Path, final: bool, now: float, max_age: float, host: str) -> bool:
    """Whether a file of a recipe folder is left over (see :func:`_remove_debris`)."""
    if not final:
        writer = _TEMP_WRITER.fullmatch(path.name)
        if writer is not None and writer["host"] == host and not _pid_alive(int(writer["pid"])):
            return True  # its writer, a process of this machine, is gone
    try:
        return now - path.stat().st_mtime > max_age
    except FileNotFoundError:
        return False


def _remove_debris(root: Path, known: set[str], max_age: float, now: float | None = None) -> int:
    """Delete what crashed writers left in the recipe folders of ``root``; returns how many files went.

    Other caches (gateways, on this machine or others) may be writing into the folder right
    now, so a file is debris only if nobody can still be working on it: a temporary file whose
    writer was a process of this machine that is gone, or any temporary file, or final file
    without a row in ``known``, older than ``max_age`` seconds (longer than any task may run;
    a final file is renamed into place inside the transaction that adds its row, which another
    database than SQLite may not have committed yet). Empty recipe folders that old go too.
    """
    now = time.time() if now is None else now
    host = host_tag()
    removed = 0
    for folder in root.iterdir():
        if not (_RECIPE_ID.fullmatch(folder.name) and folder.is_dir()):
            continue
        for path in folder.iterdir():
            final = bool(_FINAL_NAME.fullmatch(path.name))
            candidate = _TEMP_NAME.fullmatch(path.name) or (final and f"{folder.name}/{path.name}" not in known)
            if candidate and path.is_file() and _is_debris(path, final, now, max_age, host):
                path.unlink(missing_ok=True)
                removed += 1
        try:
            if not any(folder.iterdir()) and now - folder.stat().st_mtime > max_age:
                folder.rmdir()
        except OSError:  # another cache wrote into it meanwhile
            pass
    return removed
