"""Single flight across gateways: the claim decisions (pure), the claim rows on a real database,
and claims taken at once by threads and by processes on one database file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from service.core.cache import CacheKey, RangeCache
from service.core.claims import Claims, ClaimRow, Verdict, decide, new_owner, next_delay
from service.core.db import Database
from vdata.testing import wait_until

PROJECT = Path(__file__).resolve().parents[3]


def key(index: int) -> CacheKey:
    return CacheKey(f"vds-{0:024x}", index, "arrow")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- pure decisions ------------------------------------------------------------------------------


def test_decide() -> None:
    me, other = "a-1-x", "b-2-y"
    assert decide(None, False, me, 10) is Verdict.FREE
    assert decide(ClaimRow(other, 11), True, me, 10) is Verdict.CACHED  # a cache row wins
    assert decide(ClaimRow(other, 11), False, me, 10) is Verdict.HELD
    assert decide(ClaimRow(other, 10), False, me, 10) is Verdict.FREE  # expired: its owner stopped renewing
    assert decide(ClaimRow("", 0), False, me, 10) is Verdict.FREE  # released
    assert decide(ClaimRow(me, 11), False, me, 10) is Verdict.FREE  # our own


def test_back_off_grows_to_a_bound() -> None:
    delays = [next_delay(None)]
    for _ in range(20):
        delays.append(next_delay(delays[-1]))
    assert delays[0] == 0.05 and delays == sorted(delays) and delays[-1] == 1.0 and delays[1] > delays[0]


def test_owners_are_unique_and_name_the_process() -> None:
    a, b = new_owner(), new_owner()
    assert a != b and f"-{os.getpid()}-" in a


# -- rows ----------------------------------------------------------------------------------------


def test_one_owner_then_takeover_after_expiry(db_url: str) -> None:
    clock = Clock()
    with Database(db_url) as db1, Database(db_url) as db2:
        a, b = Claims(db1, 30, clock=clock), Claims(db2, 30, clock=clock)
        assert a.claim(key(0)) is Verdict.OURS
        assert a.claim(key(0)) is Verdict.OURS  # idempotent for its owner; not a second take
        assert b.claim(key(0)) is Verdict.HELD and b.peek(key(0)) is Verdict.HELD
        clock.now += 20
        assert a.renew() == 1
        clock.now += 20  # 40 s after the claim, 20 after the renewal: still held
        assert b.claim(key(0)) is Verdict.HELD
        clock.now += 11  # a died: no renewal for more than 30 s
        assert b.peek(key(0)) is Verdict.FREE and b.claim(key(0)) is Verdict.OURS
        assert a.takes(key(0)) == 2
        a.release(key(0))  # a late release of a claim a lost changes nothing
        assert a.claim(key(0)) is Verdict.HELD


def test_released_then_cached(tmp_path: Path, db_url: str) -> None:
    with Database(db_url) as db, RangeCache(tmp_path / "cache", db, 10**6) as cache:
        a, b = Claims(db, 30), Claims(db, 30)
        assert a.claim(key(1)) is Verdict.OURS
        cache.put(key(1), b"made", events=1)  # committed first, released after
        a.release(key(1))
        assert b.peek(key(1)) is Verdict.CACHED and b.claim(key(1)) is Verdict.CACHED
        assert b.takes(key(1)) == 1
        cache.remove(key(1))  # evicted: made again by whoever asks
        assert b.claim(key(1)) is Verdict.OURS and b.takes(key(1)) == 2


def test_claims_of_a_dead_process_here_are_freed_at_start(db_url: str) -> None:
    with Database(db_url) as db:
        dead = Claims(db, 3600, owner=new_owner().replace(f"-{os.getpid()}-", f"-{2**22 + 7}-"))
        assert dead.claim(key(2)) is Verdict.OURS
        alive = Claims(db, 3600)
        assert alive.claim(key(2)) is Verdict.HELD
        assert alive.free_dead_here() == 1
        assert alive.claim(key(2)) is Verdict.OURS


def test_a_watcher_hears_of_the_release_and_of_the_cache_row(tmp_path: Path, db_url: str) -> None:
    with Database(db_url) as db, RangeCache(tmp_path / "cache", db, 10**6) as cache:
        owner = Claims(db, 30)
        assert owner.claim(key(3)) is Verdict.OURS and owner.claim(key(4)) is Verdict.OURS
        heard: list[tuple[str, CacheKey]] = []
        watcher = Claims(db, 30).start(lambda k: heard.append(("cached", k)), lambda k: heard.append(("free", k)))
        try:
            watcher.watch(key(3))
            watcher.watch(key(4))
            cache.put(key(3), b"three", events=1)
            owner.release(key(3))
            owner.release(key(4))  # failed: no cache row
            wait_until(lambda: len(heard) == 2, timeout=30, message="both keys to be heard of")
            assert sorted(heard, key=lambda h: h[1].range_index) == [("cached", key(3)), ("free", key(4))]
            assert watcher.watching() == 0
        finally:
            watcher.stop()


def test_stop_releases_what_is_held(db_url: str) -> None:
    with Database(db_url) as db:
        a = Claims(db, 30).start(lambda k: None, lambda k: None)
        assert a.claim(key(5)) is Verdict.OURS
        a.stop()
        assert Claims(db, 30).claim(key(5)) is Verdict.OURS


# -- at once -------------------------------------------------------------------------------------


def test_threads_on_separate_connections_claim_each_key_once(db_url: str) -> None:
    n = 8
    keys = [key(i) for i in range(40)]
    barrier = threading.Barrier(n)
    won: list[list[CacheKey]] = [[] for _ in range(n)]

    def work(i: int) -> None:
        with Database(db_url) as db:
            claims = Claims(db, 30)
            barrier.wait()
            for k in keys if i % 2 == 0 else list(reversed(keys)):
                if claims.claim(k) is Verdict.OURS:
                    won[i].append(k)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    every = [k for w in won for k in w]
    assert sorted(every, key=lambda k: k.range_index) == keys
    with Database(db_url) as db:
        assert all(Claims(db).takes(k) == 1 for k in keys)


CLAIMER = """
import json, sys, time
from service.core.cache import CacheKey
from service.core.claims import Claims, Verdict
from service.core.db import Database
db = Database(sys.argv[1])
claims = Claims(db, 30)
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
won = [i for i in range(60) if claims.claim(CacheKey("vds-" + "0" * 24, i, "arrow")) is Verdict.OURS]
print(json.dumps(won))
"""


@pytest.mark.slow
def test_processes_claim_each_key_once(db_url: str) -> None:
    Database(db_url).close()  # the schema, made once
    start = time.time() + 3
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, db_url, str(start)], cwd=PROJECT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(PROJECT)))
             for _ in range(4)]
    try:
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    won = [json.loads(out) for out, _ in outputs]
    assert sorted(i for w in won for i in w) == list(range(60))
