"""The provenance kept with each cache entry: written with it, replaced when the range is made
again, gone with it (removed or evicted), kept over a restart; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.core import provenance_store
from service.core.cache import CacheKey, RangeCache
from service.core.db import Database
from service.errors import NotMaterialized


RID = "vds-aaaaaaaaaaaaaaaaaaaaaaaa"


def body(pid: str, node: str = "here") -> str:
    return json.dumps({"id": pid, "node": node})


def test_kept_with_the_entry_replaced_removed_and_over_a_restart(tmp_path: Path, db_url: str) -> None:
    key = CacheKey(RID, 3, "parquet")
    with Database(db_url) as db:
        cache = RangeCache(tmp_path / "cache", db, 10_000)
        with pytest.raises(NotMaterialized, match=rf"range 3 of {RID} is not in the cache.*GET /v1/recipes/"):
            provenance_store.range_provenance(db, RID, 3)
        cache.put(key, b"x" * 10, 1, body("prov-1"))
        cache.put(CacheKey(RID, 3, "arrow"), b"y" * 10, 1, body("prov-1", "there"))
        assert provenance_store.find(db, RID, 3, "parquet") == {"id": "prov-1", "node": "here",
                                                                        "format": "parquet"}
        assert provenance_store.find(db, RID, 3)["format"] == "arrow"  # the one made last
        assert provenance_store.find(db, RID, 4) is None
        cache.put(key, b"z" * 10, 1, body("prov-2"))  # made again: the new one replaces the old
        assert provenance_store.find(db, RID, 3, "parquet")["id"] == "prov-2"
    with Database(db_url) as db:  # a restart
        cache = RangeCache(tmp_path / "cache", db, 10_000)
        assert provenance_store.range_provenance(db, RID, 3, "parquet")["id"] == "prov-2"
        assert cache.remove(key)
        assert provenance_store.find(db, RID, 3, "parquet") is None
        cache.put(key, b"z" * 10, 1)  # made without one: none is told
        assert provenance_store.find(db, RID, 3, "parquet") is None


def test_evicted_with_its_entry(tmp_path: Path, db_url: str) -> None:
    with Database(db_url) as db:
        cache = RangeCache(tmp_path / "cache", db, 25)
        for i in range(3):
            cache.put(CacheKey("vds-bbbbbbbbbbbbbbbbbbbbbbbb", i, "arrow"), b"x" * 10, 1, body(f"prov-{i}"))
        assert [e.key.range_index for e in cache.entries()] == [1, 2]
        assert provenance_store.find(db, "vds-bbbbbbbbbbbbbbbbbbbbbbbb", 0) is None
        assert db.read().execute("SELECT COUNT(*) FROM range_provenance").fetchone()[0] == 2
