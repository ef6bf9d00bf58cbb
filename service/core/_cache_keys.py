"""The cache's vocabulary: keys, entries, errors, and the row and file helpers of
:mod:`service.core.cache` (which re-exports the public names)."""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from service.errors import CacheError
from vdata.formats import FORMATS

_RECIPE_ID = re.compile(r"vds-[0-9a-f]{24}")
_SUFFIX = "(?:" + "|".join(re.escape(f) for f in FORMATS) + ")"
_FINAL_NAME = re.compile(rf"[0-9]{{8,}}\.{_SUFFIX}")
_TEMP_NAME = re.compile(rf"\.[0-9]{{8,}}\.{_SUFFIX}\..+\.tmp")
_KEY_WHERE = "recipe_id = ? AND range_index = ? AND format = ?"


@dataclass(frozen=True, slots=True)
class CacheKey:
    """What a cache file holds: range ``range_index`` of recipe ``recipe_id`` as ``format``."""

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
        if not isinstance(self.format, str) or self.format not in FORMATS:
            raise CacheError(
                f"cache key for {self.recipe_id} range {self.range_index}: format must be one of "
                f"{', '.join(FORMATS)}, got {self.format!r}"
            )

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


def _remove_debris(root: Path, known: set[str]) -> int:
    """Delete temporary files, and final files whose relpath is not in ``known``, under the
    recipe folders of ``root``; then empty folders. Returns how many files went."""
    removed = 0
    for folder in root.iterdir():
        if not (_RECIPE_ID.fullmatch(folder.name) and folder.is_dir()):
            continue
        for path in folder.iterdir():
            debris = _TEMP_NAME.fullmatch(path.name) or (
                _FINAL_NAME.fullmatch(path.name) and f"{folder.name}/{path.name}" not in known
            )
            if debris and path.is_file():
                path.unlink()
                removed += 1
        if not any(folder.iterdir()):
            folder.rmdir()
    return removed
