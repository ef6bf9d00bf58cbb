"""vdata: on-demand virtual data for event processing.

The library layer: source datasets read with uproot, event ranges, output formats, the
catalog, recipes and local materialization, the cache, jobs, the Ray engine and the client.
Everything a user calls is re-exported here.
"""

import sys
import types

from vdata.errors import (
    ColumnNotFound,
    DatasetNotFound,
    FormatError,
    NotARootFile,
    RangeOutOfBounds,
    RecipeError,
    RemoteReadError,
    SchemaMismatch,
    SourceError,
    SourceFileNotFound,
    TransformError,
    TreeNotFound,
    UninterpretableColumn,
    VdataError,
)
from vdata.formats import FORMATS, read_table, write_table
from vdata.ranges import EventRange, plan_ranges

__version__ = "0.1.0"

# Loaded on first use: the sources need uproot and awkward, recipes Numba (a second and
# ~150 MiB), the engine and the service core Ray, the client httpx and rich. A payload that
# only streams with the Client never pays for the others.
_LAZY = {
    "CacheEntry": "vdata.cache",
    "CacheKey": "vdata.cache",
    "Catalog": "vdata.catalog",
    "Plan": "vdata.materialize",
    "Recipe": "vdata.recipes",
    "SourceDataset": "vdata.sources",
    "SourceFile": "vdata.sources",
    "materialize": "vdata.materialize",
    "open_dataset": "vdata.sources",
    "plan": "vdata.materialize",
    "ChecksumMismatch": "vdata.client",
    "Client": "vdata.client",
    "Core": "vdata.core",
    "CoreConfig": "vdata.core",
    "Database": "vdata.db",
    "Engine": "vdata.engine",
    "EngineConfig": "vdata.engine",
    "JobStore": "vdata.jobs",
    "RangeCache": "vdata.cache",
    "RecipeInfo": "vdata.client",
    "ServiceError": "vdata.client",
    "ServiceUnreachable": "vdata.client",
    "WorkerSummary": "vdata.client",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vdata' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """``vdata.materialize`` is the function, as it was when it was imported eagerly: when the
    module ``vdata.materialize`` is first loaded, the import system sets it as an attribute of
    the package; keep the function of that name instead (the module stays in ``sys.modules``)."""

    def __setattr__(self, name: str, value: object) -> None:
        if name == "materialize" and isinstance(value, types.ModuleType):
            value = value.materialize
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "CacheEntry",
    "CacheKey",
    "Catalog",
    "ChecksumMismatch",
    "Client",
    "ColumnNotFound",
    "Core",
    "CoreConfig",
    "Database",
    "DatasetNotFound",
    "Engine",
    "EngineConfig",
    "EventRange",
    "FORMATS",
    "FormatError",
    "JobStore",
    "NotARootFile",
    "Plan",
    "RangeCache",
    "RangeOutOfBounds",
    "Recipe",
    "RecipeError",
    "RecipeInfo",
    "RemoteReadError",
    "SchemaMismatch",
    "ServiceError",
    "ServiceUnreachable",
    "SourceDataset",
    "SourceError",
    "SourceFile",
    "SourceFileNotFound",
    "TransformError",
    "TreeNotFound",
    "UninterpretableColumn",
    "VdataError",
    "WorkerSummary",
    "materialize",
    "open_dataset",
    "plan",
    "plan_ranges",
    "read_table",
    "write_table",
]
