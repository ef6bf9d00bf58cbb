"""vdata: on-demand virtual data for event processing.

The library layer: source datasets read with uproot, event ranges, output formats (and, as
the service grows, recipes, materialization, the cache, jobs and the Ray engine). Everything
a user calls is re-exported here.
"""


from vdata.errors import (
    ColumnNotFound,
    FormatError,
    NotARootFile,
    RangeOutOfBounds,
    RemoteReadError,
    SchemaMismatch,
    SourceError,
    SourceFileNotFound,
    TreeNotFound,
    UninterpretableColumn,
    VdataError,
)
from vdata.formats import FORMATS, read_table, write_table
from vdata.ranges import EventRange, plan_ranges
from vdata.sources import SourceDataset, SourceFile, open_dataset

__version__ = "0.1.0"

__all__ = [
    "ColumnNotFound",
    "EventRange",
    "FORMATS",
    "FormatError",
    "NotARootFile",
    "RangeOutOfBounds",
    "RemoteReadError",
    "SchemaMismatch",
    "SourceDataset",
    "SourceError",
    "SourceFile",
    "SourceFileNotFound",
    "TreeNotFound",
    "UninterpretableColumn",
    "VdataError",
    "open_dataset",
    "plan_ranges",
    "read_table",
    "write_table",
]
