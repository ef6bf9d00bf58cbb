"""Request ids made without a uuid per request: 16 hex digits, distinct, different per app."""

from __future__ import annotations

import re

from gateway_helpers import Env


def test_new_request_ids_are_distinct_per_request_and_per_app(idle_env: Env) -> None:
    first, second = idle_env.client(None), idle_env.client(None)
    try:
        ids = [first.get("/healthz").headers["x-request-id"] for _ in range(20)]
        other = second.get("/healthz").headers["x-request-id"]
    finally:
        first.close()
        second.close()
    assert all(re.fullmatch(r"[0-9a-f]{16}", x) for x in [*ids, other])
    assert len(set(ids)) == 20
    assert other[:8] != ids[0][:8]  # another app (another process) has another prefix
