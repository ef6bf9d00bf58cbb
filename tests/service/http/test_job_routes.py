"""The worker routes answer JSON built by hand (no response-model validation on the hot path):
it must still be what their response models say, and the OpenAPI schema must still say it."""

from __future__ import annotations

from typing import Any

from gateway_helpers import Env
from pydantic import BaseModel, TypeAdapter

from service.http.schemas import HeartbeatOut, JobStatusOut, LeaseOut, ReportOut
from vdata.ranges import EventRange
from vdata.testing import wait_until


def exactly(model: type[BaseModel], body: dict[str, Any]) -> None:
    """``body`` has every field of ``model``, no other, and validates."""
    assert set(body) == set(model.model_fields), (model.__name__, body)
    model.model_validate(body)


def test_worker_answers_match_their_response_models(idle_env: Env) -> None:
    job = idle_env.core.jobs.create_job("vds-routes", [EventRange(i, 10 * i, 10 * i + 10) for i in range(4)])
    worker = idle_env.client("worker")
    try:
        r = worker.post(f"/v1/jobs/{job}/lease", json={"worker": "w1", "n": 3})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        leases = r.json()
        TypeAdapter(list[LeaseOut]).validate_python(leases)
        for x in leases:
            exactly(LeaseOut, x)
        assert [(x["index"], x["first"], x["stop"]) for x in leases] == [(0, 0, 10), (1, 10, 20), (2, 20, 30)]
        assert leases[2]["url"] == "/v1/recipes/vds-routes/ranges/2?format=arrow"
        beat = worker.post(f"/v1/jobs/{job}/ranges/1/heartbeat", json={"worker": "w1"}).json()
        exactly(HeartbeatOut, beat)
        assert beat["index"] == 1 and beat["lease_deadline"] >= leases[1]["lease_deadline"]
        exactly(ReportOut, worker.post(f"/v1/jobs/{job}/ranges/0/finish", json={"worker": "w1"}).json())
        assert worker.post(f"/v1/jobs/{job}/ranges/2/fail", json={"worker": "w1", "message": "m"}).json() == {
            "index": 2, "ok": True}
        assert worker.post(f"/v1/jobs/{job}/lease", json={"worker": "w2", "n": 5}).json()[0]["index"] == 2
        assert worker.post(f"/v1/jobs/{job}/lease", json={"worker": "w2", "n": 5}).json() == []
    finally:
        worker.close()


def test_openapi_still_documents_the_worker_answers(idle_env: Env) -> None:
    client = idle_env.client(None)
    try:
        paths = client.get("/openapi.json").json()["paths"]
    finally:
        client.close()

    def ok_schema(path: str) -> str:
        return str(paths[path]["post"]["responses"]["200"]["content"]["application/json"]["schema"])

    assert "LeaseOut" in ok_schema("/v1/jobs/{job_id}/lease")
    assert "HeartbeatOut" in ok_schema("/v1/jobs/{job_id}/ranges/{index}/heartbeat")
    assert "ReportOut" in ok_schema("/v1/jobs/{job_id}/ranges/{index}/finish")
    assert "ReportOut" in ok_schema("/v1/jobs/{job_id}/ranges/{index}/fail")


def test_job_status_shows_events_rate_eta_and_failures_per_worker(idle_env: Env) -> None:
    """GET /v1/jobs/{id} for a job driven by real leases, finishes, failures and an expired lease."""
    job = idle_env.core.jobs.create_job("vds-progress", [EventRange(i, 100 * i, 100 * i + 100) for i in range(5)],
                                        max_attempts=3, lease_seconds=1.0)
    worker = idle_env.client("worker")
    url = f"/v1/jobs/{job}"
    try:
        before = worker.get(url).json()
        exactly(JobStatusOut, before)
        assert (before["started"], before["events_per_second"], before["eta_seconds"]) == (None, 0.0, None)
        assert before["failures_per_worker"] == {} and before["events_total"] == 500
        assert [x["index"] for x in worker.post(f"{url}/lease", json={"worker": "w1", "n": 3}).json()] == [0, 1, 2]
        assert worker.post(f"{url}/ranges/0/finish", json={"worker": "w1"}).status_code == 200
        assert worker.post(f"{url}/ranges/1/fail", json={"worker": "w1", "message": "crash"}).status_code == 200
        assert worker.post(f"{url}/ranges/2/fail", json={"worker": "w1", "message": "bad", "fatal": True}).json()["ok"]
        assert [x["index"] for x in worker.post(f"{url}/lease", json={"worker": "w2", "n": 1}).json()] == [1]
        wait_until(lambda: worker.get(url).json()["failures_per_worker"].get("w2") == 1, timeout=30,
                   message="w2's lease of range 1 expired and reclaimed")  # it never heartbeats
        middle = worker.get(url).json()
        assert middle["events_finished"] == 100 and middle["events_failed"] == 100 and not middle["done"]
        assert middle["events_per_second"] > 0 and middle["eta_seconds"] > 0
        assert middle["failures_per_worker"] == {"w1": 2, "w2": 1}
        leased = worker.post(f"{url}/lease", json={"worker": "w3", "n": 5}).json()
        assert [x["index"] for x in leased] == [1, 3, 4]
        for x in leased:
            assert worker.post(f"{url}/ranges/{x['index']}/finish", json={"worker": "w3"}).status_code == 200
        done = worker.get(url).json()
        exactly(JobStatusOut, done)
        assert done["done"] and done["events_finished"] == 400 and done["events_failed"] == 100
        assert done["counts"] == {"ready": 0, "running": 0, "finished": 4, "failed": 0, "fatal": 1}
        assert done["failures_per_worker"] == {"w1": 2, "w2": 1, "w3": 0}
        assert done["events_per_second"] > 0 and done["eta_seconds"] is None
        assert done["elapsed_seconds"] >= 1.0 and done["started"] == middle["started"]
    finally:
        worker.close()
