"""The merge of job outputs on Ray (service/core/merge.py): once every range is finished (or
failed for good), the outputs become files of the target size, each equal to the concatenation
of its ranges' outputs in range order, for every format."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from job_helpers import make_ranges

from service.core.core import Core, CoreConfig
from service.core._output_files import read_output
from service.core.engine import EngineConfig
from vdata.checksum import adler32, file_adler32
from vdata.formats import encode_table
from vdata.testing import wait_until


@pytest.fixture(scope="module")
def core(embedded_ray: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Core]:
    config = CoreConfig(data_dir=tmp_path_factory.mktemp("merge"), engine=EngineConfig(lookahead=0),
                        outputs_merge_bytes=2500, outputs_retention_seconds=0)
    with Core(config) as started:
        yield started


def table(index: int) -> pa.Table:
    """A range's output: jagged and flat columns, a size and values of its own."""
    n = 40 + index
    return pa.table({"Muon_pt": pa.array([[float(index), i * 0.5] for i in range(n)], pa.list_(pa.float32())),
                     "nMuon": pa.array([2] * n, pa.int32()),
                     "event": pa.array(range(1000 * index, 1000 * index + n), pa.int64())})


def run_job(core: Core, fmt: str, n: int, fail: tuple[int, ...] = ()) -> tuple[str, list[pa.Table]]:
    """A job whose worker uploads each range's output (as ``fmt``) and finishes it, or fails it fatally."""
    job = core.jobs.create_job("vds-merge", make_ranges([50] * n), outputs="optional", output_format=fmt)
    core.lease(job, "w", n)
    outputs = []
    for i in range(n):
        if i in fail:
            core.fail(job, i, "w", "broken", fatal=True)
            continue
        data = encode_table(table(i), fmt)
        upload = core.begin_output(job, i, "w", fmt)
        upload.write(data)
        core.commit_output(upload, job, i, "w", fmt, adler32(data))
        core.finish(job, i, "w")
        outputs.append(table(i))
    wait_until(lambda: core.status(job).state != "merging" and core.status(job).state != "running", timeout=120,
               message=f"job {job} to be merged")
    return job, outputs


@pytest.mark.parametrize("fmt", ["arrow", "parquet", "root"])
def test_merged_files_equal_the_concatenated_range_outputs(core: Core, fmt: str) -> None:
    job, outputs = run_job(core, fmt, 5)
    assert core.status(job).state == "merged"
    merged = core.outputs.merged(job)
    assert len(merged) >= 2  # the target size cut it
    assert [m.first_range for m in merged] == [0] + [m.last_range + 1 for m in merged[:-1]]
    assert merged[-1].last_range == 4
    tables = []
    for m in merged:
        path = core.outputs.merged_path(job, m.name)
        assert file_adler32(path) == (m.size, m.adler32)
        got = read_output(path, fmt)
        assert got.num_rows == m.events
        want = pa.concat_tables(outputs[m.first_range: m.last_range + 1])
        assert got.equals(want), (m, got.schema, want.schema)
        tables.append(got)
    assert pa.concat_tables(tables).equals(pa.concat_tables(outputs))  # every event once, in range order
    # retention 0: the range outputs are released once merged; the merged files stay
    wait_until(lambda: core.outputs.merge_state(job)[2], timeout=30, message="range outputs released")
    assert core.outputs.range_outputs(job) == []
    assert not any(Path(core.outputs.root / job).glob("0000*"))


def test_a_job_closed_with_failures_merges_what_finished(core: Core) -> None:
    job, outputs = run_job(core, "parquet", 4, fail=(1,))
    merged = core.outputs.merged(job)
    got = pa.concat_tables([read_output(core.outputs.merged_path(job, m.name), "parquet") for m in merged])
    assert got.equals(pa.concat_tables(outputs)) and got.num_rows == 40 + 42 + 43
    assert core.status(job).counts["fatal"] == 1


def test_outputs_that_do_not_share_a_schema_fail_the_merge_with_a_reason(core: Core) -> None:
    job = core.jobs.create_job("vds-merge", make_ranges([50, 50]), outputs="required", output_format="parquet")
    core.lease(job, "w", 2)
    for i, t in enumerate([table(0), pa.table({"other": [1, 2]})]):
        data = encode_table(t, "parquet")
        upload = core.begin_output(job, i, "w", "parquet")
        upload.write(data)
        core.commit_output(upload, job, i, "w", "parquet", adler32(data))
        core.finish(job, i, "w")
    wait_until(lambda: core.status(job).state == "merge_failed", timeout=120, message="the merge to fail")
    state, message, _ = core.outputs.merge_state(job)
    assert "part 0 (ranges 0..1)" in str(message) and "schema" in str(message)
