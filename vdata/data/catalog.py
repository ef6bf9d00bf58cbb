"""The catalog: named source datasets and scientists' transforms.

Recipes name datasets (``"opendata:hzz"``) and transforms; the catalog resolves them. This one
lives in memory; the service keeps the same facts in its database.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from transforms.errors import TransformsError, UnknownName
from transforms.registry import Transform, get_transform
from transforms.usercode import compile_user_transform
from vdata.errors import BadDatasetName, DatasetNotFound, array_error
from vdata.data.remote import RemoteOptions
from vdata.data.sources import SourceDataset, open_dataset

__all__ = ["DATASET_NAME", "BadDatasetName", "Catalog", "check_dataset_name", "dataset_fingerprint"]

# A dataset name is a word of ASCII letters, digits and ``. _ : -``, starting with a letter or a
# digit, at most 128 characters, without ``..``: it shows up in logs, URLs
# (``/v1/datasets/{name}``), metrics labels and messages, so it holds no separator, space,
# control character or NUL, and nothing that reads as a path. ``opendata:hzz`` is one.
DATASET_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_DATASET_NAME = re.compile(DATASET_NAME.removeprefix("^").removesuffix("$"))


def check_dataset_name(name: object) -> str:
    """``name`` if it is a valid dataset name, else :class:`BadDatasetName` saying why."""
    if not isinstance(name, str) or not name:
        raise BadDatasetName(f"name: a dataset needs a non-empty name, got {name!r:.80}")
    if len(name) > 128:
        raise BadDatasetName(f"name: a dataset name has at most 128 characters, got {len(name)} ({name[:40]!r}...)")
    if _DATASET_NAME.fullmatch(name) is None or ".." in name:
        raise BadDatasetName(
            f"name: {name!r:.160} is not a valid dataset name: use ASCII letters, digits and . _ : - "
            f"(starting with a letter or digit, no '..'), e.g. 'opendata:hzz'"
        )
    return name


def dataset_fingerprint(ds: SourceDataset) -> str:
    """A digest of what a dataset holds: tree, files (path, entries, size, adler32), schema.

    Part of the id of every recipe over the dataset: other files mean other bytes.
    """
    facts = {
        "tree": ds.tree,
        "files": [[f.path, f.entries, f.size, f.adler32] for f in ds.files],
        "schema": ds.schema.serialize().to_pybytes().hex(),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]


def _file_key(ds: SourceDataset, position: int) -> tuple[object, ...]:
    f = ds.files[position]
    return (f.path, ds.tree, f.entries, f.clusters, f.size, f.adler32, ds.schema.to_string())


# The open files of a dataset are its own (``SourceDataset._handles``, opened under its lock); a
# worker's catalog hands an open file to another dataset of the same file, read one task at a time.
def _open_files(datasets: Iterable[SourceDataset]) -> dict[tuple[object, ...], tuple[Any, Any]]:
    """(file, tree) handles of every file these datasets have open, by what identifies the file."""
    return {_file_key(ds, position): handle for ds in datasets for position, handle in list(ds._handles.items())}


def _share_open_files(ds: SourceDataset, opened: dict[tuple[object, ...], tuple[Any, Any]]) -> None:
    """Let ``ds`` read through files already open (see :meth:`Catalog.adopt_datasets`)."""
    for position in range(len(ds.files)):
        handle = opened.get(_file_key(ds, position))
        if handle is not None:
            ds._handles.setdefault(position, handle)


class Catalog:
    """Datasets by name and user transforms by name; built-in transforms are always known.

    ``remote``: how its datasets read http(s) files (timeouts; :mod:`vdata.data.remote`).
    """

    def __init__(self, remote: RemoteOptions | None = None) -> None:
        self.remote = remote or RemoteOptions()
        self._datasets: dict[str, SourceDataset] = {}
        self._fingerprints: dict[str, str] = {}
        self._transforms: dict[str, Transform] = {}
        self._lock = threading.Lock()
        self.revision = 0  # bumped by every change, so copies (Ray workers) know when to refresh

    # Catalogs travel to Ray workers: datasets without open files, transforms by source.
    def __getstate__(self) -> dict[str, object]:
        with self._lock:
            state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- datasets ---------------------------------------------------------------------------

    def add_dataset(
        self, name: str, paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], tree: str
    ) -> SourceDataset:
        """Open and register a dataset (replacing one of the same name); the name must match
        :data:`DATASET_NAME` (:class:`BadDatasetName` otherwise, before any file is opened)."""
        check_dataset_name(name)
        ds = open_dataset(paths, tree, self.remote)
        self.put_dataset(name, ds)
        return ds

    def put_dataset(self, name: str, ds: SourceDataset) -> None:
        check_dataset_name(name)
        fingerprint = dataset_fingerprint(ds)
        with self._lock:
            self._datasets[name] = ds
            self._fingerprints[name] = fingerprint
            self.revision += 1

    def dataset(self, name: str) -> SourceDataset:
        try:
            return self._datasets[name]
        except KeyError:
            raise DatasetNotFound(name, sorted(self._datasets)) from None

    def fingerprint(self, name: str) -> str:
        self.dataset(name)
        return self._fingerprints[name]

    def datasets(self) -> dict[str, SourceDataset]:
        return dict(self._datasets)

    def adopt_datasets(self, other: Catalog) -> list[str]:
        """Take over ``other``'s dataset objects where name and fingerprint agree; the names.

        A copy of the catalog (a Ray worker's, after any dataset was added) then keeps the files
        those datasets already opened instead of opening them again — for a remote file that
        is several round trips to read its header, streamers and tree metadata.
        Where a dataset is new but one of ``other`` has the same file open (same path, tree,
        entries, clusters and schema: a file registered again under another name, or shared by
        two datasets), the new dataset reads through that open file too.
        """
        with self._lock:
            same = [name for name, fp in self._fingerprints.items() if other._fingerprints.get(name) == fp]
            for name in same:
                self._datasets[name] = other._datasets[name]
            opened = _open_files(other._datasets.values())
            for name, ds in self._datasets.items():
                if name not in same:
                    _share_open_files(ds, opened)
        return same

    # -- transforms -------------------------------------------------------------------------

    def add_transform(
        self,
        name: str,
        source: str,
        inputs: Mapping[str, str],
        outputs: Mapping[str, str],
        kind: str = "event",
        max_size: str | int | None = None,
    ) -> Transform:
        """Check, compile and register a scientist's transform (see ``transforms.usercode``)."""
        try:
            transform = compile_user_transform(name, source, dict(inputs), dict(outputs), kind=kind, max_size=max_size)
        except TransformsError as exc:
            raise array_error(exc) from exc
        with self._lock:
            self._transforms[name] = transform
            self.revision += 1
        return transform

    def transform(self, name: str) -> Transform:
        """A user transform of this catalog, else a built-in one."""
        if name in self._transforms:
            return self._transforms[name]
        return get_transform(name)

    def find_transform(self, name: str) -> Transform | None:
        try:
            return self.transform(name)
        except (UnknownName, TransformsError):
            return None

    def transforms(self) -> dict[str, Transform]:
        return dict(self._transforms)
