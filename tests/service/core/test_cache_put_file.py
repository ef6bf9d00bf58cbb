"""Committing a file another process wrote (``RangeCache.temp_path`` + ``put_file``): what the
engine's workers do on the driver's node instead of sending the bytes."""

from __future__ import annotations

import os
import time

import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.core.cache import CacheEntry, CacheKey, RangeCache
from service.errors import CacheError
from service.core.db import Database


def key(index: int, fmt: str = "arrow") -> CacheKey:
    return CacheKey("vds-" + "ab" * 12, index, fmt)


@pytest.fixture
def cache(tmp_path: Path, db: Database) -> Iterator[RangeCache]:
    with RangeCache(tmp_path / "cache", db, 1000) as c:
        yield c


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != ".lock"}


def written(cache: RangeCache, k: CacheKey, data: bytes) -> Path:
    """What a worker does: write the bytes under a temporary name the cache gave."""
    temp = cache.temp_path(k)
    temp.write_bytes(data)
    return temp


def test_put_file_commits_the_file_as_the_entry(cache: RangeCache) -> None:
    data = b"range bytes written by a worker" * 5
    temp = written(cache, key(4), data)
    assert temp.parent == (cache.root / key(4).relpath).parent and temp.name.endswith(".tmp")
    entry = cache.put_file(key(4), temp, len(data), zlib.adler32(data), events=7)
    assert entry == CacheEntry(key(4), cache.root / key(4).relpath, len(data), zlib.adler32(data), 7)
    assert cache.read(key(4)) == (entry, data)  # the recorded checksum matches the file
    assert files_under(cache.root) == {key(4).relpath}  # renamed, not copied


def test_put_file_replaces_an_entry_and_evicts_to_the_budget(cache: RangeCache) -> None:
    cache.put(key(1), b"o" * 600, events=1)
    cache.put(key(2), b"old", events=1)
    new = b"n" * 500
    cache.put_file(key(2), written(cache, key(2), new), len(new), zlib.adler32(new), events=2)
    assert cache.read(key(2)) is not None and cache.read(key(2))[1] == new  # type: ignore[index]
    assert not cache.contains(key(1))  # 600 + 500 > 1000: the older entry went
    assert cache.total_bytes() == 500


def test_temp_names_are_unique(cache: RangeCache) -> None:
    assert len({cache.temp_path(key(1)) for _ in range(50)}) == 50


def test_a_size_that_does_not_match_leaves_nothing(cache: RangeCache) -> None:
    temp = written(cache, key(1), b"12345")
    with pytest.raises(CacheError, match=r"has 5 bytes, the writer said 6") as info:
        cache.put_file(key(1), temp, 6, zlib.adler32(b"12345"), events=1)
    assert str(temp) in str(info.value)
    assert not temp.exists() and cache.entries() == [] and files_under(cache.root) == set()


@pytest.mark.parametrize(("events", "checksum"), [(-1, 1), (1, -5), (1, 1 << 32)])
def test_bad_values_leave_nothing(cache: RangeCache, events: int, checksum: int) -> None:
    temp = written(cache, key(1), b"x")
    with pytest.raises(CacheError):
        cache.put_file(key(1), temp, 1, checksum, events=events)
    assert not temp.exists() and cache.entries() == []


def test_a_path_that_is_not_a_temp_name_of_the_key_is_refused_and_kept(cache: RangeCache, tmp_path: Path) -> None:
    elsewhere = tmp_path / "precious.bin"
    elsewhere.write_bytes(b"x")
    other_key = written(cache, key(2), b"x")
    for path in (elsewhere, other_key.parent / "00000001.arrow", other_key.with_name(".00000002.parquet.abc.tmp")):
        with pytest.raises(CacheError, match="not a temporary name"):
            cache.put_file(key(1), path, 1, zlib.adler32(b"x"), events=1)
    assert elsewhere.exists() and other_key.exists() and cache.entries() == []


def test_a_failed_commit_deletes_the_temp_file(tmp_path: Path, db: Database) -> None:
    def broken_clock() -> float:
        raise RuntimeError("clock broke")

    with RangeCache(tmp_path / "cache", db, 1000, clock=broken_clock) as cache:
        temp = written(cache, key(1), b"data")
        with pytest.raises(RuntimeError, match="clock broke"):
            cache.put_file(key(1), temp, 4, zlib.adler32(b"data"), events=1)
        assert cache.entries() == [] and files_under(cache.root) == set()


def test_temp_files_never_committed_are_removed_at_the_next_start(tmp_path: Path, db_url: str) -> None:
    """A driver that crashed between a worker's write and the commit leaves only debris."""
    with Database(db_url) as db, RangeCache(tmp_path / "cache", db, 1000) as cache:
        kept = cache.put(key(0), b"kept", events=1)
        strays = [written(cache, key(i), b"never committed") for i in (0, 1)]
        strays.append(written(cache, key(3, "parquet"), b"never committed either"))
    assert all(s.exists() for s in strays)
    old = time.time() - 7200  # this process lives on: its files are debris once older than debris_seconds
    for stray in strays:
        os.utime(stray, (old, old))
    with Database(db_url) as db, RangeCache(tmp_path / "cache", db, 1000, debris_seconds=3600) as cache:
        assert files_under(cache.root) == {kept.key.relpath}
        assert cache.read(key(0)) == (kept, b"kept")
