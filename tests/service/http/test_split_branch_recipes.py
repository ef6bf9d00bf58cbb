"""uproot's full paths of split branches (``evt/I32``) in a recipe posted over HTTP: the range
holds the column under that name; a misspelt one is a 400 naming it and its close matches."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from gateway_helpers import Client, Env, error_of

import vdata

NESTED = "uproot-nesteddirs.root"


@pytest.fixture(scope="module")
def admin(started_env: Env, shared_data: Path) -> Iterator[Client]:
    client = started_env.client("admin")
    r = client.post("/v1/datasets", json={"name": "nested", "paths": [str(shared_data / NESTED)], "tree": "three/tree"})
    assert r.status_code == 201, r.text
    yield client
    client.close()


def test_range_keeps_the_full_path_as_the_column_name(admin: Client, shared_data: Path) -> None:
    r = admin.post("/v1/recipes", json={"source": {"dataset": "nested"}, "columns": ["evt/I32", "I32", "evt/P3/P3.Px"]})
    assert r.status_code == 201, r.text
    recipe_id = r.json()["id"]
    schema = admin.get(f"/v1/recipes/{recipe_id}").json()["schema"]
    assert [f["name"] for f in schema] == ["evt/I32", "I32", "evt/P3/P3.Px"]
    r = admin.get(f"/v1/recipes/{recipe_id}/ranges/0", params={"format": "arrow"})
    assert r.status_code == 200, r.text
    table = pa.ipc.open_stream(io.BytesIO(r.content)).read_all()
    with vdata.open_dataset(shared_data / NESTED, "three/tree") as ds:
        source = ds.read(ds.ranges(ds.num_events)[0], ["I32", "P3.Px"])
    assert table.column_names == ["evt/I32", "I32", "evt/P3/P3.Px"]
    assert table["evt/I32"].to_pylist() == table["I32"].to_pylist() == source["I32"].to_pylist()
    assert table["evt/P3/P3.Px"].to_pylist() == source["P3.Px"].to_pylist()


def test_misspelt_full_path_is_a_400_naming_it(admin: Client) -> None:
    detail = error_of(admin.post("/v1/recipes", json={"source": {"dataset": "nested"}, "columns": ["evt/I3"]}),
                      400, "bad_recipe")
    assert "'evt/I3'" in detail and "'evt/I32'" in detail
