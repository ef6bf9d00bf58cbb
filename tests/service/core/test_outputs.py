"""Range outputs of jobs (service/core/outputs.py): what an upload must be, which output counts
(idempotent repeats, 409 for other bytes once finished, the next holder's upload replacing a
dead worker's), finish requiring an output, and the merge's claim and retention bookkeeping,
on SQLite and PostgreSQL. No Ray: the merge itself is tests/service/core/test_merge.py."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from job_helpers import FakeClock, make_ranges

from service.core._output_rows import MergedRow, OutputRow, plan_parts
from service.core.db import Database
from service.core.jobs import FINISHED, JobStore
from service.core.outputs import OutputStore
from service.errors import LeaseError, OutputConflict, OutputError
from vdata.checksum import adler32
from vdata.formats import encode_table

TABLE = pa.table({"x": pa.array([1.5, 2.5, 3.5]), "n": pa.array([1, 2, 3], pa.int32())})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def jobs(db: Database, clock: FakeClock) -> JobStore:
    return JobStore(db, clock=clock)


@pytest.fixture
def store(db: Database, jobs: JobStore, clock: FakeClock, tmp_path: Path) -> OutputStore:
    return OutputStore(db, jobs, tmp_path / "outputs", clock=clock)


def upload(store: OutputStore, job: str, index: int, worker: str, data: bytes, fmt: str = "parquet",
           checksum: int | None = None) -> tuple[OutputRow, bool]:
    up = store.begin(job, index, worker, fmt)
    up.write(data[: len(data) // 2])
    up.write(data[len(data) // 2:])
    return store.record(store.commit(up, job, index, worker, fmt, adler32(data) if checksum is None else checksum))


def new_job(jobs: JobStore, outputs: str = "required", n: int = 3, lease: float = 60.0) -> str:
    return jobs.create_job("vds-out", make_ranges([3] * n), lease_seconds=lease, outputs=outputs)


@pytest.mark.parametrize("fmt", ["arrow", "parquet", "root"])
def test_an_upload_is_stored_by_content_and_a_repeat_is_idempotent(store: OutputStore, jobs: JobStore,
                                                                   fmt: str) -> None:
    job = new_job(jobs)
    jobs.lease(job, "w1", 1)
    data = encode_table(TABLE, fmt)
    out, new = upload(store, job, 0, "w1", data, fmt)
    assert new and out.events == 3 and out.size == len(data) and out.format == fmt
    assert (store.root / out.path).read_bytes() == data and out.sha256 in out.path
    again, new = upload(store, job, 0, "w1", data, fmt)
    assert not new and again == out
    jobs.finish(job, 0, "w1")
    assert upload(store, job, 0, "w1", data, fmt) == (out, False)  # finished: the same bytes are still fine
    assert [p.name for p in (store.root / job).iterdir()] == [Path(out.path).name]  # no temporary file left


def test_arrow_is_accepted_as_an_ipc_file_too(store: OutputStore, jobs: JobStore) -> None:
    job = new_job(jobs)
    jobs.lease(job, "w1", 1)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, TABLE.schema) as writer:
        writer.write_table(TABLE)
    assert upload(store, job, 0, "w1", sink.getvalue().to_pybytes(), "arrow")[0].events == 3


def test_bad_uploads_are_refused_naming_range_and_format(store: OutputStore, jobs: JobStore) -> None:
    job = new_job(jobs)
    jobs.lease(job, "w1", 2)
    data = encode_table(TABLE, "parquet")
    with pytest.raises(OutputError, match=r"range 0 of job .* has adler32 .* but X-Vdata-Adler32 says 00000001"):
        upload(store, job, 0, "w1", data, checksum=1)
    with pytest.raises(OutputError, match=r"the output of range 1 of job .* does not read as root"):
        upload(store, job, 1, "w1", data, "root")
    with pytest.raises(OutputError, match="does not read as arrow"):
        upload(store, job, 1, "w1", b"not arrow at all", "arrow")
    with pytest.raises(LeaseError, match="'w2' cannot upload an output for range 0 .* leased to worker 'w1'"):
        store.begin(job, 0, "w2", "parquet")
    with pytest.raises(LeaseError, match="range 2 .* it is ready, not leased"):
        store.begin(job, 2, "w1", "parquet")
    assert store.range_outputs(job) == []
    assert list((store.root / job).iterdir()) == []  # refused bodies leave nothing behind
    none = new_job(jobs, outputs="none")
    jobs.lease(none, "w1", 1)
    with pytest.raises(OutputError, match="takes no outputs"):
        store.begin(none, 0, "w1", "parquet")


def test_finished_range_keeps_its_output_and_finish_requires_one(store: OutputStore, jobs: JobStore) -> None:
    job = new_job(jobs)
    jobs.lease(job, "w1", 2)
    with pytest.raises(OutputConflict, match="cannot finish range 0 .* requires its output"):
        jobs.finish(job, 0, "w1")
    upload(store, job, 0, "w1", encode_table(TABLE, "parquet"))
    jobs.finish(job, 0, "w1")
    with pytest.raises(OutputConflict, match="range 0 of job .* is finished with output"):
        upload(store, job, 0, "w1", encode_table(TABLE.slice(1), "parquet"))
    optional = new_job(jobs, outputs="optional")
    jobs.lease(optional, "w1", 1)
    jobs.finish(optional, 0, "w1")  # optional: no output needed
    assert jobs.status(optional).counts[FINISHED] == 1


def test_a_dead_workers_output_is_replaced_by_the_next_holder(store: OutputStore, jobs: JobStore,
                                                              clock: FakeClock) -> None:
    """Worker a uploads, dies before finish; the range is leased again; b's upload replaces a's."""
    job = new_job(jobs, n=1, lease=10.0)
    jobs.lease(job, "a", 1)
    old, _ = upload(store, job, 0, "a", encode_table(TABLE, "parquet"))
    clock.now += 11
    assert [x.index for x in jobs.lease(job, "b", 1)] == [0]  # a's lease expired: b has it
    with pytest.raises(LeaseError, match="'a' cannot upload"):
        store.begin(job, 0, "a", "parquet")
    new, stored = upload(store, job, 0, "b", encode_table(TABLE.slice(1), "parquet"))
    assert stored and new.worker == "b" and new.events == 2
    assert not (store.root / old.path).exists() and (store.root / new.path).exists()
    jobs.finish(job, 0, "b")
    assert store.range_outputs(job, finished_only=True) == [new]


def test_plan_parts_cuts_in_range_order_by_size() -> None:
    outs = [OutputRow("j", i, f"j/{i}", "parquet", size, 1, "s", 1, "w", 0.0) for i, size in
            [(2, 40), (0, 50), (1, 60), (3, 500), (4, 10)]]
    parts = plan_parts(outs, 100)
    assert [p.ranges for p in parts] == [(0,), (1, 2), (3,), (4,)]
    assert [p.size for p in parts] == [50, 100, 500, 10] and parts[1].inputs == (("j/1", "parquet"), ("j/2", "parquet"))
    assert [p.ranges for p in plan_parts(outs, 10**6)] == [(0, 1, 2, 3, 4)]
    assert plan_parts([], 100) == []


def test_merge_claim_waits_for_done_and_passes_on_when_its_owner_dies(store: OutputStore, jobs: JobStore,
                                                                      clock: FakeClock) -> None:
    job = new_job(jobs, n=2)
    jobs.lease(job, "w", 2)
    for i in range(2):
        upload(store, job, i, "w", encode_table(TABLE, "parquet"))
    jobs.finish(job, 0, "w")
    assert store.waiting() == [job] and not store.claim(job, "g1", 30)  # range 1 still runs
    jobs.fail(job, 1, "w", "broken", fatal=True)  # closed with a failure: it merges without it
    assert store.claim(job, "g1", 30) and not store.claim(job, "g2", 30)
    assert jobs.status(job).state == "merging"
    assert [o.index for o in store.range_outputs(job, finished_only=True)] == [0]
    store.add_merged(MergedRow(job, 0, "part-00000.parquet", "parquet", 0, 0, 3, 10, 1, clock.now), "g1")
    clock.now += 31  # g1 died: its claim ran out
    assert store.claim(job, "g2", 30)
    assert not store.renew(job, "g1", 30)
    store.add_merged(MergedRow(job, 1, "late", "parquet", 1, 1, 3, 10, 1, clock.now), "g1")  # g1 no longer holds it
    assert [m.part for m in store.merged(job)] == [0]
    store.end_merge(job, "g2")
    assert store.merge_state(job) == ("merged", None, False) and store.waiting() == []
    assert jobs.status(job).state == "merged"
    kept = store.range_outputs(job)
    assert store.release_due(3600) == []
    clock.now += 3601
    assert store.release_due(3600) == [job]
    assert store.range_outputs(job) == [] and store.merge_state(job)[2]
    assert not any((store.root / o.path).exists() for o in kept)
