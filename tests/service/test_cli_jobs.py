"""``vdata jobs status`` and ``vdata jobs watch`` against a real gateway on a loopback port, for a
job driven by real leases, finishes, failures (over HTTP, as workers do). ``watch`` runs as a real
process until the job completes. The gateway's core never starts Ray: jobs do not need it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_helpers import Env, environment
from typer.testing import CliRunner

from service.cli import app
from service.http.server import BackgroundServer
from vdata.ranges import EventRange
from vdata.testing import wait_until

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[Env]:
    with environment(tmp_path_factory.mktemp("cli-jobs"), shared_data, start=False) as env:
        yield env


@pytest.fixture(scope="module")
def gateway(env: Env) -> Iterator[BackgroundServer]:
    with BackgroundServer(env.settings_with(port=0, host="127.0.0.1"), env.core) as running:
        yield running


@pytest.fixture
def worker(gateway: BackgroundServer, env: Env) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {env.tokens['worker']}"}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=60) as client:
        yield client


def new_job(env: Env, name: str) -> str:
    return env.core.jobs.create_job(name, [EventRange(i, 100 * i, 100 * i + 100) for i in range(5)], max_attempts=3)


def leased(worker: httpx.Client, job: str, who: str, n: int) -> list[int]:
    r = worker.post(f"/v1/jobs/{job}/lease", json={"worker": who, "n": n})
    assert r.status_code == 200, r.text
    return [x["index"] for x in r.json()]


def report(worker: httpx.Client, job: str, index: int, who: str, what: str = "finish", **body: object) -> None:
    r = worker.post(f"/v1/jobs/{job}/ranges/{index}/{what}", json={"worker": who, **body})
    assert r.status_code == 200, r.text


def test_jobs_status_shows_events_rate_eta_and_failures_per_worker(
    env: Env, gateway: BackgroundServer, worker: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.cli

    monkeypatch.setattr(service.cli.console, "width", 60)  # a narrow terminal: the lines must not wrap
    job = new_job(env, "vds-cli-status")
    assert leased(worker, job, "w1", 3) == [0, 1, 2]
    report(worker, job, 0, "w1")
    report(worker, job, 1, "w1", "fail", message="payload crashed")
    report(worker, job, 2, "w1", "fail", message="bad input", fatal=True)
    assert leased(worker, job, "w2", 1) == [1]
    report(worker, job, 1, "w2")
    result = runner.invoke(app, ["jobs", "status", job, "--url", gateway.url, "--token", env.tokens["worker"]],
                           env={"COLUMNS": "200"})
    out = result.output
    assert result.exit_code == 0, out
    assert f"{job} (recipe vds-cli-status): 200 of 500 events done (40.0%)" in out
    assert "ranges: 2 finished, 0 running, 2 ready, 0 failed, 1 fatal (of 5); events failed: 100" in out
    rate = re.search(r"rate: ([0-9,.]+) events/s over ([0-9.]+) s since the first lease; ETA ([0-9.]+) s", out)
    assert rate and float(rate.group(1).replace(",", "")) > 0, out
    assert re.search(r"w1\s+│\s+2", out) and re.search(r"w2\s+│\s+0", out), out  # failures per worker
    as_json = runner.invoke(app, ["jobs", "status", job, "--json", "--url", gateway.url, "--token",
                                  env.tokens["worker"]])
    body = json.loads(as_json.output)
    assert body["failures_per_worker"] == {"w1": 2, "w2": 0} and body["events_finished"] == 200


def test_jobs_watch_runs_until_the_job_is_complete(env: Env, gateway: BackgroundServer, worker: httpx.Client) -> None:
    job = new_job(env, "vds-cli-watch")
    assert leased(worker, job, "w1", 2) == [0, 1]
    report(worker, job, 0, "w1")
    report(worker, job, 1, "w1", "fail", message="payload crashed")

    def polls() -> float:
        text = httpx.get(f"{gateway.url}/metrics").text
        found = re.search(r'^vdata_http_requests_total\{method="GET",route="/v1/jobs/\{job_id\}",status="200"\} (\S+)$',
                          text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    before = polls()
    proc_env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120", "VDATA_URL": gateway.url,
                "VDATA_TOKEN": env.tokens["worker"]}
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "jobs", "watch", job, "--interval", "0.2"],
                            env=proc_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: polls() >= before + 2, timeout=120, message="the watcher polled the job twice")
        assert proc.poll() is None  # still watching: the job is not done
        for index in leased(worker, job, "w2", 5):  # 1, 2, 3, 4
            report(worker, job, index, "w2")
        out, errors = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out + errors
    assert "Traceback" not in errors, errors
    last = [line for line in out.splitlines() if line.strip()][-1]
    assert re.fullmatch(rf"{job} done: 500 of 500 events in [0-9.]+ s \([0-9,.]+ events/s\); 0 ranges failed for "
                        r"good; 1 failed attempts \(w1: 1\)", last), out
    assert "500/500" in out  # the progress view's last frame
