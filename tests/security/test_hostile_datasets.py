"""Hostile dataset names and paths, through a real gateway on a loopback port.

Names follow one pattern (``vdata.data.catalog.DATASET_NAME``); a dataset path is absolute (a
relative one would resolve against the server's working directory); one dataset's path list
holds no duplicate and at most ``max_dataset_paths`` entries. Everything else is refused with
a 4xx naming the field, before any file is opened. Registering a dataset needs no Ray: the
gateway here serves a core whose engine never starts.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.http.server import BackgroundServer
from service.settings import Settings
from service.core.core import Core, CoreConfig
from service.core.tokens import TokenStore

HZZ = "uproot-HZZ.root"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """The allowed root: a copy of the HZZ file and a symlink to it."""
    root = tmp_path_factory.mktemp("root")
    shutil.copy(shared_data / HZZ, root / "hzz.root")
    (root / "alias.root").symlink_to(root / "hzz.root")
    return root


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory, root: Path) -> Iterator[httpx.Client]:
    """An admin's client of a real gateway (idle core: no Ray) with allowed root ``root``."""
    data = tmp_path_factory.mktemp("gateway")
    core = Core(CoreConfig(data_dir=data))
    try:
        token = TokenStore(core.db).create("admin", note="hostile datasets")
        settings = Settings(data_dir=data, port=0, allowed_roots=[root], log_level="warning")
        with BackgroundServer(settings, core) as server, httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=120
        ) as client:
            yield client
    finally:
        core.close()


def register(http: httpx.Client, name: str, paths: list[str]) -> httpx.Response:
    return http.post("/v1/datasets", json={"name": name, "paths": paths, "tree": "events"})


def names(http: httpx.Client) -> list[str]:
    r = http.get("/v1/datasets")
    assert r.status_code == 200, r.text
    return [d["name"] for d in r.json()]


HOSTILE_NAMES = [
    "", " ", "   ", "\t", "\x00", "a\x00b", "hzz\x00.root", "../../etc/passwd", "..", "a..b", ".hidden",
    "a/b", "/abs", "a\\b", "opendata:hzz\n", "a\nb", "a\rb", "a\x1bb", "a\x7fb", "a b", " hzz", "hzz ",
    "ñame", "x" * 129, "-flag", ":x", "opendata:hzz/../x",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_are_refused_naming_the_field(http: httpx.Client, root: Path, name: str) -> None:
    r = register(http, name, [str(root / "hzz.root")])
    assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
    body = r.json()
    assert "name" in body["detail"], body
    assert name not in names(http)


@pytest.mark.parametrize("name", ["opendata:hzz", "cms:ttbar", "zmumu", "x", "A.b-c_d:1", "run2.v1", "x" * 128])
def test_ordinary_names_are_accepted(http: httpx.Client, root: Path, name: str) -> None:
    r = register(http, name, [str(root / "hzz.root")])
    assert r.status_code == 201, r.text
    assert r.json()["name"] == name and name in names(http)
    assert http.get(f"/v1/datasets/{name}").json()["num_events"] == 2421


def test_a_relative_path_is_refused_not_resolved_against_the_working_directory(
    http: httpx.Client, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(root)  # the server's working directory: "hzz.root" would be the real file
    r = register(http, "relative", ["hzz.root"])
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bad_path" and "'hzz.root'" in r.json()["detail"] and "relative" in r.json()["detail"]
    assert "relative" not in names(http)


def test_a_duplicate_path_is_refused_naming_it(http: httpx.Client, root: Path) -> None:
    path = str(root / "hzz.root")
    r = register(http, "twice", [path, path])
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bad_path" and path in r.json()["detail"] and "twice" in r.json()["detail"]
    # the same file under two names (a symlink) is a duplicate too
    r = register(http, "aliased", [path, str(root / "alias.root")])
    assert r.status_code == 400, r.text
    assert "alias.root" in r.json()["detail"] and path in r.json()["detail"]
    assert not {"twice", "aliased"} & set(names(http))


def test_five_thousand_copies_of_one_path_are_refused_at_once(http: httpx.Client, root: Path) -> None:
    """Was: > 6 minutes and +2 GB RSS opening the same file 5,000 times."""
    path = str(root / "hzz.root")
    r = register(http, "many", [path] * 5000)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "limit_exceeded" and "max_dataset_paths" in r.json()["detail"] and "5000" in r.json()["detail"]
    r = register(http, "many", [path] * 1000)  # within the count limit: refused as duplicates
    assert r.status_code == 400 and r.json()["error"] == "bad_path" and path in r.json()["detail"], r.text
    assert "many" not in names(http)


def test_the_path_limit_is_a_setting(tmp_path: Path, root: Path) -> None:
    assert Settings(data_dir=tmp_path).max_dataset_paths == 1000
    with pytest.raises(ValueError, match="max_dataset_paths"):
        Settings(data_dir=tmp_path, max_dataset_paths=0)
    assert os.path.isabs(str(root))
