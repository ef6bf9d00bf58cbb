"""A gateway SIGKILLed mid-job loses nothing it acknowledged, and the job still ends with every
range finished exactly once: a real ``vdata serve`` process, killed with no warning, restarted on
the same data folder."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
from serve_process import Serve, processes_mentioning

from vdata.testing import wait_until

# Not the embedded_ray fixture: a real `vdata serve` process, its Ray with it, is killed and restarted.
pytestmark = pytest.mark.slow

RECIPE = {"source": {"generator": "zmumu", "events": 8000, "seed": 11}, "columns": ["Muon_pt", "nMuon"],
          "range_events": 1000}


def test_sigkill_mid_job_then_restart_loses_nothing(data_dir: Path) -> None:
    with Serve(data_dir) as first:
        first.wait_healthy()
        headers = {"Authorization": f"Bearer {first.admin_token}"}
        with httpx.Client(base_url=first.url, headers=headers, timeout=120) as http:
            recipe = http.post("/v1/recipes", json=RECIPE).json()["id"]
            job = http.post("/v1/jobs", json={"recipe_id": recipe, "lease_seconds": 5, "max_attempts": 3}).json()["id"]
            leased = http.post(f"/v1/jobs/{job}/lease", json={"worker": "a", "n": 3}).json()
            assert [x["index"] for x in leased] == [0, 1, 2]
            before = http.get(f"/v1/recipes/{recipe}/ranges/0").content
            for index in (0, 1):  # acknowledged: must survive
                assert http.post(f"/v1/jobs/{job}/ranges/{index}/finish", json={"worker": "a"}).status_code == 200
        first.child.send_signal(signal.SIGKILL)  # range 2 stays leased to a worker that is gone
        first.child.wait(timeout=30)
        wait_until(lambda: not processes_mentioning(str(data_dir)), timeout=60, interval=0.3,
                   message="the killed gateway's Ray to go")

    with Serve(data_dir) as second:
        second.wait_healthy()
        with httpx.Client(base_url=second.url, headers=headers, timeout=120) as http:
            status = http.get(f"/v1/jobs/{job}").json()
            assert status["counts"]["finished"] == 2 and status["counts"]["running"] + status["counts"]["ready"] == 6
            assert http.get(f"/v1/recipes/{recipe}/ranges/0").content == before  # the cache survived, verified
            finished: list[int] = []

            def work_then_done() -> bool:
                """Finish what can be leased now; range 2 comes back once its dead holder's lease expires."""
                for lease in http.post(f"/v1/jobs/{job}/lease", json={"worker": "b", "n": 2}).json():
                    assert http.get(lease["url"]).status_code == 200
                    assert http.post(f"/v1/jobs/{job}/ranges/{lease['index']}/finish",
                                     json={"worker": "b"}).status_code == 200
                    finished.append(lease["index"])
                return bool(http.get(f"/v1/jobs/{job}").json()["done"])

            wait_until(work_then_done, timeout=180, interval=0.5, message=f"job {job} to be done")
            assert sorted(finished) == [2, 3, 4, 5, 6, 7]  # each once, the lost lease included
            status = http.get(f"/v1/jobs/{job}").json()
            assert status["counts"]["finished"] == 8 and status["events_finished"] == 8000
