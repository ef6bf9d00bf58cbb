"""Several caches (gateways) on one folder and one database: nobody's start removes another's
entries or the files it is writing, and an eviction by one does not break a file another sends."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from service.core.cache import CacheKey, RangeCache, adler32
from service.core.db import Database


def key(index: int, fmt: str = "arrow") -> CacheKey:
    return CacheKey(f"vds-{0:024x}", index, fmt)


def data(i: int) -> bytes:
    return i.to_bytes(4, "big") * (10 + i % 7)


def test_a_second_cache_on_the_folder_keeps_and_serves_the_first_ones_entries(tmp_path: Path, db_url: str) -> None:
    root = tmp_path / "cache"
    with Database(db_url) as db_a, RangeCache(root, db_a, 10**6) as a:
        for i in range(100):
            a.put(key(i), data(i), events=i)
        with Database(db_url) as db_b, RangeCache(root, db_b, 10**6) as b:  # starts while a still works
            assert len(b.entries()) == 100
            for i in range(100):
                found = b.read(key(i))
                assert found is not None and found[1] == data(i), i
            b.put(key(100), data(100), events=1)
            assert a.read(key(100)) is not None and a.read(key(0)) is not None
        assert b.corrupt_count == 0 and a.corrupt_count == 0


def test_a_cache_on_another_folder_does_not_drop_the_rows_at_start(tmp_path: Path, db_url: str) -> None:
    """A gateway started with a wrong cache folder (the issue: it dropped the other's 100 rows)."""
    with Database(db_url) as db_a, RangeCache(tmp_path / "a", db_a, 10**6) as a:
        for i in range(100):
            a.put(key(i), data(i), events=i)
        with Database(db_url) as db_b, RangeCache(tmp_path / "b", db_b, 10**6):
            pass
        assert len(a.entries()) == 100
        assert all(a.read(key(i)) is not None for i in range(100))


def test_start_keeps_a_live_writers_temporary_file(tmp_path: Path, db_url: str) -> None:
    root = tmp_path / "cache"
    with Database(db_url) as db_a, RangeCache(root, db_a, 10**6) as a:
        temp = a.temp_path(key(3))
        temp.write_bytes(data(3))  # a Ray worker of gateway a is writing this range
        with Database(db_url) as db_b, RangeCache(root, db_b, 10**6):
            assert temp.exists()
        entry = a.put_file(key(3), temp, len(data(3)), adler32(data(3)), events=3)
        assert entry.path.read_bytes() == data(3)


def test_start_removes_debris_of_dead_writers_and_old_files(tmp_path: Path, db_url: str) -> None:
    root = tmp_path / "cache"
    shard = root / key(0).recipe_id
    with Database(db_url) as db, RangeCache(root, db, 10**6) as cache:
        cache.put(key(0), data(0), events=1)
    dead_pid = 2**22 + 12345  # above pid_max here: no such process
    host = socket.gethostname()
    dead = shard / f".00000001.arrow.{host}-{dead_pid}.abc.tmp"
    other_host_young = shard / ".00000002.arrow.elsewhere-1.abc.tmp"
    other_host_old = shard / ".00000003.arrow.elsewhere-1.def.tmp"
    orphan_young = shard / "00000004.arrow"
    orphan_old = shard / "00000005.arrow"
    for path in (dead, other_host_young, other_host_old, orphan_young, orphan_old):
        path.write_bytes(b"debris?")
    old = time.time() - 7200
    for path in (other_host_old, orphan_old):
        os.utime(path, (old, old))
    with Database(db_url) as db, RangeCache(root, db, 10**6, debris_seconds=3600) as cache:
        assert cache.read(key(0)) is not None
    assert not dead.exists() and not other_host_old.exists() and not orphan_old.exists()
    assert other_host_young.exists() and orphan_young.exists()


def test_a_row_whose_file_is_missing_is_dropped_when_read(tmp_path: Path, db_url: str) -> None:
    root = tmp_path / "cache"
    reports: list[tuple[CacheKey, str]] = []
    with Database(db_url) as db, RangeCache(root, db, 10**6) as cache:
        gone = cache.put(key(1), data(1), events=1)
    gone.path.unlink()
    with Database(db_url) as db, RangeCache(root, db, 10**6, on_corrupt=lambda k, r: reports.append((k, r))) as cache:
        assert [e.key for e in cache.entries()] == [key(1)] and reports == []  # kept at start
        assert cache.read(key(1)) is None
        assert reports == [(key(1), "the file is missing")] and cache.entries() == []


def test_a_file_evicted_by_another_cache_while_sent_is_sent_whole(tmp_path: Path, db_url: str) -> None:
    """POSIX: an open file stays readable after another process unlinks it."""
    root = tmp_path / "cache"
    body = bytes(range(256)) * 400
    with Database(db_url) as db_a, RangeCache(root, db_a, 10**6) as a, \
            Database(db_url) as db_b, RangeCache(root, db_b, 10**6) as b:
        a.put(key(7), body, events=7)
        with a.opened(key(7)) as found:
            assert found is not None
            entry, file = found
            first = file.read(1000)
            assert b.remove(key(7))  # b does not know a's pin: the row and the file go
            assert not entry.path.exists()
            rest = file.read()
        assert first + rest == body and adler32(first + rest) == entry.adler32
        assert a.read(key(7)) is None  # a miss now: the engine makes it again
