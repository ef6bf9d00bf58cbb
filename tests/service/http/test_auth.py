"""Roles: every endpoint against every role (and no token). No Ray: the requests are shaped to
fail after the role check (404, 400) where they would otherwise need data."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from gateway_helpers import Client, Env, error_of

from service.core.tokens import ROLES

# (method, path, body, least role or None for public, status when allowed)
ENDPOINTS: list[tuple[str, str, Any, str | None, int]] = [
    ("GET", "/healthz", None, None, 200),
    ("GET", "/metrics", None, None, 200),
    ("POST", "/v1/datasets", {"name": "x", "paths": ["{data}/missing.root"], "tree": "t"}, "admin", 400),
    ("GET", "/v1/datasets", None, "reader", 200),
    ("GET", "/v1/datasets/opendata:none", None, "reader", 404),
    ("POST", "/v1/transforms", {"name": "t", "source": "import os", "inputs": {}, "outputs": {"y": "float64"}},
     "scientist", 400),
    ("GET", "/v1/transforms", None, "reader", 200),
    ("POST", "/v1/recipes", {"source": {}}, "reader", 422),  # the body does not fit the recipe schema
    ("GET", "/v1/recipes/vds-0", None, "reader", 404),
    ("GET", "/v1/recipes/vds-0/ranges", None, "reader", 404),
    ("GET", "/v1/recipes/vds-0/ranges/0?format=arrow", None, "reader", 404),
    ("GET", "/v1/recipes/vds-0/ranges/0/provenance", None, "reader", 404),
    ("POST", "/v1/recipes/vds-0/stage", {"count": 1}, "reader", 404),
    ("POST", "/v1/jobs", {"recipe_id": "vds-0"}, "worker", 404),
    ("GET", "/v1/jobs/job-0", None, "worker", 404),
    ("POST", "/v1/jobs/job-0/lease", {"worker": "w", "n": 1}, "worker", 404),
    ("POST", "/v1/jobs/job-0/ranges/0/heartbeat", {"worker": "w"}, "worker", 404),
    ("POST", "/v1/jobs/job-0/ranges/0/finish", {"worker": "w"}, "worker", 404),
    ("POST", "/v1/jobs/job-0/ranges/0/fail", {"worker": "w", "message": "m", "fatal": False}, "worker", 404),
    ("GET", "/v1/jobs/job-0/ranges/0/provenance", None, "reader", 404),
    ("PUT", "/v1/jobs/job-0/ranges/0/output?worker=w&format=parquet", None, "worker", 400),  # no X-Vdata-Adler32
    ("GET", "/v1/jobs/job-0/ranges/0/output", None, "worker", 404),
    ("GET", "/v1/jobs/job-0/outputs", None, "worker", 404),
    ("GET", "/v1/jobs/job-0/outputs/part-00000.parquet", None, "worker", 404),
    ("POST", "/v1/tokens", {"role": "reader"}, "admin", 201),
]


@pytest.fixture(scope="module")
def client(idle_env: Env) -> Iterator[Client]:
    client = idle_env.client(None)
    yield client
    client.close()


def _body(body: Any, env: Env) -> Any:
    if body is None or "paths" not in body:
        return body
    return dict(body, paths=[p.replace("{data}", str(env.data_dir)) for p in body["paths"]])


@pytest.mark.parametrize("role", [None, *ROLES])
@pytest.mark.parametrize(("method", "path", "body", "least", "allowed"), ENDPOINTS,
                         ids=[f"{m} {p.split('?')[0]}" for m, p, *_ in ENDPOINTS])
def test_role_matrix(client: Client, idle_env: Env, role: str | None, method: str, path: str, body: Any,
                     least: str | None, allowed: int) -> None:
    token = idle_env.tokens[role] if role else None
    r = client.as_(token).request(method, path, json=_body(body, idle_env))
    if least is None or (role is not None and ROLES.index(role) >= ROLES.index(least)):
        assert r.status_code == allowed, r.text
    elif role is None:
        error_of(r, 401, "unauthenticated")
        assert r.headers["www-authenticate"] == "Bearer"
    else:
        assert f"'{least}'" in error_of(r, 403, "forbidden")


def test_every_route_is_in_the_matrix(client: Client) -> None:
    listed = {(m, p.split("?")[0]) for m, p, *_ in ENDPOINTS}
    spec = client.get("/openapi.json").json()["paths"]
    for path, operations in spec.items():
        for method in operations:
            concrete = any(m == method.upper() and _matches(path, p) for m, p in listed)
            assert concrete, f"{method.upper()} {path} is not in the role matrix"


def _matches(template: str, path: str) -> bool:
    return re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path) is not None


def test_bad_tokens_are_401(client: Client) -> None:
    for header in ("Bearer", "Bearer ", "Bearer vdt_" + "x" * 43, "Token abc", "bearer nope"):
        r = client.get("/v1/datasets", headers={"Authorization": header})
        error_of(r, 401, "unauthenticated")
