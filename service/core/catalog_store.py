"""Catalog persistence: datasets, transforms and recipes in the database.

The in-memory :class:`~vdata.data.catalog.Catalog` is what recipes resolve against; this store
writes every addition to the database and, on start, loads them back (reopening datasets and
recompiling transforms), so a restart loses nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from service.errors import RecipeNotFound
from vdata.data.catalog import Catalog, dataset_fingerprint
from service.core.db import Database
from vdata.errors import RecipeError, VdataError
from vdata.data.recipes import Recipe

__all__ = ["CatalogStore", "RecipeNotFound"]

log = logging.getLogger(__name__)


class CatalogStore:
    """Reads and writes the catalog's facts; ``load`` fills a Catalog from the database."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self._clock = clock

    def load(self, catalog: Catalog) -> list[str]:
        """Reopen every stored dataset and recompile every stored transform into ``catalog``.

        Returns warnings (a dataset whose files are gone or changed); those datasets are still
        registered when they open, under their current fingerprint.
        """
        warnings = []
        for row in self.db.read().execute("SELECT name, tree, paths, fingerprint FROM datasets ORDER BY name"):
            try:
                ds = catalog.add_dataset(row["name"], json.loads(row["paths"]), row["tree"])
            except VdataError as exc:
                warnings.append(f"dataset {row['name']!r} could not be reopened: {exc}")
                continue
            if dataset_fingerprint(ds) != row["fingerprint"]:
                warnings.append(f"dataset {row['name']!r}: its files changed since it was registered")
        for row in self.db.read().execute("SELECT name, source, inputs, outputs, kind, max_size FROM transforms ORDER BY name"):
            try:
                catalog.add_transform(
                    row["name"], row["source"], json.loads(row["inputs"]), json.loads(row["outputs"]),
                    row["kind"], json.loads(row["max_size"] or "null"),
                )
            except VdataError as exc:  # pragma: no cover - stored sources passed these checks once
                warnings.append(f"transform {row['name']!r} could not be recompiled: {exc}")
        for warning in warnings:
            log.warning(warning)
        return warnings

    def save_dataset(self, name: str, catalog: Catalog) -> None:
        ds = catalog.dataset(name)
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO datasets (name, tree, paths, fingerprint, created) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET tree = excluded.tree, paths = excluded.paths, "
                "fingerprint = excluded.fingerprint",
                (name, ds.tree, json.dumps([f.path for f in ds.files]), catalog.fingerprint(name), self._clock()),
            )

    def save_transform(self, name: str, catalog: Catalog) -> None:
        t = catalog.transform(name)
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO transforms (name, code_hash, source, inputs, outputs, kind, max_size, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET code_hash = excluded.code_hash, "
                "source = excluded.source, inputs = excluded.inputs, outputs = excluded.outputs, "
                "kind = excluded.kind, max_size = excluded.max_size",
                (name, t.code_hash, t.source, json.dumps(t.inputs), json.dumps(t.outputs), t.kind,
                 json.dumps(t.max_size), self._clock()),
            )

    def save_recipe(self, recipe: Recipe) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO recipes (id, body, created) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (recipe.id, recipe.to_json(), self._clock()),
            )

    def recipe(self, recipe_id: str) -> Recipe:
        row = self.db.read().execute("SELECT body FROM recipes WHERE id = ?", (recipe_id,)).fetchone()
        if row is None:
            raise RecipeNotFound(f"no recipe {recipe_id!r}; submit it first")
        recipe = Recipe.from_json(row["body"])
        if recipe.id != recipe_id:
            raise RecipeError([f"stored recipe {recipe_id!r} now reads as {recipe.id}: its transforms changed"])
        return recipe
