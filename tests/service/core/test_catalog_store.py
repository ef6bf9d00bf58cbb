"""The catalog's facts survive a restart, on both databases: datasets, transforms and recipes
are written by one store and loaded back by another (a restarted or a second gateway)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.core.catalog_store import CatalogStore, RecipeNotFound
from service.core.db import Database
from vdata.data.catalog import Catalog
from vdata.data.recipes import Recipe

SCALE = "def scale(x):\n    return 2.0 * x\n"
RECIPE = {"source": {"dataset": "opendata:hzz"},
          "steps": [{"transform": {"name": "scale", "inputs": {"x": "MET_px"}, "outputs": {"y": "met_px2"}}}],
          "columns": ["met_px2"], "range_events": 500}


def test_a_second_store_loads_what_the_first_saved(db: Database, db_url: str, shared_data: Path) -> None:
    catalog = Catalog()
    catalog.add_dataset("opendata:hzz", str(shared_data / "uproot-HZZ.root"), "events")
    catalog.add_transform("scale", SCALE, {"x": "flat"}, {"y": "float64"}, "element")
    store = CatalogStore(db)
    store.save_dataset("opendata:hzz", catalog)
    store.save_dataset("opendata:hzz", catalog)  # again: replaced, not doubled
    store.save_transform("scale", catalog)
    recipe = Recipe.from_dict(RECIPE, catalog)
    store.save_recipe(recipe)
    store.save_recipe(recipe)  # again: kept as it is
    with Database(db_url) as again:
        other = CatalogStore(again)
        loaded = Catalog()
        assert other.load(loaded) == []
        assert loaded.fingerprint("opendata:hzz") == catalog.fingerprint("opendata:hzz")
        assert loaded.transform("scale").code_hash == catalog.transform("scale").code_hash
        assert other.recipe(recipe.id).id == recipe.id
        with pytest.raises(RecipeNotFound, match="vds-none"):
            other.recipe("vds-none")
