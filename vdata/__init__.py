"""vdata: on-demand virtual data for event processing.

The library layer: source datasets read with uproot, event ranges, output formats, the
catalog, recipes and local materialization (and, as the service grows, the cache, jobs and
the Ray engine). Everything
a user calls is re-exported here.
"""


from vdata.catalog import Catalog
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
from vdata.materialize import Plan, materialize, plan
from vdata.ranges import EventRange, plan_ranges
from vdata.recipes import Recipe
from vdata.sources import SourceDataset, SourceFile, open_dataset

__version__ = "0.1.0"

# The engine and the service core import Ray (a second of start-up), the client httpx and
# rich: load them on first use.
_LAZY = {
    "CacheEntry": "vdata.cache",
    "CacheKey": "vdata.cache",
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
