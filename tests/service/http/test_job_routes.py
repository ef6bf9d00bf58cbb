"""The worker routes answer JSON built by hand (no response-model validation on the hot path):
it must still be what their response models say, and the OpenAPI schema must still say it."""

from __future__ import annotations

from typing import Any

from gateway_helpers import Env
from pydantic import BaseModel, TypeAdapter

from service.http.schemas import HeartbeatOut, LeaseOut, ReportOut
from vdata.ranges import EventRange


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
