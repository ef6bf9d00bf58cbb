"""The Ray engine: single-flight, worker death, user errors, cache corruption, look-ahead, and
the two ways a range reaches the cache (the worker writes the file; the bytes come through Ray).

One embedded Ray for the module (the ``embedded_ray`` fixture), shared by its two engines.
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import vdata
from vdata import Catalog, Recipe
from service.core.cache import CacheKey, RangeCache
from service.core.db import Database
from service.core.engine import Engine, EngineConfig
from service.errors import EngineError
from vdata.formats import encode_table, read_table
from service.core.jobs import JobStore
from vdata.testing import KillOnce, RangeFileServer, assert_tables_equal, wait_until

CONFIG = EngineConfig(max_in_flight=4, lookahead=3, max_retries=3)


def zmumu(events: int = 40_000, seed: int = 5, range_events: int = 10_000) -> Recipe:
    return Recipe.from_dict(
        {
            "source": {"generator": "zmumu", "events": events, "seed": seed},
            "steps": [{"transform": {"name": "leading_pair_mass_ptetaphim", "inputs": {"pt": "Muon_pt", "eta": "Muon_eta", "phi": "Muon_phi", "m": "Muon_mass"}, "outputs": {"mass": "mMuMu"}}}],
            "columns": ["mMuMu", "Muon_pt"],
            "range_events": range_events,
        }
    )


@pytest.fixture(scope="module")
def engine(embedded_ray: None, tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[Engine]:
    root = tmp_path_factory.mktemp("engine")
    db = Database(f"sqlite:///{root}/v.db")
    catalog = Catalog()
    catalog.add_dataset("opendata:hzz", shared_data / "uproot-HZZ.root", "events")
    cache = RangeCache(root / "cache", db, 64 * 1024**2)
    eng = Engine(catalog, cache, CONFIG)
    try:
        yield eng.start()
    finally:
        eng.shutdown()
        cache.close()
        db.close()


def test_materializes_through_ray_and_caches(engine: Engine) -> None:
    recipe = zmumu(seed=1)
    before = engine.submitted
    entry = engine.get(recipe, 2, "arrow", timeout=120)
    assert engine.submitted == before + 1
    expected = vdata.materialize(recipe, 2, Catalog())
    assert entry.path.read_bytes() == encode_table(expected, "arrow")
    assert entry.events == expected.num_rows
    again = engine.get(recipe, 2, "arrow", timeout=60)
    assert again.path == entry.path and engine.submitted == before + 1  # a cache hit
    assert engine.metrics is not None
    counts = engine.metrics.counts
    assert counts["ranges:arrow"] >= 1 and not any(k.startswith("cache:") for k in counts)  # the gateway's
    assert counts["bytes:arrow"] >= entry.size


def test_a_warm_pool_readies_workers_and_each_range_is_timed(engine: Engine) -> None:
    assert engine.warmed.result(timeout=120) >= 1  # distinct Ray workers that imported what tasks need
    recipe = zmumu(seed=12)
    t0 = time.time()
    engine.get(recipe, 1, "arrow", timeout=120)
    wall = time.time() - t0
    timing = next(t for t in engine.timings if t.key == CacheKey(recipe.id, 1, "arrow"))
    parts = (timing.queued, timing.plan, timing.make, timing.write, timing.collect, timing.commit)
    assert all(part >= 0 for part in parts) and timing.make > 0
    assert t0 <= timing.submitted and timing.total <= wall
    assert not timing.fresh  # made on a worker that had run a task before: the warm-up's


def test_a_submitted_remote_recipe_has_its_file_opened_before_any_range_is_asked(
    engine: Engine, shared_data: Path
) -> None:
    assert engine.warmed.result(timeout=120) >= 1
    with RangeFileServer(shared_data) as site:
        engine.catalog.add_dataset("remote:hzz", [f"{site.url}/uproot-HZZ.root"], "events")
        recipe = Recipe.from_dict({"source": {"dataset": "remote:hzz"}, "columns": ["NMuon"], "range_events": 1000},
                                  engine.catalog)
        registered = site.requests
        engine.check(engine.plan(recipe))  # what a submission does: no steps, no dry run
        wait_until(lambda: site.requests > registered, timeout=60, message="the file opened in a worker")
        # ... and its first range (stage_on_submit = 1) made as Arrow before anyone asks
        wait_until(lambda: engine.cache.contains(CacheKey(recipe.id, 0, "arrow")), timeout=120,
                   message="range 0 made at submission")
        submitted = engine.submitted
        entry = engine.get(recipe, 0, "arrow", timeout=120)
        assert engine.submitted == submitted  # a cache hit
        assert_tables_equal(read_table(entry.path, "arrow"), vdata.materialize(recipe, 0, engine.catalog))
        assert not engine.cache.contains(CacheKey(recipe.id, 1, "arrow"))  # only the first
        assert engine.stage_first(engine.plan(recipe)) == 0  # cached: nothing started again
    generated = engine.plan(zmumu(seed=13))
    assert engine.ready_workers(generated) == 0 and engine.stage_first(generated) == 0  # made in milliseconds


def test_dataset_ranges_in_every_format(engine: Engine, tmp_path: Path) -> None:
    recipe = Recipe.from_dict({"source": {"dataset": "opendata:hzz"}, "steps": [{"filter": "NMuon >= 1"}], "columns": ["NMuon", "Muon_Px"], "range_events": 1000}, engine.catalog)
    for fmt in vdata.FORMATS:
        entry = engine.get(recipe, 1, fmt, timeout=120)
        assert_tables_equal(read_table(entry.path, fmt), vdata.materialize(recipe, 1, engine.catalog))


def test_compressed_arrow_is_its_own_entry(engine: Engine) -> None:
    recipe = zmumu(seed=1)
    expected = vdata.materialize(recipe, 3, Catalog())
    plain = engine.get(recipe, 3, "arrow", timeout=120)
    for compression in ("lz4", "zstd"):
        entry = engine.get(recipe, 3, f"arrow+{compression}", timeout=120)
        assert entry.path != plain.path and entry.path.name == f"00000003.arrow+{compression}"
        assert entry.path.read_bytes() == encode_table(expected, "arrow", compression)
        assert entry.size < plain.size
        assert_tables_equal(read_table(entry.path, "arrow"), expected)


def test_twenty_concurrent_requests_run_one_materialization(engine: Engine) -> None:
    recipe = zmumu(seed=2)
    before = engine.submitted
    results: list[Path] = []
    barrier = threading.Barrier(20)

    def ask() -> None:
        barrier.wait()
        results.append(engine.get(recipe, 0, "parquet", timeout=120).path)

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 20 and len(set(results)) == 1
    assert engine.submitted == before + 1


def test_a_killed_worker_is_retried_and_the_bytes_are_identical(engine: Engine, tmp_path: Path) -> None:
    recipe = zmumu(seed=3)
    expected = encode_table(vdata.materialize(recipe, 1, Catalog()), "arrow")
    hook = KillOnce(tmp_path / "kill-once")
    engine.fault_hook = hook
    try:
        entry = engine.get(recipe, 1, "arrow", timeout=180)
    finally:
        engine.fault_hook = None
    assert not hook.marker.exists()  # the first attempt really died
    assert entry.path.read_bytes() == expected


def test_user_errors_are_not_retried_and_carry_the_message(engine: Engine) -> None:
    catalog = engine.catalog
    source = "def picky(s, limit):\n    if s > limit:\n        raise ValueError('boom: sum too large')\n    return s\n"
    catalog.add_transform("picky", source, {"s": "flat", "limit": "flat"}, {"out": "float64"}, kind="element")
    src = {"generator": "zmumu", "events": 3000, "seed": 4}
    sums = Recipe.from_dict({"source": src, "steps": [{"define": {"s": "sum(Muon_pt)"}}], "columns": ["s"], "range_events": 1000})
    per_range = [vdata.materialize(sums, i, catalog)["s"].to_numpy().max() for i in range(3)]
    failing = [i for i, m in enumerate(per_range) if m > per_range[0]]
    assert failing, "the seed gives no range with a larger sum than range 0"
    recipe = Recipe.from_dict(
        {
            "source": src,
            "steps": [
                {"define": {"s": "sum(Muon_pt)", "limit": f"{float(per_range[0])!r} + 0 * sum(Muon_pt)"}},
                {"transform": {"name": "picky", "inputs": {"s": "s", "limit": "limit"}, "outputs": {"out": "t"}}},
            ],
            "columns": ["t"],
            "range_events": 1000,
        },
        catalog,
    )
    before = engine.submitted
    with pytest.raises(vdata.TransformError) as info:
        engine.get(recipe, failing[0], "arrow", timeout=120)
    assert "boom: sum too large" in str(info.value) and "'picky'" in str(info.value)
    assert f"range {failing[0]} [{failing[0] * 1000}, {failing[0] * 1000 + 1000}) of {recipe.id}" in str(info.value)
    assert engine.submitted == before + 1  # one task: Ray did not retry user code
    assert engine.get(recipe, 0, "arrow", timeout=120).events == 1000


def test_a_corrupted_cache_file_is_never_served(engine: Engine) -> None:
    recipe = zmumu(seed=6)
    entry = engine.get(recipe, 0, "arrow", timeout=120)
    good = entry.path.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0xFF
    entry.path.write_bytes(bytes(data))
    before, corrupt = engine.submitted, engine.cache.corrupt_count
    again = engine.get(recipe, 0, "arrow", timeout=120)
    assert engine.cache.corrupt_count == corrupt + 1 and engine.submitted == before + 1
    assert again.path.read_bytes() == good
    again.path.write_bytes(good[: len(good) // 3])  # truncated
    assert engine.get(recipe, 0, "arrow", timeout=120).path.read_bytes() == good


def test_lookahead_materializes_ready_ranges_before_leases(engine: Engine, tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path}/jobs.db")
    jobs = JobStore(db)
    recipe = zmumu(events=50_000, seed=7)
    job = jobs.create_job(recipe.id, engine.plan(recipe).ranges)
    assert engine.metrics is not None
    ahead = engine.metrics.counts.get("lookahead", 0)
    started = engine.prefetch(recipe, [r.index for r in jobs.next_ready(job, CONFIG.lookahead)], "arrow")
    assert started == 3 and engine.metrics.counts["lookahead"] == ahead + 3  # vdata_lookahead_ranges_total
    for r in jobs.next_ready(job, 3):
        engine.request(recipe, r.index, "arrow").result(timeout=120)
        assert engine.cache.contains(CacheKey(recipe.id, r.index, "arrow"))
    before = engine.submitted
    for lease in jobs.lease(job, "w1", 3):
        engine.get(recipe, lease.index, "arrow", timeout=60)  # already there: no new task
    assert engine.submitted == before
    db.close()


def test_range_out_of_bounds_submits_nothing(engine: Engine) -> None:
    before = engine.submitted
    with pytest.raises(vdata.RangeOutOfBounds):
        engine.get(zmumu(seed=8), 99, "arrow")
    assert engine.submitted == before


# -- how a range reaches the cache: the worker writes it, or the bytes come through Ray -------


@pytest.fixture(scope="module")
def bytes_engine(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A second engine on the same Ray whose tasks always return the bytes, as on another node."""
    root = tmp_path_factory.mktemp("bytes-engine")
    db = Database(f"sqlite:///{root}/v.db")
    cache = RangeCache(root / "cache", db, 64 * 1024**2)
    eng = Engine(engine.catalog, cache, CONFIG.model_copy(update={"worker_writes": False}))
    try:
        yield eng.start()
    finally:
        eng.shutdown()
        cache.close()
        db.close()


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.tmp"))


def spy_on_temp_files(folder: Path, log: Path) -> Callable[[str, int], None]:
    """A hook that records, from inside the task, which temporary files lie in ``folder``."""

    def spy(recipe_json: str, index: int) -> None:
        with open(log, "a") as f:
            f.write(json.dumps(sorted(p.name for p in folder.glob(".*.tmp"))) + "\n")

    return spy


@pytest.mark.parametrize("worker_writes", [True, False], ids=["worker-writes", "bytes-through-ray"])
def test_both_paths_cache_identical_bytes_with_the_right_checksum(
    engine: Engine, bytes_engine: Engine, worker_writes: bool, tmp_path: Path
) -> None:
    eng = engine if worker_writes else bytes_engine
    recipe = zmumu(seed=11)
    expected_table = vdata.materialize(recipe, 3, Catalog())
    expected = encode_table(expected_table, "arrow")
    key = CacheKey(recipe.id, 3, "arrow")
    folder = (eng.cache.root / key.relpath).parent
    log = tmp_path / "spy.jsonl"
    eng.written_hook = spy_on_temp_files(folder, log)
    try:
        entry = eng.get(recipe, 3, "arrow", timeout=120)
    finally:
        eng.written_hook = None
    [seen] = [json.loads(line) for line in log.read_text().splitlines()]
    if worker_writes:  # the task itself wrote the file, under a temporary name in the entry's folder
        assert len(seen) == 1 and seen[0].startswith(".00000003.arrow.")
    else:
        assert seen == []
    assert entry.path.read_bytes() == expected
    assert (entry.size, entry.adler32, entry.events) == (len(expected), zlib.adler32(expected), expected_table.num_rows)
    assert [e for e in eng.cache.entries() if e.key == key] == [entry]  # what the index recorded
    assert eng.cache.read(key) == (entry, expected)  # and it verifies
    assert temp_files(folder) == []


def test_a_task_failing_after_its_write_leaves_no_file_and_no_entry(engine: Engine, tmp_path: Path) -> None:
    recipe = zmumu(seed=12)
    key = CacheKey(recipe.id, 0, "arrow")
    folder = (engine.cache.root / key.relpath).parent
    log = tmp_path / "spy.jsonl"
    spy = spy_on_temp_files(folder, log)

    def fail_after_writing(recipe_json: str, index: int) -> None:
        spy(recipe_json, index)
        raise RuntimeError("injected failure after the write")

    engine.written_hook = fail_after_writing
    try:
        with pytest.raises(EngineError, match="injected failure after the write"):
            engine.get(recipe, 0, "arrow", timeout=120)
    finally:
        engine.written_hook = None
    assert len(json.loads(log.read_text())) == 1  # the temporary file was there when the task failed
    assert not engine.cache.contains(key) and temp_files(folder) == []
    assert engine.get(recipe, 0, "arrow", timeout=120).events == 10_000  # and asking again works


def test_a_worker_killed_after_its_write_is_retried_into_the_same_file(engine: Engine, tmp_path: Path) -> None:
    recipe = zmumu(seed=13)
    expected = encode_table(vdata.materialize(recipe, 2, Catalog()), "arrow")
    hook = KillOnce(tmp_path / "kill-once")
    engine.written_hook = hook
    try:
        entry = engine.get(recipe, 2, "arrow", timeout=180)
    finally:
        engine.written_hook = None
    assert not hook.marker.exists()  # the first attempt died with its file written
    assert entry.path.read_bytes() == expected and entry.adler32 == zlib.adler32(expected)
    assert temp_files(entry.path.parent) == []  # the retry rewrote the same temporary file


def test_an_unexpected_error_while_committing_resolves_every_waiter(
    engine: Engine, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found from outside: an error outside VdataError/RayError/OSError (here SQLite's, in the
    commit) left the single-flight future unresolved, and every asker of that range waited 600 s."""
    import sqlite3

    def locked(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(engine.cache, "put_file", locked)
    monkeypatch.setattr(engine.cache, "put", locked)
    recipe = zmumu(seed=31)
    futures = [engine.request(recipe, 0, "arrow") for _ in range(3)]  # one task, three askers
    for future in futures:
        with pytest.raises(EngineError, match="OperationalError") as info:
            future.result(timeout=120)
        assert "database is locked" not in str(info.value)  # ours, not the user's: the log has it
    monkeypatch.undo()
    assert engine.get(recipe, 0, "arrow", timeout=120).events > 0  # nothing stuck: asked again, it is made
