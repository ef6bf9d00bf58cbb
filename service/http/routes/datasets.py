"""``/v1/datasets``: register source datasets (admin), list and show them (reader)."""

from __future__ import annotations

from fastapi import APIRouter

from service.http.auth import Admin, Reader
from service.http.deps import CoreDep, SettingsDep
from service.errors import LimitExceeded
from service.http.schemas import DatasetIn, DatasetOut, FileOut
from service.core.cache import adler32_hex
from service.core.path_policy import check_paths
from vdata.data.sources import SourceDataset

__all__ = ["router"]

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def dataset_out(name: str, ds: SourceDataset) -> DatasetOut:
    files = [FileOut(path=f.path, entries=f.entries, size=f.size,
                     adler32=None if f.adler32 is None else adler32_hex(f.adler32)) for f in ds.files]
    return DatasetOut(name=name, tree=ds.tree, num_events=ds.num_events, columns=ds.columns, files=files)


@router.post("", status_code=201, response_model=DatasetOut)
def add_dataset(body: DatasetIn, core: CoreDep, settings: SettingsDep, _: Admin) -> DatasetOut:
    """Open a dataset's files (under the allowed roots or URL prefixes) and register it.

    Refused before any file is opened: a bad name (422, by the schema), more than
    ``max_dataset_paths`` paths (400), a relative, duplicate or disallowed path (400/403)."""
    if len(body.paths) > settings.max_dataset_paths:
        raise LimitExceeded(f"paths: the dataset lists {len(body.paths)} paths; the limit is "
                            f"{settings.max_dataset_paths} (setting max_dataset_paths)")
    paths = check_paths(body.paths, settings.roots, settings.allowed_url_prefixes)
    return dataset_out(body.name, core.add_dataset(body.name, paths, body.tree))


@router.get("", response_model=list[DatasetOut])
def list_datasets(core: CoreDep, _: Reader) -> list[DatasetOut]:
    return [dataset_out(name, ds) for name, ds in sorted(core.catalog.datasets().items())]


@router.get("/{name:path}", response_model=DatasetOut)
def get_dataset(name: str, core: CoreDep, _: Reader) -> DatasetOut:
    """One dataset (``opendata:hzz``). ``:path`` so that an old name holding '/' (allowed
    before names had a pattern) can still be looked up."""
    return dataset_out(name, core.catalog.dataset(name))
