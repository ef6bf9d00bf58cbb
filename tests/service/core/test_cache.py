"""The range cache: atomic files, checked size and adler32, LRU eviction under a budget, pins,
restarts and threads."""

from __future__ import annotations

import itertools
import os
import random
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.core.cache import CacheEntry, CacheKey, RangeCache, adler32, adler32_hex, split_stored, stored_format
from service.errors import CacheBusy, CacheError
from service.core.db import Database
from vdata.errors import VdataError

RECIPE = "vds-" + "0123456789abcdef01234567"


def key(index: int, fmt: str = "arrow", recipe: int = 0) -> CacheKey:
    return CacheKey(f"vds-{recipe:024x}", index, fmt)


def ticking() -> itertools.count[float]:
    """A clock that moves one second per call, so that the LRU order is exact."""
    return itertools.count(1.0)


@pytest.fixture
def reports() -> list[tuple[CacheKey, str]]:
    return []


@pytest.fixture
def cache(tmp_path: Path, db: Database, reports: list[tuple[CacheKey, str]]) -> Iterator[RangeCache]:
    def on_corrupt(k: CacheKey, reason: str) -> None:
        reports.append((k, reason))

    with RangeCache(tmp_path / "cache", db, 1000, clock=ticking().__next__, on_corrupt=on_corrupt) as c:
        yield c


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != ".lock"}


# -- keys ------------------------------------------------------------------------------------


def test_key_relpath_shards_by_recipe() -> None:
    assert CacheKey(RECIPE, 12, "arrow").relpath == f"{RECIPE}/00000012.arrow"
    assert CacheKey(RECIPE, 0, "root").relpath == f"{RECIPE}/00000000.root"


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        (("vds-123", 0, "arrow"), "recipe_id"),
        (("vds-" + "A" * 24, 0, "arrow"), "recipe_id"),
        (("xyz-" + "0" * 24, 0, "arrow"), "recipe_id"),
        ((RECIPE + "/..", 0, "arrow"), "recipe_id"),
        ((RECIPE, -1, "arrow"), "range_index"),
        ((RECIPE, True, "arrow"), "range_index"),
        ((RECIPE, 1.0, "arrow"), "range_index"),
        ((RECIPE, 0, "csv"), "format"),
        ((RECIPE, 0, ["arrow"]), "format"),
        ((RECIPE, 0, "parquet+lz4"), "format"),
        ((RECIPE, 0, "arrow+gzip"), "format"),
    ],
)
def test_key_validation_names_the_field(fields: tuple[object, object, object], named: str) -> None:
    with pytest.raises(CacheError, match=named) as info:
        CacheKey(*fields)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, VdataError)


def test_the_key_records_arrow_compression() -> None:
    assert [stored_format("arrow", c) for c in ("none", "lz4", "zstd")] == ["arrow", "arrow+lz4", "arrow+zstd"]
    assert stored_format("parquet") == "parquet"
    for stored in ("arrow", "arrow+lz4", "arrow+zstd", "parquet", "root"):
        fmt, compression = split_stored(stored)
        assert stored_format(fmt, compression) == stored
        k = CacheKey(RECIPE, 3, stored)
        assert (k.base_format, k.compression) == (fmt, compression)
    assert CacheKey(RECIPE, 3, "arrow+zstd").relpath == f"{RECIPE}/00000003.arrow+zstd"
    with pytest.raises(VdataError, match="compression 'lz4' applies to arrow only"):
        stored_format("root", "lz4")


def test_adler32_hex() -> None:
    assert adler32_hex(1) == "00000001"
    assert adler32_hex(zlib.adler32(b"abc")) == "024d0127"
    with pytest.raises(ValueError, match="adler32"):
        adler32_hex(1 << 32)


# -- put and get -----------------------------------------------------------------------------


def test_put_get_round_trip(cache: RangeCache) -> None:
    data = b"arrow bytes" * 10
    put = cache.put(key(3), data, events=42)
    assert put == CacheEntry(key(3), cache.root / key(3).relpath, len(data), zlib.adler32(data), 42)
    assert put.path.is_absolute() and put.path.read_bytes() == data
    assert cache.get(key(3)) == put
    assert cache.read(key(3)) == (put, data)
    assert cache.total_bytes() == len(data)
    assert cache.entries() == [put]
    assert cache.contains(key(3)) and not cache.contains(key(3, "parquet"))
    assert files_under(cache.root) == {key(3).relpath}  # no temporary file left


def test_put_replaces_an_entry(cache: RangeCache) -> None:
    cache.put(key(1), b"old", events=1)
    cache.put(key(1), b"newer", events=2)
    found = cache.read(key(1))
    assert found is not None and found[1] == b"newer" and found[0].events == 2
    assert cache.total_bytes() == 5


def test_miss(cache: RangeCache) -> None:
    cache.put(key(1), b"x", events=1)
    assert cache.get(key(2)) is None
    assert cache.get(key(1, "root")) is None
    assert cache.read(key(2)) is None
    with cache.pinned(key(2)) as entry:
        assert entry is None
    assert cache.corrupt_count == 0


def test_put_checks_events(cache: RangeCache) -> None:
    with pytest.raises(CacheError, match="events"):
        cache.put(key(1), b"x", events=-1)
    assert cache.entries() == []


def test_failed_put_leaves_nothing(tmp_path: Path, db: Database) -> None:
    def broken_clock() -> float:
        raise RuntimeError("clock broke")

    with RangeCache(tmp_path / "cache", db, 1000, clock=broken_clock) as cache:
        with pytest.raises(RuntimeError, match="clock broke"):
            cache.put(key(1), b"data", events=1)
        assert cache.entries() == []
        assert files_under(cache.root) == set()


@given(st.binary(max_size=20_000), st.integers(0, 20_000))
@settings(max_examples=200, deadline=None)
def test_adler32_is_zlibs_also_when_chained(data: bytes, cut: int) -> None:
    assert adler32(data) == zlib.adler32(data)
    assert adler32(data[cut:], adler32(data[:cut])) == zlib.adler32(data)


# -- damaged files ---------------------------------------------------------------------------


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1])


def delete(path: Path) -> None:
    path.unlink()


def by_get(cache: RangeCache, k: CacheKey) -> object:
    return cache.get(k)


def by_read(cache: RangeCache, k: CacheKey) -> object:
    return cache.read(k)


def by_pin(cache: RangeCache, k: CacheKey) -> object:
    with cache.pinned(k) as entry:
        return entry


@pytest.mark.parametrize(("damage", "reason"), [(flip_a_byte, "adler32"), (truncate, "bytes"), (delete, "missing")])
@pytest.mark.parametrize("access", [by_get, by_read, by_pin])
def test_damaged_file_is_never_served(
    cache: RangeCache,
    reports: list[tuple[CacheKey, str]],
    damage: Callable[[Path], None],
    reason: str,
    access: Callable[[RangeCache, CacheKey], object],
) -> None:
    data = bytes(range(256)) * 3
    entry = cache.put(key(7), data, events=10)
    cache.put(key(8), b"neighbour", events=1)
    damage(entry.path)

    assert access(cache, key(7)) is None
    assert cache.corrupt_count == 1
    assert len(reports) == 1 and reports[0][0] == key(7) and reason in reports[0][1]
    assert not entry.path.exists()
    assert [e.key for e in cache.entries()] == [key(8)]

    assert cache.get(key(7)) is None  # now a plain miss, not counted again
    assert cache.corrupt_count == 1
    cache.put(key(7), data, events=10)  # regenerated
    assert cache.read(key(7)) == (entry, data)
    assert cache.read(key(8)) is not None


def test_a_read_racing_a_put_is_not_damage(cache: RangeCache, monkeypatch: pytest.MonkeyPatch) -> None:
    cache.put(key(1), b"version 1", events=1)
    real_read_bytes = Path.read_bytes
    raced = []

    def read_bytes(path: Path) -> bytes:
        if path.name == Path(key(1).relpath).name and not raced:
            raced.append(path)  # a put lands between the read of the index and of the file
            cache.put(key(1), b"version 2!", events=2)
        return real_read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    found = cache.read(key(1))
    assert raced and found is not None
    assert (found[0].events, found[1]) == (2, b"version 2!")
    assert cache.corrupt_count == 0


@pytest.mark.parametrize(("damage", "reason"), [(truncate, "bytes"), (delete, "missing")])
def test_opened_checks_the_size_before_the_first_byte(
    cache: RangeCache, reports: list[tuple[CacheKey, str]], damage: Callable[[Path], None], reason: str
) -> None:
    entry = cache.put(key(7), bytes(range(256)), events=10)
    damage(entry.path)
    with cache.opened(key(7)) as found:
        assert found is None
    assert cache.corrupt_count == 1 and reason in reports[0][1]
    assert cache.entries() == []


def test_opened_leaves_the_checksum_to_the_reader_who_drops_a_damaged_entry(cache: RangeCache) -> None:
    data = bytes(range(256)) * 3
    entry = cache.put(key(7), data, events=10)
    flip_a_byte(entry.path)
    with cache.opened(key(7)) as found:
        assert found is not None and found[0] == entry
        sent = found[1].read()
        assert len(sent) == len(data) and zlib.adler32(sent) != entry.adler32
        assert cache.drop_if_damaged(key(7))  # dropped although pinned: it is damaged
        assert cache.corrupt_count == 1 and not entry.path.exists()
    assert cache.get(key(7)) is None


def test_drop_if_damaged_keeps_a_good_file(cache: RangeCache) -> None:
    """A reader that saw a bad checksum from a file a put has replaced since must not drop the new one."""
    entry = cache.put(key(7), b"version 1", events=1)
    with cache.opened(key(7)) as found:
        assert found is not None
        cache.put(key(7), b"version 2!", events=2)
        assert found[1].read() == b"version 1"  # the open file is the old version
        assert not cache.drop_if_damaged(key(7))
    assert cache.read(key(7)) == (CacheEntry(key(7), entry.path, 10, zlib.adler32(b"version 2!"), 2), b"version 2!")
    assert cache.corrupt_count == 0


def test_opened_records_the_use_and_pins(tmp_path: Path, db: Database) -> None:
    with RangeCache(tmp_path / "cache", db, 200, clock=ticking().__next__) as cache:
        cache.put(key(0), bytes(100), events=1)
        cache.put(key(1), bytes(100), events=1)
        with cache.opened(key(0)):
            pass  # a use: 1 is now the least recently used
        cache.put(key(2), bytes(100), events=1)
        assert [e.key for e in cache.entries()] == [key(0), key(2)]
        with cache.opened(key(0)) as found:
            assert found is not None
            assert cache.get(key(2)) is not None  # 0 is the least recently used, but open
            cache.put(key(3), bytes(100), events=1)
            assert [e.key for e in cache.entries()] == [key(0), key(3)]


# -- eviction --------------------------------------------------------------------------------


def test_lru_goes_by_last_use_not_by_age(tmp_path: Path, db: Database) -> None:
    with RangeCache(tmp_path / "cache", db, 300, clock=ticking().__next__) as cache:
        for i in range(3):
            cache.put(key(i), bytes(100), events=1)
        assert cache.get(key(0)) is not None  # 0 is now the most recently used
        cache.put(key(3), bytes(100), events=1)
        assert [e.key for e in cache.entries()] == [key(2), key(0), key(3)]
        assert cache.get(key(1)) is None and not (cache.root / key(1).relpath).exists()
        assert cache.evict() == 0
        assert cache.corrupt_count == 0


def test_entry_larger_than_the_budget_is_not_kept(tmp_path: Path, db: Database) -> None:
    with RangeCache(tmp_path / "cache", db, 100, clock=ticking().__next__) as cache:
        cache.put(key(0), bytes(50), events=1)
        entry = cache.put(key(1), bytes(101), events=1)
        assert entry.size == 101
        assert cache.get(key(1)) is None and not entry.path.exists()
        assert [e.key for e in cache.entries()] == [key(0)]  # the rest was spared: no use evicting it


OPS = st.lists(
    st.tuples(st.sampled_from(["put", "put", "get"]), st.integers(0, 5), st.integers(0, 130)), max_size=25
)


@settings(max_examples=40, deadline=None)
@given(ops=OPS)
def test_eviction_follows_an_lru_model(ops: list[tuple[str, int, int]]) -> None:
    budget = 100
    with tempfile.TemporaryDirectory() as tmp, Database(f"sqlite:///{tmp}/v.db") as db:
        with RangeCache(Path(tmp) / "cache", db, budget, clock=ticking().__next__) as cache:
            model: dict[CacheKey, int] = {}  # size by key, least recently used first
            for op, i, size in ops:
                k = key(i)
                if op == "put":
                    cache.put(k, bytes([i]) * size, events=i)
                    model.pop(k, None)
                    model[k] = size
                    if size > budget:
                        del model[k]  # cannot fit: it goes, the others stay
                    for old in [o for o in model if o != k]:
                        if sum(model.values()) <= budget:
                            break
                        del model[old]
                    assert cache.total_bytes() <= budget
                    assert (k in model) == (size <= budget)  # what was just written stays if it fits
                else:
                    found = cache.read(k)
                    assert (found is not None) == (k in model)
                    if found is not None:
                        assert found[1] == bytes([i]) * model[k]
                        model[k] = model.pop(k)
                assert [e.key for e in cache.entries()] == list(model)
                assert files_under(cache.root) == {k.relpath for k in model}
            assert cache.corrupt_count == 0


# -- pins ------------------------------------------------------------------------------------


def test_pinned_entry_is_never_evicted(tmp_path: Path, db: Database) -> None:
    with RangeCache(tmp_path / "cache", db, 100, clock=ticking().__next__) as cache:
        cache.put(key(0), b"a" * 40, events=1)
        with cache.pinned(key(0)) as entry:
            assert entry is not None
            cache.put(key(1), b"b" * 40, events=1)
            cache.put(key(2), b"c" * 40, events=1)  # over budget: 0 is the oldest but pinned
            assert entry.path.read_bytes() == b"a" * 40
            assert {e.key for e in cache.entries()} == {key(0), key(2)}
            with pytest.raises(CacheBusy, match=key(0).recipe_id):
                cache.remove(key(0))
        cache.put(key(3), b"d" * 40, events=1)  # unpinned, 0 is the least recently used again
        assert {e.key for e in cache.entries()} == {key(2), key(3)}
        assert not (cache.root / key(0).relpath).exists()


def test_new_entry_goes_when_the_rest_is_pinned(tmp_path: Path, db: Database) -> None:
    with RangeCache(tmp_path / "cache", db, 100, clock=ticking().__next__) as cache:
        cache.put(key(0), bytes(60), events=1)
        with cache.pinned(key(0)):
            cache.put(key(1), bytes(60), events=1)
            assert [e.key for e in cache.entries()] == [key(0)]


def test_over_budget_while_pinned_is_settled_at_unpin(tmp_path: Path, db: Database) -> None:
    with RangeCache(tmp_path / "cache", db, 100, clock=ticking().__next__) as cache:
        cache.put(key(0), bytes(60), events=1)
        with cache.pinned(key(0)), cache.pinned(key(1)) as missing:
            assert missing is None
            cache.put(key(1), bytes(60), events=1)  # both pinned: nothing can go yet
            assert cache.total_bytes() == 120
        assert cache.total_bytes() <= 100


def test_remove(cache: RangeCache) -> None:
    entry = cache.put(key(1), b"x", events=1)
    assert cache.remove(key(1)) is True
    assert not entry.path.exists() and cache.entries() == []
    assert cache.remove(key(1)) is False


# -- restart ---------------------------------------------------------------------------------


def test_restart_keeps_entries_and_cleans_debris(tmp_path: Path, db_url: str) -> None:
    root = tmp_path / "cache"
    with Database(db_url) as db, RangeCache(root, db, 1000, clock=ticking().__next__) as cache:
        kept = [cache.put(key(i), bytes([i]) * 10, events=i) for i in range(3)]
        lost = cache.put(key(0, "parquet"), b"gone", events=1)
        cache.get(key(0))
    # what a crash and a careless hand leave behind
    lost.path.unlink()
    shard = root / key(0).recipe_id
    (shard / ".00000005.arrow.k2j3h4.tmp").write_bytes(b"half written")
    (shard / "00000009.root").write_bytes(b"no row")
    (root / key(0, recipe=1).recipe_id).mkdir()
    (root / key(0, recipe=1).relpath).write_bytes(b"no row either")
    (root / "README").write_text("not the cache's")
    (shard / "notes.txt").write_text("not the cache's either")
    old = time.time() - 7200  # debris is what nobody can still be writing: older than debris_seconds
    for path in (shard / ".00000005.arrow.k2j3h4.tmp", shard / "00000009.root", root / key(0, recipe=1).relpath,
                 root / key(0, recipe=1).recipe_id):
        os.utime(path, (old, old))

    reports: list[tuple[CacheKey, str]] = []
    with Database(db_url) as db, RangeCache(root, db, 1000, on_corrupt=lambda k, r: reports.append((k, r)),
                                            debris_seconds=3600) as cache:
        assert [e.key for e in cache.entries()] == [key(1), key(2), key(0, "parquet"), key(0)]  # LRU order survives
        for entry in kept:
            assert cache.read(entry.key) == (entry, entry.path.read_bytes())
        assert reports == []  # a row is never dropped at start (another gateway may see its file)...
        assert cache.read(key(0, "parquet")) is None  # ... but when read
        assert reports == [(key(0, "parquet"), "the file is missing")]
        assert files_under(root) == {e.key.relpath for e in kept} | {"README", f"{shard.name}/notes.txt"}
        emptied = root / key(0, recipe=1).recipe_id
        assert not any(emptied.iterdir())  # emptied just now: removed by a later start, once old


def test_restart_with_a_smaller_budget_evicts(tmp_path: Path, db_url: str) -> None:
    with Database(db_url) as db, RangeCache(tmp_path / "c", db, 1000, clock=ticking().__next__) as cache:
        for i in range(5):
            cache.put(key(i), bytes(100), events=1)
    with Database(db_url) as db, RangeCache(tmp_path / "c", db, 250) as cache:
        assert [e.key for e in cache.entries()] == [key(3), key(4)]


def test_budget_must_be_a_size(tmp_path: Path, db: Database) -> None:
    with pytest.raises(CacheError, match="budget_bytes"):
        RangeCache(tmp_path / "cache", db, -1)


# -- threads ---------------------------------------------------------------------------------


def test_threads_do_not_corrupt_anything(tmp_path: Path, db: Database) -> None:
    budget = 1200
    keys = [key(i) for i in range(8)]

    def content(i: int, version: int) -> bytes:
        return bytes([i, version]) * (50 + 20 * i)  # one size per key, content by version

    def work(seed: int) -> int:
        rng = random.Random(seed)
        hits = 0
        for _ in range(100):
            i = rng.randrange(len(keys))
            choice = rng.random()
            if choice < 0.4:
                cache.put(keys[i], content(i, rng.randrange(3)), events=i)
                assert cache.total_bytes() <= budget + 4 * 190  # puts in flight, not yet evicted
            elif choice < 0.8:
                found = cache.read(keys[i])
                if found is not None:
                    entry, data = found
                    assert data in {content(i, v) for v in range(3)}
                    assert (entry.size, entry.adler32) == (len(data), zlib.adler32(data))
                    hits += 1
            else:
                with cache.pinned(keys[i]) as entry:
                    if entry is not None:
                        assert entry.path.stat().st_size == entry.size  # not evicted under us
                        hits += 1
        return hits

    with RangeCache(tmp_path / "cache", db, budget) as cache:
        with ThreadPoolExecutor(4) as pool:
            hits = sum(pool.map(work, range(4)))
        assert hits > 0
        assert cache.corrupt_count == 0
        assert cache.total_bytes() <= budget
        entries = cache.entries()
        assert files_under(cache.root) == {e.key.relpath for e in entries}
        for entry in entries:
            assert cache.read(entry.key) is not None
        assert cache.corrupt_count == 0
