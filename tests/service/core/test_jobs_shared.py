"""Several gateways on one database lease from one job at once: every range is handed out
exactly once (PostgreSQL: ``FOR UPDATE SKIP LOCKED``; SQLite: its write lock)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from service.core.db import Database
from service.core.job_thread import JobThread
from service.core.jobs import FINISHED, JobStore
from vdata.ranges import EventRange

from children import run_together

PROJECT = Path(__file__).resolve().parents[3]
RANGES = 400


def ranges(n: int) -> list[EventRange]:
    return [EventRange(i, i * 10, i * 10 + 10) for i in range(n)]


def test_two_gateways_in_threads_never_lease_one_range_twice(db: Database) -> None:
    """Two Database objects (two gateways' pools), each with its own job thread (group commit),
    three workers on each, leasing and finishing until the job is done."""
    job = JobStore(db).create_job("r", ranges(RANGES))
    got: dict[str, list[int]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(6)
    holding = threading.Barrier(6)  # every worker holds its first leases before any finishes
    with Database(db.url) as other:
        gateways = [(JobStore(d), JobThread(d, max_batch=16)) for d in (db, other)]

        def work(worker: str, store: JobStore, thread: JobThread) -> None:
            try:
                mine = got.setdefault(worker, [])
                start.wait()
                while leases := thread.submit(store.lease, job, worker, 1 + len(mine) % 4).result(30):
                    if not mine:
                        holding.wait(60)
                    mine.extend(x.index for x in leases)
                    for f in [thread.submit(store.finish, job, x.index, worker) for x in leases]:
                        f.result(30)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        workers = [threading.Thread(target=work, args=(f"g{g}w{i}", *gateways[g])) for g in (0, 1) for i in range(3)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        for _, thread in gateways:
            thread.close()
    assert not errors
    assert sorted(i for indexes in got.values() for i in indexes) == list(range(RANGES))  # each once
    # Every worker of both gateways took part (the first leases are held all at once; under load
    # one SQLite gateway can otherwise win every later lock and the other never lease).
    assert all(got[f"g{g}w{i}"] for g in (0, 1) for i in range(3))
    rows = JobStore(db).ranges(job)
    assert all(r.state == FINISHED and r.index in got[r.worker or ""] for r in rows)


# A gateway process: lease (n at a time) and finish until the job is done; prints the indexes.
CHILD = """
import json, sys
from service.core.db import Database
from service.core.jobs import JobStore
url, job, worker = sys.argv[1:4]
mine = []
with Database(url) as db:
    store = JobStore(db)
    print("ready", flush=True)
    sys.stdin.readline()  # the start signal: both processes lease at once
    while leases := store.lease(job, worker, 1 + len(mine) % 4):
        for lease in leases:
            store.finish(job, lease.index, worker)
        mine.extend(x.index for x in leases)
print(json.dumps(mine), flush=True)
"""


def test_two_gateway_processes_never_lease_one_range_twice(db: Database) -> None:
    job = JobStore(db).create_job("r", ranges(RANGES))
    env = {"PYTHONPATH": str(PROJECT), "PATH": "/usr/bin:/bin"}
    outputs = run_together([[CHILD, db.url, job, f"p{i}"] for i in (0, 1)], PROJECT, 240, env=env)
    got = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    assert sorted(got[0] + got[1]) == list(range(RANGES))  # every range leased exactly once
    rows = JobStore(db).ranges(job)
    assert all(r.state == FINISHED for r in rows)
    assert {r.worker for r in rows if r.index in got[1]} <= {"p1"}
