"""Fuzzed recipe and job bodies never produce a 5xx: every bad input is a 4xx in the JSON
error shape. With Ray: a recipe with steps is checked by a dry run in a Ray worker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_helpers import HZZ, Client, Env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
names = st.sampled_from(["opendata:hzz", "nope", "", "zmumu", "multijet", "scale", "NMuon", "Muon_Px", "MET_px"])
expressions = st.sampled_from(["NMuon >= 2", "sum(Muon_Px)", "MET_px * 2", "", "1 +", "__import__('os')",
                               "Muon_Px[0]", "x" * 300]) | st.text(max_size=30)
sources = st.one_of(
    st.fixed_dictionaries({"dataset": names | json_values}),
    st.fixed_dictionaries({"generator": names | json_values},
                          optional={"events": st.integers(-5, 10**7) | json_values,
                                    "seed": st.integers(-5, 2**64) | json_values,
                                    "params": st.dictionaries(st.sampled_from(["mass", "width", "jets", "mass_min", "x"]),
                                                              scalars, max_size=3) | json_values}),
    json_values,
)
steps = st.lists(st.one_of(
    st.fixed_dictionaries({"filter": expressions | json_values}),
    st.fixed_dictionaries({"define": st.dictionaries(st.text(max_size=8) | names, expressions, max_size=2) | json_values}),
    st.fixed_dictionaries({"transform": st.fixed_dictionaries(
        {"name": names | json_values},
        optional={"inputs": st.dictionaries(st.sampled_from(["x", "y"]), names, max_size=2) | json_values,
                  "outputs": st.dictionaries(st.sampled_from(["y", "z"]), names, max_size=2) | json_values})}),
    json_values,
), max_size=3)
recipes = st.one_of(
    st.fixed_dictionaries({}, optional={"source": sources, "steps": steps | json_values,
                                        "columns": st.lists(names, max_size=4) | json_values,
                                        "range_events": st.integers(-3, 10**8) | json_values,
                                        "format": st.integers(0, 2) | json_values}),
    json_values,
)
workers = st.sampled_from(["w1", "w2", "", " ", "x" * 300]) | json_values
job_bodies = st.fixed_dictionaries({}, optional={
    "recipe_id": st.sampled_from(["{recipe}", "vds-0", ""]) | json_values,
    "max_attempts": st.integers(-2, 2000) | json_values,
    "lease_seconds": st.floats() | st.integers(-5, 10**9) | json_values,
}) | json_values
report_bodies = st.fixed_dictionaries({}, optional={
    "worker": workers, "n": st.integers(-5, 20_000) | json_values, "message": st.text(max_size=50) | json_values,
    "fatal": st.booleans() | json_values,
}) | json_values


@pytest.fixture(scope="module")
def fuzz(started_env: Env, shared_data: Path) -> Iterator[tuple[Client, str, str]]:
    admin = started_env.client("admin")
    assert admin.post("/v1/datasets", json={"name": "opendata:hzz", "paths": [str(shared_data / HZZ)],
                                            "tree": "events"}).status_code == 201
    recipe = admin.post("/v1/recipes", json={"source": {"dataset": "opendata:hzz"}, "columns": ["NMuon"],
                                             "range_events": 500}).json()["id"]
    job = admin.post("/v1/jobs", json={"recipe_id": recipe}).json()["id"]
    yield admin, recipe, job
    admin.close()


def _send(client: Client, method: str, path: str, body: Any) -> None:
    raw = json.dumps(body, allow_nan=True).encode()
    r = client.request(method, path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code < 500, f"{method} {path} {raw[:300]!r} -> {r.status_code} {r.text[:500]}"
    if r.status_code >= 400:
        assert set(r.json()) == {"error", "detail"}, r.text


def _fill(body: Any, recipe: str) -> Any:
    if isinstance(body, dict) and body.get("recipe_id") == "{recipe}":
        return dict(body, recipe_id=recipe)
    return body


@FUZZ
@given(body=recipes)
def test_recipes_never_5xx(fuzz: tuple[Client, str, str], body: Any) -> None:
    _send(fuzz[0], "POST", "/v1/recipes", body)


@FUZZ
@given(body=job_bodies)
def test_job_creation_never_5xx(fuzz: tuple[Client, str, str], body: Any) -> None:
    _send(fuzz[0], "POST", "/v1/jobs", _fill(body, fuzz[1]))


@FUZZ
@given(action=st.sampled_from(["lease", "ranges/0/heartbeat", "ranges/1/finish", "ranges/2/fail", "ranges/99/fail",
                               "ranges/-1/finish", "ranges/x/finish"]),
       job=st.sampled_from(["{job}", "job-nope", "x" * 300]), body=report_bodies)
def test_job_actions_never_5xx(fuzz: tuple[Client, str, str], action: str, job: str, body: Any) -> None:
    job_id = fuzz[2] if job == "{job}" else job
    _send(fuzz[0], "POST", f"/v1/jobs/{job_id}/{action}", body)


@FUZZ
@given(raw=st.binary(max_size=64))
def test_raw_bodies_never_5xx(fuzz: tuple[Client, str, str], raw: bytes) -> None:
    for path in ("/v1/recipes", "/v1/jobs", f"/v1/jobs/{fuzz[2]}/lease"):
        r = fuzz[0].request("POST", path, content=raw, headers={"content-type": "application/json"})
        assert r.status_code < 500 and set(r.json()) == {"error", "detail"}, (path, raw, r.text)
