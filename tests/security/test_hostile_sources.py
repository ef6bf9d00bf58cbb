"""SSRF through a remote source: a URL under ``allowed_url_prefixes`` answers with a redirect
to a loopback port outside them. Redirects are never followed (neither at registration nor
when a Ray worker reads a range later): the gateway answers 502 naming the URL, and the
redirect's target gets no request at all."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from remote_sources import HZZ, Gateway, gateway, remote_error


@pytest.fixture(scope="module")
def gw(embedded_ray: None, tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[Gateway]:
    with gateway(tmp_path_factory.mktemp("ssrf"), shared_data) as running:
        running.hostile.redirect_to = running.internal.url  # a port outside the allowed prefixes
        yield running


def test_internal_port_serves_the_file_directly(gw: Gateway) -> None:
    """The target is a working file server: had the redirect been followed, it would answer."""
    r = gw.register("internal:direct", f"{gw.internal.url}/{HZZ}")
    assert r.status_code == 403, r.text  # not under the allowed prefixes
    assert gw.internal.requests == 0


def test_redirect_at_registration_is_not_followed(gw: Gateway) -> None:
    url = f"{gw.hostile.url}/{HZZ}"
    gw.hostile.mode = "redirect"
    try:
        detail = remote_error(gw.register("ssrf:register", url), url)
    finally:
        gw.hostile.mode = "ok"
    assert "redirect" in detail and gw.internal.url in detail  # says where it wanted to go
    assert gw.internal.requests == 0
    assert gw.http.get("/v1/datasets/ssrf:register").status_code == 404  # nothing registered


def test_redirect_inside_the_prefixes_is_not_followed_either(gw: Gateway) -> None:
    """No redirect is followed, even to a URL that is itself allowed: one rule, no exceptions."""
    url = f"{gw.hostile.url}/{HZZ}"
    gw.hostile.redirect_to = gw.hostile.url + "/again"
    gw.hostile.mode = "redirect"
    try:
        remote_error(gw.register("ssrf:inside", url), url)
    finally:
        gw.hostile.mode = "ok"
        gw.hostile.redirect_to = gw.internal.url


def test_redirect_when_a_worker_reads_a_range_is_not_followed(gw: Gateway) -> None:
    url = f"{gw.hostile.url}/{HZZ}"
    assert gw.register("ssrf:later", url).status_code == 201
    recipe = gw.recipe("ssrf:later", ["MET_px", "MET_py"])
    gw.hostile.mode = "redirect"
    try:
        r = gw.http.get(f"/v1/recipes/{recipe}/ranges/1")
    finally:
        gw.hostile.mode = "ok"
    detail = remote_error(r, url)
    assert "redirect" in detail
    assert gw.internal.requests == 0
    # once the source behaves again the same range materializes
    assert gw.http.get(f"/v1/recipes/{recipe}/ranges/1").status_code == 200
