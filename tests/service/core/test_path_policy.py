"""Dataset path policy: nothing outside the allowed roots and URL prefixes is opened."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.from_thread
import pytest
from gateway_helpers import HZZ, Client, error_of

from service.http.app import create_app
from service.http.auth import Principal, authenticate
from service.settings import Settings
from service.core.path_policy import check_paths
from service.errors import BadPath, PathNotAllowed
from vdata.data.sources import SourceDataset, open_dataset

PREFIXES = ["http://files.example.org/data/", "root://eos.example.org//eos/opendata"]


@pytest.fixture()
def roots(tmp_path: Path, shared_data: Path) -> dict[str, Path]:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    shutil.copy(shared_data / HZZ, root / "sub" / "hzz.root")
    (root / "inside.root").symlink_to(root / "sub" / "hzz.root")
    (root / "escape.root").symlink_to(shared_data / HZZ)  # a real ROOT file, outside the root
    (root / "escape-dir").symlink_to(shared_data, target_is_directory=True)
    return {"root": root, "outside": shared_data}


# -- the policy itself -------------------------------------------------------------------------


def test_files_under_a_root_resolve(roots: dict[str, Path]) -> None:
    root = roots["root"]
    assert check_paths([str(root / "sub" / "hzz.root")], [root]) == [str(root / "sub" / "hzz.root")]
    assert check_paths([str(root / "inside.root")], [root]) == [str(root / "sub" / "hzz.root")]
    assert check_paths([str(root / "sub" / "." / "hzz.root")], [root]) == [str(root / "sub" / "hzz.root")]


@pytest.mark.parametrize("name", ["../x.root", "sub/../../x.root", "sub/../sub/hzz.root"])
def test_dotdot_is_refused(roots: dict[str, Path], name: str) -> None:
    with pytest.raises(PathNotAllowed, match=r"'\.\.'"):
        check_paths([f"{roots['root']}/{name}"], [roots["root"]])


@pytest.mark.parametrize("name", ["escape.root", f"escape-dir/{HZZ}"])
def test_symlinks_out_of_the_root_are_refused(roots: dict[str, Path], name: str) -> None:
    with pytest.raises(PathNotAllowed, match="resolves to"):
        check_paths([str(roots["root"] / name)], [roots["root"]])


def test_outside_every_root(roots: dict[str, Path]) -> None:
    with pytest.raises(PathNotAllowed, match="outside the allowed roots"):
        check_paths([str(roots["outside"] / HZZ)], [roots["root"]])
    with pytest.raises(PathNotAllowed, match="none are configured"):
        check_paths([str(roots["root"] / "sub" / "hzz.root")], [])
    sibling = roots["root"].parent / (roots["root"].name + "2")  # a prefix of the name is not a parent
    with pytest.raises(PathNotAllowed):
        check_paths([str(sibling / "x.root")], [roots["root"]])


@pytest.mark.parametrize("path", ["file:///etc/passwd", "file:/etc/passwd", "FILE:///x", "ftp://files.example.org/data/a.root",
                                  "s3://bucket/a.root", "data:text/plain,hi"])
def test_other_schemes_are_refused(path: str) -> None:
    with pytest.raises(PathNotAllowed, match="scheme"):
        check_paths([path], ["/"], PREFIXES)


def test_urls_need_an_allowed_prefix() -> None:
    ok = ["http://files.example.org/data/a.root", "root://eos.example.org//eos/opendata/b.root"]
    assert check_paths(ok, [], PREFIXES) == ok
    for bad in ["http://files.example.org/other/a.root", "https://files.example.org/data/a.root",
                "root://eos.example.org//eos/opendatax/b.root", "root://eos.example.org//eos/opendata@evil/b",
                "http://files.example.org/data/../secret.root", "http://files.example.org/data/%2e%2e/secret.root"]:
        with pytest.raises(PathNotAllowed):
            check_paths([bad], [], PREFIXES)
    with pytest.raises(PathNotAllowed, match="none are configured"):
        check_paths(["http://files.example.org/data/a.root"], [], [])


@pytest.mark.parametrize("path", ["a\x00b.root", "", 3])
def test_nul_bytes_and_non_paths(roots: dict[str, Path], path: Any) -> None:
    with pytest.raises(BadPath):
        check_paths([f"{roots['root']}/{path}" if isinstance(path, str) and path else path], [roots["root"]])


@pytest.mark.parametrize("path", ["sub/hzz.root", "hzz.root", "./sub/hzz.root", "~/hzz.root"])
def test_relative_paths_are_refused_not_resolved(roots: dict[str, Path], path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(roots["root"])  # where a relative path would have resolved to a real file
    with pytest.raises(BadPath, match="relative"):
        check_paths([path], [roots["root"]])


def test_a_file_listed_twice_is_refused(roots: dict[str, Path]) -> None:
    path = str(roots["root"] / "sub" / "hzz.root")
    with pytest.raises(BadPath, match=r"listed twice \(entries 0 and 2\)"):
        check_paths([path, str(roots["root"] / "sub" / "other.root"), path], [roots["root"]])
    with pytest.raises(BadPath, match="same file"):
        check_paths([path, str(roots["root"] / "inside.root")], [roots["root"]])
    url = PREFIXES[0] + "a.root"
    with pytest.raises(BadPath, match="listed twice"):
        check_paths([url, url], [], PREFIXES)


# -- through the API: refused before the core (and uproot) sees the path ---------------------------


class SpyCore:
    """Stands in for the core: records which paths it was asked to open."""

    def __init__(self) -> None:
        self.opened: list[list[str]] = []

    def add_dataset(self, name: str, paths: list[str], tree: str) -> SourceDataset:
        self.opened.append(list(paths))
        return open_dataset(paths, tree)


@pytest.fixture()
def api(roots: dict[str, Path]) -> Iterator[tuple[Client, SpyCore]]:
    spy = SpyCore()
    settings = Settings(data_dir=roots["root"], allowed_url_prefixes=PREFIXES)
    app = create_app(settings, spy)  # type: ignore[arg-type]
    app.dependency_overrides[authenticate] = lambda: Principal("admin", "test")
    with anyio.from_thread.start_blocking_portal() as portal:
        client = Client(app, portal)
        yield client, spy
        client.close()


@pytest.mark.parametrize(("path", "status", "code"), [
    ("{root}/sub/../../escape.root", 403, "path_not_allowed"),
    ("{root}/escape.root", 403, "path_not_allowed"),
    ("{root}/escape-dir/" + HZZ, 403, "path_not_allowed"),
    ("{outside}/" + HZZ, 403, "path_not_allowed"),
    ("file://{outside}/" + HZZ, 403, "path_not_allowed"),
    ("http://elsewhere.example.org/a.root", 403, "path_not_allowed"),
    ("{root}/sub/hzz.root\x00.txt", 400, "bad_path"),
])
def test_api_refuses_without_opening(api: tuple[Client, SpyCore], roots: dict[str, Path], path: str,
                                     status: int, code: str) -> None:
    client, spy = api
    path = path.format(root=roots["root"], outside=roots["outside"])
    good = str(roots["root"] / "sub" / "hzz.root")
    r = client.post("/v1/datasets", json={"name": "x", "paths": [good, path], "tree": "events"})
    error_of(r, status, code)
    assert spy.opened == []  # not even the good path: all are checked first


def test_api_opens_the_resolved_path(api: tuple[Client, SpyCore], roots: dict[str, Path]) -> None:
    client, spy = api
    r = client.post("/v1/datasets", json={"name": "ok", "paths": [str(roots["root"] / "inside.root")], "tree": "events"})
    assert r.status_code == 201, r.text
    real = str(roots["root"] / "sub" / "hzz.root")
    assert spy.opened == [[real]] and r.json()["files"][0]["path"] == real
    assert os.path.islink(roots["root"] / "inside.root")
