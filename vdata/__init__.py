"""vdata: on-demand virtual data for event processing.

What a worker or an analysis installs (``pip install vdata``): the data library
(:mod:`vdata.data`: sources, the catalog, recipes and local materialization), event ranges,
output formats and the client of a vdata service (:mod:`vdata.client`). The service itself
(Ray engine, cache, jobs, gateway) is the ``service`` package (``pip install 'vdata[server]'``).
Everything a user calls is here.
"""

from vdata.client import (
    ChecksumMismatch,
    Client,
    LeasedRange,
    RecipeInfo,
    ServiceError,
    ServiceUnreachable,
    WorkerSummary,
)
from vdata.data.catalog import Catalog
from vdata.data.plans import Plan, materialize, plan
from vdata.data.recipes import Recipe
from vdata.data.sources import SourceDataset, SourceFile, open_dataset
from vdata.errors import (
    ColumnNotFound,
    DatasetNotFound,
    FormatError,
    NotARootFile,
    RangeOutOfBounds,
    RecipeError,
    RemoteFileNotFound,
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

__all__ = [
    "Catalog",
    "ChecksumMismatch",
    "Client",
    "ColumnNotFound",
    "DatasetNotFound",
    "EventRange",
    "FORMATS",
    "FormatError",
    "LeasedRange",
    "NotARootFile",
    "Plan",
    "RangeOutOfBounds",
    "Recipe",
    "RecipeError",
    "RecipeInfo",
    "RemoteFileNotFound",
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
