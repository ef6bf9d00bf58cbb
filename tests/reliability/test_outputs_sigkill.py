"""Nothing of a job's outputs is lost: a worker SIGKILLed after its upload and before ``finish``
(the range is leased again, the next holder's upload replaces the stored one), and a gateway
SIGKILLed during the merge (the next gateway resumes it at its start); the merged result has
every event once. A real ``vdata serve``, killed and restarted on the same data folder.

The merge is held in place deterministically: one stored range output is swapped for a FIFO,
so the merge task blocks opening it until the gateway is killed; the bytes are put back before
the restart."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from serve_process import PROJECT, Serve, processes_mentioning

from vdata import Client
from vdata.formats import encode_table
from vdata.testing import wait_until

pytestmark = pytest.mark.slow

RECIPE = {"source": {"generator": "zmumu", "events": 3000, "seed": 11}, "columns": ["nMuon"], "range_events": 1000}
ENV = {"VDATA_CLAIM_SECONDS": "2"}  # a killed gateway's merge is taken over 2 s after its last renewal


def output(first: int, stop: int, worker: int) -> pa.Table:
    return pa.table({"event": pa.array(range(first, stop), pa.int64()), "worker": pa.array([worker] * (stop - first))})


def kill_after_upload(url: str, token: str, job: str) -> None:
    """Worker 1 in its own process: lease a range, upload its output, die by SIGKILL before finish."""
    script = textwrap.dedent(f"""
        import os, signal
        import pyarrow as pa
        from vdata import Client
        with Client({url!r}, {token!r}) as c:
            (lease,) = c.lease({job!r}, 1, worker="doomed")
            t = pa.table({{"event": pa.array(range(lease.first, lease.stop), pa.int64()),
                          "worker": pa.array([1] * lease.num_events)}})
            c.upload_output({job!r}, lease.index, t, worker="doomed")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, env=dict(os.environ, PYTHONPATH=str(PROJECT)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr


def test_worker_and_gateway_sigkilled_lose_no_output(data_dir: Path) -> None:
    with Serve(data_dir, extra_env=ENV) as first:
        first.wait_healthy()
        token = first.admin_token
        with Client(first.url, token) as client:
            recipe = client.submit(RECIPE).id
            job = client.create_job(recipe, outputs="required", lease_seconds=3)
            kill_after_upload(first.url, token, job)
            assert [r["worker"] for r in client.outputs(job)["ranges"]] == ["doomed"]  # stored, not finished
            held: dict[int, bytes] = {}

            def work() -> bool:
                """Worker 2 takes what it can lease (range 0 once the dead worker's lease expires)."""
                for lease in client.lease(job, 3, worker="b"):
                    data = encode_table(output(lease.first, lease.stop, 2), "parquet")
                    client.upload_output(job, lease.index, data_path(data_dir, lease.index, data), worker="b")
                    held[lease.index] = data
                    if len(held) == 3:  # before the last finish: hold the merge on a FIFO in range 1's place
                        stored = output_path(data_dir, job, 1, held[1])
                        stored.unlink()
                        os.mkfifo(stored)
                    client.finish(job, lease.index, worker="b")
                return len(held) == 3

            wait_until(work, timeout=60, interval=0.5, message="worker b to finish every range")
            wait_until(lambda: client.job(job)["state"] == "merging", timeout=60, message="the merge to start")
        first.child.send_signal(signal.SIGKILL)  # mid-merge: its task waits on the FIFO
        first.child.wait(timeout=30)
        wait_until(lambda: not processes_mentioning(str(data_dir)), timeout=60, interval=0.3,
                   message="the killed gateway's Ray to go")
    stored = output_path(data_dir, job, 1, held[1])
    stored.unlink()
    stored.write_bytes(held[1])

    with Serve(data_dir, extra_env=ENV) as second:
        second.wait_healthy()
        with Client(second.url, token) as client:
            wait_until(lambda: client.job(job)["state"] == "merged", timeout=120, message="the merge to resume")
            paths = client.fetch_outputs(job, data_dir / "fetched")
    merged = pa.concat_tables([pq.read_table(p) for p in paths])
    assert merged["event"].to_pylist() == list(range(3000))  # every event once, in order
    assert set(merged["worker"].to_pylist()) == {2}  # the dead worker's upload was replaced


def data_path(data_dir: Path, index: int, data: bytes) -> Path:
    """The output as a file the worker wrote (uploads stream files too)."""
    path = data_dir / f"out-{index}.parquet"
    path.write_bytes(data)
    return path


def output_path(data_dir: Path, job: str, index: int, data: bytes) -> Path:
    """Where the gateway stores a range output: named by its content, in the cache folder."""
    return data_dir / "cache" / "outputs" / job / f"{index:05d}-{hashlib.sha256(data).hexdigest()}.parquet"
